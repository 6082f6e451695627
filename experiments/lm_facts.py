"""Factual knowledge acquisition and forgetting during pre-training (study 2) with numeric and
entity memorisation probes (study 7): a small Llama trained from scratch (SmolLM2's tokenizer
restricted to the run's ids) on the books of the law (KJV), with fictional facts injected 1, 4 and
16 times, last seen at step 217-219 (inject.last_step: 219), and 8-digit numbers / entity names
injected 4 times beside as many never seen.

    jaxcl run lm-facts --tiny                       # seconds; what the tests run
    jaxcl run lm-facts                              # the default size (2-core CPU: see below)
    jaxcl run lm-facts --set train.batch_size=32    # the batch-size effect
    jaxcl run lm-facts --set train.batch_size=32 --set train.steps=200 --set train.eval_every=10 --set inject.last_step=109 --set inject.spacing=4   # ... at equal tokens
    jaxcl run lm-facts --set data.duplication=8     # the duplication effect (1/8 of the windows)
    jaxcl sweep lm-facts --grid finetune.lr=1e-3,3e-3
    jaxcl run lm-facts --set model.name=smollm2-135m --set data.seq_len=64   # an accelerator run
    jaxcl run lm-facts --seeds 16 --set model.compute_dtype=bfloat16    # bf16 (README: "Mixed precision")

Expected runtime (2-core CPU): --tiny 14 s (mostly compiling); default 4 min on an idle machine,
9-13 min with other jobs running, 3.6 min at load ~3.8 (3 seeds vmapped, 400 steps of 16 x 64 tokens, 20 in-loop
evaluations of 768 span probes).

Measured result, default (results/studies/lm-facts.json, commit 02ef018, 215 s at load ~3.8; mean ± std over 3 seeds; Δlogp = gain of log p(true value) - log p(a never-seen value)
per target token, paired, from before the first exposure; retained = end / peak; α, R²: power law
of the gain from its peak on, per seed):

    <!-- results: results/studies/lm-facts.json cols=gain_peak,gain_final,retained,alpha,r2 -->
    | condition | Δlogp peak | Δlogp end (step 400) | retained | α | R² |
    |---|---|---|---|---|---|
    | facts x1 / memorization | 0.84 ± 0.21 | 0.60 ± 0.28 | 0.68 ± 0.25 | 0.22 ± 0.10 | 0.52 ± 0.11 |
    | facts x4 / memorization | 1.50 ± 0.12 | 1.22 ± 0.11 | 0.81 ± 0.03 | not fitted in every seed | not fitted in every seed |
    | facts x16 / memorization | 1.59 ± 0.64 | 0.97 ± 0.44 | 0.59 ± 0.10 | 0.10 ± 0.02 | 0.53 ± 0.26 |
    | facts never seen / memorization | 0.03 ± 0.03 | 0.01 ± 0.04 | - | - | - |
    | numbers seen | 1.24 ± 0.16 | 1.19 ± 0.13 | 0.96 ± 0.03 | not fitted in every seed | not fitted in every seed |
    | numbers unseen | 0.03 ± 0.01 | 0.02 ± 0.01 | - | - | - |
    | entities seen | 2.66 ± 0.23 | 2.07 ± 0.29 | 0.77 ± 0.06 | 0.23 ± 0.08 | 0.70 ± 0.21 |
    | entities unseen | 0.03 ± 0.02 | 0.01 ± 0.03 | - | - | - |

Exact match of the spans: 0-6 % everywhere (seen or not). README: "Language-model memory
studies", with the papers' findings beside these numbers.

--size accel: SmolLM2-135M (pretrained, its tokenizer, bf16) on the law in 128-token windows,
2000 steps of 32 with the facts injected up to step 1019, 8 seeds (one per chip).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile lm-facts --size accel --target tpu-v5e-8

    <!-- results: results/compile/lm-facts-smollm2-135m-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | init | 2099.3 | 12.8 | 0.0 | 3.64 |
    | train call (10 x 50 steps) | 10944.7 | 66.8 | 2373.3 | 67.51 |
    | one step | 10325.3 | 63.0 | 785.2 | 21.30 |

Writes runs/lm-facts[-tiny]/{results.json, retention.png}.
"""


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    if size == "accel":  # SmolLM2-135M (pretrained), 32 x 128 tokens a step, 8 seeds (one per v5e chip)
        cfg = get_config()
        cfg.update(
            model={"name": "smollm2-135m", "tokenizer": "smollm2", "compute_dtype": "bfloat16"},
            data={"domains": ("bible:law",), "seq_len": 128},
            train={"steps": 2000, "batch_size": 32, "eval_every": 50, "checkpoint_every": 500},
            inject={"last_step": 1019, "spacing": 8, "per_step": 8},
            finetune={"lr": 1e-4, "clip_norm": 1.0},
            seeds=8,
        )
        return cfg
    cfg = {
        "study": "lm-memory",
        "model": {"tokenizer": "smollm2"},
        "data": {"domains": ("bible:law",), "seq_len": 64},
        "train": {"steps": 400, "batch_size": 16, "eval_every": 20, "checkpoint_every": 100},
        "inject": {"last_step": 219, "spacing": 8, "per_step": 8},
        "finetune": {"lr": 3e-3, "clip_norm": 1.0},
        "facts": {"per_condition": 8, "exposures": (1, 4, 16)},
        "numeric": {"per_kind": 8, "exposures": 4, "digits": 8},
        "fewshot": {"per_condition": 0},
    }
    if tiny:
        cfg.update(
            model={
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
                "tokenizer": "byte",
            },
            data={"domains": ("bible:ruth",), "seq_len": 128, "n_eval": 2},
            train={"steps": 12, "batch_size": 4, "eval_every": 2, "checkpoint_every": 6},
            inject={"last_step": 5, "spacing": 2, "per_step": 2},
            facts={"per_condition": 1, "exposures": (1, 2)},
            numeric={"per_kind": 1, "exposures": 2, "digits": 4},
            seeds=2,
        )
    return cfg
