"""MUSE-style unlearning (issue 21): a small Llama trained from scratch on two corpora (the KJV's
books of the law and the 2012 Democratic convention speeches) and on the documents of 32 fictional
entities; 64 consecutive windows of the KJV and 16 entities' documents are then unlearned (in one
go, at growing sizes, and as 4 sequential requests) and scored on MUSE's six criteria, each
computed inside the compiled unlearning loop.

    jaxcl run muse --tiny                    # seconds; what the tests run
    jaxcl run muse                           # the default size (2-core CPU: see below)
    jaxcl run muse --set methods=npo,simnpo --set npo.lr=3e-4

Expected runtime (2-core CPU): --tiny about 1-2 min (mostly compiling); default about 32 min
(4 seeds; README "MUSE-style six-way evaluation" has its table, results/studies/muse.json).

Writes runs/muse[-tiny]/{results.json, criteria.png}.
"""

# one unlearning lr for every method, at the scale of the scratch model's training (3e-3): the
# registry's defaults (1e-5 - 1e-4, set for pretrained models) barely move it, and at 1e-3 NPO and
# GradDiff erase the retain facts with the forget ones
LR = 3e-4


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "muse"}
    for m in ("ga", "graddiff", "npo", "simnpo", "rmu", "gu-graddiff", "undial", "wga", "satimp"):
        cfg[m] = {"lr": LR}
    cfg["gu-graddiff"]["rank"] = 4  # at most the steps of one request (5)
    if tiny:  # byte tokens, 6 seeds: large enough that the target knows its facts (the tests check it)
        cfg.update(
            model={
                "d_model": 64,
                "n_layers": 2,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 128,
                "tokenizer": "byte",
            },
            data={
                "corpora": ("bible:genesis", "convention:democrat"),
                "seq_len": 112,
                "prefix_len": 96,
                "n_forget": 4,
                "n_retain": 8,
                "n_other": 8,
                "n_holdout": 4,
                "n_facts": 4,
                "fact_repeats": 2,
                "requests": 2,
            },
            train={"epochs": 40.0, "batch_size": 8},
            unlearn={"epochs": 2.0, "batch_size": 2, "eval_every": 2, "eval_size": 4},
            scale=(1,),
            methods=("npo",),
            seeds=6,
        )
        cfg["npo"]["lr"] = 3e-3
        cfg["gu-graddiff"]["rank"] = 2
    return cfg
