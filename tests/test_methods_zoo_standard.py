"""The standard continual-learning methods of the zoo against hand-computed numpy references on a
linear softmax classifier (SI's path integral and importance, MAS's importance, online EWC's
decayed Fisher, DER/DER++'s loss and logit buffer, ER-ACE's masking) and GEM's projection against
scipy's non-negative least squares (its dual)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.methods.der import der_loss
from jaxcl.methods.er_ace import ace_loss
from jaxcl.transforms.gem import project_gem

D, C, B = 5, 3, 8
RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(D, C)).astype(np.float32) * 0.5
B0 = RNG.normal(size=C).astype(np.float32) * 0.1
LIN = types.SimpleNamespace(
    apply=lambda p, x: x @ p["W"] + p["b"],
    init=lambda key: {"W": jnp.asarray(W0), "b": jnp.asarray(B0)},
    n_classes=C,
)


def batch(seed, n=B, t=0):
    r = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(r.normal(size=(n, D)), jnp.float32),
        "y": jnp.asarray(r.integers(0, C, n), jnp.int32),
        "t": jnp.full((n,), t, jnp.int32),
        "mask": jnp.ones((n, C), bool),
    }


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ce(z, y):
    return -np.log(np_softmax(z)[np.arange(len(y)), y])


def np_grads(W, b, x, y):
    """Per-example gradients of the softmax cross-entropy of ``x @ W + b``."""
    x, y = np.asarray(x, np.float64), np.asarray(y)
    d = np_softmax(x @ W + b) - np.eye(C)[y]
    return np.einsum("bd,bc->bdc", x, d), d


def method(name, **opts):
    spec = METHODS[name]
    hp_vals = {k: v for k, v in opts.items() if k in spec.hparams}
    _, o = spec.split({k: v for k, v in opts.items() if k not in spec.hparams})
    hp = as_hparams(spec, hp_vals)
    return build_method(spec, LIN, hp, o), hp


def test_si_path_integral_importance_and_penalty_by_hand():
    m, _ = method("si", optim="sgd", lr=0.1, si_c=0.5, si_xi=0.1)
    state = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, batch(0))
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    W, b = W0.astype(np.float64), B0.astype(np.float64)
    w_W, w_b = np.zeros_like(W), np.zeros_like(b)
    for s in range(3):
        bt = batch(s)
        state, _ = step(state, bt)
        gW, gb = np_grads(W, b, bt["x"], bt["y"])
        gW, gb = gW.mean(0), gb.mean(0)
        w_W += 0.1 * gW**2  # -g * (-lr g)
        w_b += 0.1 * gb**2
        W, b = W - 0.1 * gW, b - 0.1 * gb
    np.testing.assert_allclose(state.opt_state["w"]["W"], w_W, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(state.params["W"], W, rtol=1e-5, atol=1e-6)
    state = m.consolidate(state, batch(9), jax.random.key(1))
    omega = w_W / ((W - W0) ** 2 + 0.1)
    np.testing.assert_allclose(state.data_state["fisher"]["W"], omega, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(state.opt_state["w"]["W"], 0.0)
    np.testing.assert_allclose(state.opt_state["start"]["W"], W, rtol=1e-5)
    # the penalty: c * sum Omega (theta - theta*)^2
    moved = jax.tree.map(lambda a: a + 0.3, state.params)
    bt = batch(5)
    bt2, _ = m.data.update(bt, state.data_state, jax.random.key(0))
    loss, aux = m.loss_fn(moved, bt2, None)
    omega_b = w_b / ((b - B0) ** 2 + 0.1)
    want = 0.5 * 0.09 * (omega.sum() + omega_b.sum())
    np.testing.assert_allclose(float(loss - aux["ce"]), want, rtol=1e-3)


def test_mas_importance_by_hand_and_its_decay():
    m, _ = method("mas", mas_alpha=0.25)
    state = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, batch(0))

    def np_mas(W, b, x):
        f = np.asarray(x, np.float64) @ W + b
        return np.abs(2 * np.einsum("bd,bc->bdc", np.asarray(x, np.float64), f)).mean(0), np.abs(2 * f).mean(
            0
        )

    b1, b2 = batch(1, 32), batch(2, 32)
    state = m.consolidate(state, b1, jax.random.key(0))
    iW1, ib1 = np_mas(W0, B0, b1["x"])
    np.testing.assert_allclose(state.data_state["fisher"]["W"], iW1, rtol=1e-4)
    np.testing.assert_allclose(state.data_state["fisher"]["b"], ib1, rtol=1e-4)
    new_params = {"W": jnp.asarray(W0 * 0.5), "b": jnp.asarray(B0)}
    state = m.consolidate(state.replace(params=new_params), b2, jax.random.key(0))
    iW2, _ = np_mas(W0 * 0.5, B0, b2["x"])
    np.testing.assert_allclose(state.data_state["fisher"]["W"], 0.25 * iW1 + 0.75 * iW2, rtol=1e-4)


def test_online_ewc_decays_the_fisher():
    m, _ = method("ewc_online", ewc_gamma=0.5)
    state = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, batch(0))
    b1, b2 = batch(1, 32), batch(2, 32)
    state = m.consolidate(state, b1, jax.random.key(0))
    f1 = (np_grads(W0, B0, b1["x"], b1["y"])[0] ** 2).mean(0)
    np.testing.assert_allclose(state.data_state["fisher"]["W"], f1, rtol=1e-4, atol=1e-7)
    state = m.consolidate(state.replace(params={"W": jnp.asarray(W0 * 2), "b": jnp.asarray(B0)}), b2, None)
    f2 = (np_grads(W0 * 2, B0, b2["x"], b2["y"])[0] ** 2).mean(0)
    np.testing.assert_allclose(state.data_state["fisher"]["W"], 0.5 * f1 + f2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(state.data_state["anchor"]["W"], W0 * 2)


def test_der_loss_by_hand_and_the_buffer_keeps_the_pre_update_logits():
    params = LIN.init(None)
    cur, m1, m2 = batch(1), batch(2, 4), batch(3, 4)
    z1 = np.asarray(RNG.normal(size=(4, C)), np.float32)
    w1 = np.array([1, 1, 0, 1], np.float32)
    mem1 = {**m1, "logits": jnp.asarray(z1), "weight": jnp.asarray(w1)}
    mem2 = {**m2, "weight": jnp.ones(4)}
    loss, aux = der_loss(LIN.apply, 0.3, 0.7)(params, {**cur, "memory": mem1, "memory2": mem2}, None)
    f = lambda x: np.asarray(x, np.float64) @ W0 + B0
    mse = (((f(m1["x"]) - z1) ** 2).mean(-1) * w1).sum() / w1.sum()
    want = (
        np_ce(f(cur["x"]), np.asarray(cur["y"])).mean() + 0.3 * mse + 0.7 * np_ce(f(m2["x"]), m2["y"]).mean()
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(aux["store_logits"], f(cur["x"]), rtol=1e-5, atol=1e-6)

    m, _ = method("derpp", capacity=20, memory_batch=4, lr=0.5)
    state = init_state(params, m.tx, jax.random.key(0), m.data, cur)
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    s1, _ = step(state, cur)
    buf = s1.data_state["buffer"]
    assert int(s1.data_state["seen"]) == B
    np.testing.assert_allclose(buf["logits"][:B], f(cur["x"]), rtol=1e-5, atol=1e-6)  # before the update
    np.testing.assert_array_equal(buf["y"][:B], cur["y"])
    s2, _ = step(s1, batch(4))
    after = LIN.apply(s1.params, batch(4)["x"])  # the second step stores the logits of the params it saw
    np.testing.assert_allclose(s2.data_state["buffer"]["logits"][B : 2 * B], after, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(after), f(batch(4)["x"]), atol=1e-3)  # the params did move


def test_er_ace_masks_the_incoming_batch_to_its_own_classes():
    cur = {**batch(1), "y": jnp.asarray([0, 1, 0, 1, 1, 0, 0, 1], jnp.int32)}
    mem = {**batch(2, 4), "y": jnp.asarray([2, 2, 0, 1], jnp.int32), "weight": jnp.ones(4)}
    loss, aux = ace_loss(LIN.apply, C)(LIN.init(None), {**cur, "memory": mem}, None)
    f = lambda x: np.asarray(x, np.float64) @ W0 + B0
    ce_in = np_ce(f(cur["x"])[:, :2], np.asarray(cur["y"])).mean()  # softmax over classes {0, 1} only
    ce_mem = np_ce(f(mem["x"]), np.asarray(mem["y"])).mean()  # over all classes
    np.testing.assert_allclose(float(aux["ce"]), ce_in, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce_in + ce_mem, rtol=1e-5)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_matches_scipy_nnls_on_the_dual(margin):
    rng = np.random.default_rng(1)
    for T in (2, 3, 5):
        for trial in range(4):
            G = rng.normal(size=(T, 30)).astype(np.float32)
            G[:, :4] *= 10 if trial % 2 else 1
            g = rng.normal(size=30).astype(np.float32)
            u, _ = nnls(G.T.astype(np.float64), -(g + margin * G.sum(0)).astype(np.float64), maxiter=1000)
            want = G.T @ (u + margin) + g if np.any(G @ g < 0) else g
            got = np.asarray(project_gem(jnp.asarray(g), jnp.asarray(G), jnp.ones(T), margin))
            # README: within 3e-6 of scipy's NNLS, relative to the largest entry (measured 2.0e-6
            # with and without XLA optimisations; the constraint violation left 5e-7)
            np.testing.assert_allclose(got, want, rtol=0, atol=3e-6 * np.abs(want).max())
            assert np.all(G @ got >= -1e-6 * np.abs(G).max() * np.abs(got).max())  # no conflict left
    # an inactive task is ignored
    G = rng.normal(size=(2, 30)).astype(np.float32)
    g = -G[1]
    got = project_gem(jnp.asarray(g), jnp.asarray(G), jnp.asarray([1.0, 0.0]), margin)
    alone = project_gem(jnp.asarray(g), jnp.asarray(G[:1]), jnp.ones(1), margin)
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)


def test_mir_scores_and_retrieval_by_hand():
    from jaxcl.methods.mir import mir_loss, mir_scores

    cur, cand = batch(1), {**batch(2, 6), "weight": jnp.ones(6)}
    params = LIN.init(None)
    gW, gb = np_grads(W0, B0, cur["x"], cur["y"])
    Wv, bv = W0 - 0.5 * gW.mean(0), B0 - 0.5 * gb.mean(0)
    xc, yc = np.asarray(cand["x"], np.float64), np.asarray(cand["y"])
    want = np_ce(xc @ Wv + bv, yc) - np_ce(xc @ W0 + B0, yc)
    got = mir_scores(LIN.apply, params, cur, cand, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    top = np.argsort(-want)[:2]
    loss, aux = mir_loss(LIN.apply, 2, 0.5)(params, {**cur, "memory": cand}, None)
    np.testing.assert_allclose(float(aux["ce_mem"]), np_ce(xc[top] @ W0 + B0, yc[top]).mean(), rtol=1e-5)


def np_greedy_balanced(ys, capacity, n_classes):
    """Class counts of GDumb's greedy balanced memory (the victim slot does not change counts)."""
    counts, filled = np.zeros(n_classes, int), 0
    for y in ys:
        seen = ((counts > 0) | (np.arange(n_classes) == y)).sum()
        if filled < capacity:
            counts[y] += 1
            filled += 1
        elif counts[y] * seen < capacity:
            counts[np.argmax(counts)] -= 1
            counts[y] += 1
    return counts


def test_gdumb_memory_is_greedy_class_balanced_and_retrains_from_scratch():
    from jaxcl.methods.gdumb import greedy_balanced

    data = greedy_balanced(6, 4)
    ys = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 1], np.int32)
    b = {"x": jnp.arange(16, dtype=jnp.float32)[:, None], "y": jnp.asarray(ys)}
    state = data.init(b)
    _, state = jax.jit(data.update)(b, state, jax.random.key(0))
    np.testing.assert_array_equal(state["counts"], np_greedy_balanced(ys, 6, 4))
    np.testing.assert_array_equal(np.bincount(np.asarray(state["buffer"]["y"]), minlength=4), state["counts"])
    assert int(state["filled"]) == 6
    with pytest.raises(ValueError, match="capacity=2 is smaller than the 3 classes"):
        method("gdumb", capacity=2)
    m, _ = method("gdumb", capacity=24, retrain_steps=200, lr=0.05)
    full = batch(1, 24)
    st = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, full)
    st, _ = make_step(m.loss_fn, m.tx, m.data)(st, full)
    np.testing.assert_array_equal(st.params["W"], W0)  # the stream itself trains nothing
    st = m.consolidate(st, full, jax.random.key(3))
    ce = lambda p: np_ce(
        np.asarray(full["x"], np.float64) @ np.asarray(p["W"]) + np.asarray(p["b"]), full["y"]
    )
    assert ce(st.params).mean() < 0.75 * ce(LIN.init(None)).mean()  # a network fitted to the memory (0.69x)


def np_herding(f, m):
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mu, acc, chosen = f.mean(0), np.zeros(f.shape[1]), []
    for k in range(m):
        d = np.linalg.norm(mu[None] - (acc[None] + f) / (k + 1), axis=1)
        d[chosen] = np.inf
        i = int(np.argmin(d))
        chosen.append(i)
        acc += f[i]
    return chosen


def test_icarl_herding_nme_and_buffer_checks():
    from jaxcl.methods.icarl import herding

    r = np.random.default_rng(3)
    f = r.normal(size=(12, 4)).astype(np.float32)
    valid = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    idx, ok = herding(jnp.asarray(f), jnp.asarray(valid), 5)
    rows = np.flatnonzero(valid)
    np.testing.assert_array_equal(np.asarray(idx), rows[np_herding(f[rows], 5)])
    assert np.all(ok)
    _, ok = herding(jnp.asarray(f), jnp.asarray(valid), 11)
    assert int(ok.sum()) == valid.sum()  # past the class's examples the slots stay empty

    with pytest.raises(ValueError, match="capacity=2 is smaller than the 3 classes"):
        method("icarl", capacity=2)
    feats = lambda p, x: x @ p["W"]  # a 5 -> 3 feature map
    model = types.SimpleNamespace(**vars(LIN), features=feats)
    spec = METHODS["icarl"]
    _, o = spec.split({"capacity": 6})
    m = build_method(spec, model, as_hparams(spec), o)
    bt = batch(7, 32)
    st = init_state(LIN.init(None), m.tx, jax.random.key(0), m.data, bt)
    st = m.consolidate(st, {**bt, "y": jnp.where(bt["y"] == 2, 0, bt["y"])}, None)  # classes 0, 1 seen
    assert np.asarray(st.data_state["valid"]).sum(1).tolist() == [2, 2, 0]
    x_test = batch(8)["x"]
    got = np.asarray(m.predict(st.params, st.data_state, x_test))
    nf = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    ex = np.asarray(st.data_state["x"])[:2]  # (2 classes, 2 exemplars, D)
    mu = nf(nf(ex @ W0).mean(1))
    want = -((nf(np.asarray(x_test) @ W0)[:, None] - mu[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got[:, :2], want, rtol=1e-4, atol=1e-5)
    assert np.all(np.isneginf(got[:, 2]))  # no exemplars: never predicted


def test_bic_bias_layer_matches_scipy_and_corrects_new_class_bias():
    from scipy.optimize import minimize

    from jaxcl.methods.bic import fit_bias

    r = np.random.default_rng(4)
    y = r.integers(0, 4, 200)
    logits = r.normal(size=(200, 4)) + 2.0 * np.eye(4)[y]
    new = np.array([False, False, True, True])
    logits[:, new] += 2.5  # the new classes' logits are inflated
    w = np.ones(200)

    def ce(ab):
        z = np.where(new, ab[0] * logits + ab[1], logits)
        return np_ce(z, y).mean()

    want = minimize(ce, [1.0, 0.0], method="BFGS").x
    got = np.asarray(
        fit_bias(jnp.asarray(logits, jnp.float32), jnp.asarray(y), jnp.asarray(w), new, 1500, 0.05)
    )
    np.testing.assert_allclose(got, want, atol=2e-2)
    assert got[1] < -1.0  # the correction pulls the new classes' logits down
    old_rows = y < 2
    pred = lambda z: z.argmax(-1)[old_rows] == y[old_rows]
    fixed = np.where(new, got[0] * logits + got[1], logits)
    assert pred(fixed).mean() > pred(logits).mean() + 0.2


def test_der_on_a_language_model_by_hand_and_the_buffer_keeps_every_positions_logits():
    """DER++ on a tiny Llama: the loss against numpy from the model's logits (token-mean NLL of the
    answers, the squared error averaged over the vocabulary on the stored rows' answer positions,
    weighted by row; the replayed answers' NLL), and the buffer holding each sequence's
    ``(T - 1) x V`` logits from before the update."""
    from jaxcl.methods.der import der_lm_loss
    from jaxcl.models import llama
    from jaxcl.models.lm import language_model

    lm = language_model(llama.tiny(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=16))
    params, T, V = lm.init(jax.random.key(0)), 9, lm.cfg.vocab_size

    def seqs(seed, n):
        r = np.random.default_rng(seed)
        mask = np.zeros((n, T), np.int32)
        for i in range(n):
            mask[i, r.integers(3, 6) :] = 1  # answers of different lengths
        return {"tokens": jnp.asarray(r.integers(0, 256, (n, T)), jnp.int32), "mask": jnp.asarray(mask)}

    cur, m1, m2 = seqs(1, 4), seqs(2, 3), seqs(3, 3)
    z1 = RNG.normal(size=(3, T - 1, V)).astype(np.float32)
    w1, w2 = np.array([1, 0, 1], np.float32), np.array([1, 1, 0], np.float32)
    batch = {**cur, "memory": {**m1, "logits": z1, "weight": w1}, "memory2": {**m2, "weight": w2}}
    loss, aux = jax.jit(der_lm_loss(lm, 0.3, 0.7))(params, batch, None)

    def f(b):  # the model's logits of every position, then numpy
        return np.asarray(lm.apply(params, b["tokens"][:, :-1]), np.float64)

    def nll(b, w_row):
        lp = np.log(np_softmax(f(b)))
        t = np.asarray(b["tokens"])[:, 1:]
        w = np.asarray(b["mask"])[:, 1:] * w_row[:, None]
        return -(np.take_along_axis(lp, t[..., None], -1)[..., 0] * w).sum() / w.sum()

    w_pos = np.asarray(m1["mask"])[:, 1:] * w1[:, None]
    mse = (((f(m1) - z1) ** 2).mean(-1) * w_pos).sum() / w_pos.sum()
    want = nll(cur, np.ones(4)) + 0.3 * mse + 0.7 * nll(m2, w2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(aux["store_logits"], f(cur), rtol=1e-4, atol=1e-5)

    spec = METHODS["derpp"]
    _, opts = spec.split({"capacity": 12, "memory_batch": 3})
    m = build_method(spec, lm, as_hparams(spec, {"lr": 0.05}), opts)
    state = init_state(params, m.tx, jax.random.key(0), m.data, cur)
    assert state.data_state["buffer"]["logits"].shape == (12, T - 1, V)
    step = jax.jit(make_step(m.loss_fn, m.tx, m.data))
    s1, _ = step(state, cur)
    buf = s1.data_state["buffer"]
    np.testing.assert_allclose(buf["logits"][:4], f(cur), rtol=1e-4, atol=1e-5)  # before the update
    np.testing.assert_array_equal(buf["tokens"][:4], cur["tokens"])
    np.testing.assert_array_equal(buf["mask"][:4], cur["mask"])
    s2, metrics = step(s1, seqs(4, 4))
    assert float(metrics["loss"]) > 0 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(s2.data_state["buffer"]["logits"][4:8]), f(seqs(4, 4)), atol=1e-4)


def test_a_logit_buffer_too_large_is_refused_in_one_line():
    """SmolLM2's vocabulary at DER's default capacity: 1000 x 127 x 49152 float32 = 23 GiB a seed."""
    from jaxcl.data.logit_replay import logit_reservoir

    t = logit_reservoir(1000, lambda ex: (127, 49152))
    with pytest.raises(ValueError, match=r"need 23\.3 GiB per seed .*lower the method's capacity"):
        t.init({"tokens": jnp.zeros((2, 128), jnp.int32)})
    assert logit_reservoir(1, lambda ex: (127, 49152)).init({"tokens": jnp.zeros((2, 128), jnp.int32)})
