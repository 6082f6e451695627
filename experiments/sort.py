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
        --set sort.prompt=natural --set train.steps=0      # SmolLM2-135M zero-shot (an accelerator)

Expected runtime (2-core CPU): --tiny ~10 s (mostly compiling); default: see the README
("SORT"), measured on the loaded machine.

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
