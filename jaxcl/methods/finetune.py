"""Fine-tuning: plain training on the data a problem gives, the lower bound of every CL study
and the weakest unlearning baseline (continue training on the retain set only, hoping that
catastrophic forgetting removes the forget set; e.g. Golatkar et al., 2020).

Update: ``theta <- theta - lr * grad L(theta)`` on batches of the current task (continual
learning) or of the retain set (unlearning); the optimizer is Adam by default.
"""

from ..losses import supervised_loss
from .base import LR, OPTIMIZER_OPTIONS, OPTIMIZERS, Method, MethodSpec, optimizer_from, register


def build(model, hp, params_like, **options):
    del params_like
    return Method(supervised_loss(model), optimizer_from(options, hp["lr"]))


SPEC = register(
    MethodSpec(
        "finetune",
        build,
        {"lr": LR(1e-3)},
        dict(OPTIMIZER_OPTIONS),
        "fine-tune on the current task / the retain set",
        kind="any",
        choices={"optim": OPTIMIZERS},
    )
)
