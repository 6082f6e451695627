"""IAU: "Efficient Machine Unlearning via Influence Approximation" (2025).

Two parts:

* Training with a gradient-norm regulariser (weight 0.005 in the reference), which makes the
  loss landscape around the trained model flatter so that a single first-order step approximates
  the influence-function removal well: ``L(theta) + reg * ||grad_theta L(theta)||^2``
  (:func:`with_grad_norm`, a ``LossFn -> LossFn`` wrapper, double backprop).
* One-step unlearning along ``grad L_retain - grad L_forget`` (full-set gradients of the mean
  cross-entropy), applied as one Adam step from a fresh state with lr 1e-3:
  ``theta <- theta - lr * adam_step(grad L_retain(theta) - grad L_forget(theta))``.

The study trains the shared original model without the regulariser (so that every method starts
from the same model); ``--iau-reg-train`` trains IAU's own regularised original instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .common import UnlearnConfig, UnlearnData


def with_grad_norm(loss_fn, *, weight: float = 0.005):
    """``L + weight * ||dL/dtheta||^2`` (the IAU training regulariser)."""

    def wrapped(params, batch, key):
        (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        gn = sum(jnp.vdot(x, x) for x in jax.tree.leaves(g))
        return l + weight * gn, {**aux, "grad_norm_sq": gn}

    return wrapped


def _mean_grad(apply_fn, params, x, y, chunk: int = 500):
    n = x.shape[0]
    c = min(chunk, n)
    nb = n // c
    xs = x[: nb * c].reshape((nb, c) + x.shape[1:])
    ys = y[: nb * c].reshape((nb, c))
    ce = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, xb), yb).mean()
    g = jax.lax.map(lambda xy: jax.grad(ce)(params, *xy), (xs, ys))
    return jax.tree.map(lambda a: a.mean(0), g)


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig):
    del key
    cap = cfg.eval_cap * 2
    g_r = _mean_grad(model.apply, params, data.x_retain[:cap], data.y_retain[:cap])
    g_f = _mean_grad(model.apply, params, data.x_forget[:cap], data.y_forget[:cap])
    direction = jax.tree.map(lambda a, b: a - b, g_r, g_f)
    tx = optax.adam(cfg.iau_lr)
    upd, _ = tx.update(direction, tx.init(params), params)
    return optax.apply_updates(params, upd)
