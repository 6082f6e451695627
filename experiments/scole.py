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
Expected runtime: about 1.5 minutes on a 2-core CPU (--tiny: ~15 s); 121 s at load ~3.5.
Measured (results/studies/scole.json, commit 02ef018; 3 seeds; accuracy on all classes = the mean
of an accuracy-matrix row, averaged over 5 consecutive tasks, mean over seeds; forgetting and ACC
mean ± std, in %):

    <!-- results: results/studies/scole.json cols=info.R_mean_row_means[0:5]*100,info.R_mean_row_means[45:50]*100,forgetting,acc -->
    | method | all classes, tasks 1-5 | all classes, tasks 46-50 | Forgetting | ACC |
    |---|---|---|---|---|
    | finetune | 20.4 | 39.7 | 53.4 ± 1.0 | 42.9 ± 0.9 |
    | er | 32.3 | 77.6 | 12.7 ± 0.7 | 80.0 ± 0.7 |
    | joint | 34.7 | 82.7 | 8.4 ± 0.4 | 82.7 ± 0.1 |

Fine-tuning's accuracy on all classes roughly doubles along the stream while it forgets about
half of each visit: knowledge accumulates, as the paper reports.
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
