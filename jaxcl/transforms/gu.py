"""GU: Geometric-disentanglement Unlearning, as an optax transform.

Paper: "Geometric-Disentanglement Unlearning" (2025). A forget update ``g`` is split into its
component inside the span of recent retain gradients and the component orthogonal to it; only the
orthogonal part is applied, so the retain loss is unchanged to first order:

    B      <- orthonormal basis of the last ``rank`` retain gradients
    g_perp  = g - B^T (B g)
    update  = g_perp (+ g_retain when ``add_retain``: the joint forget/retain objective)

``mode='per_tensor'`` (the reference) keeps one basis per parameter tensor; ``mode='global'``
keeps one basis over the whole flattened parameter vector.

Algorithm (per tensor, or once over the tree): the state keeps the last K = ``rank`` retain
gradients H (K rows, a ring buffer: the newest overwrites the oldest slot) and their K x K Gram
matrix G = H H^T, updated incrementally: pushing a gradient costs K dot products (its new row and
column of G). The basis is then built from G by shifted CholeskyQR3, with a K x K symmetric
eigendecomposition in place of the Cholesky factor (u = float32 unit roundoff):

    G  = V diag(l) V^T;  drop l_i <= max(eps^2, 64 u^2 max diag G)          (eps = 1e-6)
    B1 = diag(1 / sqrt(max(l_i, s))) V^T H,  shift s = 16 K u max diag G   (kept rows only)
    twice:  G' = B B^T = V' diag(l') V'^T;  drop l'_i <= 16 K u max(1, max diag G');
            B <- diag(1 / sqrt(l'_i)) V'^T B

The shift bounds the amplification of G's float32 rounding in the first pass, and the two
re-orthonormalisation passes (each on a freshly computed Gram matrix of the current rows) bring
B to orthonormal rows at float32 precision even for ill-conditioned histories (checked up to
cond(G) ~ 1e6, where one Gram pass alone drops or garbles directions). Directions at the noise
level (duplicated or collinear retain gradients, zero gradients) are dropped: their rows of
``basis`` are zero and ``valid`` is False, so a rank-deficient history gives a smaller basis of
its span (modified Gram-Schmidt with an absolute eps kept rounding-noise residuals of duplicated
gradients as extra directions). Everything over the parameters is a K x n matrix product: ~11K
passes (K for G's new row, 3 x (Gram + recombination), 2K to project g - B^T (B g)) instead of
modified Gram-Schmidt's ~K^2 dot+axpy passes; the K x K eigendecompositions are negligible at run
time (but lengthen compilation). The projected update is orthogonal to every kept retain gradient,
and projecting twice changes nothing (B has orthonormal rows).

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

GS_EPS = 1e-6
MODES = ("per_tensor", "global")
_HI = jax.lax.Precision.HIGHEST


class ProjectOutState(NamedTuple):
    history: object  # tree like params, each leaf K x shape: the last K retain gradients (ring)
    hvalid: jax.Array  # (K,) bool, which history slots are filled
    count: jax.Array  # number of retain gradients seen (int32)
    nu: object  # Adam second moment (preconditioned) or ()
    gram: object  # per_tensor: tree of (K, K); global: (K, K): Gram matrix of ``history``


def _inner_axes(a, start: int = 1):
    return tuple(range(start, a.ndim))


def _leaf_hdot(h, x):
    """(K,) dot products of the K rows of ``h`` (K x shape) with ``x`` (shape): a contraction over
    the parameter axes, kept unflattened so a history sharded like its parameter stays sharded."""
    return jnp.tensordot(
        h.astype(jnp.float32),
        x.astype(jnp.float32),
        axes=(_inner_axes(h), tuple(range(x.ndim))),
        precision=_HI,
    )


def _leaf_gram(a):
    a = a.astype(jnp.float32)
    return jnp.tensordot(a, a, axes=(_inner_axes(a), _inner_axes(a)), precision=_HI)


def _leaf_comb(w, h):
    """``w @ h`` over the leading K axis: rows of the result are combinations of rows of h."""
    return jnp.tensordot(w, h.astype(jnp.float32), axes=((1,), (0,)), precision=_HI)


def _tree_hdot(h, x):
    return sum(jax.tree.leaves(jax.tree.map(_leaf_hdot, h, x)))


def _tree_gram(a):
    return sum(jax.tree.leaves(jax.tree.map(_leaf_gram, a)))


def _whiten(gram, floor, drop):
    """``W`` (K x K) with ``W G W^T`` ~ I on the kept eigen-directions of ``gram`` (eigenvalues
    ``l > drop``; dropped ones give zero rows), each eigenvalue clamped from below to ``floor``
    (the shift that bounds the amplification of rounding noise), and the kept mask."""
    gram = 0.5 * (gram + gram.T)
    lam, vec = jnp.linalg.eigh(gram)
    keep = lam > drop
    inv = jnp.where(keep, jax.lax.rsqrt(jnp.maximum(lam, floor)), 0.0)
    return inv[:, None] * vec.T, keep


def _basis(hist, gram, hvalid, gram_fn, comb, eps):
    """Orthonormal basis (zero rows where dropped) and validity mask from the history and its
    Gram matrix: shifted CholeskyQR3 with eigendecompositions (see the module docstring)."""
    k = hvalid.shape[0]
    m = hvalid[:, None] & hvalid[None, :]
    gram = jnp.where(m, gram, 0.0)
    u = float(jnp.finfo(jnp.float32).eps)
    shift = 16 * k * u * jnp.max(jnp.diagonal(gram))
    w, _ = _whiten(gram, shift, jnp.maximum(eps * eps, 64 * u * u * jnp.max(jnp.diagonal(gram))))
    b = comb(w, hist)
    for _ in range(2):
        g2 = gram_fn(b)
        w, keep = _whiten(g2, 0.0, 16 * k * u * jnp.maximum(jnp.max(jnp.diagonal(g2)), 1.0))
        b = comb(w, b)
    return b, keep


def _project(basis, valid, g, dot=None):
    """``g - sum_k valid_k (g . u_k) u_k`` for one leaf (orthonormal rows ``u_k``)."""
    del dot
    c = jnp.where(valid, _leaf_hdot(basis, g), 0.0)
    p = _leaf_comb(c[None, :], basis)[0]
    return (g.astype(jnp.float32) - p).astype(g.dtype)


def _project_tree(basis, valid, g):
    c = jnp.where(valid, _tree_hdot(basis, g), 0.0)
    return jax.tree.map(
        lambda x, b: (x.astype(jnp.float32) - _leaf_comb(c[None, :], b)[0]).astype(x.dtype), g, basis
    )


def _push(hist, gram, hvalid, slot, x, hdot):
    """Write ``x`` into ring slot ``slot`` and update the Gram matrix's row/column."""
    hist = jax.tree.map(lambda h, v: h.at[slot].set(v.astype(h.dtype)), hist, x)
    hvalid = hvalid.at[slot].set(True)
    d = jnp.where(hvalid, hdot(hist, x), 0.0)
    gram = gram.at[slot, :].set(d).at[:, slot].set(d)
    return hist, gram, hvalid


def project_out(
    rank: int = 8,
    mode: str = "per_tensor",
    preconditioned: bool = False,
    *,
    eps: float = GS_EPS,
    b2: float = 0.999,
    precond_eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """GU's projection; ``update(g, state, params, *, retain_grads=g_r, retain_scale=w)``.

    The state keeps the history and its Gram matrix only (K x parameters, float32); the basis is
    rebuilt from them at every update and never stored. ``retain_scale`` (default 0, may be
    traced) adds ``w * g_r`` to the projected update: the joint forget/retain objective.

    Args:
      rank: at most this many recent retain gradients span the protected subspace.
      mode: ``'per_tensor'`` (one basis per leaf) or ``'global'`` (one over the whole tree).
      preconditioned: project Adam-whitened updates (chain with ``optax.sgd``).
      eps: directions of the history with norm <= eps are dropped (as well as those at the
        float32 noise level of the Gram matrix).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"project_out: rank must be a positive int, got {rank!r}")
    if mode not in MODES:
        raise ValueError(f"project_out: mode must be one of {MODES}, got {mode!r}")

    def init(params):
        hist = jax.tree.map(lambda p: jnp.zeros((rank,) + p.shape, jnp.float32), params)
        if mode == "per_tensor":
            gram = jax.tree.map(lambda p: jnp.zeros((rank, rank), jnp.float32), params)
        else:
            gram = jnp.zeros((rank, rank), jnp.float32)
        nu = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if preconditioned else ()
        return ProjectOutState(hist, jnp.zeros((rank,), bool), jnp.zeros((), jnp.int32), nu, gram)

    def update(updates, state, params=None, *, retain_grads=None, retain_scale=0.0, **extra):
        del params, extra
        if retain_grads is None:
            raise ValueError(
                "project_out (GU) needs the extra arg retain_grads= (the gradient "
                "of the retain loss); pass it through make_step(extra_args=...)"
            )
        nu, slot, count = state.nu, state.count % rank, state.count + 1
        if preconditioned:
            nu = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * jnp.square(g.astype(jnp.float32)), nu, updates)
            corr = 1 - b2 ** count.astype(jnp.float32)
            g = jax.tree.map(
                lambda g, n: (g / (jnp.sqrt(n / corr) + precond_eps)).astype(g.dtype), updates, nu
            )
        else:
            g = updates
        if mode == "per_tensor":

            def leaf(h, gr, x, gf):
                h, gr, hv = _push(h, gr, state.hvalid, slot, x, _leaf_hdot)
                b, v = _basis(h, gr, hv, _leaf_gram, _leaf_comb, eps)
                return h, gr, hv, b, v, _project(b, v, gf)

            res = jax.tree.map(leaf, state.history, state.gram, retain_grads, g)
            is_res = lambda x: isinstance(x, tuple)
            pick = lambda i: jax.tree.map(lambda t: t[i], res, is_leaf=is_res)
            hist, gram, new = pick(0), pick(1), pick(5)
            hvalid = state.hvalid.at[slot].set(True)
        else:
            hist, gram, hvalid = _push(
                state.history, state.gram, state.hvalid, slot, retain_grads, _tree_hdot
            )
            comb = lambda w, t: jax.tree.map(lambda h: _leaf_comb(w, h), t)
            basis, valid = _basis(hist, gram, hvalid, _tree_gram, comb, eps)
            new = _project_tree(basis, valid, g)
        new = jax.tree.map(
            lambda a, r: (a + retain_scale * r.astype(a.dtype)).astype(a.dtype), new, retain_grads
        )
        return new, ProjectOutState(hist, hvalid, count, nu, gram)

    return optax.GradientTransformationExtraArgs(init, update)


def basis_from_history(history, rank: int, *, mode: str = "per_tensor", eps: float = GS_EPS):
    """Orthonormal basis of a stack of H retain gradients (as :func:`project_out` builds it).

    ``history`` leaves have a leading axis H (oldest first). Returns ``(basis, valid)`` in the
    layout of :class:`ProjectOutState`, built from the most recent ``rank`` gradients. Raises
    ``ValueError`` when ``rank`` is larger than the history.
    """
    leaves = jax.tree.leaves(history)
    if not leaves:
        raise ValueError("basis_from_history: empty history")
    h = leaves[0].shape[0]
    if rank <= 0 or rank > h:
        raise ValueError(
            f"basis_from_history: rank={rank} must be in [1, H] with H={h} retain "
            "gradients in the history; keep more gradients or lower the rank"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    tx = project_out(rank, mode, eps=eps)
    like = jax.tree.map(lambda a: a[0], history)
    state = tx.init(like)
    zeros = jax.tree.map(jnp.zeros_like, like)
    for i in range(h - rank, h):
        _, state = tx.update(zeros, state, retain_grads=jax.tree.map(lambda a: a[i], history))
    return basis_of(state, mode=mode, eps=eps)


def basis_of(state: ProjectOutState, *, mode: str = "per_tensor", eps: float = GS_EPS):
    """``(basis, valid)`` that :func:`project_out` builds from ``state`` (for inspection and
    tests): basis leaves K x shape with orthonormal rows (zero where dropped); ``valid`` a tree of
    (K,) masks (``per_tensor``) or one (K,) mask (``global``)."""
    if mode == "per_tensor":
        res = jax.tree.map(
            lambda h, gr: _basis(h, gr, state.hvalid, _leaf_gram, _leaf_comb, eps), state.history, state.gram
        )
        is_res = lambda x: isinstance(x, tuple)
        return jax.tree.map(lambda t: t[0], res, is_leaf=is_res), jax.tree.map(
            lambda t: t[1], res, is_leaf=is_res
        )
    comb = lambda w, t: jax.tree.map(lambda h: _leaf_comb(w, h), t)
    return _basis(state.history, state.gram, state.hvalid, _tree_gram, comb, eps)


def project(updates, basis, valid, *, mode: str = "per_tensor"):
    """Remove from ``updates`` its component in the span of ``basis`` (as built above)."""
    if mode == "per_tensor":
        return jax.tree.map(lambda g, b, v: _project(b, v, g), updates, basis, valid)
    return _project_tree(basis, valid, updates)
