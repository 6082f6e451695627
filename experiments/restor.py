"""Knowledge recovery after unlearning (RESTOR, study 6 of issue 12): a small Llama trained from
scratch on the books of the law (KJV) with 16 fictional facts, corrupted by fine-tuning on wrong
versions of them, then each unlearning method (GA, GradDiff, NPO, each with and without GU)
unlearns the wrong documents; does the model come back to the original facts?

    jaxcl run restor --tiny                  # seconds; what the tests run
    jaxcl run restor                         # the default size (2-core CPU: see below)
    jaxcl run restor --set methods=npo,gu-npo --set npo.lr=1e-4

Expected runtime (2-core CPU): --tiny TBD; default TBD.

Measured result, default: TBD.

Writes runs/restor[-tiny]/{results.json, recovery.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "restor"}
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
