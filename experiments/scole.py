"""SCoLe: a long stream in which classes re-occur (Lesort et al., "Challenging Common Assumptions
about Catastrophic Forgetting", CoLLAs 2023), on Fashion-MNIST.

    jaxcl run scole                                    # this config
    jaxcl run scole --tiny                             # seconds; what the tests run
    jaxcl run scole --set data.n_tasks=100 --set data.classes_per_task=3

50 tasks, each of 2 classes drawn at random from the 10 (every class re-occurs about 10 times),
1000 training examples per task, 20 steps of batch 64 per task (a sparse, short visit), one shared
head; plain SGD fine-tuning (the paper's learner), ER (Adam, 500-example buffer) and joint training
(every task seen so far, SGD) as references; MLP 784-256-256-10, 3 seeds in one program per method.
Task t's test set holds its classes' test examples, so the mean of row i of the accuracy matrix
is the accuracy on all classes (weighted by how often they occur) after task i.

Knowledge accumulation, the paper's finding: despite catastrophic forgetting within each visit,
the accuracy on all classes grows along the stream when classes re-occur. Read it from
``results.json``: ``rows.<method>.R_mean`` (mean over j of row i, for i = 0..49).
Expected runtime: about 1.5 minutes on a 2-core CPU (--tiny: ~15 s).
Measured (README, SCoLe): see the README's table.
"""

from jaxcl.studies.cl import tiny as tiny_variant


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "cl",
        "data": {
            "dataset": "fashion-mnist",
            "scenario": "scole",
            "n_tasks": 50,
            "classes_per_task": 2,
            "max_train_per_task": 1000,
            "max_test_per_task": 200,
        },
        "model": {"name": "mlp", "mlp": {"hidden": (256, 256)}},
        "loop": {
            "steps_per_task": 20,
            "batch_size": 64,
            "eval_every": 20,
            "eval_per_task": 100,
            "checkpoint": False,
        },
        "methods": ("finetune", "er", "joint"),
        "finetune": {"optim": "sgd", "lr": 0.05},
        "joint": {"optim": "sgd", "lr": 0.05},
        "er": {"capacity": 500},
        "seeds": 3,
    }
    if tiny:
        cfg = tiny_variant(cfg)
        cfg["data"] = {**cfg["data"], "n_tasks": 12, "max_train_per_task": 300, "max_test_per_task": 50}
        cfg["loop"] = {**cfg["loop"], "steps_per_task": 10, "eval_every": 10, "eval_per_task": 50}
        cfg["methods"] = ("finetune",)
    return cfg
