"""L2: a quadratic penalty towards the parameters at the end of the previous task, the baseline
that EWC refines (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
PNAS 2017, Fig. 2A "L2"):

    L(theta) = L_t(theta) + lambda/2 * ||theta - theta*||^2

EWC with a unit Fisher: the anchor is on-device state of an ``ewc_anchor`` data transform, set
at every task end (a state change); off until the first task ends (zero weight before).
"""

import jax
import jax.numpy as jnp

from ..data.context import ewc_anchor, set_ewc_anchor
from ..losses import supervised_loss, with_ewc_penalty
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
    opt = pop_optimizer(options)

    def consolidate(state, task_batch, key):
        del task_batch, key
        ones = jax.tree.map(jnp.ones_like, state.params)
        return state.replace(data_state=set_ewc_anchor(state.data_state, state.params, ones, decay=0.0))

    loss = with_ewc_penalty(supervised_loss(model), lam=hp["l2_lambda"])
    return Method(loss, optimizer_from(opt, hp["lr"]), data=ewc_anchor(params_like), consolidate=consolidate)


SPEC = register(
    MethodSpec(
        "l2",
        build,
        {"lr": LR(1e-3), "l2_lambda": Hparam(1.0, 0.0, None, help="penalty weight")},
        dict(OPTIMIZER_OPTIONS),
        "L2 penalty towards the previous task's parameters",
        paper="Kirkpatrick et al. 2017 (the L2 baseline)",
        choices={"optim": OPTIMIZERS},
    )
)
