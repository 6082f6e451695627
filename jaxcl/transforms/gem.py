"""GEM's gradient projection (Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual
Learning", NeurIPS 2017, eq. 10-11), with its quadratic program solved in JAX.

With ``g`` the current gradient and ``G`` (T x P) the gradients on the episodic memories of the
previous tasks, when some constraint ``<G_k, g> >= 0`` is violated GEM solves the dual

    min_v  1/2 v^T (G G^T) v + (G g)^T v    s.t.  v >= margin    (eq. 11; GEM's code and
                                                                  Mammoth put the margin here)

and uses ``g~ = G^T v* + g``. The T x T dual is solved by a fixed number of accelerated projected
gradient (FISTA) iterations with step ``1 / ||G G^T||_F`` (the Frobenius norm bounds the largest
eigenvalue), so the solve is a fixed-size program inside the compiled step. Tolerance: with the
default 200 iterations the projected gradient matches an exact non-negative least-squares solve
(scipy's ``nnls``; the dual is ``min ||G^T v + g||^2``) to 2e-6 relative to its largest entry,
worst of 120 random cases of 2-5 tasks with a 10x badly scaled block (1e-3 at 100 iterations);
the test checks 1e-4. Rows of inactive tasks are held at 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


def solve_dual(P_TxT, q_T, lo_T, hi_T, n_iter: int = 200):
    """``argmin 1/2 v^T P v + q^T v`` over ``lo <= v <= hi`` by FISTA (``n_iter`` iterations)."""
    step = 1.0 / (jnp.sqrt((P_TxT**2).sum()) + 1e-12)
    clip = lambda v: jnp.clip(v, lo_T, hi_T)

    def body(carry, _):
        v, z, s = carry
        v_new = clip(z - step * (P_TxT @ z + q_T))
        s_new = (1 + jnp.sqrt(1 + 4 * s * s)) / 2
        z_new = v_new + ((s - 1) / s_new) * (v_new - v)
        return (v_new, z_new, s_new), None

    v0 = clip(jnp.zeros_like(q_T))
    (v, _, _), _ = jax.lax.scan(body, (v0, v0, jnp.ones((), q_T.dtype)), None, length=n_iter)
    return v


def project_gem(g, G_TxP, active_T, margin=0.5, n_iter: int = 200):
    """GEM's projected gradient (flat vectors); ``g`` unchanged when no active constraint is
    violated."""
    G = G_TxP * active_T[:, None]
    dots = G @ g
    violated = jnp.any((dots < 0) & (active_T > 0))
    lo = margin * active_T
    hi = jnp.where(active_T > 0, jnp.inf, 0.0)
    v = solve_dual(G @ G.T, dots, lo, hi, n_iter)
    return jnp.where(violated, G.T @ v + g, g)


def gem(margin=0.5, n_iter: int = 200) -> optax.GradientTransformationExtraArgs:
    """Optax transform: GEM's projection of the incoming gradient; extra args ``ref_grads``
    (a pytree like the params with a leading task axis) and ``active`` (T,) floats."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, ref_grads, active, **extra):
        del params, extra
        flat, unravel = ravel_pytree(updates)
        G = jax.vmap(lambda t: ravel_pytree(t)[0])(ref_grads)
        return unravel(project_gem(flat, G, active.astype(flat.dtype), margin, n_iter)), state

    return optax.GradientTransformationExtraArgs(init, update)
