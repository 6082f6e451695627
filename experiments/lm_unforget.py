"""Random-label forgetting on a language model ("Unforgettable Generalization in Language
Models", Zhang et al. 2024): a small Llama trained from scratch on two procedural text tasks
(reverse a number; sort its digits), then the first 256 of the reversal task's 2048 training rows
fine-tuned on random labels (another forget row's answer). Does the forgetting spread to the
retained and held-out rows of the task, to the other task, and does a linear probe on the hidden
states still decode the true answer's first digit?

    jaxcl run lm-unforget --tiny                # seconds; what the tests run
    jaxcl run lm-unforget --seeds 8             # the committed result
    jaxcl run lm-unforget --seeds 8 --set attack.trigger.steps=200 --set data.task=lookup ...
        # the trigger-search audit (Finding Dori); the full command: results/studies/lm-unforget-trigger.json

Expected runtime (2-core CPU): --tiny ~40 s (mostly compiling); 8 seeds 2.1 min at load 2-4 (3.6 min at load 5-6).
README: "Language models and TOFU" (results/studies/lm-unforget.json).

Writes runs/lm-unforget[-tiny]/results.json.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "lm-unforget"}
    if tiny:
        cfg.update(
            model={
                "name": "scratch",
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 32,
            },
            data={
                "task": "count",
                "digits": 3,
                "other": "rev",
                "other_digits": 2,
                "n_train": 32,
                "n_test": 8,
                "n_forget": 8,
            },
            train={
                "epochs": 2.0,
                "batch_size": 8,
                "lr": 3e-3,
                "weight_decay": 0.0,
                "clip_norm": 1.0,
                "eval_every": 0,
            },
            unlearn={"epochs": 1.0, "batch_size": 4, "eval_every": 0, "eval_size": 4},
            probe={"steps": 10, "lr": 0.05},
            seeds=2,
        )
    return cfg
