"""Memory Aware Synapses (Aljundi et al., "Memory Aware Synapses: Learning what (not) to forget",
ECCV 2018).

Importance of each parameter from the sensitivity of the squared L2 norm of the network's output
(eq. 2-4; no labels needed), averaged over N examples of the task just learned:

    Omega_ij = 1/N sum_k | d [ ||F(x_k; theta)||_2^2 ] / d theta_ij |,

accumulated over tasks as ``Omega <- alpha * Omega_old + (1 - alpha) * Omega_new`` (Avalanche's
MAS plugin; alpha = 0.5 by default there) and the loss of later tasks (eq. 6)

    L(theta) = L_n(theta) + lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2.

Per-example gradients by ``vmap`` in chunks of 32 under ``lax.scan``; ``Omega`` and ``theta*``
live in an ``ewc_anchor`` data transform (``with_ewc_penalty`` with weight ``2 lambda``).
Defaults ``lambda = 1``, ``alpha = 0.5`` as Avalanche's ``MASPlugin``.
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


def mas_importance(apply_fn, params, x, *, chunk: int = 32):
    """``mean_k |grad_theta ||apply_fn(theta, x_k)||^2|`` (per example), over chunks."""
    n = x.shape[0]
    if n % chunk:
        chunk = n
    xs = x.reshape((n // chunk, chunk) + x.shape[1:])

    def per_example(p, xi):
        return jax.grad(lambda q: (apply_fn(q, xi[None]).astype(jnp.float32) ** 2).sum())(p)

    def body(acc, xc):
        g = jax.vmap(per_example, in_axes=(None, 0))(params, xc)
        return jax.tree.map(lambda s, gi: s + jnp.abs(gi).sum(0), acc, g), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), xs)
    return jax.tree.map(lambda s: s / n, total)


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)

    def consolidate(state, task_batch, key):
        del key
        new = mas_importance(model.apply, state.params, task_batch["x"])
        a = hp["mas_alpha"]
        old = state.data_state["fisher"]
        # after the first task Omega is the new importance alone (old is zero-initialised)
        first = jnp.all(jnp.stack([jnp.all(o == 0) for o in jax.tree.leaves(old)]))
        new = jax.tree.map(lambda n_: jnp.where(first, n_, (1 - a) * n_), new)
        data_state = set_ewc_anchor(state.data_state, state.params, new, decay=a)
        return state.replace(data_state=data_state)

    return Method(
        with_ewc_penalty(supervised_loss(model), lam=2.0 * hp["mas_lambda"]),
        optimizer_from(opt, hp["lr"]),
        data=ewc_anchor(params_like),
        consolidate=consolidate,
    )


SPEC = register(
    MethodSpec(
        "mas",
        build,
        {
            "lr": LR(1e-3),
            "mas_lambda": Hparam(1.0, 0.0, None, help="penalty weight lambda"),
            "mas_alpha": Hparam(0.5, 0.0, 1.0, help="decay of the old importance"),
        },
        dict(OPTIMIZER_OPTIONS),
        "memory aware synapses: output-norm sensitivity importance, quadratic penalty",
        paper="Aljundi et al. 2018, Memory Aware Synapses: Learning what (not) to forget",
        choices={"optim": OPTIMIZERS},
    )
)
