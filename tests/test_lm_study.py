"""Continual pre-training (study ``lm``): loss-matrix metrics against numpy, the learning-rate
re-warming schedule, replay of token windows, the tiny study end to end, resuming, the sweep as
one program, and bad configs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl import config
from jaxcl import metrics as M
from jaxcl.data.replay import reservoir
from jaxcl.methods.base import optimizer
from jaxcl.studies import lm


def test_loss_metrics_by_hand():
    L = np.array([[2.0, 5.0, 6.0], [2.5, 3.0, 5.5], [3.0, 3.5, 2.0]])
    b = np.array([6.0, 6.0, 6.0])
    trace = np.stack([L, L], 1)  # two evaluations per domain, both equal to the row
    m = M.loss_metrics(L, b, trace, w=3)
    assert m["final_loss"] == pytest.approx((3.0 + 3.5 + 2.0) / 3)
    assert m["bwt"] == pytest.approx(((2.0 - 3.0) + (3.0 - 3.5)) / 2)  # losses rose: negative
    assert m["forgetting"] == pytest.approx(((3.0 - 2.0) + (3.5 - 3.0)) / 2)
    assert m["fwt"] == pytest.approx(((6.0 - 5.0) + (6.0 - 5.5)) / 2)
    # worst loss on each learned domain after it was learned: domain 0 -> 3.0, domain 1 -> 3.5
    assert m["max_loss"] == pytest.approx((3.0 + 3.5) / 2)


def test_unigram_js_divergence_against_hand_values_and_scipy():
    from scipy.spatial.distance import jensenshannon

    P = np.array([[2.0, 2.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    D = M.js_divergence(P)
    assert D[0, 1] == pytest.approx(0.5 * np.log(2))  # m = (1/4, 1/2, 1/4): KL = ln2 / 2 each
    assert D[0, 2] == pytest.approx(np.log(2))  # disjoint supports
    assert D[0, 3] == 0.0 and np.allclose(D, D.T) and np.all(np.diag(D) == 0)
    rng = np.random.default_rng(0)
    Q = rng.random((4, 7)) * (rng.random((4, 7)) > 0.3)
    want = np.array([[jensenshannon(a, b) ** 2 for b in Q] for a in Q])  # natural log by default
    np.testing.assert_allclose(M.js_divergence(Q), want, atol=1e-12)


def test_domain_orders_and_gain_vs_standalone_by_hand():
    D = np.array([[0, 0.1, 0.5, 0.3], [0.1, 0, 0.2, 0.6], [0.5, 0.2, 0, 0.4], [0.3, 0.6, 0.4, 0]])
    assert lm.domain_order(D, similar=True) == [0, 1, 2, 3]  # 0 -> 1 (0.1) -> 2 (0.2) -> 3
    assert lm.domain_order(D, similar=False) == [0, 2, 3, 1]  # 0 -> 2 (0.5) -> 3 (0.4 > 0.2) -> 1
    L = np.array([[2.0, 5.0, 6.0], [2.5, 3.0, 5.5], [3.0, 3.5, 2.5]])
    s = np.array([2.0, 3.5, 2.0])  # each domain trained alone
    assert M.gain_vs_standalone(L, s) == pytest.approx(((3.5 - 3.0) + (2.0 - 2.5)) / 2)
    # a row in another order: its matrix and the stand-alone losses are both taken in that order
    trace = np.zeros((1, 3, 1, 3))
    order = [2, 0, 1]
    for i, t in enumerate(order):  # trained t at position i; evaluated in the stream's order
        trace[0, i, 0] = np.arange(3) + 10 * i + (t == np.arange(3)) * 0.5
    per, Lr = lm.row_metrics(trace, np.full((1, 3), 9.0), order, standalone=np.array([[10.0, 20.0, 30.0]]))
    np.testing.assert_allclose(Lr[0], trace[0, :, 0][:, order])
    diag = [Lr[0, i, i] for i in range(3)]  # 2.5, 10.5, 21.5
    assert per["diag_loss"][0] == pytest.approx(np.mean(diag))
    assert per["sa_gain"][0] == pytest.approx(((10.0 - diag[1]) + (20.0 - diag[2])) / 2)


def test_lr_restart_every_rewarms_the_schedule():
    tx = optimizer("sgd", 1.0, warmup_cosine_steps=10, lr_restart_every=10)
    p = jnp.zeros(())
    s = tx.init(p)
    lrs = []
    for _ in range(25):
        u, s = tx.update(jnp.ones(()), s, p)
        lrs.append(-float(u))
    unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, 1, 10, 0.1)
    np.testing.assert_allclose(lrs, [float(unit(i % 10)) for i in range(25)], rtol=1e-6)
    assert lrs[10] == lrs[0] and lrs[9] < lrs[1]


def test_replay_keeps_and_mixes_token_windows():
    t = reservoir(8, 0.5, fields=("x", "y", "t", "mask", "tokens"))
    batch = {"tokens": jnp.arange(12).reshape(4, 3), "mask": jnp.ones((4, 3), bool)}
    state = t.init(batch)
    _, state = t.update(batch, state, jax.random.key(0))
    new = {"tokens": 100 + jnp.arange(12).reshape(4, 3), "mask": jnp.ones((4, 3), bool)}
    mixed, _ = t.update(new, state, jax.random.key(1))
    old_rows = {tuple(r) for r in np.asarray(batch["tokens"])}
    assert all(tuple(r) in old_rows for r in np.asarray(mixed["tokens"][:2]))  # replayed
    np.testing.assert_array_equal(mixed["tokens"][2:], new["tokens"][2:])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lm") / "out")
    cfg = config.resolve(config.load("lm-cpt", tiny=True))
    return cfg, out, lm.run(cfg, out, verbose=False)


def test_tiny_study_writes_results_and_learns_each_domain(tiny_run):
    cfg, out, res = tiny_run
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["schema"] == "jaxcl-results/1" and saved["study"] == "lm"
    assert list(saved["rows"]) == list(cfg["rows"])
    assert {"loss_matrix.png", "loss_over_training.png"} <= set(saved["plots"])
    T, S = len(cfg["data"]["domains"]), cfg["seeds"]
    for name, row in saved["rows"].items():
        L = np.asarray(row["L_per_seed"])
        assert L.shape == (S, T, T) and np.all(np.isfinite(L))
        b = np.asarray(row["b_mean"])
        assert np.all(np.diag(L.mean(0)) < b), name  # every domain's loss fell below the initial one
        np.testing.assert_allclose(row["per_seed"]["final_loss"], L[:, -1].mean(-1), rtol=1e-6)
        assert np.std(row["per_seed"]["final_loss"]) > 0  # seeds differ
        for k in ("bwt", "forgetting", "fwt", "max_loss", "final_ppl"):
            assert np.all(np.isfinite(row["per_seed"][k])), (name, k)


def test_standalone_and_ordered_rows_end_to_end():
    """Three domains, rows ``finetune``, ``finetune@similar``, ``finetune@dissimilar`` and
    ``standalone`` (2 seeds): the orders are the greedy chains of the stream's unigram JS matrix;
    stand-alone training on the first domain is the continual row's first domain (same start and
    keys), so each row's ``vs stand-alone`` equals the column recomputed from the loss matrices."""
    cfg = config.resolve(
        config.load("lm-cpt", tiny=True),
        [
            "data.domains=zen,bible:ruth,bible:jonah",
            "rows=finetune,finetune@similar,finetune@dissimilar,standalone",
        ],
    )
    res = lm.run(cfg, None, verbose=False)
    names = list(cfg["data"]["domains"])
    D = np.asarray(res["extra"]["unigram_js"])
    want = lm.unigram_divergence(res["stream"])
    np.testing.assert_allclose(D, want, atol=1e-6)
    assert D[0, 1] > 0 and D[1, 2] > 0
    for o in lm.ORDERS:
        order = lm.domain_order(want, o == "similar")
        assert res["extra"]["orders"][o] == [names[t] for t in order]
        assert res["rows"][f"finetune@{o}"]["order"] == res["extra"]["orders"][o]
    rows = res["rows"]
    sa = np.diagonal(np.asarray(rows["standalone"]["L_per_seed"]), axis1=1, axis2=2)  # (S, T) stream order
    L_ft = np.asarray(rows["finetune"]["L_per_seed"])
    np.testing.assert_allclose(sa[:, 0], L_ft[:, 0, 0], rtol=1e-6)  # the same first domain
    for row in ("finetune", "finetune@similar", "finetune@dissimilar"):
        L = np.asarray(rows[row]["L_per_seed"])
        s = sa[:, [names.index(n) for n in rows[row]["order"]]]
        gain = [np.mean([s[k, j] - L[k, j, j] for j in (1, 2)]) for k in range(len(L))]
        np.testing.assert_allclose(rows[row]["per_seed"]["sa_gain"], gain, rtol=1e-5)
    assert np.isnan(rows["standalone"]["per_seed"]["forgetting"]).all()
    assert np.isfinite(rows["standalone"]["per_seed"]["diag_loss"]).all()


def test_kappatune_on_the_llama_ranks_each_layer_matrix_and_freezes_the_rest():
    """KappaTune in ``lm-cpt`` (row ``kappatune``): the selection after the first domain ranks
    every layer's slice of each stacked matrix (and the embedding) by its condition number (numpy's
    ``cond``), keeps the ``ceil(fraction * n)`` smallest; training the next domain changes exactly
    the selected slices."""

    cfg = config.resolve(
        config.load("lm-cpt", tiny=True),
        ["methods=finetune,kappatune", "rows=kappatune", "kappatune.lr=3e-3"],
    )
    lm.validate(cfg)
    model, pre = lm.load_model(cfg, "xs")
    stream = lm.build_stream(cfg)
    prog = lm.Program(cfg, model, pre, "kappatune")
    state = prog.init(pre, lm.seeds_keys(cfg["seed"], cfg["seeds"]), stream)
    state, _ = prog.domain(state, jnp.int32(0), prog.hp, stream)
    p0 = jax.tree.map(lambda a: np.asarray(a[0]), state.params)  # seed 0
    mask = jax.tree.map(lambda a: np.asarray(a[0]), state.opt_state.mask)
    units = {("embed", None): np.linalg.cond(p0["embed"])}
    for k, w in p0["layers"].items():
        if w.ndim == 3:
            units.update({(k, l): np.linalg.cond(w[l]) for l in range(len(w))})
    n_keep = int(np.ceil(cfg["kappatune"]["kappa_fraction"] * len(units)))
    keep = set(sorted(units, key=units.get)[:n_keep])
    assert float(mask["embed"]) == (("embed", None) in keep)
    for k, m in mask["layers"].items():
        want = (
            [(k, l) in keep for l in range(m.shape[0])] if p0["layers"][k].ndim == 3 else [False] * m.shape[0]
        )
        np.testing.assert_array_equal(m.reshape(-1), want, err_msg=k)
    assert float(mask["final_norm"]) == 0.0
    state, _ = prog.domain(state, jnp.int32(1), prog.hp, stream)
    p1 = jax.tree.map(lambda a: np.asarray(a[0]), state.params)
    for k, w in p1["layers"].items():
        for l in range(len(w)):
            moved = np.abs(w[l] - p0["layers"][k][l]).max() > 0
            assert moved == bool(mask["layers"][k].reshape(-1)[l]), (k, l)


def test_gere_on_the_llama_labels_hidden_states_and_its_margin_keeps_them():
    """GeRe in ``lm-cpt`` (row ``gere``): after the first domain the general set holds token
    windows whose labels are the three-way split of the final-norm hidden states at ``mu +-
    sigma`` per dimension over every position (numpy); the margin loss is 0 on them then; training
    the next domain with the margin (weight 100) leaves a smaller margin loss on the general set
    than weight 0, from the same state, for every seed."""
    from jaxcl.methods import gere

    cfg = config.resolve(
        config.load("lm-cpt", tiny=True),
        [
            "methods=finetune,gere",
            "rows=gere",
            "gere.lr=3e-3",
            "gere.general_samples=8",
            "gere.memory_batch=4",
        ],
    )
    lm.validate(cfg)
    model, pre = lm.load_model(cfg, "xs")
    stream = lm.build_stream(cfg)
    prog = lm.Program(cfg, model, pre, "gere")
    state = prog.init(pre, lm.seeds_keys(cfg["seed"], cfg["seeds"]), stream)
    state, _ = prog.domain(state, jnp.int32(0), prog.hp, stream)
    g = jax.tree.map(np.asarray, state.data_state)
    assert (g["on"] == 1).all() and g["labels"].shape[2:] == (cfg["data"]["seq_len"] - 1, model.cfg.d_model)

    def margin(params, s):
        p = jax.tree.map(lambda a: a[s], params)
        h = gere.lm_states(model, p, jnp.asarray(g["tokens"][s])).reshape(-1, model.cfg.d_model)
        lab = jnp.asarray(g["labels"][s].reshape(-1, model.cfg.d_model))
        return np.asarray(h), float(gere.tm_loss(h, lab, g["pos"][s], g["neg"][s]))

    for s in range(cfg["seeds"]):
        h0, tm0 = margin(state.params, s)
        mu, sd = h0.astype(np.float64).mean(0), h0.astype(np.float64).std(0)
        want = np.where(h0 <= mu - sd, 0, np.where(h0 >= mu + sd, 2, 1))
        near = np.isclose(h0, mu - sd, atol=1e-5) | np.isclose(h0, mu + sd, atol=1e-5)
        np.testing.assert_array_equal(g["labels"][s].reshape(h0.shape)[~near], want[~near])
        assert tm0 == 0.0
    runs = {}
    for w in (0.0, 100.0):
        hp = {**prog.hp, "gere_weight": jnp.asarray(w, prog.hp["gere_weight"].dtype)}
        st, _ = prog.domain(jax.tree.map(jnp.copy, state), jnp.int32(1), hp, stream)
        runs[w] = [margin(st.params, s)[1] for s in range(cfg["seeds"])]
    assert all(a < b for a, b in zip(runs[100.0], runs[0.0])), runs


def test_resume_after_an_interruption_equals_the_uninterrupted_row(tiny_run):
    cfg, out, res = tiny_run
    row_dir = os.path.join(out, "checkpoints", "xs", "finetune+rewarm")
    steps = sorted(int(d) for d in os.listdir(row_dir) if d.isdigit())
    assert steps[-1] == len(cfg["data"]["domains"])
    shutil.rmtree(os.path.join(row_dir, str(steps[-1])))  # as if killed during the last domain
    model, pre = lm.load_model(cfg, "xs")
    prog = lm.Program(cfg, model, pre, "finetune+rewarm")
    again = lm.run_row(
        prog, res["stream"], lm.seeds_keys(cfg["seed"], cfg["seeds"]), ckpt_dir=row_dir, resume=True
    )
    np.testing.assert_array_equal(again["loss"], res["raw"]["finetune+rewarm"]["trace"])


def test_sweep_cell_without_replay_equals_the_finetune_row(tiny_run):
    cfg, _, res = tiny_run
    sw = lm.sweep(cfg, {"er.replay_fraction": [0.0, 0.5]}, verbose=False)
    assert sw["extra"]["row"] == "er+rewarm"  # the config's only er row re-warms
    # er at replay fraction 0 (same lr and schedule) is fine-tuning, row for row
    np.testing.assert_allclose(
        sw["rows"]["er.replay_fraction=0"]["L_mean"], res["rows"]["finetune+rewarm"]["L_mean"], rtol=2e-5
    )
    a, b = (np.asarray(sw["rows"][k]["L_mean"]) for k in sw["rows"])
    assert not np.allclose(a, b)  # replay changes the run


def test_bf16_run_stays_within_tolerance_of_float32(tiny_run):
    """``model.compute_dtype=bfloat16`` (bf16 matmuls on float32 master weights) at tiny size:
    every held-out loss of the loss matrix within 0.02 nats of the float32 run (measured 3.6e-3,
    joint; the seeds' spread of the final loss is 0.007-0.023), and not identical to it."""
    cfg, _, res = tiny_run
    rows = ("finetune+rewarm", "joint")
    bf = lm.run(
        config.resolve(
            config.load("lm-cpt", tiny=True), ["model.compute_dtype=bfloat16", f"rows={','.join(rows)}"]
        ),
        None,
        verbose=False,
    )
    for row in rows:
        a, b = (np.asarray(r["rows"][row]["L_per_seed"]) for r in (res, bf))
        assert np.all(np.isfinite(b)) and not np.array_equal(a, b), row
        assert np.abs(a - b).max() <= 0.02, (row, np.abs(a - b).max())


@pytest.mark.parametrize(
    "sets, match",
    [
        (["rows=finetune,ppo"], "unknown row 'ppo'"),
        (["rows=ewc"], "needs 'ewc' in methods"),
        (["rows=finetune@random"], "unknown row 'finetune@random'"),
        (["rows=joint@similar"], "unknown row 'joint@similar'"),
        (["rows=standalone+rewarm"], "unknown row 'standalone\\+rewarm'"),
        (["rows=pretrain@similar"], "unknown row 'pretrain@similar'"),
        (["rows=finetune@delt"], "unknown row 'finetune@delt'"),
        (["rows=pretrain@delt", "data.delt_select=0"], "data.delt_select=0"),
        (["rows=pretrain@delt", "data.delt_checkpoints=1"], "data.delt_checkpoints=1"),
        (["model.name=xl"], "model.name='xl' is not valid here; valid: scratch, xs, s, m, smollm2-135m"),
        (["model.tokenizer=smollm2"], "model.tokenizer='smollm2' is not valid here; valid: byte"),
        (["model.name=xs,smollm2-135m"], "tokenizer mismatch; set model.tokenizer=smollm2"),
        (["model.n_heads=3"], "model.n_heads=3 must divide model.d_model"),
        (["model.compute_dtype=float16"], "model.compute_dtype='float16'; valid: float32, bfloat16"),
        (["data.domains=zen"], "at least 2 domains"),
        (["train.eval_every=3"], "multiple of train.eval_every=3"),
        (["train.consolidate_samples=40"], "multiple of 32"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    cfg = config.resolve(config.load("lm-cpt", tiny=True), sets)
    with pytest.raises(config.ConfigError, match=match):
        lm.validate(cfg)


def test_unknown_domain_is_a_clear_error():
    cfg = config.resolve(config.load("lm-cpt", tiny=True), ["data.domains=zen,bible:laws"])
    with pytest.raises(config.ConfigError, match="did you mean bible:law"):
        lm.run(cfg, verbose=False)


# -- DELT on the language-model stream: one pool of windows read in a random or LQS folding order --


def test_pool_and_sequential_read_by_hand():
    from jaxcl.data import text

    train = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # domain 1 has 2 real rows, row 2 repeats row 0
    train[1, 2] = train[1, 0]
    s = text.TextStream(
        train=jnp.asarray(train), n_train=jnp.asarray([3, 2]), eval=jnp.zeros((2, 1, 4), jnp.int32)
    )
    pairs = text.pool(s, 4, seed=0)
    real = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}
    assert pairs.shape == (4, 2) and len({tuple(p) for p in pairs}) == 4 and {tuple(p) for p in pairs} <= real
    assert {tuple(p) for p in text.pool(s, 99, seed=1)} == real  # capped at the real rows
    for step in range(4):  # reading the first 3 pairs, 2 a step: (2s, 2s+1) mod 3
        got = np.asarray(text.read(s, jnp.asarray(pairs), 3, step, 2)["tokens"])
        idx = [(2 * step) % 3, (2 * step + 1) % 3]
        np.testing.assert_array_equal(got, train[pairs[idx, 0], pairs[idx, 1]])


def test_lqs_of_language_model_windows_against_numpy():
    from jaxcl.data import delt
    from jaxcl.models import llama
    from jaxcl.models.lm import language_model

    cfg = llama.tiny(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16, max_seq_len=8)
    model = language_model(cfg, "tiny")
    p0 = model.init(jax.random.key(0))
    p1 = jax.tree.map(lambda a: a * 0.8 + 0.01, p0)
    ckpts = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    w = jnp.asarray(np.random.default_rng(0).integers(0, 16, (5, 6)), jnp.int32)
    target = w[:3]
    loss = delt.lm_loss(model.nll)
    got = np.asarray(delt.lqs(loss, ckpts, w, target, chunk=2))
    flat = lambda g: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(g)])  # noqa: E731
    lam = flat(jax.grad(loss)(p0, target))
    want = []
    for i in range(5):
        g0, g1 = flat(jax.grad(loss)(p0, w[i : i + 1])), flat(jax.grad(loss)(p1, w[i : i + 1]))
        cos = g0 @ lam / (np.linalg.norm(g0) * np.linalg.norm(lam))
        want.append(np.linalg.norm(lam) * np.linalg.norm(g0) / np.linalg.norm(g1) * cos)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_pretrain_rows_read_one_pool_in_their_orders():
    """``pretrain@random`` / ``@delt`` read the same windows (one pass each), ``@delt-select`` the
    top-LQS half of them, in folds that each ascend through the scores; the rows train and the
    order changes the held-out losses."""
    cfg = config.resolve(
        config.load("lm-cpt", tiny=True),
        [
            "rows=pretrain@random,pretrain@delt,pretrain@delt-select",
            "data.delt_proxy_steps=4",
            "data.delt_target=8",
        ],
    )
    stream = lm.build_stream(cfg)
    model, _ = lm.load_model(cfg, "xs")
    r, _ = lm.pretrain_reading(cfg, model, stream, "random")
    d, sd = lm.pretrain_reading(cfg, model, stream, "delt")
    h, _ = lm.pretrain_reading(cfg, model, stream, "delt-select")
    P = cfg["train"]["steps_per_domain"] * 2 * cfg["train"]["batch_size"]
    pr, pd, ph = (np.asarray(x["pairs"]) for x in (r, d, h))
    assert int(r["n"]) == int(d["n"]) == P and int(h["n"]) == P // 2
    assert sorted(map(tuple, pr)) == sorted(map(tuple, pd))  # the same windows
    pool = lm.text.pool(stream, P, cfg["seed"])  # the order the scores are in
    pos = {tuple(p): i for i, p in enumerate(pool)}
    s_of = lambda pairs: sd[[pos[tuple(p)] for p in pairs]]  # noqa: E731
    assert len(pool) == P and set(map(tuple, ph)) <= set(map(tuple, pd))
    assert s_of(ph).min() >= np.sort(sd)[P // 2 - 1]  # the top half by LQS
    for f in np.array_split(s_of(pd), cfg["data"]["delt_layers"]):
        assert np.all(np.diff(f) >= 0)
    res = lm.run(cfg, None, verbose=False)
    rows = res["rows"]
    L = {k: np.asarray(v["L_per_seed"])[:, -1] for k, v in rows.items()}
    b = np.asarray(rows["pretrain@random"]["b_mean"])
    assert (L["pretrain@random"].mean(0) < b).all()  # every domain learned
    assert not np.allclose(L["pretrain@random"], L["pretrain@delt"])
    gain = L["pretrain@random"].mean(-1) - L["pretrain@delt"].mean(-1)
    np.testing.assert_allclose(rows["pretrain@delt"]["per_seed"]["order_gain"], gain, rtol=1e-5)
    assert np.isnan(rows["pretrain@delt"]["per_seed"]["bwt"]).all()
