"""The methods of our papers against hand-computed numpy references on a tiny one-hidden-layer
network (features ``relu(x V)``, head ``W, b``), plus a property of each: power-law rehearsal's
counts follow the exponent, UER's current-sample term ignores the head's norms, GeRe's margin loss
is zero at collection, FPF moves only the forgetting-prone tensors, refresh's unlearning step
ascends the current loss, KappaTune leaves unselected tensors unchanged, SCoLe's classes re-occur,
view-batch replay repeats each sample in one batch, prototype distillation keeps old relations."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.data import streams
from jaxcl.data.loaders import Dataset
from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams
from jaxcl.methods import METHODS, gere, uer

D, H, C, B = 6, 5, 4, 8
RNG = np.random.default_rng(0)
P0 = {
    "V": RNG.normal(size=(D, H)).astype(np.float32),
    "head": {
        "kernel": RNG.normal(size=(H, C)).astype(np.float32),
        "bias": RNG.normal(size=C).astype(np.float32),
    },
}


def _features(p, x):
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["V"])


NET = types.SimpleNamespace(
    features=_features,
    apply=lambda p, x: _features(p, x) @ p["head"]["kernel"] + p["head"]["bias"],
    init=lambda key: jax.tree.map(jnp.asarray, P0),
    n_classes=C,
    name="tiny",
)


def np_features(p, x):
    return np.maximum(np.asarray(x).reshape(len(x), -1) @ p["V"], 0)


def np_ce(logits, y):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def batch(seed, n=B, t=0):
    r = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(r.normal(size=(n, D)), jnp.float32),
        "y": jnp.asarray(r.integers(0, C, n), jnp.int32),
        "t": jnp.full((n,), t, jnp.int32),
        "mask": jnp.ones((n, C), bool),
    }


def fake_data(n_classes=4, per_class=30, shape=(2, 2, 1)):
    """A tiny data set whose images encode their class (pixel 0) and index (pixel 1)."""
    y = np.repeat(np.arange(n_classes), per_class).astype(np.int32)
    x = np.zeros((len(y),) + shape, np.uint8)
    x[:, 0, 0, 0] = y
    x[:, 0, 1, 0] = np.arange(len(y)) % 256
    return Dataset("fake", x, y, x.copy(), y.copy(), n_classes)


# -- power-law rehearsal (a stream option) -------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_power_law_counts_follow_the_exponent(alpha):
    t, n = 6, 10_000
    c = streams.power_law_counts(t, n, alpha)
    assert c.sum() == n
    want = (t - np.arange(t)) ** -alpha
    np.testing.assert_allclose(c, n * want / want.sum(), atol=1.0)  # largest-remainder rounding
    if alpha > 0:  # the most recent task is rehearsed most; ratios are the power law's
        assert np.all(np.diff(c) > 0)
        np.testing.assert_allclose(c[-1] / c[-2], 2.0**alpha, rtol=1e-3)


def test_power_law_rehearsal_mixes_earlier_tasks_by_the_schedule():
    data = fake_data(n_classes=8, per_class=40)
    s = streams.split_classes(data, 4)
    r = streams.power_law_rehearsal(s, 0.5, alpha=1.0, seed=3)
    np.testing.assert_array_equal(r.test_x, s.test_x)  # evaluation is unchanged
    for t in range(4):
        n_own = int(s.train_n[t])
        n = int(r.train_n[t])
        assert n == n_own + (n_own if t else 0)  # fraction 0.5: as many rehearsed as own examples
        ys = r.train_y[t, :n]
        task_of = ys // 2  # split_classes: task i holds classes 2i, 2i+1
        got = np.bincount(task_of, minlength=4)[:t]
        np.testing.assert_array_equal(got, streams.power_law_counts(t, n - n_own, 1.0))
        assert (task_of == t).sum() == n_own and task_of.max() == t
        np.testing.assert_array_equal(r.train_x[t, :n, 0, 0, 0], ys)  # images travel with their labels
    with pytest.raises(ValueError, match="single-head"):
        streams.power_law_rehearsal(streams.split_classes(data, 4, task_incremental=True), 0.5)
    assert streams.power_law_rehearsal(s, 0.0) is s


def test_scole_stream_reoccurring_classes():
    data = fake_data(n_classes=6, per_class=20)
    s = streams.make_stream(data, "scole", 30, classes_per_task=2, seed=1)
    assert s.n_tasks == 30 and s.masks.all()
    np.testing.assert_array_equal(s.task_classes.sum(1), 2)
    assert (s.task_classes.sum(0) > 1).all()  # every class re-occurs
    for t in range(30):
        ys = s.train_y[t, : s.train_n[t]]
        assert set(np.unique(ys)) == set(np.flatnonzero(s.task_classes[t]))
        assert s.train_n[t] == 40
    with pytest.raises(ValueError, match="classes_per_task"):
        streams.scole(data, 3, classes_per_task=7)


# -- UER ---------------------------------------------------------------------------------------


def uer_batch():
    b = batch(1)
    m = batch(2)
    m["weight"] = jnp.ones((B,), jnp.float32)
    return {**b, "memory": m}


def test_uer_loss_against_numpy():
    bt = uer_batch()
    loss, aux = uer.uer_loss(NET, 10.0)(jax.tree.map(jnp.asarray, P0), bt, None)
    W, bias = P0["head"]["kernel"], P0["head"]["bias"]
    h = np_features(P0, bt["x"])
    cos = (h / np.linalg.norm(h, axis=1, keepdims=True)) @ (W / np.linalg.norm(W, axis=0, keepdims=True))
    want_cur = np_ce(10.0 * cos, np.asarray(bt["y"])).mean()
    hm = np_features(P0, bt["memory"]["x"])
    want_mem = np_ce(hm @ W + bias, np.asarray(bt["memory"]["y"])).mean()
    np.testing.assert_allclose(aux["ce_angle"], want_cur, rtol=1e-5)
    np.testing.assert_allclose(aux["ce_replay"], want_mem, rtol=1e-5)
    np.testing.assert_allclose(loss, want_cur + want_mem, rtol=1e-5)


def test_uer_current_term_sees_only_the_angle():
    """Rescaling a class's head column (its norm factor) leaves the current-sample term unchanged
    and changes the replay term."""
    bt = uer_batch()
    p = jax.tree.map(jnp.asarray, P0)
    q = jax.tree.map(lambda a: a, p)
    q["head"] = {"kernel": p["head"]["kernel"] * jnp.array([1.0, 3.0, 0.2, 1.0]), "bias": p["head"]["bias"]}
    loss = uer.uer_loss(NET, 10.0)
    _, a = loss(p, bt, None)
    _, b = loss(q, bt, None)
    np.testing.assert_allclose(a["ce_angle"], b["ce_angle"], rtol=1e-6)
    assert abs(float(a["ce_replay"]) - float(b["ce_replay"])) > 1e-3
    bt["memory"]["weight"] = jnp.zeros((B,))  # an empty buffer: no replay term
    assert float(loss(p, bt, None)[1]["ce_replay"]) == 0.0


# -- GeRe --------------------------------------------------------------------------------------


def np_tm(h, h0):
    mu, sd = h0.mean(0), h0.std(0)
    pos, neg = mu + sd, mu - sd
    l = np.where(
        h0 <= neg,
        np.maximum(h - neg, 0),
        np.where(h0 >= pos, np.maximum(pos - h, 0), np.maximum(h - pos, 0) + np.maximum(neg - h, 0)),
    )
    return l.sum() / max((l > 0).sum(), 1e-8)


def test_gere_margin_loss_against_numpy_and_zero_at_collection():
    r = np.random.default_rng(4)
    h0 = r.normal(size=(16, H)).astype(np.float32)
    h = r.normal(size=(16, H)).astype(np.float32)
    lab, pos, neg = gere.state_labels(jnp.asarray(h0))
    np.testing.assert_allclose(gere.tm_loss(jnp.asarray(h), lab, pos, neg), np_tm(h, h0), rtol=1e-5)
    assert float(gere.tm_loss(jnp.asarray(h0), lab, pos, neg)) == 0.0  # the states it was built from


def test_gere_collects_the_general_set_once():
    spec = METHODS["gere"]
    _, opts = spec.split({"general_samples": 8, "memory_batch": 4})
    hp = as_hparams(spec)
    m = spec.build(NET, hp, jax.tree.map(jnp.asarray, P0), **opts)
    b0 = batch(5)
    state = init_state(NET.init(None), m.tx, jax.random.key(0), m.data, b0)
    state = m.consolidate(state, b0, None)
    ds = state.data_state
    np.testing.assert_array_equal(ds["x"], b0["x"])
    assert float(ds["on"]) == 1.0
    # the margin loss of the general rows is 0 under the params they were collected with
    step = make_step(m.loss_fn, m.tx, m.data)
    _, metrics = step(state, batch(6))
    assert float(metrics["tm_loss"]) == 0.0
    later = m.consolidate(state, batch(7), None)  # a second task end keeps the first set
    np.testing.assert_array_equal(later.data_state["x"], b0["x"])
