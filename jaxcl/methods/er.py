"""Experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019).

A reservoir buffer of ``capacity`` examples lives on the device; every batch has a fraction
``replay_fraction`` of its rows replaced by buffer samples, then
``theta <- theta - lr * grad L(batch_mixed)``. See :mod:`jaxcl.data.replay`.
"""

from ..data.replay import reservoir
from ..losses import classification_loss
from .base import Method, MethodSpec, optimizer, register


def build(model, hp, params_like, *, capacity=1000, optim="adam", momentum=0.0):
    del params_like
    return Method(
        classification_loss(model.apply),
        optimizer(optim, hp["lr"], momentum),
        data=reservoir(capacity, hp["replay_fraction"]),
    )


SPEC = register(
    MethodSpec(
        "er",
        build,
        {"lr": 0.001, "replay_fraction": 0.5},
        {"capacity": 1000, "optim": "adam", "momentum": 0.0},
        "experience replay, reservoir buffer mixed into every batch",
    )
)
