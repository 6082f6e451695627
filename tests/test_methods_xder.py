"""X-DER (jaxcl/methods/xder.py): the logit update against a row-by-row numpy reference, and one
task end on a linear classifier checked by hand (which rows move, which columns, the class mask)."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.methods.xder import transplant, transplant_numpy

D, C = 5, 6
RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(D, C)).astype(np.float32)
LIN = types.SimpleNamespace(
    apply=lambda p, x: x @ p["W"] + p["b"],
    init=lambda key: {"W": jnp.asarray(W0), "b": jnp.zeros(C)},
    n_classes=C,
)


def test_transplant_matches_numpy_and_caps_the_new_logits():
    n = 64
    stored = RNG.normal(size=(n, C)).astype(np.float32) * 2
    current = RNG.normal(size=(n, C)).astype(np.float32) * 2
    y = RNG.integers(0, 2, n).astype(np.int32)  # labels of the past classes {0, 1}
    new = np.array([0, 0, 1, 1, 1, 1], bool)
    got = np.asarray(
        transplant(jnp.asarray(stored), jnp.asarray(y), jnp.asarray(current), jnp.asarray(new), 0.85)
    )
    want = transplant_numpy(stored, y, current, new, 0.85)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, :2], stored[:, :2])  # past columns kept
    top, gt = current[:, 2:].max(1), stored[np.arange(n), y]
    capped = top > gt
    assert 0 < capped.sum() < n  # both branches are exercised
    pos = capped & (gt > 0)  # the cap is exact where the stored label logit is positive
    assert pos.sum() > 5
    np.testing.assert_allclose(got[pos, 2:].max(1), 0.85 * gt[pos], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[~capped, 2:], current[~capped, 2:])


def test_task_end_rewrites_only_earlier_rows_on_the_unseen_classes():
    spec = METHODS["xder"]
    _, opts = spec.split({"capacity": 16, "memory_batch": 4, "lr": 0.1})
    hp = as_hparams(spec)
    m = build_method(spec, LIN, hp, opts)

    def batch(seed, classes, n=8):
        r = np.random.default_rng(seed)
        return {
            "x": jnp.asarray(r.normal(size=(n, D)), jnp.float32),
            "y": jnp.asarray(r.choice(classes, n), jnp.int32),
            "t": jnp.zeros((n,), jnp.int32),
            "mask": jnp.ones((n, C), bool),
        }

    b0 = batch(1, [0, 1])
    state = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, b0)
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    state, _ = step(state, b0)  # task 0 fills rows 0..7
    state = m.consolidate(state, b0, jax.random.key(1))
    np.testing.assert_array_equal(state.data_state["past"], [1, 1, 0, 0, 0, 0])
    before0 = np.asarray(state.data_state["buffer"]["logits"])  # no earlier task: unchanged
    assert np.all(before0[:8] != 0)

    b1 = batch(2, [2, 3])
    state, _ = step(state, b1)  # task 1 fills rows 8..15
    stored = np.asarray(state.data_state["buffer"]["logits"])
    np.testing.assert_array_equal(stored[:8], before0[:8])
    end = m.consolidate(state, b1, jax.random.key(2))
    got = np.asarray(end.data_state["buffer"]["logits"])
    y = np.asarray(state.data_state["buffer"]["y"])
    cur = np.asarray(state.data_state["buffer"]["x"], np.float64) @ np.asarray(state.params["W"], np.float64)
    cur += np.asarray(state.params["b"], np.float64)
    new = np.array([0, 0, 1, 1, 1, 1], bool)  # classes not seen before task 1
    want = transplant_numpy(stored[:8], y[:8], cur[:8], new, 0.85)
    np.testing.assert_allclose(got[:8], want, rtol=1e-4, atol=1e-5)  # task-0 rows rewritten
    np.testing.assert_array_equal(got[8:], stored[8:])  # task-1 rows (the task just ended) kept
    assert not np.allclose(got[:8, 2:], stored[:8, 2:])
    np.testing.assert_array_equal(end.data_state["past"], [1, 1, 1, 1, 0, 0])
    _, aux = step(end, batch(3, [4, 5]))
    assert np.isfinite(float(aux["loss"])) and float(aux["der_mse"]) > 0
