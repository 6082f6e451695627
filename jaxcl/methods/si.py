"""Synaptic Intelligence (Zenke, Poole and Ganguli, "Continual Learning Through Synaptic
Intelligence", ICML 2017).

While training on task mu, each parameter accumulates its contribution to the drop of the loss
along the optimisation path (eq. 3, one term per step):

    w_k += -g_k(t) * delta theta_k(t),

with ``g`` the gradient the optimizer received and ``delta theta`` the update it applied. At the
end of the task (eq. 5) the importance grows by

    Omega_k += w_k / ((theta_k(end) - theta_k(start))^2 + xi),

``w`` is reset, and the loss of later tasks (eq. 4) is

    L(theta) = L_mu(theta) + c * sum_k Omega_k (theta_k - theta*_k)^2,

``theta*`` the parameters at the end of the previous task. ``w`` and ``theta(start)`` live in the
optimizer state (a wrapper around the inner optimizer), ``Omega`` and ``theta*`` in an
``ewc_anchor`` data transform (``with_ewc_penalty`` with weight ``2c`` gives ``c * sum``).
Defaults ``c = 0.5``, ``xi = 1.0`` as Mammoth's Split-MNIST settings.
"""

import jax
import jax.numpy as jnp
import optax

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


def path_integral(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` plus SI's running path integral ``w += -g * update`` and the task's start
    parameters; state ``{'inner', 'w', 'start'}``."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return {"inner": inner.init(params), "w": jax.tree.map(jnp.zeros_like, params), "start": params}

    def update(grads, state, params=None, **extra):
        updates, inner_state = inner.update(grads, state["inner"], params, **extra)
        w = jax.tree.map(lambda w, g, u: w - g * u, state["w"], grads, updates)
        return updates, {"inner": inner_state, "w": w, "start": state["start"]}

    return optax.GradientTransformationExtraArgs(init, update)


def si_importance(w, start, params, xi):
    """Eq. 5: ``w / ((params - start)^2 + xi)``."""
    return jax.tree.map(lambda wi, s, p: wi / ((p - s) ** 2 + xi), w, start, params)


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)

    def consolidate(state, task_batch, key):
        del task_batch, key
        os = state.opt_state
        omega = si_importance(os["w"], os["start"], state.params, hp["si_xi"])
        data_state = set_ewc_anchor(state.data_state, state.params, omega, decay=1.0)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        opt_state = {"inner": os["inner"], "w": zeros, "start": state.params}
        return state.replace(data_state=data_state, opt_state=opt_state)

    return Method(
        with_ewc_penalty(supervised_loss(model), lam=2.0 * hp["si_c"]),
        path_integral(optimizer_from(opt, hp["lr"])),
        data=ewc_anchor(params_like),
        consolidate=consolidate,
    )


SPEC = register(
    MethodSpec(
        "si",
        build,
        {
            "lr": LR(1e-3),
            "si_c": Hparam(0.5, 0.0, None, help="penalty weight c"),
            "si_xi": Hparam(1.0, 0.0, None, low_open=True, help="damping xi"),
        },
        dict(OPTIMIZER_OPTIONS),
        "synaptic intelligence: path-integral importance, quadratic penalty",
        paper="Zenke et al. 2017, Continual Learning Through Synaptic Intelligence",
        choices={"optim": OPTIMIZERS},
    )
)
