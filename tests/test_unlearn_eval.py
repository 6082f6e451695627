"""Forgetting metrics (jaxcl.unlearn.eval): CKA properties, AUC against scikit-learn, the
logistic-regression attack separates separable data, ``evaluate`` on plain arguments, and the
relearning attack (the registry's finetune through the one loop) relearns a forgotten class."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.models import mlp
from jaxcl.unlearn import eval as ev
from jaxcl.unlearn.common import UnlearnData

MODEL = mlp((4, 4, 1), 3, hidden=(8,))


def _data():
    """96 random 4x4 images in 3 classes; class 0 is the forget set."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (96, 4, 4, 1)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, 3, 96), jnp.int32)
    f = y == 0
    return UnlearnData(x, y, x[~f], y[~f], x[f], y[f], x[~f][:40], y[~f][:40], x[f][:10], y[f][:10])


def np_linear_cka(x, y):
    """Linear CKA from its definition (Kornblith et al. 2019) in the Gram-matrix form:
    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, HSIC(K, L) = tr(K H L H)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda k, l: np.trace(k @ h @ l @ h)
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_matches_the_definition_on_different_representations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16))
    y = np.tanh(x @ rng.normal(size=(16, 24))) + 0.5 * rng.normal(size=(120, 24))  # related, not equal
    z = np.c_[x[:, :4], rng.normal(size=(120, 12))]  # shares 4 of 16 directions
    for a, b in ((x, y), (x, z), (y, z)):
        want = np_linear_cka(a, b)
        assert 0.05 < want < 0.95  # between the extremes: the comparison can see a wrong formula
        np.testing.assert_allclose(float(ev.linear_cka(jnp.asarray(a), jnp.asarray(b))), want, rtol=2e-5)


def test_linear_cka_invariances_and_independence():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(200, 16)), jnp.float32)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert abs(float(ev.linear_cka(x, 3.0 * x @ q + 2.0)) - 1) < 1e-5  # orthogonal map, scale, shift
    # not invariant to a general invertible linear map (CCA would be): CKA(X, XA) < 1
    a = np.diag(np.geomspace(1.0, 30.0, 16)) @ q
    np.testing.assert_allclose(float(ev.linear_cka(x, x @ a)), np_linear_cka(x, x @ a), rtol=2e-5)
    assert float(ev.linear_cka(x, x @ a)) < 0.7
    # independent random features: small, near its expectation under independence (~ d / n)
    cka_ind = [
        float(ev.linear_cka(x, jnp.asarray(rng.normal(size=(200, 16)), jnp.float32))) for _ in range(5)
    ]
    assert max(cka_ind) < 0.15 and 0.02 < np.mean(cka_ind) < 0.12, cka_ind


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1, 300), 1)  # with ties
    neg = np.round(rng.normal(0.0, 1, 200), 1)
    ref = metrics.roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[pos, neg])
    assert abs(float(ev.auc(jnp.asarray(pos), jnp.asarray(neg))) - ref) < 1e-6


def test_logistic_regression_separates():
    x = jnp.concatenate(
        [
            jax.random.normal(jax.random.key(0), (100, 2)) + 3,
            jax.random.normal(jax.random.key(1), (100, 2)) - 3,
        ]
    )
    y = jnp.r_[jnp.ones(100), jnp.zeros(100)]
    p = ev.predict_proba(ev.logistic_regression(x, y), x)
    assert float(((p > 0.5) == (y > 0.5)).mean()) > 0.97


def test_batched_pads_and_matches():
    f = lambda p, x: x * p
    x = jnp.arange(1234.0)
    np.testing.assert_allclose(ev.batched(f, 2.0, x, chunk=500), 2 * x)


def test_evaluate_takes_plain_arguments():
    data, params = _data(), MODEL.init(jax.random.key(0))
    noise = MODEL.init(jax.random.key(2))
    orig, oracle = MODEL.init(jax.random.key(1)), jax.tree.map(lambda a, n: a + 0.5 * n, params, noise)
    m = jax.jit(lambda p, o, r: ev.evaluate(MODEL, p, data, o, r, eval_cap=16, n_classes=3))(
        params, orig, oracle
    )
    want = {"forget_acc", "retain_acc", "test_acc", "test_forget_acc", "mia_attack_acc", "mia_attack_auc"}
    assert set(m) == want | {"mia_forget", "cka_orig", "cka_oracle", "probe_forget_acc"}
    # CKA of the model's features against each reference model's on the first forget examples
    xf = data.x_forget[:16]
    feats = {k: np.asarray(MODEL.features(p, xf)) for k, p in (("p", params), ("o", orig), ("r", oracle))}
    np.testing.assert_allclose(float(m["cka_orig"]), np_linear_cka(feats["p"], feats["o"]), rtol=1e-4)
    np.testing.assert_allclose(float(m["cka_oracle"]), np_linear_cka(feats["p"], feats["r"]), rtol=1e-4)
    assert float(m["cka_orig"]) < 0.99 and float(m["cka_oracle"]) < 0.99  # not the model itself
    acc = ev.accuracy(MODEL.apply, params, data.x_forget, data.y_forget)
    assert float(m["forget_acc"]) == float(acc)


def test_relearn_starts_at_the_held_out_accuracy_and_relearns_the_class():
    data, params = _data(), MODEL.init(jax.random.key(0))
    n = 8
    curve = jax.jit(
        lambda p, k: ev.relearn(
            MODEL, p, data, k, steps=20, every=5, n=n, lr=3e-2, batch_size=8, eval_cap=100
        )
    )(params, jax.random.key(1))
    assert curve.shape == (5,)  # after 0, 5, 10, 15, 20 steps
    before = ev.accuracy(MODEL.apply, params, data.x_forget[n:], data.y_forget[n:])
    assert float(curve[0]) == float(before)
    # every forget example has label 0: fine-tuning on 8 of them teaches "always 0"
    assert float(curve[-1]) == 1.0 > float(curve[0])
    with pytest.raises(ValueError, match="needs 2 or more"):
        one = data.replace(x_forget=data.x_forget[:1], y_forget=data.y_forget[:1])
        ev.relearn(MODEL, params, one, jax.random.key(1))
