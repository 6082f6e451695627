"""Continual post-training: SFT vs RFT (GRPO with and without its KL penalty, RIF-RFT) vs
multi-task SFT on a sequence of verifiable tasks, after a base SFT of a small Llama trained from
scratch (byte tokenizer) on the KJV bible and examples of every task.

    jaxcl run rft-continual --tiny                      # seconds; what the tests run
    jaxcl run rft-continual                             # the default size (2-core CPU: see below)
    jaxcl run rft-continual --set rows=sft,rft --set grpo.beta=0.1 --set seeds=1
    jaxcl run rft-continual --set model.name=smollm2-135m --set base.steps=0   # a GPU run

Expected runtime: --tiny: see tests/test_rft_study.py; default: measured below.

Measured result: see the README section "Reinforcement fine-tuning and forgetting".

Writes runs/rft-continual[-tiny]/{results.json, accuracy_matrix.png, accuracy_over_training.png}.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "rft",
        "finetune": {"lr": 1e-4},
        "grpo": {"lr": 1e-4, "beta": 0.1, "group_size": 8, "max_new_tokens": 8, "rif_pool": 2},
    }
    if tiny:
        cfg.update(
            model={
                "name": "scratch",
                "d_model": 32,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ff": 64,
            },
            data={
                "tasks": ("add", "rev"),
                "base_tasks": ("sub",),
                "digits": 1,
                "n_train": 64,
                "n_eval": 8,
                "corpus": "zen",
                "corpus_eval": 8,
                "prompt_len": 12,
                "answer_len": 4,
            },
            base={"steps": 20, "batch_size": 16, "lr": 3e-3, "corpus_fraction": 0.5, "eval_every": 10},
            post={"steps_per_task": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
            rows=("sft", "rft", "rft-nokl", "mtl-sft"),
            seeds=2,
        )
        cfg["grpo"].update(group_size=4, max_new_tokens=4)
    return cfg
