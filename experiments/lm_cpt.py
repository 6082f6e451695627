"""Continual pre-training of a small Llama over four text domains (bible:law, tofu,
convention:democrat, headlines): the held-out loss matrix, forgetting, the effect of replay, of
re-warming the learning rate at each domain, and of model size.

    jaxcl run lm-cpt --tiny                        # seconds; what the tests run
    jaxcl run lm-cpt                               # the default size (2-core CPU: see below)
    jaxcl sweep lm-cpt --grid er.replay_fraction=0,0.1,0.25,0.5 --set model.name=xs   # one program
    jaxcl run lm-cpt --set model.name=smollm2-135m --set model.tokenizer=smollm2 --set data.seq_len=256  # GPU
    jaxcl run lm-cpt --seeds 16 --set rows=finetune@similar,finetune@dissimilar,standalone  # orders (18.6 min)
    jaxcl run lm-cpt --set methods=finetune,kappatune,gere --set rows=kappatune,gere  # KappaTune, GeRe
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

Measured result, default, at an earlier commit and not rerun since, so not from a committed
results file (xs: 0.12M parameters, 3 seeds, held-out NLL per token in nats, mean):

    <!-- results: none: not rerun for results/studies (about 50 min on the shared CPU); an earlier commit's run -->
    | row | final loss | BWT | forgetting | worst loss |
    |---|---|---|---|---|
    | finetune | 2.396 | -0.451 | 0.451 | 2.523 |
    | finetune+rewarm | 2.421 | -0.284 | 0.339 | 2.580 |
    | er | 2.164 | -0.159 | 0.178 | 2.226 |
    | er+rewarm | 2.218 | -0.038 | 0.130 | 2.394 |
    | joint | 2.116 | 0.153 | -0.046 | 2.190 |

--size accel: SmolLM2-135M (pretrained, its tokenizer, bf16), the four domains in 256-token
windows, 1000 steps of 16 per domain, ER with 4000 windows, 8 seeds (one per chip). `init` holds
every seed's state on each chip (its output, broadcast from the shared pretrained parameters, is
not sharded over the seeds yet): the largest row, though the training programs need less.
Compiled for a TPU v5e-8 without one, per chip (the compiler's figures, not a run; a "one step"
row's roofline bound is per step):

    jaxcl compile lm-cpt --size accel --target tpu-v5e-8 --set rows=er --set methods=er

    <!-- results: results/compile/lm-cpt-smollm2-135m-tpu-v5e-8.json cols=total_mib,hbm_frac,gflop,roofline_ms -->
    | program | MiB per chip | % of its 16 GiB | GFLOP per call | roofline bound (ms) |
    |---|---|---|---|---|
    | smollm2-135m: held-out losses | 3871.7 | 23.6 | 1052.7 | 14.10 |
    | er: init | 13149.7 | 80.3 | 0.0 | 17.78 |
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
