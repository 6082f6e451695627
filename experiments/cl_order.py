"""Task-order sensitivity of class-incremental split digits (scikit-learn's 8x8 digits, offline).

    jaxcl run cl-order [--tiny] [--set orders=16 --set seeds=8 ...]

Fine-tuning and ER, 8 task orders x 4 seeds in one program per method; MLP (128,), Adam 1e-3.
Prints ACC, forgetting and the spread of ACC over task orders; writes runs/cl-order/{results.json,
orders.png}. Expected runtime: about a minute on a 2-core CPU (--tiny: seconds).
"""


def get_config(tiny: bool = False) -> dict:
    cfg = {"study": "cl-order"}
    if tiny:
        cfg.update(orders=3, seeds=2, loop={"steps_per_task": 20, "eval_every": 10, "eval_per_task": 100})
    return cfg
