"""Domain-incremental permuted Fashion-MNIST, 5 tasks.

    jaxcl run permuted-fashion-mnist [--tiny] [--set key=value ...]

Methods fine-tune, ER, EWC and joint training, 5 seeds in one program per method; MLP (256, 256),
Adam 1e-3; the loop below. Expected runtime: a few minutes on a 2-core CPU (--tiny: seconds).
Writes runs/permuted-fashion-mnist/{results.json, accuracy_matrix.png, stability_gap.png}.
"""

from jaxcl.studies.cl import tiny as tiny_variant


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "cl",
        "data": {
            "dataset": "fashion-mnist",
            "scenario": "permuted",
            "n_tasks": 5,
            "max_train_per_task": 10000,
        },
        "model": {"name": "mlp", "mlp": {"hidden": (256, 256)}},
        "loop": {"steps_per_task": 200, "batch_size": 64, "eval_every": 2, "eval_per_task": 1000},
        "methods": ("finetune", "er", "ewc", "joint"),
        "seeds": 5,
    }
    return tiny_variant(cfg) if tiny else cfg
