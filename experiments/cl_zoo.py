"""The method zoo: every registered continual-learning method on Split-Fashion-MNIST
(class-incremental and task-incremental, 5 tasks x 2 classes) and Split-MNIST-1D
(class-incremental, 5 tasks x 2 classes), the same buffer (500 examples) for every replay method,
5 seeds batched in one program per method and benchmark.

    jaxcl run cl-zoo                                   # this config
    jaxcl run cl-zoo --tiny                            # seconds; what the tests run
    jaxcl run cl-zoo --set methods=er,derpp,er_ace --set benchmarks=fmnist-class-il --set buffer=200

MLP (100, 100), Adam 1e-3 (every method's default), batch 32, 100 steps per task, continual
evaluation every 10 steps on 200 test examples per task; GEM's constraint set sized to the 5 tasks.
Table: ACC, BWT, FWT, forgetting, min-ACC, WC-ACC, WF, rank by ACC within each benchmark and
the per-method wall time (compilation included); mean rank over benchmarks; ``zoo.png``.

Expected runtime: all 28 registered methods in one run, 16 min 28 s on the 2-core CPU shared with
one other study (load 0.7 -> 3.4), compilation included; the refresh wrappers are the slowest.
Measured result (README, method zoo; results/studies/cl-zoo.json): FMNIST class-IL ACC X-DER 78.3,
joint 78.1, GEM 77.3, GDumb 77.2, FPF 76.7, ER-ACE 76.6, UER 75.8, DER++ 75.7, ER 74.0, iCaRL 73.0,
fine-tune 19.9; task-IL 98.8 (X-DER, BiC) to 83.6 (LwF). --tiny: DER++ and iCaRL on two
benchmarks, 2 seeds, well under a minute.
Writes runs/cl-zoo/{results.json, zoo.png, <benchmark>/...}.
"""

from jaxcl.studies.cl import tiny as tiny_variant


def get_config(tiny: bool = False) -> dict:
    cfg = {
        "study": "cl-zoo",
        "benchmarks": ("fmnist-class-il", "fmnist-task-il", "mnist1d-class-il"),
        "buffer": 500,
        "data": {"max_test_per_task": 1000},
        "model": {"name": "mlp", "mlp": {"hidden": (100, 100)}},
        "loop": {
            "steps_per_task": 100,
            "batch_size": 32,
            "eval_every": 10,
            "eval_per_task": 200,
            "consolidate_samples": 128,
            "checkpoint": False,
        },
        "gem": {"max_tasks": 5},
        "seeds": 5,
    }
    if tiny:
        cfg = tiny_variant(cfg)
        cfg["methods"] = ("derpp", "icarl")
        cfg["benchmarks"] = ("fmnist-class-il", "mnist1d-class-il")
        cfg["buffer"] = 100
        cfg["loop"] = {**cfg["loop"], "steps_per_task": 20, "eval_every": 10, "checkpoint": False}
    return cfg
