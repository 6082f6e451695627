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


def test_evaluate_takes_plain_arguments():
    data, params = _data(), MODEL.init(jax.random.key(0))
    m = jax.jit(lambda p: ev.evaluate(MODEL, p, data, p, p, eval_cap=16, n_classes=3))(params)
    want = {"forget_acc", "retain_acc", "test_acc", "test_forget_acc", "mia_attack_acc", "mia_attack_auc"}
    assert set(m) == want | {"mia_forget", "cka_orig", "cka_oracle", "probe_forget_acc"}
    assert abs(float(m["cka_orig"]) - 1) < 1e-5 and abs(float(m["cka_oracle"]) - 1) < 1e-5
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
