"""Joint training: at task t, batches are drawn uniformly from the union of tasks 0..t.

The usual upper bound (the i.i.d. learner); update ``theta <- theta - lr * grad L_{0..t}(theta)``.
"""

from ..losses import classification_loss
from .base import Method, MethodSpec, optimizer, register


def build(model, hp, params_like, *, optim="adam", momentum=0.0):
    del params_like
    return Method(classification_loss(model.apply), optimizer(optim, hp["lr"], momentum), sample_seen=True)


SPEC = register(
    MethodSpec(
        "joint",
        build,
        {"lr": 0.001},
        {"optim": "adam", "momentum": 0.0},
        "joint training on all tasks seen so far (upper bound)",
    )
)
