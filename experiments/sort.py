"""SORT, sequence order recall (Pink et al. 2024; issue 12, study 4): which of two segments of a
book came first, with the excerpt in the prompt (an unseen book), from parametric memory (a book
the model read for many epochs, no excerpt) and for a control book never seen (no excerpt). A
small Llama trained from scratch (byte tokenizer) learns the answer format on other books: SORT
with the excerpt in context on the books of the law, SORT without the excerpt on three minor
prophets it also reads; it is tested on Ruth (in context), Jonah + Nahum (parametric) and Titus +
2 Thessalonians (control).

    jaxcl run sort --tiny                                  # seconds; what the tests run
    jaxcl run sort                                         # the default (2-core CPU: see below)
    jaxcl run sort --set train.mix=0.5,0.5,0               # no no-excerpt format training
    jaxcl run sort --set model.name=smollm2-135m --set data.tokenizer=smollm2 \\
        --set sort.prompt=natural --set train.steps=0      # SmolLM2-135M zero-shot (3.2 min on a CPU)

Expected runtime (2-core CPU): --tiny ~15 s (mostly compiling); default 2.0-4.0 min of training + 25 s
compiling (load 2-6) (3 seeds vmapped, 1200 steps of 16 x 95 tokens, 12 in-loop
evaluations of 288 prompts).

Measured result, default (3 seeds, mean ± std; accuracy over both orders of 48 pairs, chance 50 %):

    condition    accuracy     d 8-23       d 24-40      d 41-56      paired       book NLL
    in context   50.0 ± 0.0   50.0 ± 0.0   50.0 ± 0.0   50.0 ± 0.0   50.7 ± 2.6   2.05 ± 0.08
    parametric   49.7 ± 0.5   47.9 ± 2.9   50.0 ± 0.0   51.0 ± 1.5   50.7 ± 4.3   1.46 ± 0.34
    control      48.6 ± 2.0   45.8 ± 5.9   47.9 ± 2.9   52.1 ± 2.9   46.5 ± 3.9   2.14 ± 0.03

Parametric SORT stays at chance although the parametric books are memorised (NLL 1.46 vs 2.05-2.14
for unseen books), as in the paper; the tiny model never learns the in-context task (its answer
loss stays at ln 2), so the paper's in-context finding is not reproduced at this scale. README:
"Sequence order recall (SORT)".

Writes runs/sort[-tiny]/{results.json, accuracy_vs_distance.png, accuracy_over_training.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "sort",
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
    }
    if tiny:
        cfg.update(
            model={"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64},
            books={
                "parametric": ("bible:jonah",),
                "parametric_format": ("bible:haggai",),
                "context_format": ("bible:ruth",),
                "context": ("bible:obadiah",),
                "control": ("bible:jude",),
            },
            sort={"excerpt_len": 24, "segment_len": 4, "pairs": 6, "distance_bins": 2},
            train={"steps": 8, "batch_size": 4, "eval_every": 2, "checkpoint_every": 4, "n_eval": 2},
            finetune={"lr": 3e-3},
            seeds=2,
        )
    return cfg
