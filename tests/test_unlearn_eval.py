"""Forgetting metrics (jaxcl.unlearn.eval): CKA properties, AUC against scikit-learn, the
logistic-regression attack separates separable data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.unlearn import eval as ev


def test_linear_cka_properties():
    x = jax.random.normal(jax.random.key(0), (200, 16))
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (16, 16)))
    assert abs(float(ev.linear_cka(x, x)) - 1) < 1e-5
    assert abs(float(ev.linear_cka(x, 3.0 * x @ q + 2.0)) - 1) < 1e-4  # rotation/scale/shift
    y = jax.random.normal(jax.random.key(2), (200, 16))
    assert float(ev.linear_cka(x, y)) < 0.2


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
