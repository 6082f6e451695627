"""GS-LoRA / GS-LoRA++ (jaxcl.methods.gs_lora): the loss, the group lasso and the prototype terms
against numpy on hand-made adapters and batches; the refusal without adapters; and one behaviour
run on a tiny ViT with LoRA (the forget class is forgotten, the rest kept, and a large group
lasso switches groups off where none is off without it)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl import cli
from jaxcl.config import ConfigError
from jaxcl.engine import init_state, make_step
from jaxcl.loops import Phase, PhaseConfig, as_hparams, build_method
from jaxcl.losses import supervised_loss
from jaxcl.methods import METHODS
from jaxcl.methods import gs_lora as gs
from jaxcl.models import from_config, lora, mlp, model_config
from jaxcl.unlearn.common import UnlearnData

# an MLP 6 -> 5 -> 3 with rank-2 adapters on both kernels: groups "layers/0" and "head"
BASE_MODEL = mlp((6, 1, 1), 3, hidden=(5,))
SPEC = lora.LoraSpec(("*kernel",), 2, 4.0)
BASE = BASE_MODEL.init(jax.random.key(0))
MODEL = lora.adapt(BASE_MODEL, SPEC, BASE)
ADAPTERS = jax.tree.map(  # non-zero B, so both factors carry the group norms
    lambda v: v + 0.4 * jax.random.normal(jax.random.key(1), v.shape),
    lora.init(SPEC, BASE, jax.random.key(2)),
)


def np_ce(logits, y):
    z = logits - logits.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -lp[np.arange(len(y)), y].mean()


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 6, 1, 1)).astype(np.float32)
    xf = rng.normal(size=(3, 6, 1, 1)).astype(np.float32)
    return {
        "x": jnp.asarray(x),
        "y": jnp.asarray([1, 2, 1, 2, 1], jnp.int32),
        "forget": {"x": jnp.asarray(xf), "y": jnp.zeros((3,), jnp.int32)},
    }


def np_groups(ad, grouping):
    sq = {
        k: float((np.asarray(ad[k]["a"]) ** 2).sum()) + float((np.asarray(ad[k]["b"]) ** 2).sum())
        for k in ("head/kernel", "layers/0/kernel")
    }
    if grouping == "matrix":
        return [float(np.sqrt((np.asarray(ad[k][m]) ** 2).sum())) for k in sorted(ad) for m in "ab"]
    return [np.sqrt(sq[k]) for k in sorted(sq)]  # block and lora coincide here: one weight per block


def hp(**over):
    return as_hparams(METHODS["gs_lora"], over)


@pytest.mark.parametrize("grouping", ["block", "matrix"])
@pytest.mark.parametrize("bnd", [10.0, 0.05])  # the forget term on, and past its bound (zero)
def test_objective_matches_numpy(grouping, bnd):
    h = hp(beta=0.7, bnd=bnd, alpha=0.3)
    b = batch()
    merged = lora.merge(SPEC, BASE, ADAPTERS)
    logits_r = np.asarray(BASE_MODEL.apply(merged, b["x"]), np.float64)
    logits_f = np.asarray(BASE_MODEL.apply(merged, b["forget"]["x"]), np.float64)
    ce_r, ce_f = np_ce(logits_r, np.asarray(b["y"])), np_ce(logits_f, np.zeros(3, int))
    norms = np_groups(ADAPTERS, grouping)
    want = ce_r + 0.7 * max(bnd - ce_f, 0.0) + 0.3 * sum(norms)
    got = gs.objective(MODEL, h, ADAPTERS, b, grouping=grouping)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert len(norms) == (4 if grouping == "matrix" else 2)
    np.testing.assert_allclose(
        np.sort(np.asarray(gs.safe_norm(gs.group_sq_norms(ADAPTERS, grouping, False)))),
        np.sort(norms),
        rtol=1e-6,
    )
    # warm-up: alpha counts from step warmup_steps on
    h = hp(beta=0.7, bnd=bnd, alpha=0.3, warmup_steps=2)
    np.testing.assert_allclose(
        float(gs.objective(MODEL, h, ADAPTERS, b, grouping=grouping, step=1)),
        want - 0.3 * sum(norms),
        rtol=1e-5,
    )


def test_group_lasso_transform_adds_the_subgradient_after_the_warm_up():
    """``alpha * W / ||W_g||`` for every matrix of group g, zero before ``warmup_steps``; one SGD
    step (lr 1) moves the adapters by minus the gradient of the whole objective."""
    tx = gs.group_lasso(0.5, 1, "block", False)
    state = tx.init(ADAPTERS)
    zeros = jax.tree.map(jnp.zeros_like, ADAPTERS)
    u0, state = tx.update(zeros, state, ADAPTERS)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(u0))  # step 0: warm-up
    u1, _ = tx.update(zeros, state, ADAPTERS)
    for k in ADAPTERS:
        n = np.sqrt(sum((np.asarray(ADAPTERS[k][m]) ** 2).sum() for m in "ab"))
        for m in "ab":
            np.testing.assert_allclose(u1[k][m], 0.5 * np.asarray(ADAPTERS[k][m]) / n, rtol=1e-5, atol=1e-7)
    h = hp(lr=1.0, beta=0.7, alpha=0.3)
    spec = METHODS["gs_lora"]
    method = build_method(spec, MODEL, h, {**spec.split({})[1], "optim": "sgd", "weight_decay": 0.0})
    b = batch()
    st = init_state(ADAPTERS, method.tx, jax.random.key(0))
    new = make_step(method.loss_fn, method.tx)(st, b)[0].params
    g = jax.grad(lambda p: gs.objective(MODEL, h, p, b))(ADAPTERS)
    for a, p, d in zip(jax.tree.leaves(new), jax.tree.leaves(ADAPTERS), jax.tree.leaves(g)):
        np.testing.assert_allclose(a, p - d, rtol=1e-4, atol=1e-6)


def test_llama_groups_are_per_layer():
    ad = {
        "layers/wq": {"a": jnp.ones((3, 4, 2)), "b": jnp.zeros((3, 2, 4))},
        "layers/wv": {"a": jnp.full((3, 4, 2), 2.0), "b": jnp.ones((3, 2, 5))},
    }
    want_block = np.full(3, 8 * 1 + 8 * 4 + 10)  # per layer: wq's A, wv's A and B
    np.testing.assert_allclose(gs.group_sq_norms(ad, "block", True), want_block)
    assert gs.group_sq_norms(ad, "lora", True).shape == (6,)
    assert gs.group_sq_norms(ad, "matrix", True).shape == (12,)


def test_prototype_kl_and_running_class_means_match_numpy():
    rng = np.random.default_rng(3)
    f, p = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    sp = np.exp(p) / np.exp(p).sum(-1, keepdims=True)
    sf = np.exp(f) / np.exp(f).sum(-1, keepdims=True)
    want = (sp * (np.log(sp) - np.log(sf))).sum(-1).mean()
    np.testing.assert_allclose(float(gs.kl_to_prototypes(jnp.asarray(f), jnp.asarray(p))), want, rtol=1e-5)
    t = gs.prototypes(MODEL, ADAPTERS)
    b1, b2 = batch(0), batch(1)
    state = {**t.init(b1), "params": ADAPTERS}
    _, state = t.update(b1, state, None)
    out, _ = t.update(b2, state, None)
    x = np.concatenate([np.asarray(bb[k]["x"] if k else bb["x"]) for bb in (b1, b2) for k in ("", "forget")])
    y = np.concatenate([np.asarray(bb[k]["y"] if k else bb["y"]) for bb in (b1, b2) for k in ("", "forget")])
    feats = np.asarray(MODEL.features(ADAPTERS, jnp.asarray(x)))
    for c in range(3):
        np.testing.assert_allclose(out["protos"][c], feats[y == c].mean(0), rtol=1e-5, atol=1e-6)


def test_without_adapters_it_refuses_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.lora.rank"):
        build_method(METHODS["gs_lora"], BASE_MODEL, hp(), METHODS["gs_lora"].split({})[1])
    with pytest.raises(ValueError, match="model.lora.rank"):
        Phase(BASE_MODEL, METHODS["gs_lora_pp"], PhaseConfig(2, 4, 1, 4))
    argv = ["run", "unlearn-class", "--tiny", "--set", "methods=gs_lora", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.lora.rank" in err


# -- behaviour: a tiny ViT, class 0 forgotten --------------------------------------------------

C = 3


def _problem(seed=0, n=96):
    rng = np.random.default_rng(seed)
    proto = rng.normal(0, 1, (C, 8, 8, 1))
    y = (np.arange(n) % C).astype(np.int32)
    x = (proto[y] + rng.normal(0, 0.7, (n, 8, 8, 1))).astype(np.float32)
    f, a = y == 0, jnp.asarray
    return UnlearnData(a(x), a(y), a(x[~f]), a(y[~f]), a(x[f]), a(y[f]), a(x), a(y), a(x[f]), a(y[f]))


def test_tiny_vit_forgets_the_class_keeps_the_rest_and_the_lasso_switches_groups_off():
    sec = model_config("vit", vit={"patch": 4, "dim": 16, "depth": 3, "heads": 2, "mlp": 32})
    vit = from_config(sec, (8, 8, 1), C)
    sec["lora"] = lora.section(4, 4.0)
    vit_lora = from_config(sec, (8, 8, 1), C)
    prob = _problem()
    tx = optax.adam(3e-3)
    step = make_step(supervised_loss(vit), tx)
    st = init_state(vit.init(jax.random.key(0)), tx, jax.random.key(0))
    full = {"x": prob.x_train, "y": prob.y_train}
    p0 = jax.jit(lambda s: jax.lax.scan(lambda s, _: (step(s, full)[0], None), s, None, length=80)[0].params)(
        st
    )

    def acc(p, x, y):
        return float((vit.apply(p, x).argmax(-1) == y).mean())

    assert acc(p0, prob.x_forget, prob.y_forget) > 0.9 and acc(p0, prob.x_retain, prob.y_retain) > 0.9
    spec = METHODS["gs_lora"]
    phase = Phase(vit_lora, spec, PhaseConfig(120, 16, 20, 32), grouping="lora")  # 6 groups
    run = jax.jit(phase.run)  # alpha is traced: one program for every run
    out = {
        a: run(p0, jax.random.key(1), prob, as_hparams(spec, {"alpha": a, "warmup_steps": 10}))
        for a in (0.0, 0.1, 1.0)
    }
    for a in (0.0, 0.1):  # forgotten, the rest kept (alpha 1 switches every group off: nothing forgotten)
        p = out[a]["params"]
        assert acc(p, prob.x_forget, prob.y_forget) < 0.1 and acc(p, prob.x_retain, prob.y_retain) > 0.9, a
    tr = {a: {k: float(v[-1]) for k, v in o["trace"].items()} for a, o in out.items()}
    # the lasso concentrates the adapters in few groups: the largest holds most of the total norm
    share = {a: t["group_norm_max"] / t["group_lasso"] for a, t in tr.items()}
    assert share[0.1] > 0.4 > 0.3 > share[0.0], share
    assert tr[0.0]["groups_off"] == 0.0 and tr[1.0]["groups_off"] > 0.3, tr


def test_runs_on_resnet_and_llama_adapters():
    """The loss on a ResNet's adapters (convolution taps summed into their group: blocks/7 and
    the head) and on the Llama's (stacked layers: one group per layer): finite, every group seen."""
    from jaxcl.models import lm

    sec = model_config("resnet18", resnet18={"width": 8})
    sec["lora"] = lora.section(2)  # the head has C = 3 outputs
    res = from_config(sec, (8, 8, 1), C)
    base = res.init(jax.random.key(0))
    ad = lora.init(res.lora, base, jax.random.key(1))
    m = build_method(
        METHODS["gs_lora"], lora.adapt(res, res.lora, base), hp(), METHODS["gs_lora"].split({})[1]
    )
    prob = _problem()
    b = prob.draw(jax.random.key(2), 4)
    loss, aux = jax.jit(m.loss_fn)(ad, b, None)
    assert np.isfinite(float(loss)) and gs.group_sq_norms(ad, "block", False).shape == (2,)
    llm, params, _ = lm.load({**lm.section("tiny", compute_dtype="float32"), "lora": lora.section(2)})
    ad = lora.init(llm.lora, params, jax.random.key(1))
    m = build_method(
        METHODS["gs_lora"], lora.adapt(llm, llm.lora, params), hp(), METHODS["gs_lora"].split({})[1]
    )
    sub = {
        "tokens": jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % 250,
        "mask": jnp.ones((2, 12), jnp.int32),
    }
    loss, aux = jax.jit(m.loss_fn)(ad, {**sub, "forget": sub}, None)
    assert np.isfinite(float(loss)) and float(aux["retain_ce"]) == float(aux["forget_ce"])
    assert gs.group_sq_norms(ad, "block", True).shape == (llm.cfg.n_layers,)
    with pytest.raises(ValueError, match="classifier"):
        build_method(
            METHODS["gs_lora_pp"],
            lora.adapt(llm, llm.lora, params),
            as_hparams(METHODS["gs_lora_pp"]),
            METHODS["gs_lora_pp"].split({})[1],
        )
