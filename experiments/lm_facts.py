"""Factual knowledge acquisition and forgetting during pre-training (study 2) with numeric and
entity memorisation probes (study 7): a small Llama trained from scratch (byte tokenizer) on the
books of the law (KJV), with fictional facts injected 1, 4 and 16 times, all last seen at step
200, and 8-digit numbers / entity names injected 4 times beside as many never seen.

    jaxcl run lm-facts --tiny                       # seconds; what the tests run
    jaxcl run lm-facts                              # the default size (2-core CPU: see below)
    jaxcl run lm-facts --set train.batch_size=32    # the batch-size effect
    jaxcl run lm-facts --set data.duplication=8     # the duplication effect (1/8 of the windows)
    jaxcl sweep lm-facts --grid finetune.lr=1e-3,3e-3
    jaxcl run lm-facts --set model.name=smollm2-135m --set data.seq_len=64   # an accelerator run

Expected runtime (2-core CPU): --tiny TBD; default TBD.

Measured result, default: TBD.

Writes runs/lm-facts[-tiny]/{results.json, retention.png}.
"""


def get_config(tiny: bool = False) -> dict:
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
