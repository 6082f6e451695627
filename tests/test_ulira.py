"""jaxcl.unlearn.ulira: LiRA's statistic against scipy's logit of a float64 softmax (extreme
logits included), the Gaussian log-ratio against scipy.stats.norm.logpdf, the best-threshold
accuracy against a brute-force numpy loop, leave-one-out against an explicit refit per held-out
seed, and the property U-LiRA exists for: separated in/out populations give AUC ~ 1, identical
ones ~ 0.5. The fit vmaps over examples and jits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats
from sklearn.metrics import roc_auc_score

from jaxcl.unlearn import ulira


def phi_reference(logits, y):
    """log(p_y / (1 - p_y)) from a float64 softmax, with 1 - p_y summed over the other classes
    (so it does not round to 0)."""
    z = np.asarray(logits, np.float64)
    p = special.softmax(z, axis=-1)
    p_y = p[np.arange(len(y)), y]
    mask = np.ones_like(p, bool)
    mask[np.arange(len(y)), y] = False
    q = np.where(mask, p, 0.0).sum(-1)
    return np.log(p_y) - np.log(q), special.logit(p_y)


def test_phi_matches_scipy_logit():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 10)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    ref, ref_logit = phi_reference(logits, y)
    got = np.asarray(ulira.logit_confidence(jnp.asarray(logits), jnp.asarray(y)))
    np.testing.assert_allclose(got, ref_logit, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_phi_extreme_logits_finite_and_exact():
    # p_y rounds to 1 (or 0) in float32, so a naive logit of the probability is +-inf; the
    # logsumexp form stays equal to the float64 reference
    logits = np.array([[60.0, 0.0, -5.0], [-80.0, 10.0, 10.0], [0.0, 0.0, 0.0]], np.float32)
    y = np.array([0, 0, 2])
    ref, _ = phi_reference(logits, y)
    got = np.asarray(ulira.logit_confidence(jnp.asarray(logits), jnp.asarray(y)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    naive = np.asarray(jax.scipy.special.logit(jax.nn.softmax(jnp.asarray(logits))[jnp.arange(3), y]))
    assert not np.all(np.isfinite(naive))  # the case the stable form exists for
    # beyond float64's softmax too: by hand, phi = 1000 - log(1 + e^-2000) = 1000 and
    # phi = -1000 - (1000 + log(1 + e^-1)) = -2000 - log1p(e^-1)
    huge = jnp.asarray([[1e3, -1e3, 0.0], [-1e3, 1e3, 999.0]], jnp.float32)
    got = np.asarray(ulira.logit_confidence(huge, jnp.asarray([0, 0])))
    np.testing.assert_allclose(got, [1000.0, -2000.0 - np.log1p(np.exp(-1.0))], rtol=1e-6)


def test_log_ratio_matches_scipy_norm():
    rng = np.random.default_rng(1)
    phi_in = rng.normal(2.0, 1.5, (9, 30))
    phi_out = rng.normal(-1.0, 0.7, (9, 30))
    target = rng.normal(0.0, 2.0, 30)
    got = np.asarray(ulira.scores(jnp.asarray(phi_in), jnp.asarray(phi_out), jnp.asarray(target)))
    mi, si = phi_in.mean(0), np.maximum(phi_in.std(0), ulira.MIN_STD)
    mo, so = phi_out.mean(0), np.maximum(phi_out.std(0), ulira.MIN_STD)
    ref = stats.norm.logpdf(target, mi, si) - stats.norm.logpdf(target, mo, so)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_std_floor():
    phi = jnp.ones((5, 3))  # zero spread: the floor keeps the log-density finite
    mu, sd = ulira.fit_gaussian(phi, min_std=0.25)
    np.testing.assert_allclose(np.asarray(sd), 0.25)
    assert np.all(np.isfinite(np.asarray(ulira.gaussian_logpdf(jnp.zeros(3), mu, sd))))


def test_fit_vmaps_over_examples_and_jits():
    rng = np.random.default_rng(2)
    phi = jnp.asarray(rng.normal(size=(7, 11)), jnp.float32)
    w = jnp.asarray([1, 1, 0, 1, 1, 1, 0], jnp.float32)
    direct = ulira.fit_gaussian(phi, w)
    per_example = jax.vmap(lambda p_S: ulira.fit_gaussian(p_S, w), in_axes=1)(phi)
    jitted = jax.jit(ulira.fit_gaussian)(phi, w)
    for a, b, c in zip(direct, per_example, jitted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-6)
    keep = np.asarray(w) > 0  # zero weight = left out of the fit
    np.testing.assert_allclose(np.asarray(direct[0]), np.asarray(phi)[keep].mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(direct[1]), np.asarray(phi)[keep].std(0), rtol=1e-5)


def test_best_accuracy_brute_force():
    rng = np.random.default_rng(3)
    pos = rng.normal(0.8, 1.0, 40).round(1)  # ties on purpose
    neg = rng.normal(0.0, 1.0, 50).round(1)
    best = 0.5
    for t in np.concatenate([pos, neg]):
        best = max(best, 0.5 * ((pos >= t).mean() + (neg < t).mean()))
    got = float(ulira.best_accuracy(jnp.asarray(pos), jnp.asarray(neg)))
    assert got == pytest.approx(best, abs=1e-6)
    d = ulira.decide(jnp.asarray(pos), jnp.asarray(neg))
    y = np.r_[np.ones(40), np.zeros(50)]
    assert float(d["auc"]) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-6)


def test_leave_one_out_equals_explicit_refits():
    rng = np.random.default_rng(4)
    phi_in, phi_out = rng.normal(1, 1, (5, 8)), rng.normal(0, 1, (5, 8))
    pos, neg = ulira.leave_one_out(jnp.asarray(phi_in), jnp.asarray(phi_out))
    for k in range(5):
        rest = np.arange(5) != k
        mi, si = phi_in[rest].mean(0), phi_in[rest].std(0)
        mo, so = phi_out[rest].mean(0), phi_out[rest].std(0)
        for target, got in ((phi_in[k], pos[k]), (phi_out[k], neg[k])):
            ref = stats.norm.logpdf(target, mi, si) - stats.norm.logpdf(target, mo, so)
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="3 or more"):
        ulira.leave_one_out(jnp.zeros((2, 4)), jnp.zeros((2, 4)))


def populations(seed, shift, s=16, n=200):
    """Per-example Gaussians: every example its own mean and spread; "in" shifted by ``shift``
    spreads."""
    rng = np.random.default_rng(seed)
    mu, sd = rng.normal(0, 3, n), rng.uniform(0.3, 1.0, n)
    phi_out = rng.normal(mu, sd, (s, n))
    phi_in = rng.normal(mu + shift * sd, sd, (s, n))
    return jnp.asarray(phi_in, jnp.float32), jnp.asarray(phi_out, jnp.float32)


def test_separated_populations_auc_near_one():
    r = jax.jit(ulira.ulira)(*populations(5, shift=4.0))
    assert float(r["auc"]) > 0.97 and float(r["acc"]) > 0.9
    assert r["scores_pos"].shape == r["scores_neg"].shape == (16, 200)


def test_identical_populations_auc_near_half():
    r = ulira.ulira(*populations(6, shift=0.0))
    assert abs(float(r["auc"]) - 0.5) < 0.05
    assert float(r["acc"]) < 0.56
