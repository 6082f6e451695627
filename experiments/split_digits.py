"""Class-incremental split of scikit-learn's 8x8 digits (no download at all).

    jaxcl run split-digits [--tiny] [--set key=value ...]

Methods fine-tune, ER, EWC and joint training, 5 seeds in one program per method; MLP (128,),
Adam 1e-3; the loop below. Expected runtime: a few minutes on a 2-core CPU (--tiny: seconds).
Writes runs/split-digits/{results.json, accuracy_matrix.png, stability_gap.png}.
"""

from jaxcl.studies.cl import tiny as tiny_variant


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "cl",
        "data": {"dataset": "digits", "scenario": "class-incremental", "n_tasks": 5, "max_train_per_task": 0},
        "model": {"name": "mlp", "mlp": {"hidden": (128,)}},
        "loop": {"steps_per_task": 100, "batch_size": 32, "eval_every": 5, "eval_per_task": 1000},
        "methods": ("finetune", "er", "ewc", "joint"),
        "seeds": 5,
    }
    return tiny_variant(cfg) if tiny else cfg
