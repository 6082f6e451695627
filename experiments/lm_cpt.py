"""Continual pre-training of a small Llama over four text domains (bible:law, tofu,
convention:democrat, headlines): the held-out loss matrix, forgetting, the effect of replay, of
re-warming the learning rate at each domain, and of model size.

    jaxcl run lm-cpt --tiny                        # seconds; what the tests run
    jaxcl run lm-cpt                               # the default size (2-core CPU: see below)
    jaxcl sweep lm-cpt --grid er.replay_fraction=0,0.1,0.25,0.5 --set model.name=xs   # one program
    jaxcl run lm-cpt --set model.name=smollm2-135m --set model.tokenizer=smollm2 --set data.seq_len=256  # GPU
    jaxcl run lm-cpt --seeds 16 --set rows=finetune@similar,finetune@dissimilar,standalone  # orders (18.6 min)
    jaxcl run lm-cpt --set methods=finetune,kappatune,gere --set rows=kappatune,gere  # KappaTune, GeRe (README: 16 seeds)
    jaxcl run lm-cpt --seeds 16 --set rows=pretrain@random,pretrain@delt,pretrain@delt-select  # DELT (17 min)

Rows (Yildiz et al. 2024): `standalone` trains on each domain alone from the same start;
`<row>@similar` / `<row>@dissimilar` take the domains in a greedy chain of nearest / farthest
unigram Jensen-Shannon divergence from the first (the default order is the similar one); column
`vs stand-alone` is the continual row's gain over it on each new domain. README: 16-seed numbers
(results/studies/lm-cpt-orders.json).
Rows `pretrain@<order>` (DELT, Dai et al. 2025) pre-train once on one pool of windows of all the
domains, read in a random order, DELT's LQS folding order, or its top-LQS half (`delt-select`);
README: results/studies/lm-cpt-delt.json.

Expected runtime (2-core CPU): --tiny ~30 s (mostly compiling); default 13.8 min with the machine
loaded (load 5-10; about 2.5 min per row).

Measured (xs: 0.12M parameters, 16 seeds, with `--set methods=finetune,er,kappatune,gere --set
rows=finetune,finetune+rewarm,er,er+rewarm,joint,kappatune,gere`; 52.8 min with one other study on
the 2 cores; held-out NLL per token in nats, mean ± std; results/studies/lm-cpt.json):

    <!-- results: results/studies/lm-cpt.json -->
    | row             | final loss     | BWT            | forgetting     | worst loss     |
    |-----------------|----------------|----------------|----------------|----------------|
    | finetune        |  2.383 ± 0.040 | -0.425 ± 0.054 |  0.430 ± 0.039 |  2.505 ± 0.046 |
    | finetune+rewarm |  2.417 ± 0.029 | -0.279 ± 0.052 |  0.336 ± 0.034 |  2.571 ± 0.036 |
    | er              |  2.177 ± 0.039 | -0.132 ± 0.040 |  0.159 ± 0.030 |  2.243 ± 0.049 |
    | er+rewarm       |  2.231 ± 0.052 | -0.012 ± 0.053 |  0.105 ± 0.028 |  2.412 ± 0.075 |
    | joint           |  2.082 ± 0.049 |  0.158 ± 0.030 | -0.043 ± 0.024 |  2.152 ± 0.059 |
    | kappatune       |  2.626 ± 0.020 | -0.177 ± 0.013 |  0.179 ± 0.014 |  2.603 ± 0.022 |
    | gere            |  2.689 ± 0.013 | -0.022 ± 0.007 |  0.035 ± 0.006 |  2.643 ± 0.017 |

--size accel: SmolLM2-135M (pretrained, its tokenizer, bf16), the four domains in 256-token
windows, 1000 steps of 16 per domain, ER with 4000 windows, 8 seeds (one per chip). `init` puts
each seed's state on its own chip (``jit_seeds(state=True)``: its output, a broadcast of the
shared pretrained parameters, came out with every seed's state on every chip before). Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile lm-cpt --size accel --target tpu-v5e-8 --set rows=er --set methods=er

    <!-- results: results/compile/lm-cpt-smollm2-135m-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | smollm2-135m: held-out losses | 3871.7 | 23.6 | 1052.7 | 14.10 |
    | er: init | 2104.3 | 12.8 | 0.0 | 3.64 |
    | er: a domain | 10257.6 | 62.6 | 1843.9 | 32.22 |
    | er: one step | 11216.3 | 68.5 | 791.1 | 20.57 |

README: "Language-model continual pre-training", with the papers' findings beside these numbers.

Writes runs/lm-cpt[-tiny]/{results.json, loss_matrix.png, loss_over_training.png}.
"""


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    cfg = {
        "study": "lm",
        "finetune": {"lr": 3e-3},
        "er": {"lr": 3e-3, "replay_fraction": 0.25, "capacity": 2000},
    }
    if size == "accel":  # SmolLM2-135M (pretrained), 16 x 256 tokens a step, 8 seeds (one per v5e chip)
        cfg.update(
            model={"name": ("smollm2-135m",), "tokenizer": "smollm2", "compute_dtype": "bfloat16"},
            data={"seq_len": 256, "n_eval": 64, "max_train": 4000},
            train={"steps_per_domain": 1000, "batch_size": 16, "eval_every": 100, "consolidate_samples": 256},
            finetune={"lr": 1e-4},
            er={"lr": 1e-4, "replay_fraction": 0.25, "capacity": 4000},
            seeds=8,
        )
    if tiny:
        cfg.update(
            model={"name": ("xs",)},
            data={"domains": ("zen", "bible:ruth"), "seq_len": 16, "n_eval": 4, "max_train": 64},
            train={"steps_per_domain": 4, "batch_size": 4, "eval_every": 2, "consolidate_samples": 4},
            rows=("finetune+rewarm", "er+rewarm", "joint"),
            er={"lr": 3e-3, "replay_fraction": 0.25, "capacity": 32},
            seeds=2,
        )
    return cfg
