"""Knowledge recovery after unlearning (RESTOR, study 6 of issue 12): a small Llama trained from
scratch on the books of the law (KJV) with 16 fictional facts, corrupted by fine-tuning on wrong
versions of them, then each unlearning method (GA, GradDiff, NPO, each with and without GU)
unlearns the wrong documents; does the model come back to the original facts?

    jaxcl run restor --tiny                  # seconds; what the tests run
    jaxcl run restor                         # the default size (2-core CPU: see below)
    jaxcl run restor --set methods=npo,gu-npo --set npo.lr=1e-4

Expected runtime (2-core CPU): --tiny about 25 s (one method, mostly compiling); default 9 min
with other jobs running (3 seeds vmapped; compiling the 8 phase programs is most of it).

Measured result, default (results/studies/restor.json, commit 02ef018, 208 s at load ~4; the
earlier commit's table reproduced to every digit; 3 seeds; pref = log p(true) - log p(wrong) per
target token on the memorisation probes; recovery = (pref - corrupted) / (clean - corrupted)):

    <!-- results: results/studies/restor.json cols=pref,recovery,stream_nll -->
    | model | pref | recovery | held-out stream NLL |
    |---|---|---|---|
    | clean | 1.87 ± 0.32 | 1 | 5.63 |
    | corrupted | -1.13 ± 0.12 | 0 | 5.42 |
    | ga | -0.33 ± 0.29 | 0.28 | 15.11 |
    | graddiff | -0.32 ± 0.25 | 0.28 | 6.14 |
    | npo | -0.28 ± 0.51 | 0.29 | 7.64 |
    | gu-ga | -0.29 ± 0.34 | 0.30 | 7.48 |
    | gu-graddiff | -0.30 ± 0.28 | 0.29 | 6.03 |
    | gu-npo | -0.27 ± 0.51 | 0.29 | 7.41 |

Every method forgets part of the corruption, none restores the original facts (pref stays < 0).
At the registry's default learning rates (2e-5 - 1e-4) recovery is 1-10 %. README: "Language-model
memory studies".

--size accel: a scratch Llama of SmolLM2-135M's shape (30 layers, d 576; SmolLM2's tokenizer
restricted to the run's ids), bf16, 128-token windows, clean and corrupting training 4 epochs of
32, unlearning 8 epochs of 8 at lr 1e-4, 8 seeds (one per chip).
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile restor --size accel --target tpu-v5e-8 --set methods=npo

    <!-- results: results/compile/restor-135m-scratch-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | scores | 814.1 | 5.0 | 59.8 | 4.89 |
    | clean: the phase (220 steps) | 8259.9 | 50.4 | 266.8 | 18.97 |
    | clean: one step | 8304.4 | 50.7 | 159.8 | 13.08 |
    | corrupted: the phase (96 steps) | 8258.8 | 50.4 | 266.8 | 18.97 |
    | corrupted: one step | 8303.8 | 50.7 | 159.8 | 13.07 |
    | npo: the phase (16 steps) | 7587.1 | 46.3 | 94.4 | 21.06 |
    | npo: one step | 8149.3 | 49.7 | 94.2 | 23.22 |

Writes runs/restor[-tiny]/{results.json, recovery.png}.
"""

# SmolLM2-135M's dimensions (jaxcl.models.llama.smollm2_135m), trained from scratch
SMOLLM2_135M_DIMS = {"d_model": 576, "n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "d_ff": 1536}


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {"study": "restor"}
    if size == "accel":  # a scratch Llama of SmolLM2-135M's shape (SmolLM2's tokenizer), 8 seeds
        cfg.update(
            model={
                "name": "scratch",
                **SMOLLM2_135M_DIMS,
                "tokenizer": "smollm2",
                "compute_dtype": "bfloat16",
            },
            data={"domains": ("bible:law",), "seq_len": 128, "n_facts": 16, "n_windows": 1600, "n_eval": 8},
            train={
                "epochs": 4.0,
                "batch_size": 32,
                "lr": 1e-3,
                "weight_decay": 0.0,
                "clip_norm": 1.0,
                "eval_every": 0,
            },
            unlearn={"epochs": 8.0, "batch_size": 8, "eval_every": 0, "eval_size": 64},
            seeds=8,
        )
        for m in ("ga", "graddiff", "npo", "gu-ga", "gu-graddiff", "gu-npo"):
            cfg[m] = {"lr": 1e-4}
        return cfg
    # one unlearning lr for every method, at the scale of the scratch model's training (3e-3); the
    # registry's defaults (2e-5 - 1e-4, set for TOFU's pretrained models) barely move it
    for m in ("ga", "graddiff", "npo", "gu-ga", "gu-graddiff", "gu-npo"):
        cfg[m] = {"lr": 1e-3}
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
            data={"domains": ("bible:ruth",), "seq_len": 128, "n_facts": 2, "n_windows": 24, "n_eval": 2},
            clean={"repeats": 4},
            corrupt={"repeats": 4, "n_windows": 8},
            train={"epochs": 1.0, "batch_size": 8},
            unlearn={"epochs": 2.0, "batch_size": 2, "eval_size": 4},
            methods=("gu-npo",),
            seeds=2,
        )
        cfg["gu-npo"]["rank"] = 2
    return cfg
