"""The edit level: pure functions ``(params, *stats, **hparams) -> params`` applied after
training (hyperparameters may be traced, so an edit sweeps under ``vmap``).

* :func:`ssd_dampen`: Selective Synaptic Dampening's edit (the SSD method is
  :mod:`jaxcl.methods.ssd`).
* :func:`interpolate`, :func:`shrink_perturb`: weight averaging and shrink-and-perturb.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


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
