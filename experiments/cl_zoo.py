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

Expected runtime: every registered method (28) was not run in one piece on the shared machine;
measured in parts with this config: the first 17 methods 8 min 25 s; `--set methods=er,uer,gere,
fpf,kfpf,er_refresh,derpp_refresh,kappatune,viewbatch,prd` 15 min 46 s wall at a 34 % share of
the 2 cores (5 min 21 s of CPU time; load average 5-12); `--set methods=xder,derpp` 84 s. About
25 min in total on that loaded machine (the refresh wrappers are the slowest, ~80 s per benchmark
loaded); from the CPU times, about 15 min on the 2 cores alone (not measured in one piece).
Measured result (README, method zoo; earlier commits' runs, not rerun, so not from a committed
results file): FMNIST class-IL ACC X-DER 78.4, joint 78.1, GEM 77.3,
GDumb 77.2, FPF 76.7, ER-ACE 76.6, UER 75.8, DER++ 75.8, ER 74.0, iCaRL 72.9, fine-tune 19.9;
task-IL 98.8 (X-DER, BiC) to 83.7 (LwF). --tiny: DER++ and iCaRL on two benchmarks, 2 seeds, well
under a minute.
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
