"""Multimodal continual instruction tuning: the small VLM (jaxcl.models.vlm: ViT patches -> MLP
projector -> Llama decoder) instruction-tuned on three image-text tasks made offline from
scikit-learn's digits (captions, yes/no attribute questions, counting and comparison over 2x2
grids; jaxcl.data.multimodal), one after another. Rows: SFT (finetune), KL to the previous task's
model (finetune+kl, LwF for an LM), ER, EWC and multi-task (joint); answer accuracy and knowledge
accuracy matrices (A[i, j]: task j after task i), ACC, BWT, forgetting, and forgetting split into
essential (knowledge) and superficial (answer form) as SEFE does.

    jaxcl run mm-cit --tiny                        # what the tests run (rows er, finetune+kl)
    jaxcl run mm-cit --seeds 8                     # the README's run
    jaxcl run mm-cit --set methods=finetune,er --set kl.beta=0.5

Expected runtime (2-core CPU): --tiny about a minute (mostly compiling); 8 seeds 66 min at load
3.5-4 with other jobs. Expected result: ER forgets far less than SFT, a third of SFT's forgetting is
superficial (README, "Vision-language model"; results/studies/mm-cit.json).

Writes runs/mm-cit[-tiny]/results.json.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "mm-cit",
        "finetune": {"lr": 3e-3},
        "er": {"lr": 3e-3, "replay_fraction": 0.5, "capacity": 512},
        "ewc": {"lr": 3e-3},
        "kl": {"beta": 1.0},
    }
    if tiny:
        cfg.update(
            data={"n_train": 64, "n_eval": 16, "seq_len": 56},
            train={"steps_per_task": 4, "batch_size": 4, "eval_every": 2},
            er={"lr": 3e-3, "replay_fraction": 0.5, "capacity": 16},
            methods=("er", "finetune+kl"),  # replay's and a consolidating method's paths
            seeds=2,
        )
    return cfg
