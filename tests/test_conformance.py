"""One table of checks run on every wrapper, at each of the four levels (optax-style):
it jits, it traces once for repeated calls, it keeps tree structure and dtypes, and it works
under vmap (matching a Python loop over the batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl import edits
from jaxcl.data import context, replay
from jaxcl.losses import (
    classification_loss,
    nll_per_example,
    npo_loss,
    with_ewc_penalty,
    with_grad_norm,
    with_kl,
)
from jaxcl.models import mlp
from jaxcl.transforms import project_conflicting, project_out

MODEL = mlp((4, 4, 1), 3, hidden=(8,))
PARAMS = MODEL.init(jax.random.key(0))
PARAMS_LIKE = jax.eval_shape(MODEL.init, jax.random.key(0))


def batch(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(rng.integers(0, 256, (n, 4, 4, 1)), jnp.uint8),
        "y": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
        "t": jnp.zeros((n,), jnp.int32),
        "mask": jnp.ones((n, 3), bool),
    }


def full_batch(seed=0):
    b = batch(seed)
    b["ref_logits"] = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(6, 3)), jnp.float32)
    b["ref_nll"] = jnp.asarray(np.random.default_rng(seed + 2).uniform(0.5, 2.0, 6), jnp.float32)
    b["ewc"] = {
        "anchor": jax.tree.map(lambda p: p + 0.1, PARAMS),
        "fisher": jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS),
    }
    return b


BASE = classification_loss(MODEL.apply)

# -- level: loss wrappers ---------------------------------------------------------------------
LOSSES = {
    "classification": BASE,
    "with_kl": with_kl(BASE, weight=0.7, temperature=2.0),
    "with_ewc_penalty": with_ewc_penalty(BASE, lam=3.0),
    "kl_then_ewc": with_ewc_penalty(with_kl(BASE), lam=1.0),
    "with_grad_norm": with_grad_norm(BASE, weight=0.01),
    "npo": lambda p, b, k: (npo_loss(nll_per_example(MODEL)(p, b)[0], b["ref_nll"], 0.1), {}),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_wrapper_conformance(name):
    loss_fn = LOSSES[name]
    traces = []

    def f(p, b, k):
        traces.append(1)
        return jax.value_and_grad(loss_fn, has_aux=True)(p, b, k)

    jf = jax.jit(f)
    (l1, _), g1 = jf(PARAMS, full_batch(0), jax.random.key(0))
    (l2, _), g2 = jf(PARAMS, full_batch(1), jax.random.key(1))
    assert len(traces) == 1, "retraced on a second call with the same shapes"
    assert jax.tree.structure(g1) == jax.tree.structure(PARAMS)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(PARAMS)))
    assert np.isfinite(float(l1)) and float(l1) != float(l2)
    # vmap over a stack of batches equals a loop
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), full_batch(0), full_batch(1))
    (lv, _), _ = jax.vmap(f, in_axes=(None, 0, None))(PARAMS, stacked, jax.random.key(0))
    np.testing.assert_allclose(
        np.asarray(lv), [float(l1), float(jf(PARAMS, full_batch(1), jax.random.key(0))[0][0])], rtol=1e-5
    )


# -- level: gradient transforms ---------------------------------------------------------------
REF = jax.tree.map(
    lambda p: -jnp.ones_like(p) * 0.5 + 0.1 * jnp.arange(p.size).reshape(p.shape) / p.size, PARAMS
)
TRANSFORMS = {  # name: (transform, its keyword extra args)
    "project_conflicting": (project_conflicting(), {"ref_grads": REF}),
    "gu_per_tensor": (project_out(rank=2), {"retain_grads": REF}),
    "gu_global_retain_scale": (
        project_out(rank=2, mode="global"),
        {"retain_grads": REF, "retain_scale": 0.5},
    ),
    "gu_preconditioned": (project_out(rank=2, preconditioned=True), {"retain_grads": REF}),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_gradient_transform_conformance(name):
    proj, extra = TRANSFORMS[name]
    tx = optax.with_extra_args_support(optax.chain(proj, optax.sgd(0.1)))
    state = tx.init(PARAMS)
    g = jax.tree.map(lambda p: jnp.ones_like(p), PARAMS)
    traces = []

    def upd(g, s):
        traces.append(1)
        return tx.update(g, s, PARAMS, **extra)

    ju = jax.jit(upd)
    u1, s1 = ju(g, state)
    u2, s2 = ju(jax.tree.map(lambda a: 2 * a, g), s1)
    assert len(traces) == 1, "retraced on a second call with the same shapes"
    assert jax.tree.structure(u1) == jax.tree.structure(PARAMS)
    assert jax.tree.structure(s2) == jax.tree.structure(state)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(PARAMS)))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(u2))
    # vmap over a stack of gradients equals a loop
    gs = jax.tree.map(lambda a: jnp.stack([a, -3 * a]), g)
    uv, _ = jax.vmap(upd, in_axes=(0, None))(gs, state)
    u_other, _ = ju(jax.tree.map(lambda a: -3 * a, g), state)
    for a, b, c in zip(jax.tree.leaves(uv), jax.tree.leaves(u1), jax.tree.leaves(u_other)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a[1], c, rtol=1e-5, atol=1e-7)


# -- level: data transforms -------------------------------------------------------------------
DATA = {
    "reservoir_mix": lambda: replay.reservoir(8, 0.5),
    "reservoir_separate": lambda: replay.reservoir(8, mode="separate", memory_size=4),
    "teacher": lambda: context.teacher(MODEL.apply, PARAMS_LIKE),
    "ewc_anchor": lambda: context.ewc_anchor(PARAMS_LIKE),
    "chain": lambda: context.chain(replay.reservoir(8, 0.25), context.teacher(MODEL.apply, PARAMS_LIKE)),
}


@pytest.mark.parametrize("name", sorted(DATA))
def test_data_transform_conformance(name):
    dt = DATA[name]()
    state0 = dt.init(batch(0))
    traces = []

    def upd(b, s, k):
        traces.append(1)
        return dt.update(b, s, k)

    ju = jax.jit(upd)
    b1, s1 = ju(batch(0), state0, jax.random.key(0))
    b2, s2 = ju(batch(1), s1, jax.random.key(1))
    assert len(traces) == 1
    assert jax.tree.structure(s2) == jax.tree.structure(state0)
    assert all(
        a.dtype == b.dtype and a.shape == b.shape
        for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(state0))
    )
    for k in ("x", "y"):
        assert b2[k].shape == batch(1)[k].shape and b2[k].dtype == batch(1)[k].dtype
    # vmap over independent states (seeds) equals a loop
    keys = jax.random.split(jax.random.key(3), 2)
    states = jax.tree.map(lambda a: jnp.stack([a, a]), s1)
    bv, sv = jax.vmap(upd, in_axes=(None, 0, 0))(batch(2), states, keys)
    for i in range(2):
        bi, si = ju(batch(2), s1, keys[i])
        for a, b in zip(jax.tree.leaves(sv), jax.tree.leaves(si)):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
        for a, b in zip(jax.tree.leaves(bv), jax.tree.leaves(bi)):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-6)


# -- level: edits ------------------------------------------------------------------------------
IMP_F = jax.tree.map(
    lambda p: jnp.abs(jnp.sin(jnp.arange(p.size, dtype=jnp.float32))).reshape(p.shape) * 10, PARAMS
)
IMP_D = jax.tree.map(
    lambda p: jnp.abs(jnp.cos(jnp.arange(p.size, dtype=jnp.float32))).reshape(p.shape), PARAMS
)
EDITS = {
    "interpolate": lambda p, k: edits.interpolate(p, jax.tree.map(jnp.zeros_like, p), 0.25),
    "ssd_dampen": lambda p, k: edits.ssd_dampen(p, IMP_F, IMP_D, alpha=2.0, lam=1.0),
    "shrink_perturb": lambda p, k: edits.shrink_perturb(p, k),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edit_conformance(name):
    e = EDITS[name]
    traces = []

    def f(p, k):
        traces.append(1)
        return e(p, k)

    jf = jax.jit(f)
    out = jf(PARAMS, jax.random.key(0))
    jf(PARAMS, jax.random.key(1))
    assert len(traces) == 1
    assert jax.tree.structure(out) == jax.tree.structure(PARAMS)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(PARAMS)))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(PARAMS)))
    ps = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), PARAMS)
    keys = jax.random.split(jax.random.key(0), 2)
    ov = jax.vmap(f)(ps, keys)
    o1 = jf(jax.tree.map(lambda a: 2 * a, PARAMS), keys[1])
    for a, b in zip(jax.tree.leaves(ov), jax.tree.leaves(o1)):
        np.testing.assert_allclose(a[1], b, rtol=1e-6)


def test_interpolate_value():
    out = edits.interpolate({"a": jnp.array([1.0, 3.0])}, {"a": jnp.array([3.0, -1.0])}, 0.25)
    np.testing.assert_allclose(out["a"], [1.5, 2.0])
