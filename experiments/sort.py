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
    jaxcl run sort --set model.name=smollm2-135m --set model.tokenizer=smollm2 \\
        --set sort.prompt=natural --set train.steps=0      # SmolLM2-135M zero-shot (3.2 min on a CPU)

Expected runtime (2-core CPU): --tiny ~15 s (mostly compiling); default 2.0-4.0 min of training + 25 s
compiling (load 2-6) (3 seeds vmapped, 1200 steps of 16 x 95 tokens, 12 in-loop
evaluations of 288 prompts).

Measured result, default (results/studies/sort.json, commit 02ef018, 249 s at load ~3.8; 3 seeds,
mean ± std; accuracy over both orders of 48 pairs, chance 50 %):

    <!-- results: results/studies/sort.json rows=in_context,parametric,control cols=acc,acc_bin0,acc_bin1,acc_bin2,paired,book_nll -->
    | condition | accuracy | d 8-23 | d 24-40 | d 41-56 | paired | book NLL (nats/token) |
    |---|---|---|---|---|---|---|
    | in context (unseen book, excerpt in the prompt) | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 47.2 ± 7.9 | 2.06 ± 0.08 |
    | parametric (read ~20 epochs, no excerpt) | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.7 ± 3.9 | 1.47 ± 0.37 |
    | control (never seen, no excerpt) | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 45.8 ± 2.9 | 2.15 ± 0.05 |

Parametric SORT stays at chance although the parametric books are memorised (NLL 1.47 vs
2.06-2.15 for unseen books), as in the paper; the tiny model never learns the in-context task (its answer
loss stays at ln 2), so the paper's in-context finding is not reproduced at this scale. README:
"Sequence order recall (SORT)".

--size accel: SmolLM2-135M (pretrained, its tokenizer, bf16), natural-language prompts,
256-token excerpts, 16-token segments, 96 test pairs per condition, 2000 steps of 16, 8 seeds
(one per chip).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile sort --size accel --target tpu-v5e-8

    <!-- results: results/compile/sort-smollm2-135m-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | init | 2099.3 | 12.8 | 0.0 | 3.64 |
    | train call (5 x 200 steps) | 14882.5 | 90.8 | 2000.3 | 53.80 |
    | one step | 14265.3 | 87.1 | 1001.8 | 22.92 |
    | evaluate | 4810.4 | 29.4 | 998.4 | 23.33 |

Writes runs/sort[-tiny]/{results.json, accuracy_vs_distance.png, accuracy_over_training.png}.
"""


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {
        "study": "sort",
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
    }
    if size == "accel":  # SmolLM2-135M (pretrained), natural prompts, 256-token excerpts, 8 seeds
        cfg.update(
            model={"name": "smollm2-135m", "tokenizer": "smollm2", "compute_dtype": "bfloat16"},
            sort={
                "prompt": "natural",
                "excerpt_len": 256,
                "segment_len": 16,
                "pairs": 96,
                "distance_bins": 3,
            },
            train={
                "steps": 2000,
                "batch_size": 16,
                "eval_every": 200,
                "checkpoint_every": 1000,
                "n_eval": 16,
            },
            finetune={"lr": 1e-4, "clip_norm": 1.0},
            seeds=8,
        )
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
