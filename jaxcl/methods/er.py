"""Experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019).

A reservoir buffer of ``capacity`` examples lives on the device; every batch has a fraction
``replay_fraction`` of its rows replaced by buffer samples, then
``theta <- theta - lr * grad L(batch_mixed)``. See :mod:`jaxcl.data.replay`.
"""

from ..data.replay import reservoir
from ..losses import supervised_loss
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Hparam,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    return Method(
        supervised_loss(model),
        optimizer_from(opt, hp["lr"]),
        data=reservoir(options["capacity"], hp["replay_fraction"], fields=("x", "y", "t", "mask", "tokens")),
    )


SPEC = register(
    MethodSpec(
        "er",
        build,
        {"lr": LR(1e-3), "replay_fraction": Hparam(0.5, 0.0, 1.0, help="replayed rows per batch")},
        {"capacity": 1000, **OPTIMIZER_OPTIONS},
        "experience replay, reservoir buffer mixed into every batch",
        paper="Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning",
        choices={"optim": OPTIMIZERS},
    )
)
