"""The ``unlearn-class`` runner (jaxcl.studies.unlearn_class) and the unlearning methods of the
registry on a tiny Fashion-MNIST problem (MLP 784-64-10, 40 examples per class, class 3
forgotten), two seeds in one program: every method moves the weights and lowers forget accuracy
below the original's; the retrained oracle's retain accuracy stays in [0.75, 1.0] and its forget
accuracy below 0.2; GU keeps retain accuracy closer to the original than its base method; IAU's
regulariser lowers the gradient norm it penalises. Plus bad input refused before any compute,
the tiny study end to end, a sweep as one program, and the cache of the original, the oracle
and finished methods.
"""

import contextlib
import io
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli, config
from jaxcl.batching import over_seeds
from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams, run_chunks
from jaxcl.losses import mean_nll
from jaxcl.studies import unlearn_class as uc
from jaxcl.unlearn import classifier, common, scenarios
from jaxcl.unlearn import eval as ev

SMALL = [
    "data.n_per_class=40",
    "data.n_test=300",
    "model.mlp.hidden=64",
    "eval.eval_cap=200",
    "eval.relearn_steps=4",
    "eval.relearn_every=2",
    "eval.relearn_n=16",
    # on this small, confidently fitted problem GA's registry rate (2e-5) flips no forget
    # prediction in 15 steps; 1e-4 does
    "ga.lr=1e-4",
    "gu-ga.lr=1e-4",
]
TINY = config.resolve(config.load("unlearn-class", tiny=True), ["seeds=2", *SMALL])


def _fmnist_or_skip():
    try:
        from jaxcl.data.loaders import fashion_mnist

        fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ctx():
    _fmnist_or_skip()
    ctx = classifier.prepare(TINY, None, verbose=False)
    acc = jax.jit(jax.vmap(lambda p, x, y: ev.accuracy(ctx.model.apply, p, x, y), in_axes=(0, None, None)))
    ctx.acc = lambda p, split: np.asarray(acc(p, *split))
    return ctx


def _unlearn(ctx, name, cfg=TINY):
    phase, hp = classifier.unlearner(ctx.model, cfg, name)
    fn = jax.jit(over_seeds(phase.run, (0, 0, None, None), model=ctx.model))
    return fn(ctx.start(name), classifier.role_keys(cfg, classifier.UNLEARN), ctx.data, hp)["params"]


def _splits(data):
    return {"forget": (data.x_forget, data.y_forget), "retain": (data.x_retain, data.y_retain)}


@pytest.mark.parametrize("name", [*uc.METHODS, "oracle"])
def test_method_moves_weights_and_lowers_forget_accuracy_under_vmap(ctx, name):
    p_orig = ctx.params["original"]
    out = ctx.params["oracle"] if name == "oracle" else _unlearn(ctx, name)
    assert jax.tree.structure(out) == jax.tree.structure(p_orig)
    for s in range(TINY["seeds"]):
        moved = sum(
            float(jnp.abs(a[s] - b[s]).sum()) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(p_orig))
        )
        assert moved > 0, f"{name} did not change the weights of seed {s}"
    split = _splits(ctx.data)
    f_before, f_after = ctx.acc(p_orig, split["forget"]), ctx.acc(out, split["forget"])
    assert f_before.mean() > 0.5
    assert f_after.mean() < f_before.mean(), (name, f_before, f_after)
    if name == "oracle":
        r = ctx.acc(out, split["retain"])
        assert ((r >= 0.75) & (r <= 1.0)).all(), r
        assert (f_after < 0.2).all(), f_after


def test_gu_keeps_retain_accuracy_closer_to_the_original_than_its_base_method(ctx):
    """GA and GU-GA at the same learning rate (1e-3, where plain GA costs retain accuracy) and
    the same 15 steps: GU's projection off the retain gradients keeps retain accuracy closer to
    the original's, for every seed (measured: |drop| 0.21 against 0.51)."""
    cfg = config.resolve(TINY, ["ga.lr=1e-3", "gu-ga.lr=1e-3"])
    split = _splits(ctx.data)
    r0 = ctx.acc(ctx.params["original"], split["retain"])
    drop = {}
    for m in ("ga", "gu-ga"):
        params = _unlearn(ctx, m, cfg)
        assert ctx.acc(params, split["forget"]).max() < 0.2  # both forget at this learning rate
        drop[m] = np.abs(ctx.acc(params, split["retain"]) - r0)
    assert (drop["gu-ga"] < drop["ga"]).all(), drop
    assert drop["ga"].mean() - drop["gu-ga"].mean() > 0.1, drop


def _np_softmax_regression(W, b, x, y):
    """Mean cross-entropy of softmax regression and its analytic gradient, in float64 numpy."""
    z = x @ W + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    d = (p - np.eye(W.shape[1])[y]) / n
    return loss, x.T @ d, d.sum(0)


def test_iau_gradient_norm_penalty_matches_numpy_and_finite_differences():
    """``losses.with_grad_norm`` (IAU's training loss ``L + w ||grad L||^2``) on softmax regression
    (4 inputs, 3 classes, 6 examples): the penalty's ``||grad L||^2`` equals the analytic numpy
    gradient's squared norm, the loss equals ``L + w ||grad L||^2``, and its gradient (double
    backprop, the part that trains IAU's original) equals central finite differences of the numpy
    objective."""
    from jaxcl.losses import classification_loss, with_grad_norm

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), np.array([0, 1, 2, 1, 0, 2])
    W, b, w = rng.normal(size=(4, 3)), rng.normal(size=3) * 0.1, 0.3
    apply = lambda p, x_: x_ @ p["W"] + p["b"]
    loss_fn = with_grad_norm(classification_loss(apply), weight=w)
    params = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y)}
    (val, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)

    def objective(W_, b_):
        l, gW, gb = _np_softmax_regression(W_, b_, x, y)
        return l + w * ((gW**2).sum() + (gb**2).sum())

    l0, gW, gb = _np_softmax_regression(W, b, x, y)
    gn = (gW**2).sum() + (gb**2).sum()
    np.testing.assert_allclose(float(aux["grad_norm_sq"]), gn, rtol=1e-5)
    np.testing.assert_allclose(float(val), l0 + w * gn, rtol=1e-5)
    eps = 1e-5
    fd_W = np.zeros_like(W)
    for i, j in np.ndindex(*W.shape):
        e = np.zeros_like(W)
        e[i, j] = eps
        fd_W[i, j] = (objective(W + e, b) - objective(W - e, b)) / (2 * eps)
    fd_b = np.array([(objective(W, b + e) - objective(W, b - e)) / (2 * eps) for e in np.eye(3) * eps])
    np.testing.assert_allclose(np.asarray(g["W"]), fd_W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g["b"]), fd_b, rtol=1e-4, atol=1e-5)
    # the penalty's own gradient is not negligible here: without it the check would fail
    assert np.abs(fd_W - gW).max() > 1e-2


def test_iau_regulariser_lowers_the_gradient_norm_it_penalises(ctx):
    """The study's regularised fine-tuning (``finetune`` with ``losses.with_grad_norm``) against
    plain fine-tuning, same initialisation, plain SGD (lr 0.01: the gradient-flow regime, where
    the penalty adds ``-4w ||H grad L||^2`` to the rate of change of ``||grad L||^2``) on one
    fixed batch of 256 training examples, through the one loop: the full-batch gradient norm is
    lower with the regulariser at every evaluation, for every seed."""
    model, data = ctx.model, ctx.data
    batch = {"x": data.x_train[:256], "y": data.y_train[:256]}
    grad_sq = lambda p: sum(jnp.vdot(g, g) for g in jax.tree.leaves(jax.grad(mean_nll(model))(p, batch)))

    def train(key, weight):
        spec = classifier.grad_norm_finetune(weight)
        hp, opts = spec.split({"optim": "sgd", "lr": 0.01})
        method = spec.build(model, as_hparams(spec, hp), None, **opts)
        state = init_state(model.init(key), method.tx, key)
        step = make_step(method.loss_fn, method.tx)
        _, trace = run_chunks(step, state, lambda k: batch, lambda p: {"grad_sq": grad_sq(p)}, 6, 10)
        return trace["grad_sq"]

    run = jax.jit(jax.vmap(train, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), 3)
    plain, reg = np.asarray(run(keys, 0.0)), np.asarray(run(keys, 0.05))
    assert (reg < plain).all(), (plain, reg)
    assert reg[:, -1].mean() < 0.95 * plain[:, -1].mean(), (plain[:, -1], reg[:, -1])


def test_bad_forget_sets_are_refused():
    x = np.zeros((10, 2, 2, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(10)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="empty"):
        scenarios.from_indices(x, y, x, y, np.array([], np.int64), np.ones(10, bool))
    with pytest.raises(ValueError, match="not a subset"):
        scenarios.from_indices(x, y, x, y, np.array([3, 12]), np.ones(10, bool))
    with pytest.raises(ValueError, match="not a subset"):
        scenarios.from_indices(x, y, x, y, np.array([3, 3]), np.ones(10, bool))
    other = x[:2].copy()
    other[1, 1, 1, 0] = 255
    with pytest.raises(ValueError, match="not a subset"):
        common.locate_in_train(other, x)
    np.testing.assert_array_equal(common.locate_in_train(x[[4, 2]], x), [4, 2])


@pytest.mark.parametrize(
    "item,match",
    [
        ("ssd.alpha=-1", r"ssd\.alpha=-1\.0 is out of range; valid: \(0, inf\]"),
        ("ssd.lambda=0", r"ssd\.lambda=0\.0 is out of range; valid: \(0, inf\]"),
        ("ga.lr=0", r"ga\.lr=0\.0 is out of range; valid: \(0, inf\]"),
        ("gu-npo.mode=layer", r"gu-npo\.mode='layer' is not valid; valid: per_tensor, global"),
        ("methods=ssd,nope", r"unknown method 'nope'.*valid: .*ssd"),
        ("ssd.alfa=5", r"unknown config key 'ssd\.alfa'.*did you mean ssd\.alpha"),
    ],
)
def test_bad_settings_are_refused_by_the_config(item, match):
    with pytest.raises(config.ConfigError, match=match):
        config.resolve(config.load("unlearn-class", tiny=True), [item])


@pytest.mark.parametrize(
    "item,match",
    [
        ("unlearn.steps=0", r"unlearn\.steps=0 must be a positive number"),
        ("gu-ga.rank=16", r"gu-ga\.rank=16 is larger than the history.*valid: 1 to 15"),
        ("eval.relearn_steps=7", r"eval\.relearn_steps=7 must be a multiple of eval\.relearn_every=5"),
        ("data.scenario=half", r"data\.scenario='half' is not valid; valid: full-class, sub-class, random"),
        ("data.forget_class=10", r"data\.forget_class=10; valid: 0 to 9"),
        ("model.name=big", r"model\.name='big'; valid: cnn, mlp, resnet18, vit"),
        ("methods=ssd,idk", r"method 'idk' needs alternative answers.*valid here: .*random_label"),
    ],
)
def test_bad_settings_are_refused_before_compute(item, match, tmp_path, monkeypatch):
    cfg = config.resolve(config.load("unlearn-class", tiny=True), [item])
    monkeypatch.setattr(classifier, "load_problem", lambda cfg: pytest.fail("data loaded before validation"))
    with pytest.raises(config.ConfigError, match=match):
        uc.run(cfg, str(tmp_path / "out"))
    with pytest.raises(config.ConfigError, match=match):
        uc.sweep(cfg, {"ssd.alpha": [5.0]})
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``jaxcl run unlearn-class --tiny`` with SSD and GU-NPO, one seed: ``(out dir, log, results)``
    as written by this first run (the cache test reruns into the same folder)."""
    _fmnist_or_skip()
    out = tmp_path_factory.mktemp("tiny")
    argv = ["run", "unlearn-class", "--tiny", "--method", "ssd,gu-npo", "--seeds", "1", "--out", str(out)]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli.main(argv) == 0
    return out, log.getvalue(), json.loads((out / "results.json").read_text())


def test_tiny_study_end_to_end(tiny_run):
    out, log, res = tiny_run
    assert "| method" in log and "saved to" in log and "(cached)" not in log
    assert res["schema"] == "jaxcl-results/1" and res["study"] == "unlearn-class"
    assert list(res["rows"]) == ["oracle", "original", "ssd", "gu-npo"]
    assert [c[0] for c in res["columns"]] == [c[0] for c in uc.COLUMNS]
    assert sorted(res["plots"]) == ["forget_vs_retain.png", "relearn.png"]
    for f in res["plots"]:
        assert (out / f).stat().st_size > 10_000
    rows = res["rows"]
    for name, r in rows.items():
        assert set(r["per_seed"]) >= {c[0] for c in uc.COLUMNS}, name
    assert rows["oracle"]["summary"]["forget_acc"]["mean"] < 0.1
    assert rows["original"]["summary"]["forget_acc"]["mean"] > 0.7
    assert rows["ssd"]["summary"]["forget_acc"]["mean"] < rows["original"]["summary"]["forget_acc"]["mean"]
    assert res["extra"]["relearn_steps"] == [0, 5, 10]
    assert np.asarray(res["extra"]["relearn_curve"]["ssd"]).shape == (1, 3)


def test_iau_reg_train_adds_the_regularised_original_and_iau_from_it(tmp_path, capsys):
    """``iau_reg_train=true``: rows ``original-reg`` (the original's recipe and keys with the
    gradient-norm penalty: a different model) and ``iau-reg`` (IAU from it) after plain ``iau``;
    a rerun loads all three from the cache."""
    _fmnist_or_skip()
    argv = ["run", "unlearn-class", "--tiny", "--seeds", "1", "--out", str(tmp_path)]
    argv += ["--set", "methods=iau", "--set", "iau_reg_train=true", "--set", "iau_reg=0.05"]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert list(res["rows"]) == ["oracle", "original", "iau", "original-reg", "iau-reg"]
    col = lambda r, k: res["rows"][r]["per_seed"][k][0]
    assert col("original-reg", "cka_orig") < 0.999  # not the plain original
    assert col("original-reg", "forget_acc") > 0.5  # but trained like it
    assert col("iau-reg", "cka_orig") != col("iau", "cka_orig")
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("(cached)") == 5


def test_sweep_is_one_program_and_matches_single_runs(ctx, tmp_path):
    res = uc.sweep(TINY, {"ssd.alpha": [5.0, 50.0]}, out=str(tmp_path), verbose=False)
    assert res["study"] == "sweep" and list(res["rows"]) == ["ssd.alpha=5", "ssd.alpha=50"]
    assert (tmp_path / "results.json").exists() and (tmp_path / "sweep.png").exists()
    split = _splits(ctx.data)
    for value, row in zip((5.0, 50.0), res["rows"].values()):
        single = _unlearn(ctx, "ssd", config.resolve(TINY, [f"ssd.alpha={value}"]))
        np.testing.assert_allclose(row["per_seed"]["forget_acc"], ctx.acc(single, split["forget"]), atol=0.03)
        assert len(row["per_seed"]["forget_acc"]) == TINY["seeds"]


def test_study_reuses_the_original_and_finished_methods(tiny_run, capsys):
    """A rerun loads the original/oracle and every finished method (an interrupted run loses
    nothing); a method's changed settings rerun that method only; a cached entry that is valid
    JSON but not a method result is reported and rerun; other data never loads the wrong models;
    a corrupt models checkpoint is reported and retrained to the same result; ``fresh`` ignores
    the cache."""
    out, _, first = tiny_run

    def run(*sets, fresh=False):
        argv = ["run", "unlearn-class", "--tiny", "--seeds", "1", "--out", str(out)]
        argv += [a for s in sets for a in ("--set", s)] + (["--fresh"] if fresh else [])
        assert cli.main(argv) == 0
        return json.loads((out / "results.json").read_text()), capsys.readouterr().out

    second, log = run("methods=ssd,ga")
    assert "loaded from" in log
    assert log.count("(cached)") == 3 and "ga            forget" in log  # oracle, original, ssd
    assert second["rows"]["ssd"]["per_seed"] == first["rows"]["ssd"]["per_seed"]
    # another setting of SSD reruns SSD; a wrong GA entry is reported and GA rerun
    (ga,) = (out / "cache").glob("methods-*/ga-*.json")
    ga.write_text(json.dumps({"metrics": {"forget_acc": "low"}}))
    with pytest.warns(UserWarning, match="not a method result"):
        third, log = run("methods=ssd,ga", "ssd.alpha=50")
    assert "loaded from" in log and log.count("(cached)") == 2  # oracle, original
    assert third["rows"]["ssd"]["per_seed"] != first["rows"]["ssd"]["per_seed"]
    metrics = lambda r, m: {k: v for k, v in r["rows"][m]["per_seed"].items() if k != "time_s"}
    assert metrics(third, "ga") == metrics(second, "ga")  # recomputed: same numbers
    # another forget class: other models
    _, log = run("methods=ssd", "data.forget_class=5")
    assert "loaded from" not in log and "saved to" in log
    # corrupt the class-3 models: reported, retrained, same numbers (training is deterministic)
    for d in (out / "cache").glob("models-*"):
        for f in d.rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(b"\0garbage")
    for d in (out / "cache").glob("methods-*"):
        shutil.rmtree(d)  # so SSD is evaluated on the retrained models
    again, log = run("methods=ssd")
    assert "truncated or corrupted" in log and "saved to" in log and "loaded from" not in log
    assert metrics(again, "ssd") == metrics(first, "ssd")
    _, log = run("methods=ssd", fresh=True)
    assert "(cached)" not in log and "loaded from" not in log and "saved to" in log
