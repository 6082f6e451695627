"""Junk-data decline ("LLMs Can Get Brain Rot!"): a small Llama pre-trained on bible text and
procedural tasks, then continually pre-trained on mixtures of junk text (headlines, Rotten
Tomatoes snippets) and control text (convention speeches) at matched token counts; the
dose-response of task accuracy and general-text loss over the junk ratio, and Hedges' g.

    jaxcl run lm-junk --tiny                      # seconds; what the tests run
    jaxcl run lm-junk                             # the default size (2-core CPU: see below)
    jaxcl run lm-junk --set junk.ratios=0,1 --set seeds=10

Expected runtime (2-core CPU): --tiny ~45 s (compiling); default (5 seeds) 7.8 min with one other
study on the 2 cores; 16 seeds 32.0 min with the test suite alongside: base 800 steps x S seeds,
then 5 ratios x S seeds x 300 steps in one program.

Measured, `jaxcl run lm-junk --seeds 16` (mean ± std; task accuracy: teacher-forced exact match on
64 held-out prompts of each of add, rev, sort, count; the base model had 18.5 %;
results/studies/lm-junk.json):

    <!-- results: results/studies/lm-junk.json -->
    | condition | task acc     | Δ task acc   | base-domain loss | control loss   | junk loss      |
    |-----------|--------------|--------------|------------------|----------------|----------------|
    | junk 0%   |  10.3 ±  6.2 |  -8.2 ±  6.0 |  2.120 ± 0.018   |  1.809 ± 0.020 |  2.453 ± 0.017 |
    | junk 20%  |  10.3 ±  6.2 |  -8.3 ±  6.1 |  2.082 ± 0.016   |  1.814 ± 0.020 |  2.246 ± 0.014 |
    | junk 50%  |   9.9 ±  6.0 |  -8.6 ±  6.1 |  2.072 ± 0.020   |  1.860 ± 0.019 |  2.137 ± 0.012 |
    | junk 80%  |  11.5 ±  5.3 |  -7.0 ±  5.3 |  2.083 ± 0.021   |  1.962 ± 0.020 |  2.082 ± 0.014 |
    | junk 100% |   9.0 ±  6.8 |  -9.5 ±  7.2 |  2.116 ± 0.021   |  2.263 ± 0.025 |  2.062 ± 0.012 |

Hedges' g (100 % vs 0 % junk): task accuracy 0.19, base-domain loss -0.22; paired 100 % - 0 %
task accuracy -1.3 ± 4.2 points (95 %): no dose-response at this scale (every continual
pre-training condition loses ~8 points of task accuracy). README: the reading.

--size accel: a scratch Llama of SmolLM2-135M's shape (30 layers, d 576) over bytes, bf16,
base pre-training 5000 steps of 16 x 128 bytes, then every junk ratio 2000 steps of 8, 2 seeds (a
seed and its five ratios' models on four chips: batches over two, the train states over two,
`--mesh seeds=2,data=2,model=2`). The junk phase holds the five ratios' models at once (vmapped):
unsharded, their states, gradients and updates need more than a chip's HBM even with a seed's
batch split over four chips.
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile lm-junk --size accel --target tpu-v5e-8 --mesh seeds=2,data=2,model=2

    <!-- results: results/compile/lm-junk-135m-scratch-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | base pre-training | 2221.1 | 13.6 | 57.0 | 8.64 |
    | base: one step | 5667.0 | 34.6 | 49.0 | 10.16 |
    | junk phase (every ratio) | 10356.1 | 63.2 | 208.7 | 33.59 |
    | junk: one step | 4430.9 | 27.0 | 25.5 | 9.08 |

Writes runs/lm-junk[-tiny]/{results.json, dose_response.png}.
"""

# SmolLM2-135M's dimensions (jaxcl.models.llama.smollm2_135m), trained from scratch
SMOLLM2_135M_DIMS = {"d_model": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "d_ff": 1536}


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {"study": "lm-junk", "finetune": {"lr": 1e-3}}
    # a scratch Llama of SmolLM2-135M's shape over bytes, 128-byte windows, 2 seeds x 5 ratios: a
    # seed's five models on four chips, their states split over two (--mesh seeds=2,data=2,model=2);
    # the junk phase holds every ratio's model at once (vmapped), over 16 GiB a chip unsharded
    if size == "accel":
        cfg.update(
            model={"name": "scratch", **SMOLLM2_135M_DIMS, "tokenizer": "byte", "compute_dtype": "bfloat16"},
            data={"seq_len": 128, "n_eval": 16, "max_train": 20000},
            base={"steps": 5000, "batch_size": 16, "lr": 1e-3, "task_fraction": 0.3},
            junk={"ratios": (0.0, 0.2, 0.5, 0.8, 1.0), "steps": 2000, "batch_size": 8, "eval_every": 200},
            finetune={"lr": 3e-4},
            seeds=2,
        )
    if tiny:
        cfg.update(
            data={
                "base_domains": ("zen",),
                "control": ("bible:ruth",),
                "junk": ("rotten:plot",),
                "tasks": ("add", "rev"),
                "task_lines": 100,
                "n_probe": 8,
                "seq_len": 32,
                "n_eval": 4,
                "max_train": 64,
            },
            base={"steps": 8, "batch_size": 4, "lr": 3e-3, "task_fraction": 0.5},
            junk={"ratios": (0.0, 1.0), "steps": 8, "batch_size": 4, "eval_every": 4},
            finetune={"lr": 1e-2},
            seeds=3,
        )
    return cfg
