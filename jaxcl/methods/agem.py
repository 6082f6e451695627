"""Averaged GEM (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019).

With ``g`` the gradient on the current batch and ``g_ref`` the gradient on a batch drawn from an
episodic memory (here a reservoir buffer on the device),

    g~ = g - (g . g_ref / g_ref . g_ref) g_ref   if g . g_ref < 0,   else g,
    theta <- theta - lr * g~.

The projection is the optax transform :func:`jaxcl.transforms.project_conflicting`, fed
``ref_grads`` through the step's ``extra_args``.
"""

import jax
import optax

from ..data.replay import reservoir
from ..losses import classification_loss
from ..transforms import project_conflicting
from .base import Method, MethodSpec, optimizer, register


def build(model, hp, params_like, *, capacity=1000, memory_batch=64, optim="adam", momentum=0.0):
    del params_like
    base = classification_loss(model.apply)

    def extra_args(params, batch, key):
        g_ref = jax.grad(lambda p: base(p, batch["memory"], key)[0])(params)
        return {"ref_grads": g_ref}

    tx = optax.chain(project_conflicting(), optimizer(optim, hp["lr"], momentum))
    return Method(
        base, tx, data=reservoir(capacity, mode="separate", memory_size=memory_batch), extra_args=extra_args
    )


SPEC = register(
    MethodSpec(
        "agem",
        build,
        {"lr": 0.001},
        {"capacity": 1000, "memory_batch": 64, "optim": "adam", "momentum": 0.0},
        "A-GEM: project the gradient when it conflicts with the memory gradient",
    )
)
