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

from jaxcl.data import delt, streams
from jaxcl.data.loaders import Dataset
from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams
from jaxcl.methods import METHODS, fpf, gere, kappatune, prd, refresh, uer, viewbatch

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
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    _, metrics = step(state, batch(6))
    assert float(metrics["tm_loss"]) == 0.0
    later = m.consolidate(state, batch(7), None)  # a second task end keeps the first set
    np.testing.assert_array_equal(later.data_state["x"], b0["x"])


# -- hand-computed gradients of the tiny network -----------------------------------------------


def np_ce_grad(p, x, y):
    """Mean cross-entropy of ``relu(x V) W + b`` and its gradient, by hand."""
    x = np.asarray(x, np.float64).reshape(len(y), -1)
    V, W, b = (np.asarray(a, np.float64) for a in (p["V"], p["head"]["kernel"], p["head"]["bias"]))
    a = x @ V
    h = np.maximum(a, 0)
    z = h @ W + b
    pr = np.exp(z - z.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    n = len(y)
    loss = -np.log(pr[np.arange(n), y]).mean()
    dz = (pr - np.eye(C)[y]) / n
    dh = dz @ W.T * (a > 0)
    return loss, {"V": x.T @ dh, "head": {"kernel": h.T @ dz, "bias": dz.sum(0)}}


def tree_close(a, b, **kw):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw)


# -- FPF / k-FPF -------------------------------------------------------------------------------


def test_fpf_module_change_and_selection():
    p = jax.tree.map(jnp.asarray, P0)
    moved = {"V": p["V"] * 1.5, "head": {"kernel": p["head"]["kernel"] * 1.1, "bias": p["head"]["bias"]}}
    names, scores = fpf.module_change(moved, p)
    assert names == ["", "head"]  # V is a top-level tensor: its own module
    hk, hb = P0["head"]["kernel"], P0["head"]["bias"]
    want_head = np.sqrt(((0.1 * hk) ** 2).sum()) / np.sqrt((hk**2).sum() + (hb**2).sum())
    np.testing.assert_allclose(scores, [0.5, want_head], rtol=1e-5)
    sel = fpf.prone_selection(moved, p, jnp.float32(1), 1)
    assert float(sel["V"]) == 1 and float(sel["head"]["kernel"]) == 0 == float(sel["head"]["bias"])
    sel0 = fpf.prone_selection(moved, p, jnp.float32(0), 1)  # no dynamics yet: the head
    assert float(sel0["V"]) == 0 and float(sel0["head"]["kernel"]) == 1 == float(sel0["head"]["bias"])


def test_fpf_finetunes_only_the_selected_tensors_by_sgd():
    p = jax.tree.map(jnp.asarray, P0)
    b = batch(8)
    buf = {"x": b["x"], "y": b["y"], "mask": b["mask"]}
    select = fpf.head_selection(p)
    # one step on the whole (8-row) buffer drawn with replacement: compare with a numpy SGD step on
    # the rows actually drawn
    key = jax.random.key(3)
    new = fpf.finetune_selected(NET.apply, p, select, buf, jnp.int32(8), key, steps=1, batch=8, lr=0.5)
    idx = np.asarray(jax.random.randint(jax.random.split(key, 1)[0], (8,), 0, 8))
    _, g = np_ce_grad(P0, np.asarray(b["x"])[idx], np.asarray(b["y"])[idx])
    np.testing.assert_array_equal(new["V"], p["V"])
    np.testing.assert_allclose(
        new["head"]["kernel"], P0["head"]["kernel"] - 0.5 * g["head"]["kernel"], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        new["head"]["bias"], P0["head"]["bias"] - 0.5 * g["head"]["bias"], rtol=1e-4, atol=1e-6
    )
    empty = fpf.finetune_selected(NET.apply, p, select, buf, jnp.int32(0), key, steps=3, batch=8, lr=0.5)
    tree_close(empty, p, rtol=0, atol=0)  # an empty buffer changes nothing


# -- refresh learning --------------------------------------------------------------------------


def test_refresh_displacement_against_numpy_and_ascends_the_loss():
    from jaxcl.losses import classification_loss

    p = jax.tree.map(jnp.asarray, P0)
    b = batch(9)
    fisher = jax.tree.map(lambda a: jnp.full(a.shape, 2.0), p)
    d = refresh.unlearn_displacement(
        classification_loss(NET.apply),
        p,
        b,
        fisher,
        jax.random.key(0),
        delta=1e-2,
        noise=0.0,
        fisher_coef=0.5,
    )
    loss0, g = np_ce_grad(P0, b["x"], np.asarray(b["y"]))
    want = jax.tree.map(lambda a, gi: 1e-2 * gi * np.linalg.norm(a) / np.linalg.norm(gi) / 2.0, P0, g)
    tree_close(d, want, rtol=1e-4, atol=1e-7)
    loss1, _ = np_ce_grad(jax.tree.map(lambda a, di: a + np.asarray(di), P0, d), b["x"], np.asarray(b["y"]))
    assert loss1 > loss0  # unlearning: the current data's loss goes up


def test_refresh_step_is_unlearn_then_relearn():
    """One refreshed SGD step: theta' = theta + Delta, then theta' - lr * grad CE(theta')."""
    import optax

    from jaxcl.losses import classification_loss
    from jaxcl.methods.base import Method

    host = Method(classification_loss(NET.apply), optax.sgd(0.1))
    hp = {"refresh_delta": jnp.float32(1e-2), "refresh_noise": jnp.float32(0.0)}
    m = refresh.refreshed(host, NET, hp, NET.init(None), 1e-3)
    b = batch(10)
    state = init_state(NET.init(None), m.tx, jax.random.key(1), m.data, b)
    state, _ = make_step(m.loss_fn, m.tx, m.data, extra_args=m.extra_args)(state, b)
    _, g = np_ce_grad(P0, b["x"], np.asarray(b["y"]))
    scale = jax.tree.map(lambda a, gi: np.linalg.norm(a) / np.linalg.norm(gi), P0, g)
    moved = jax.tree.map(lambda a, gi, s: a + 1e-2 * s * gi, P0, g, scale)  # F = 0 before any task end
    _, g2 = np_ce_grad(moved, b["x"], np.asarray(b["y"]))
    tree_close(state.params, jax.tree.map(lambda a, gi: a - 0.1 * gi, moved, g2), rtol=1e-4, atol=1e-6)


def test_refresh_fisher_against_numpy():
    p = jax.tree.map(jnp.asarray, P0)
    b = batch(11, n=4)
    f = refresh.task_fisher(NET.apply, p, b)
    want = jax.tree.map(lambda a: np.zeros(a.shape), P0)
    for i in range(4):
        x, y = np.asarray(b["x"])[i : i + 1], np.asarray(b["y"])[i : i + 1]
        nll, g = np_ce_grad(P0, x, y)
        want = jax.tree.map(lambda w, gi: w + np.exp(-nll) * gi**2 / 4, want, g)
    tree_close(f, want, rtol=1e-4, atol=1e-8)


# -- KappaTune ---------------------------------------------------------------------------------


def test_kappatune_condition_numbers_and_selection():
    for w in (P0["V"], P0["head"]["kernel"], RNG.normal(size=(3, 2, 4))):
        np.testing.assert_allclose(
            kappatune.condition_number(jnp.asarray(w)), np.linalg.cond(w.reshape(-1, w.shape[-1])), rtol=1e-4
        )
    p = jax.tree.map(jnp.asarray, P0)
    mask, kappas = kappatune.kappa_selection(p, 0.5)
    smallest = "V" if np.linalg.cond(P0["V"]) < np.linalg.cond(P0["head"]["kernel"]) else "head"
    assert float(mask["V"]) == (smallest == "V") and float(mask["head"]["kernel"]) == (smallest == "head")
    assert float(mask["head"]["bias"]) == 0.0 and np.isinf(kappas["head"]["bias"])  # vectors: frozen
    full, _ = kappatune.kappa_selection(p, 1.0)
    assert float(full["V"]) == 1 == float(full["head"]["kernel"])


def test_kappatune_leaves_unselected_tensors_unchanged():
    spec = METHODS["kappatune"]
    _, opts = spec.split({})
    m = spec.build(NET, as_hparams(spec), NET.init(None), **opts)
    b = batch(12)
    state = init_state(NET.init(None), m.tx, jax.random.key(0), m.data, b)
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    first, _ = step(state, b)  # the first task adapts everything
    assert all(
        float(jnp.abs(u - v).max()) > 0
        for u, v in zip(jax.tree.leaves(first.params), jax.tree.leaves(state.params))
    )
    state = m.consolidate(first, b, None)
    mask = state.opt_state.mask
    for _ in range(3):
        state, _ = step(state, batch(13))
    for new, old, k in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(first.params), jax.tree.leaves(mask)
    ):
        if float(k) == 0:
            np.testing.assert_array_equal(new, old)
        else:
            assert float(jnp.abs(new - old).max()) > 0


# -- view-batch replay -------------------------------------------------------------------------


def test_view_batch_replay_repeats_each_sample_as_shifted_views():
    from jaxcl.data.replay import reservoir

    r = np.random.default_rng(14)
    b = {
        "x": jnp.asarray(r.integers(1, 255, (12, 6, 6, 1)), jnp.uint8),
        "y": jnp.asarray(r.integers(0, C, 12), jnp.int32),
        "t": jnp.zeros((12,), jnp.int32),
        "mask": jnp.ones((12, C), bool),
    }
    t = viewbatch.view_batch(reservoir(50, 0.0, fields=("x", "y", "t", "mask")), 4, 1)
    out, st = jax.jit(t.update)(b, t.init(b), jax.random.key(2))
    assert int(st["seen"]) == 3  # the buffer stores the 3 distinct samples learned, not 12 rows
    np.testing.assert_array_equal(out["view"], np.tile(np.arange(4), 3))
    np.testing.assert_array_equal(out["y"], np.repeat(np.asarray(b["y"][:3]), 4))
    x, x0 = np.asarray(out["x"]), np.asarray(b["x"])
    for i in range(3):
        np.testing.assert_array_equal(x[4 * i], x0[i])  # view 0 as drawn
        for v in range(1, 4):  # every other view is a shift by at most 1 pixel (zero fill)
            pad = np.pad(x0[i], ((1, 1), (1, 1), (0, 0)))
            shifts = [pad[dy : dy + 6, dx : dx + 6] for dy in range(3) for dx in range(3)]
            assert any(np.array_equal(x[4 * i + v], s) for s in shifts)
    with pytest.raises(ValueError, match="multiple of views"):
        viewbatch.view_batch(reservoir(50, 0.0), 5, 1).update(b, t.init(b), jax.random.key(0))


def test_view_consistency_against_numpy():
    logits = RNG.normal(size=(8, C)).astype(np.float32)
    got = viewbatch.view_consistency(jnp.asarray(logits), 4)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p = p.reshape(2, 4, C)
    want = np.mean([(p[i, 0] * np.log(p[i, 0] / p[i, v])).sum() for i in range(2) for v in range(1, 4)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


# -- prototype-sample relation distillation ----------------------------------------------------


def test_prd_supcon_against_a_loop():
    z = RNG.normal(size=(6, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.array([0, 1, 0, 2, 1, 0])
    tau = 0.5
    per = []
    for i in range(6):
        den = sum(np.exp(z[i] @ z[a] / tau) for a in range(6) if a != i)
        pos = [p for p in range(6) if p != i and y[p] == y[i]]
        if pos:
            per.append(-np.mean([np.log(np.exp(z[i] @ z[p] / tau) / den) for p in pos]))
    got = prd.supcon_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y), tau)
    np.testing.assert_allclose(got, np.mean(per), rtol=1e-5)  # class 2 has no positive: left out


def test_prd_distillation_keeps_old_relations_and_prototypes_do_not_move_features():
    p = jax.tree.map(jnp.asarray, P0)
    b = batch(15)
    z, protos = prd.embed(NET, p, b["x"])
    old = jnp.array([True, True, False, True])
    teacher = np.asarray(z @ protos)
    d = prd.relation_distillation(z, protos, jnp.asarray(teacher), old, 0.1)
    assert abs(float(d)) < 1e-6  # the student is the teacher: nothing to distill
    q = teacher * 0.5  # another teacher: KL over the old classes only, by hand
    qs = np.exp(q[:, [0, 1, 3]] / 0.1)
    qs /= qs.sum(1, keepdims=True)
    ss = np.exp(teacher[:, [0, 1, 3]] / 0.1)
    ss /= ss.sum(1, keepdims=True)
    want = (qs * np.log(qs / ss)).sum(1).mean()
    got = prd.relation_distillation(z, protos, jnp.asarray(q), old, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    current = jnp.array([True, False, True, True])
    y = jnp.array([0, 2, 3, 0, 2, 3, 0, 2])

    def lp(params):
        zz, pp = prd.embed(NET, params, b["x"])
        return prd.prototype_loss(zz, pp, y, current, 0.1)

    g = jax.grad(lp)(p)
    assert float(jnp.abs(g["V"]).max()) == 0.0  # the prototype loss moves only the prototypes
    assert float(jnp.abs(g["head"]["kernel"]).max()) > 0.0


# -- SCoLe, end to end with the cl runner -------------------------------------------------------


def test_scole_tiny_runs_end_to_end(tmp_path):
    import json

    from jaxcl import cli

    assert cli.main(["run", "scole", "--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["data"]["scenario"] == "scole"
    R = np.asarray(res["rows"]["finetune"]["R_mean"])
    assert R.shape == (12, 12)
    assert np.all(np.diag(R) > 0.6)  # every 2-class visit is learned while it is current


# -- DELT: LQS scoring, folding ordering, reading a stream in order -------------------------------


def test_folding_order_by_hand():
    np.testing.assert_array_equal(delt.folding_order([5, 1, 4, 2, 3, 0], 2), [5, 3, 2, 1, 4, 0])
    np.testing.assert_array_equal(delt.folding_order([3, 1, 2], 1), [1, 2, 0])  # one layer: a plain sort


def test_lqs_scores_against_numpy():
    p0 = jax.tree.map(jnp.asarray, P0)
    p1 = jax.tree.map(lambda a: a * 0.9 + 0.05, p0)
    ckpts = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    b, tb = batch(16, n=10), batch(17, n=6)
    got = delt.lqs_scores(NET, ckpts, b["x"], b["y"], tb["x"], tb["y"], chunk=4)
    flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])  # noqa: E731
    p1n = jax.tree.map(np.asarray, p1)
    _, lam = np_ce_grad(P0, tb["x"], np.asarray(tb["y"]))
    lam = flat(lam)
    want = []
    for i in range(10):
        xi, yi = np.asarray(b["x"])[i : i + 1], np.asarray(b["y"])[i : i + 1]
        g0, g1 = flat(np_ce_grad(P0, xi, yi)[1]), flat(np_ce_grad(p1n, xi, yi)[1])
        cos = g0 @ lam / (np.linalg.norm(g0) * np.linalg.norm(lam))
        want.append(np.linalg.norm(lam) * np.linalg.norm(g0) / np.linalg.norm(g1) * cos)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_delt_orders_each_task_in_folds_and_selects():
    from jaxcl.models import mlp

    data = fake_data(n_classes=4, per_class=24)
    s = streams.split_classes(data, 2)
    model = mlp((2, 2, 1), 4, hidden=(8,))
    out, scores = delt.delt(
        s, model, layers=3, select=0.75, proxy_steps=6, checkpoints=3, target=16, chunk=16
    )
    assert list(out.train_n) == [36, 36]  # 75 % of the 48 examples of each task
    for t in range(2):
        sc = scores[t]
        folds = np.array_split(np.arange(36), 3)
        for f in folds:  # each fold ascends through the whole score range
            assert np.all(np.diff(sc[f]) >= 0)
        kept = set(np.asarray(out.train_x[t, :36, 0, 1, 0]).tolist())  # pixel 1: the example's index
        assert len(kept) == 36 and set(np.asarray(out.train_y[t, :36]).tolist()) <= {2 * t, 2 * t + 1}


def test_sequential_order_reads_each_task_in_stored_order():
    from jaxcl.loops import Experiment, LoopConfig
    from jaxcl.models import mlp

    data = fake_data(n_classes=4, per_class=12)
    s = jax.device_put(streams.split_classes(data, 2))
    loop = LoopConfig(steps_per_task=4, batch_size=4, eval_every=2, eval_per_task=8, order="sequential")
    exp = Experiment(mlp((2, 2, 1), 4, hidden=(4,)), METHODS["er"], loop, capacity=64)
    hp = exp.default_hparams(replay_fraction=0.0)
    state = exp.init(jax.random.key(0), s, hp)
    train = jax.jit(exp.train_task)
    state, _ = train(state, s, hp, jnp.int32(0))
    state, _ = train(state, s, hp, jnp.int32(1))
    buf = state.data_state["buffer"]["x"]  # reservoir slot i holds the i-th row trained on
    np.testing.assert_array_equal(buf[:16], s.train_x[0, :16])
    np.testing.assert_array_equal(buf[16:32], s.train_x[1, :16])
