"""IAU: "Efficient Machine Unlearning via Influence Approximation" (2025). An edit: one step.

One-step unlearning along ``grad L_retain - grad L_forget`` (full-set gradients of the mean NLL,
on at most ``max_examples`` examples of each set), applied as one Adam step from a fresh state
with lr 1e-3:

    theta <- theta - lr * adam_step(grad L_retain(theta) - grad L_forget(theta))

IAU's training-time part, the gradient-norm regulariser ``L + 0.005 ||grad L||^2`` that makes
the one step a good approximation, is the loss wrapper :func:`jaxcl.losses.with_grad_norm`; the
``unlearn-class`` study trains IAU's own original with it when ``iau_reg_train`` is set.
"""

import jax
import optax

from ..losses import mean_grad
from .base import LR, Method, MethodSpec, register


def build(model, hp, params_like, **options):
    del params_like
    cap = options["max_examples"]

    def edit(params, data, hp_, key):
        del key
        sub = lambda s: jax.tree.map(lambda a: a[:cap], s)
        g_r = mean_grad(model, params, sub(data.retain_set))
        g_f = mean_grad(model, params, sub(data.forget_set))
        direction = jax.tree.map(lambda a, b: a - b, g_r, g_f)
        tx = optax.adam(hp_["lr"])
        upd, _ = tx.update(direction, tx.init(params), params)
        return optax.apply_updates(params, upd)

    return Method(None, None, edit=edit, trains=False)


SPEC = register(
    MethodSpec(
        "iau",
        build,
        {"lr": LR(1e-3)},
        {"max_examples": 800},
        "influence-approximation unlearning: one step along g_retain - g_forget",
        kind="unlearn",
        paper="Efficient Machine Unlearning via Influence Approximation, 2025",
    )
)
