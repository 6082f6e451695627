"""Joint training: at task t, batches are drawn uniformly from the union of tasks 0..t.

The usual upper bound (the i.i.d. learner); update ``theta <- theta - lr * grad L_{0..t}(theta)``.
"""

from ..losses import supervised_loss
from .base import LR, OPTIMIZER_OPTIONS, OPTIMIZERS, Method, MethodSpec, optimizer_from, register


def build(model, hp, params_like, **options):
    del params_like
    return Method(supervised_loss(model), optimizer_from(options, hp["lr"]), sample_seen=True)


SPEC = register(
    MethodSpec(
        "joint",
        build,
        {"lr": LR(1e-3)},
        dict(OPTIMIZER_OPTIONS),
        "joint training on all tasks seen so far (upper bound)",
        choices={"optim": OPTIMIZERS},
    )
)
