"""SSD: Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024 / arXiv 2023).

Importance of each parameter (the diagonal of a Fisher-like matrix), model in evaluation mode:

    I = (1 / M) * sum_{minibatches m} (d/d theta  mean_{i in m} CE(f_theta(x_i), y_i))^2

on the forget set (``I_Df``) and on the whole training set (``I_D``). The edit, per parameter:

    theta <- theta * beta   where I_Df > alpha * I_D,   beta = min(lambda * I_D / I_Df, 1)

Defaults lambda = 1, alpha = 10 (ResNet-18; the paper uses alpha = 5 for ViT). No parameter is
excluded by default; ``exclude`` names path fragments (e.g. ``('head',)``) to leave alone.

Minibatch squared gradients (the paper's definition, ``per_example=False``) versus the
per-example empirical Fisher (``per_example=True``: mean over examples of the squared
per-example gradient, by ``vmap``): the minibatch version squares a *mean* of B gradients, so it
is (1/B) * empirical Fisher + (1 - 1/B) * (squared mean gradient): dominated by the gradient
direction shared by the batch and B-dependent; the per-example version measures how much each
example individually pulls on a parameter, does not depend on the batch size, and costs about B
times more compute per example. With alpha as a *ratio* of the two importances the batch-size
scale largely cancels, but the selection differs, most for small forget sets.

The minibatch pass drops the last partial minibatch (the reference averages it in with equal
weight), so use a batch size that divides the set for exact agreement.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from ..losses import empirical_fisher
from .common import UnlearnConfig, UnlearnData


def _ce(apply_fn):
    def loss(params, batch, key=None):
        logits = apply_fn(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    return loss


def importance(
    apply_fn, params, x, y, *, batch_size: int = 64, per_example: bool = False, key=None, unroll: int = 1
):
    """SSD importance of every parameter on ``(x, y)`` (see the module docstring).

    ``unroll``: passed to the ``lax.scan`` over minibatches (1: a rolled loop, compiled once for any
    number of minibatches). The models' convolutions keep their gradients fast inside the loop on
    XLA:CPU (:mod:`jaxcl.models.conv`), so nothing needs unrolling.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("SSD importance: empty data set")
    b = min(batch_size, n)
    nb = n // b
    xs = x[: nb * b].reshape((nb, b) + x.shape[1:])
    ys = y[: nb * b].reshape((nb, b))
    loss = _ce(apply_fn)
    if per_example:
        key = jax.random.key(0) if key is None else key
        return empirical_fisher(
            loss, params, {"x": xs.reshape((nb * b,) + x.shape[1:]), "y": ys.reshape(-1)}, key, chunk=b
        )
    grad = jax.grad(lambda p, xb, yb: loss(p, {"x": xb, "y": yb})[0])

    def body(acc, xy):
        g = grad(params, *xy)
        return jax.tree.map(lambda a, gi: a + jnp.square(gi), acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, (xs, ys), unroll=unroll)
    return jax.tree.map(lambda t: t / nb, total)


def _check_hparams(alpha, lam):
    for name, v in (("alpha", alpha), ("lambda", lam)):
        if isinstance(v, numbers.Number) and not v > 0:
            raise ValueError(f"SSD needs {name} > 0, got {v}")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def dampen(params, imp_forget, imp_train, *, alpha=10.0, lam=1.0, exclude: Sequence[str] = ()):
    """The SSD edit ``(params, I_Df, I_D) -> params`` (alpha, lam may be traced)."""
    _check_hparams(alpha, lam)

    def edit(path, p, f, d):
        if any(e in _path_str(path) for e in exclude):
            return p
        sel = f > alpha * d
        beta = jnp.minimum(lam * d / jnp.where(sel, f, 1.0), 1.0)
        return jnp.where(sel, p * beta, p).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(edit, params, imp_forget, imp_train)


def selected_fraction(imp_forget, imp_train, *, alpha=10.0):
    """Fraction of parameters SSD would dampen."""
    sel = jax.tree.map(lambda f, d: (f > alpha * d).sum(), imp_forget, imp_train)
    n = sum(x.size for x in jax.tree.leaves(imp_forget))
    return sum(jax.tree.leaves(sel)) / n


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig):
    kf, kd = jax.random.split(key)
    i_f = importance(
        model.apply,
        params,
        data.x_forget,
        data.y_forget,
        batch_size=cfg.batch,
        per_example=cfg.ssd_per_example,
        key=kf,
    )
    i_d = importance(
        model.apply,
        params,
        data.x_train,
        data.y_train,
        batch_size=cfg.batch,
        per_example=cfg.ssd_per_example,
        key=kd,
    )
    return dampen(params, i_f, i_d, alpha=cfg.ssd_alpha, lam=cfg.ssd_lambda, exclude=cfg.ssd_exclude)
