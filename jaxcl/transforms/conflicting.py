"""Gradient projections as optax transforms.

``project_conflicting`` is A-GEM's rule (Chaudhry et al., "Efficient Lifelong Learning with
A-GEM", ICLR 2019): with ``g`` the update and ``g_ref`` a reference gradient (on episodic memory),

    g <- g - (g . g_ref / g_ref . g_ref) g_ref    if g . g_ref < 0,  else g unchanged,

with dot products over the whole flattened parameter vector. It takes its reference as a
keyword-only extra arg, so it chains with any optimizer:
``optax.chain(project_conflicting(), optax.sgd(lr))``. GU's projection is in :mod:`.gu`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def tree_dot(a, b) -> jax.Array:
    """Dot product of two pytrees of the same structure (float32 accumulation)."""
    parts = jax.tree.map(lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b)
    return sum(jax.tree.leaves(parts))


def project_conflicting(eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
    """A-GEM projection; ``update(..., ref_grads=g_ref)``; a zero ``g_ref`` leaves ``g`` as is."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, ref_grads=None, **extra):
        del params, extra
        if ref_grads is None:
            raise ValueError("project_conflicting needs the extra arg ref_grads=")
        dot = tree_dot(updates, ref_grads)
        ref_sq = tree_dot(ref_grads, ref_grads)
        coef = jnp.where((dot < 0) & (ref_sq > eps), dot / jnp.maximum(ref_sq, eps), 0.0)
        new = jax.tree.map(lambda g, r: (g - coef * r).astype(g.dtype), updates, ref_grads)
        return new, state

    return optax.GradientTransformationExtraArgs(init, update)
