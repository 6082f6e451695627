"""Reservoir replay: exact fill order, uniform inclusion probability, mixing fraction, and the
separate-memory mode A-GEM uses."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.data.replay import reservoir


def stream_batch(i, b=4):
    ids = (i * b + jnp.arange(b)).astype(jnp.int32)
    return {"x": ids.astype(jnp.float32)[:, None], "y": ids, "t": jnp.zeros_like(ids)}


def fill(capacity, n_batches, key, b=4, fraction=0.5):
    dt = reservoir(capacity, fraction)
    state = dt.init(stream_batch(0, b))

    def body(s, i):
        _, s = dt.update(stream_batch(i, b), s, jax.random.fold_in(key, i))
        return s, None

    state, _ = jax.lax.scan(body, state, jnp.arange(n_batches))
    return state


def test_fills_in_order_below_capacity():
    s = fill(16, 3, jax.random.key(0))
    assert int(s["seen"]) == 12
    np.testing.assert_array_equal(np.asarray(s["buffer"]["y"][:12]), np.arange(12))


def test_inclusion_probability_is_uniform():
    # 40 examples into a buffer of 10, 2000 independent seeds: each example is kept w.p. 1/4
    keys = jax.random.split(jax.random.key(1), 2000)
    states = jax.jit(jax.vmap(lambda k: fill(10, 10, k)))(keys)
    ys = np.asarray(states["buffer"]["y"])
    counts = np.bincount(ys.ravel(), minlength=40) / 2000
    assert counts.shape == (40,)
    # standard error sqrt(.25*.75/2000) ~ 0.01; in-batch slot collisions cost a little mass
    assert np.all(np.abs(counts - 0.25) < 0.05), counts
    # every slot holds a distinct example most of the time
    assert np.mean([len(set(r)) == 10 for r in ys]) > 0.95


def test_mix_fraction_and_no_replay_when_empty():
    dt = reservoir(32, 0.25)
    b0 = stream_batch(0, 8)
    s = dt.init(b0)
    out, s = dt.update(b0, s, jax.random.key(0))
    np.testing.assert_array_equal(out["y"], b0["y"])  # empty buffer: nothing replayed
    b1 = stream_batch(100, 8)
    out, s = dt.update(b1, s, jax.random.key(1))
    y = np.asarray(out["y"])
    assert np.all(y[:2] < 8), "the first round(0.25 * 8) = 2 rows come from the buffer"
    np.testing.assert_array_equal(y[2:], np.asarray(b1["y"])[2:])
    np.testing.assert_array_equal(np.asarray(out["x"])[:, 0], y.astype(np.float32))  # rows stay aligned


def test_traced_fraction_under_vmap():
    dt_for = lambda f: reservoir(32, f)
    b0, b1 = stream_batch(0, 8), stream_batch(100, 8)

    def run(f):
        dt = dt_for(f)
        s = dt.init(b0)
        _, s = dt.update(b0, s, jax.random.key(0))
        out, _ = dt.update(b1, s, jax.random.key(1))
        return (out["y"] < 8).sum()

    n = jax.vmap(run)(jnp.array([0.0, 0.25, 0.5, 1.0]))
    np.testing.assert_array_equal(np.asarray(n), [0, 2, 4, 8])


def test_separate_mode_weights():
    dt = reservoir(16, mode="separate", memory_size=5)
    b0 = stream_batch(0)
    s = dt.init(b0)
    out, s = dt.update(b0, s, jax.random.key(0))
    assert out["memory"]["y"].shape == (5,)
    np.testing.assert_array_equal(out["memory"]["weight"], np.zeros(5))
    np.testing.assert_array_equal(out["y"], b0["y"])  # the batch itself is untouched
    out, s = dt.update(stream_batch(1), s, jax.random.key(1))
    np.testing.assert_array_equal(out["memory"]["weight"], np.ones(5))
    assert np.all(np.asarray(out["memory"]["y"]) < 4)
