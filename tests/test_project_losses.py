"""A-GEM projection, KL and EWC wrappers and the empirical Fisher against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.losses import (
    classification_loss,
    empirical_fisher,
    ewc_penalty,
    kl_divergence,
    with_ewc_penalty,
    with_kl,
)
from jaxcl.models import mlp
from jaxcl.transforms import project, project_conflicting


def agem_numpy(g, r):
    d = g @ r
    return g - d / (r @ r) * r if d < 0 else g


@pytest.mark.parametrize("seed", range(6))
def test_agem_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    g = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    r = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    tx = project_conflicting()
    out, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(g), ref_grads=jax.tree.map(jnp.asarray, r))
    flat = lambda t: np.concatenate([np.ravel(t["a"]), t["b"]])
    want = agem_numpy(flat(g), flat(r))
    np.testing.assert_allclose(flat(jax.tree.map(np.asarray, out)), want, rtol=1e-5, atol=1e-6)
    assert flat(jax.tree.map(np.asarray, out)) @ flat(r) >= -1e-4  # never conflicts afterwards


def test_agem_zero_reference_is_identity():
    g = {"a": jnp.array([1.0, -2.0])}
    out, _ = project_conflicting().update(g, optax.EmptyState(), ref_grads={"a": jnp.zeros(2)})
    np.testing.assert_array_equal(out["a"], g["a"])


def test_project_against_numpy_orthonormal_basis():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(10, 3)))
    basis = {"w": jnp.asarray(q.T.reshape(3, 2, 5), jnp.float32)}
    g = {"w": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)}
    out = project(g, basis, jnp.ones(3, bool), mode="global")
    v = np.asarray(out["w"]).ravel()
    np.testing.assert_allclose(q.T @ v, 0, atol=1e-5)
    np.testing.assert_allclose(v, np.ravel(g["w"]) - q @ (q.T @ np.ravel(g["w"])), atol=1e-5)


def test_kl_divergence_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    T = 2.0
    sm = lambda z: np.exp(z / T) / np.exp(z / T).sum(-1, keepdims=True)
    want = np.mean(np.sum(sm(a) * (np.log(sm(a)) - np.log(sm(b))), -1))
    np.testing.assert_allclose(float(kl_divergence(jnp.asarray(a), jnp.asarray(b), T)), want, rtol=1e-5)


MODEL = mlp((4, 4, 1), 3, hidden=(8,))


def _batch(n=32):
    rng = np.random.default_rng(1)
    return {
        "x": jnp.asarray(rng.integers(0, 256, (n, 4, 4, 1)), jnp.uint8),
        "y": jnp.asarray(rng.integers(0, 3, n), jnp.int32),
    }


def test_with_kl_adds_scaled_term_and_switch():
    p = MODEL.init(jax.random.key(0))
    b = _batch()
    base = classification_loss(MODEL.apply)
    ref = jnp.asarray(np.random.default_rng(2).normal(size=(32, 3)), jnp.float32)
    l0, aux0 = base(p, b, None)
    l1, aux1 = with_kl(base, weight=0.5, temperature=2.0)(p, {**b, "ref_logits": ref}, None)
    kl = float(kl_divergence(ref, aux0["logits"], 2.0))
    np.testing.assert_allclose(float(l1), float(l0) + 0.5 * 4.0 * kl, rtol=1e-5)
    l2, _ = with_kl(base)(p, {**b, "ref_logits": ref, "ref_logits_on": 0.0}, None)
    np.testing.assert_allclose(float(l2), float(l0), rtol=1e-6)


def test_ewc_penalty_hand_computed():
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
    anchor = {"a": jnp.array([0.0, 1.0]), "b": jnp.array([[1.0]])}
    fisher = {"a": jnp.array([2.0, 4.0]), "b": jnp.array([[0.5]])}
    # 0.5 * (2*1 + 4*1 + 0.5*4) = 4
    assert float(ewc_penalty(params, anchor, fisher)) == pytest.approx(4.0)
    base = lambda p, b, k: (jnp.zeros(()), {})
    loss, aux = with_ewc_penalty(base, lam=3.0)(params, {"ewc": {"anchor": anchor, "fisher": fisher}}, None)
    assert float(loss) == pytest.approx(12.0)


def test_empirical_fisher_matches_per_example_loop():
    p = MODEL.init(jax.random.key(0))
    b = _batch(64)
    base = classification_loss(MODEL.apply)
    fisher = empirical_fisher(base, p, b, None, chunk=32)
    acc = jax.tree.map(jnp.zeros_like, p)
    for i in range(64):
        one = jax.tree.map(lambda a: a[i : i + 1], b)
        g = jax.grad(lambda q: base(q, one, None)[0])(p)
        acc = jax.tree.map(lambda s, gi: s + gi**2 / 64, acc, g)
    for a, c in zip(jax.tree.leaves(fisher), jax.tree.leaves(acc)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="multiple of chunk"):
        empirical_fisher(base, p, _batch(40), None, chunk=32)
