"""GU: Geometric-disentanglement Unlearning, as an optax transform.

Paper: "Geometric-Disentanglement Unlearning" (2025). A forget update ``g`` is split into its
component inside the span of recent retain gradients and the component orthogonal to it; only the
orthogonal part is applied, so the retain loss is unchanged to first order:

    B      <- orthonormal basis of the last ``rank`` retain gradients (modified Gram-Schmidt,
              a new vector is kept only when its residual norm exceeds eps = 1e-6)
    g_perp  = g - sum_k (g . u_k) u_k
    update  = g_perp (+ g_retain when ``add_retain``: the joint forget/retain objective)

``mode='per_tensor'`` (the reference) keeps one basis per parameter tensor; ``mode='global'``
keeps one basis over the whole flattened parameter vector. The state keeps the last ``rank``
retain gradients (a FIFO) and rebuilds their orthonormal basis every step by modified Gram-Schmidt,
newest first, so the update is orthogonal to *every* kept retain gradient (cost per step:
``rank^2 / 2`` dot products and axpys over the parameters, plus ``rank`` for the projection).

``preconditioned=True`` projects in Adam-whitened coordinates (the later version of the paper):
the transform keeps Adam's second moment ``v`` of the incoming forget updates (b2 = 0.999, bias
corrected) and outputs ``P(g / (sqrt(v) + eps))``: the step direction an Adam-like optimizer would
take, made orthogonal to the retain gradients. Chain it with a plain ``optax.sgd(lr)`` (or
momentum), not with Adam. Without it, chain the projection before any optimizer:
``optax.chain(project_out(rank=8), optax.adam(lr))``.

The retain gradients arrive as the keyword extra arg ``retain_grads=`` (see
:func:`jaxcl.engine.make_step`'s ``extra_args``); arrays are never closed over.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..transforms.project import tree_dot

GS_EPS = 1e-6
MODES = ("per_tensor", "global")


class ProjectOutState(NamedTuple):
    history: object  # tree like params, each leaf K x shape: the last K retain gradients
    hvalid: jax.Array  # (K,) bool, which history slots are filled
    basis: object  # tree like params, each leaf K x shape: orthonormal basis of the history
    valid: object  # per_tensor: tree of (K,) bool; global: (K,) bool
    count: jax.Array  # number of retain gradients seen (int32)
    nu: object  # Adam second moment (preconditioned) or ()


def _leaf_dot(a, b):
    return jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))


def _mgs(hist, hvalid, dot, eps):
    """Modified Gram-Schmidt over the K rows of ``hist`` (a pytree with a leading K axis),
    newest (last slot) first; rows that are invalid or whose residual norm is <= eps are
    dropped (zero vector, ``valid`` False). Loops are ``fori_loop`` so the program stays small."""
    k = hvalid.shape[0]
    row = lambda t, i: jax.tree.map(lambda a: a[i].astype(jnp.float32), t)

    def outer(n, carry):
        basis, valid = carry
        i = k - 1 - n  # history slot, newest first; basis slot n

        def inner(j, v):
            u = row(basis, j)
            c = jnp.where(valid[j] & (j < n), dot(v, u), 0.0)
            return jax.tree.map(lambda a, b: a - c * b, v, u)

        v = jax.lax.fori_loop(0, k, inner, row(hist, i))
        norm = jnp.sqrt(jnp.maximum(dot(v, v), 0.0))
        ok = hvalid[i] & (norm > eps)
        v = jax.tree.map(lambda a: jnp.where(ok, a / jnp.maximum(norm, eps), 0.0), v)
        basis = jax.tree.map(lambda b, x: b.at[n].set(x), basis, v)
        return basis, valid.at[n].set(ok)

    basis0 = jax.tree.map(lambda h: jnp.zeros(h.shape, jnp.float32), hist)
    return jax.lax.fori_loop(0, k, outer, (basis0, jnp.zeros((k,), bool)))


def _push(hist, hvalid, g):
    """FIFO of the last K retain gradients: drop the oldest (slot 0), append ``g`` at the end."""
    hist = jax.tree.map(lambda h, x: jnp.roll(h, -1, axis=0).at[-1].set(x.astype(h.dtype)), hist, g)
    return hist, jnp.roll(hvalid, -1).at[-1].set(True)


def _project(basis, valid, g, dot):
    """``g - sum_k valid_k (g . u_k) u_k``, sequentially (modified Gram-Schmidt order)."""
    k = valid.shape[0]

    def body(i, out):
        u = jax.tree.map(lambda b: b[i], basis)
        c = jnp.where(valid[i], dot(out, u), 0.0)
        return jax.tree.map(lambda a, b: (a - c * b.astype(a.dtype)).astype(a.dtype), out, u)

    return jax.lax.fori_loop(0, k, body, g)


def project_out(rank: int = 8, mode: str = "per_tensor", preconditioned: bool = False,
                add_retain: bool = False, *, eps: float = GS_EPS, b2: float = 0.999,
                precond_eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """GU's projection; ``update(g, state, params, *, retain_grads=g_r)``.

    Args:
      rank: at most this many recent retain gradients span the protected subspace.
      mode: ``'per_tensor'`` (one basis per leaf) or ``'global'`` (one over the whole tree).
      preconditioned: project Adam-whitened updates (chain with ``optax.sgd``).
      add_retain: add the retain gradient back after projection (joint objective).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"project_out: rank must be a positive int, got {rank!r}")
    if mode not in MODES:
        raise ValueError(f"project_out: mode must be one of {MODES}, got {mode!r}")

    def init(params):
        hist = jax.tree.map(lambda p: jnp.zeros((rank,) + p.shape, jnp.float32), params)
        if mode == "per_tensor":
            valid = jax.tree.map(lambda p: jnp.zeros((rank,), bool), params)
        else:
            valid = jnp.zeros((rank,), bool)
        nu = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if preconditioned else ()
        return ProjectOutState(hist, jnp.zeros((rank,), bool), hist, valid,
                               jnp.zeros((), jnp.int32), nu)

    def update(updates, state, params=None, *, retain_grads=None, **extra):
        del params, extra
        if retain_grads is None:
            raise ValueError("project_out (GU) needs the extra arg retain_grads= (the gradient "
                             "of the retain loss); pass it through make_step(extra_args=...)")
        nu, count = state.nu, state.count + 1
        if preconditioned:
            nu = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * jnp.square(g.astype(jnp.float32)),
                              nu, updates)
            corr = 1 - b2 ** count.astype(jnp.float32)
            g = jax.tree.map(lambda g, n: (g / (jnp.sqrt(n / corr) + precond_eps)).astype(g.dtype),
                             updates, nu)
        else:
            g = updates
        hist, hvalid = _push(state.history, state.hvalid, retain_grads)
        if mode == "per_tensor":
            bv = jax.tree.map(lambda h: _mgs(h, hvalid, _leaf_dot, eps), hist)
            is_pair = lambda x: isinstance(x, tuple)
            basis = jax.tree.map(lambda t: t[0], bv, is_leaf=is_pair)
            valid = jax.tree.map(lambda t: t[1], bv, is_leaf=is_pair)
            new = jax.tree.map(lambda x, b, v: _project(b, v, x, _leaf_dot), g, basis, valid)
        else:
            basis, valid = _mgs(hist, hvalid, tree_dot, eps)
            new = _project(basis, valid, g, tree_dot)
        if add_retain:
            new = jax.tree.map(lambda a, r: (a + r.astype(a.dtype)).astype(a.dtype), new, retain_grads)
        return new, ProjectOutState(hist, hvalid, basis, valid, count, nu)

    return optax.GradientTransformationExtraArgs(init, update)


def basis_from_history(history, rank: int, *, mode: str = "per_tensor", eps: float = GS_EPS):
    """Orthonormal basis (modified Gram-Schmidt) of a stack of H retain gradients.

    ``history`` leaves have a leading axis H (oldest first). Returns ``(basis, valid)`` in the
    layout of :class:`ProjectOutState`, built from the most recent ``rank`` gradients. Raises
    ``ValueError`` when ``rank`` is larger than the history.
    """
    leaves = jax.tree.leaves(history)
    if not leaves:
        raise ValueError("basis_from_history: empty history")
    h = leaves[0].shape[0]
    if rank <= 0 or rank > h:
        raise ValueError(f"basis_from_history: rank={rank} must be in [1, H] with H={h} retain "
                         "gradients in the history; keep more gradients or lower the rank")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    tx = project_out(rank, mode, eps=eps)
    like = jax.tree.map(lambda a: a[0], history)
    state = tx.init(like)
    zeros = jax.tree.map(jnp.zeros_like, like)
    for i in range(h - rank, h):
        _, state = tx.update(zeros, state, retain_grads=jax.tree.map(lambda a: a[i], history))
    return state.basis, state.valid


def project(updates, basis, valid, *, mode: str = "per_tensor"):
    """Remove from ``updates`` its component in the span of ``basis`` (as built above)."""
    if mode == "per_tensor":
        return jax.tree.map(lambda g, b, v: _project(b, v, g, _leaf_dot), updates, basis, valid)
    return _project(basis, valid, updates, tree_dot)


# --- GU attached to GA, GradDiff and NPO (the unlearning runs of the study) -------------------

def retain_grads_args(apply_fn):
    """``extra_args`` for :func:`jaxcl.engine.make_step`: the gradient of the retain loss on the
    retain half of the batch (``batch['retain_x']``, ``batch['retain_y']``)."""
    import optax as _optax

    def ce(params, x, y):
        return _optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()

    grad = jax.grad(ce)

    def extra(params, batch, key):
        del key
        return {"retain_grads": grad(params, batch["retain_x"], batch["retain_y"])}

    return extra


BASES = ("ga", "graddiff", "npo")


def make_tx(lr, *, rank=8, mode="per_tensor", preconditioned=False, add_retain=False):
    """GU's projection chained with the inner optimizer (Adam; SGD in whitened coordinates)."""
    proj = project_out(rank, mode, preconditioned, add_retain)
    inner = optax.sgd(lr) if preconditioned else optax.adam(lr)
    return optax.chain(proj, inner)


def run(model, params, data, key, cfg, *, base: str = "ga"):
    """GU on top of ``base``: the base's *forget* loss, projected; GradDiff's retain term is the
    added-back retain gradient (``add_retain=True``)."""
    from . import ga, npo
    from .common import run_steps

    if base not in BASES:
        raise ValueError(f"GU attaches to {BASES}, got {base!r}")
    name = f"gu-{base}"
    tx = make_tx(cfg.lr_of(name), rank=cfg.gu_rank, mode=cfg.gu_mode,
                 preconditioned=cfg.gu_preconditioned, add_retain=base == "graddiff")
    extra = retain_grads_args(model.apply)
    if base == "npo":
        return npo.run(model, params, data, key, cfg, tx=tx, name=name, extra_args=extra)
    out, _ = run_steps(ga.loss(model.apply), tx, params, key,
                       lambda k: ga.forget_batch(data, k, cfg.batch), cfg.steps, extra_args=extra)
    return out
