"""The edit level: pure functions ``(params, *stats, **hparams) -> params`` applied after
training (hyperparameters may be traced, so an edit sweeps under ``vmap``).

* :func:`ssd_dampen`: Selective Synaptic Dampening's edit (the SSD method is
  :mod:`jaxcl.methods.ssd`).
* :func:`curvature_edit`: the loss-curvature memorisation edit (Merullo et al. 2025; the method
  is :mod:`jaxcl.methods.curvature`), :func:`curvature_mask` its selection.
* :func:`haar_orthogonal`: a Haar-random orthogonal basis (the curvature edit's control).
* :func:`interpolate`, :func:`shrink_perturb`: weight averaging and shrink-and-perturb.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def interpolate(params, other, alpha):
    """``(1 - alpha) * params + alpha * other`` (weight averaging / model merging; ``alpha`` may
    be traced)."""
    return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(a.dtype), params, other)


def shrink_perturb(params, key, *, shrink=0.4, noise=0.01):
    """Shrink and perturb (Ash and Adams, "On Warm-Starting Neural Network Training", NeurIPS
    2020): ``theta <- shrink * theta + noise * eps``, ``eps ~ N(0, 1)``, used between tasks to
    restore plasticity."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    new = [
        (shrink * p + noise * jax.random.normal(k, p.shape, jnp.float32)).astype(p.dtype)
        for p, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(tree, new)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def ssd_dampen(params, imp_forget, imp_train, *, alpha=10.0, lam=1.0, exclude: Sequence[str] = ()):
    """SSD's edit (Foster, Schoepf and Brintrup, AAAI 2024), per parameter:

        theta <- theta * beta   where I_Df > alpha * I_D,   beta = min(lam * I_D / I_Df, 1)

    ``alpha`` and ``lam`` may be traced (swept); ``exclude`` names parameter path fragments to
    leave alone."""

    def edit(path, p, f, d):
        if any(e in _path_str(path) for e in exclude):
            return p
        sel = f > alpha * d
        beta = jnp.minimum(lam * d / jnp.where(sel, f, 1.0), 1.0)
        return jnp.where(sel, p * beta, p).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(edit, params, imp_forget, imp_train)


def curvature_mask(l_in, l_out, keep):
    """Which components ``(i, j)`` of a linear's K-FAC eigenbasis the curvature edit keeps:
    the largest curvatures ``l_in[i] * l_out[j]`` (eigenvalues clipped at 0) in decreasing order
    until their sum reaches ``keep`` times the total, the component that crosses it included
    (the authors' greedy selection); ``keep >= 1`` keeps all, ``keep = 0`` none. ``keep`` may
    be traced. Returns a (len(l_in), len(l_out)) float mask."""
    p = jnp.maximum(l_in, 0.0)[:, None] * jnp.maximum(l_out, 0.0)[None, :]
    flat = p.reshape(-1)
    order = jnp.argsort(-flat)
    before = jnp.cumsum(flat[order]) - flat[order]  # mass of the larger components
    sel = (before < keep * flat.sum()) | (keep >= 1.0)
    return jnp.zeros_like(flat).at[order].set(sel.astype(flat.dtype)).reshape(p.shape)


def haar_orthogonal(key, n):
    """A Haar-random orthogonal basis: the Q of a Gaussian matrix's QR with R's diagonal positive
    (Mezzadri 2007), by Gram-Schmidt (each column orthogonalised twice against the ones before) in
    plain array operations. No LAPACK call: the programs of the control that called ``qr`` or
    ``eigh`` here for the random bases hung idle on XLA:CPU (jax 0.10.2) in 3 of 5 runs."""
    m = jax.random.normal(key, (n, n), jnp.float32)

    def column(j, q):
        v = m[:, j]
        for _ in range(2):
            v = v - q @ (q.T @ v)  # columns >= j of q are still zero
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, n, column, jnp.zeros((n, n), jnp.float32))


def curvature_edit(weights: dict, factors: dict, *, keep=0.8, random_key=None) -> dict:
    """The loss-curvature edit (Merullo, Vatsavaya, Bushnaq and Lewis, "From Memorization to
    Reasoning in the Spectrum of Loss Curvature", 2025) of every linear weight in ``weights``.

    ``weights[name]``: (..., in, out), the ``x @ W^T`` layout (the paper's ``W`` is out x in;
    leading axes, e.g. the Llama's stacked layers, are edited one by one);
    ``factors[name] = {"A": (..., in, in), "G": (..., out, out)}``. With ``A = U_A diag(l_A) U_A^T``
    and ``G = U_G diag(l_G) U_G^T``:

        C = U_A^T W^T U_G,   W'^T = U_A (C * M) U_G^T,   M = curvature_mask(l_A, l_G, keep)

    (component ``(i, j)`` has curvature ``l_A[i] l_G[j]`` under ``F ~ G (x) A``). Returns the
    edited ``weights``. ``random_key``: the paper's control instead, as many components removed
    at random positions of random orthogonal bases. ``keep`` may be traced (a sweep)."""

    def one(w, a, g, key):
        l_a, u_a = jnp.linalg.eigh(a.astype(jnp.float32))
        l_g, u_g = jnp.linalg.eigh(g.astype(jnp.float32))
        m = curvature_mask(l_a, l_g, keep)
        if key is not None:
            k_a, k_g, k_m = jax.random.split(key, 3)
            u_a, u_g = haar_orthogonal(k_a, a.shape[0]), haar_orthogonal(k_g, g.shape[0])
            m = jax.random.permutation(k_m, m.reshape(-1)).reshape(m.shape)
        c = u_a.T @ w.astype(jnp.float32) @ u_g
        return (u_a @ (c * m) @ u_g.T).astype(w.dtype)

    out = {}
    for i, name in enumerate(sorted(weights)):
        w, f = weights[name], factors[name]
        lead = w.shape[:-2]
        n = int(np.prod(lead, dtype=int))
        flat = lambda x: x.reshape((n,) + x.shape[len(lead) :])  # noqa: E731
        keys = None if random_key is None else jax.random.split(jax.random.fold_in(random_key, i), n)
        new = jax.vmap(one, in_axes=(0, 0, 0, None if keys is None else 0))(
            flat(w), flat(f["A"]), flat(f["G"]), keys
        )
        out[name] = new.reshape(w.shape)
    return out
