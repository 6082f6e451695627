"""Fine-tuning: plain SGD on each task in turn, the lower bound of every CL study.

Update: ``theta <- theta - lr * grad L_t(theta)`` on batches of the current task only.
"""

from ..losses import classification_loss
from .base import Method, MethodSpec, optimizer, register


def build(model, hp, params_like, *, optim="adam", momentum=0.0):
    del params_like
    return Method(classification_loss(model.apply), optimizer(optim, hp["lr"], momentum))


SPEC = register(
    MethodSpec(
        "finetune",
        build,
        {"lr": 0.001},
        {"optim": "adam", "momentum": 0.0},
        "fine-tune on each task in turn (lower bound)",
    )
)
