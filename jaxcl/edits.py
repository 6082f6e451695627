"""Edits: pure functions ``(params, *stats, **hparams) -> params`` applied after training.

SSD's Fisher dampening (:mod:`jaxcl.unlearn.ssd`) is an edit; so are these two classics.
"""

from __future__ import annotations

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


def compose(*edits):
    """Apply edits ``params -> params`` in order."""

    def edit(params):
        for e in edits:
            params = e(params)
        return params

    return edit
