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
from ..losses import supervised_loss
from ..transforms import project_conflicting
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    base = supervised_loss(model)

    def extra_args(params, batch, key):
        return {"ref_grads": jax.grad(lambda p: base(p, batch["memory"], key)[0])(params)}

    tx = optax.chain(project_conflicting(), optimizer_from(opt, hp["lr"]))
    data = reservoir(options["capacity"], mode="separate", memory_size=options["memory_batch"])
    return Method(base, tx, data=data, extra_args=extra_args)


SPEC = register(
    MethodSpec(
        "agem",
        build,
        {"lr": LR(1e-3)},
        {"capacity": 1000, "memory_batch": 64, **OPTIMIZER_OPTIONS},
        "A-GEM: project the gradient when it conflicts with the memory gradient",
        paper="Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM",
        choices={"optim": OPTIMIZERS},
    )
)
