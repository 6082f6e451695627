"""Domain-sequence rehearsal for the VLM (the continual medical foundation model paper's protocol
on the offline domains): scikit-learn's digits -> MNIST -> Fashion-MNIST, each a domain of
captions and yes/no attribute questions about its pictures (all resampled to 8 x 8, shown 16 x
16); MNIST's attribute questions are never trained (a cross-task test set: the questions are
learnt on scikit-learn's digits, the pictures only captioned). Rows: a stand-alone model per
domain (the paper's domain-specialised learning), sequential fine-tuning, sequential with
reservoir rehearsal (ER), joint (every domain seen so far); ACC, plasticity, forgetting, cross-
domain accuracy (domains a model has not trained on), cross-task accuracy.

    jaxcl run mm-domains --tiny                    # what the tests run
    jaxcl run mm-domains                           # the README's run (8 seeds)
    jaxcl run mm-domains --set methods=finetune,er,derpp --set standalone=false
    jaxcl run mm-domains --set data.held_out=attributes@fashion-mnist

Expected runtime (2-core CPU): --tiny about a minute (mostly compiling); the default run about
an hour (55 min at load 1.4 -> 3.4). Expected result: rehearsal keeps 29 points more of the
domains than fine-tuning and the cross-task answers fine-tuning loses (README, "Domain-sequence
rehearsal"; results/studies/mm-domains.json). Writes runs/mm-domains[-tiny]/results.json,
accuracy_matrix.png, domains.png.
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "mm-domains",
        "finetune": {"lr": 3e-3},
        "er": {"lr": 3e-3, "replay_fraction": 0.5, "capacity": 512},
        "der": {"lr": 3e-3, "capacity": 512, "memory_batch": 32},
        "derpp": {"lr": 3e-3, "capacity": 512, "memory_batch": 32},
        "ewc": {"lr": 3e-3},
        "joint": {"lr": 3e-3},
    }
    if tiny:
        cfg.update(
            data={"n_train": 48, "n_eval": 12, "seq_len": 56},
            train={"steps_per_task": 4, "batch_size": 4, "eval_every": 2},
            er={"lr": 3e-3, "replay_fraction": 0.5, "capacity": 16},
            methods=("er",),
            seeds=2,
        )
    return cfg
