"""Mixed precision of the classifier models (``model.compute_dtype``, :mod:`jaxcl.models.precision`).

Stated tolerances, per family (MLP, CNN, ResNet-18, ViT), bfloat16 against float32 on the same
float32 parameters and a batch of random pixels:

* forward: ``max |logits_bf16 - logits_f32| <= 0.03 * max |logits_f32|`` (3 %; measured 0.4-1 %)
  and the same predicted class on at least 90 % of the examples; logits and features float32;
* backward: the gradient of the float32 cross-entropy is finite and float32, and its cosine with
  the float32 gradient is at least 0.99 (measured 0.997-0.99999);
* every matmul and convolution of the forward and of the backward program takes bfloat16 inputs
  and returns float32 (float32 accumulation); the float32 program has no bfloat16 in it;
* parameters and optimizer state (Adam moments, EWC's anchor and Fisher, ER's buffer of float
  rows) stay float32 through training.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxcl import cli, config
from jaxcl.data.streams import Stream
from jaxcl.loops import Experiment, LoopConfig
from jaxcl.methods import get_method
from jaxcl.models import from_config, make_model, model_config, precision

SHAPE, C = (16, 16, 1), 4
FAMILIES = {
    "mlp": {"hidden": (32, 32)},
    "cnn": {"channels": (8, 16), "hidden": 32},
    "resnet18": {"width": 8},
    "vit": {"patch": 4, "dim": 32, "depth": 2, "heads": 4, "mlp": 64},
}


def _pair(name):
    kw = FAMILIES[name]
    return make_model(name, SHAPE, C, **kw), make_model(name, SHAPE, C, compute_dtype="bfloat16", **kw)


def _batch(n=32):
    x = jax.random.randint(jax.random.key(1), (n,) + SHAPE, 0, 256).astype(jnp.uint8)
    return x, jnp.arange(n) % C


def _xent(model, x, y):
    return lambda p: -jnp.mean(jax.nn.log_softmax(model.apply(p, x))[jnp.arange(len(y)), y])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bf16_forward_and_gradient_within_tolerance_of_float32(name):
    f32, bf16 = _pair(name)
    params = f32.init(jax.random.key(0))
    x, y = _batch()
    lf, lb = jax.jit(f32.apply)(params, x), jax.jit(bf16.apply)(params, x)
    assert lb.dtype == jnp.float32 and jax.jit(bf16.features)(params, x).dtype == jnp.float32
    err = float(jnp.max(jnp.abs(lb - lf)))
    assert 0 < err <= 0.03 * float(jnp.max(jnp.abs(lf))), (name, err)  # > 0: it did run in bf16
    assert float(jnp.mean(lb.argmax(-1) == lf.argmax(-1))) >= 0.9
    gf, gb = (ravel_pytree(jax.jit(jax.grad(_xent(m, x, y)))(params))[0] for m in (f32, bf16))
    assert gb.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(gb)))
    cos = float(gf @ gb / (jnp.linalg.norm(gf) * jnp.linalg.norm(gb)))
    assert cos >= 0.99, (name, cos)


CONTRACTION = re.compile(
    r"stablehlo\.(?:dot_general|convolution).*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)"
)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_matmul_forward_and_backward_is_bf16_in_f32_out(name):
    f32, bf16 = _pair(name)
    params = f32.init(jax.random.key(0))
    x, y = _batch(4)
    text = jax.jit(jax.value_and_grad(_xent(bf16, x, y))).lower(params).as_text()
    ops = CONTRACTION.findall(text)
    assert len(ops) >= 3, text[:2000]
    for a, b, out in ops:
        assert a.endswith("xbf16>") and b.endswith("xbf16>") and out.endswith("xf32>"), (a, b, out)
    assert "bf16" not in jax.jit(jax.value_and_grad(_xent(f32, x, y))).lower(params).as_text()


def _stream():
    rng = np.random.default_rng(0)
    T, N = 2, 64
    y = np.stack([rng.integers(2 * t, 2 * t + 2, N) for t in range(T)]).astype(np.int32)
    x = rng.integers(0, 256, (T, N) + SHAPE).astype(np.uint8)
    masks = np.arange(C)[None] // 2 == np.arange(T)[:, None]
    n = np.full((T,), N, np.int32)
    return jax.device_put(
        Stream(x, y, n, x[:, :16], y[:, :16], np.full((T,), 16, np.int32), np.ones((T, C), bool), masks)
    )


@pytest.mark.parametrize(
    "name, method", [("mlp", "ewc"), ("mlp", "er"), ("cnn", "ewc"), ("resnet18", "er"), ("vit", "ewc")]
)
def test_params_and_optimizer_state_stay_float32_through_training(name, method):
    _, bf16 = _pair(name)
    spec = get_method(method, "cl")
    loop = LoopConfig(steps_per_task=4, batch_size=8, eval_every=4, eval_per_task=16, consolidate_samples=32)
    exp = Experiment(bf16, spec, loop, **({"capacity": 32} if "capacity" in spec.options else {}))
    stream, hp = _stream(), exp.default_hparams()
    state = exp.init(jax.random.key(0), stream, hp)
    p0 = state.params
    state, out = jax.jit(
        lambda s: jax.lax.scan(lambda s, t: exp.train_task(s, stream, hp, t), s, jnp.arange(2))
    )(state)
    floats = lambda tree: [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats(state.params) and all(a.dtype == jnp.float32 for a in floats(state.params))
    assert floats(state.opt_state) and all(a.dtype == jnp.float32 for a in floats(state.opt_state))
    assert all(a.dtype == jnp.float32 for a in floats(state.data_state))
    assert bool(jnp.all(jnp.isfinite(out["trace"]["loss"])))
    assert not all(
        bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p0))
    )


def test_float32_is_the_default_and_unchanged():
    section = model_config("mlp", mlp={"hidden": (8,)})
    assert section["compute_dtype"] == "float32" and "compute_dtype" not in section["mlp"]
    old = {k: v for k, v in section.items() if k != "compute_dtype"}  # a section from before the key
    a, b = from_config(section, SHAPE, C), from_config(old, SHAPE, C)
    assert a.name == b.name == "mlp-8"
    params = a.init(jax.random.key(0))
    x, _ = _batch(4)
    assert jax.jit(a.apply).lower(params, x).as_text() == jax.jit(b.apply).lower(params, x).as_text()
    bf = from_config({**section, "compute_dtype": "bfloat16"}, SHAPE, C)
    assert bf.name == "mlp-8-bf16"
    jax.tree.map(np.testing.assert_array_equal, bf.init(jax.random.key(0)), params)  # same init


def test_unknown_compute_dtype_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(config.ConfigError, match="model.compute_dtype='float16'; valid: float32, bfloat16"):
        precision.check_dtype("float16")
    out = tmp_path / "out"
    rc = cli.main(
        ["run", "split-fashion-mnist", "--tiny", "--set", "model.compute_dtype=float16", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "model.compute_dtype='float16'; valid: float32, bfloat16" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_committed_bf16_main_job_is_within_the_seeds_spread_of_float32():
    """The README's claim: every column of results/studies/split-fashion-mnist-bf16.json is
    within the larger of the two runs' seed std of results/studies/split-fashion-mnist.json."""
    import json
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    f32, bf16 = (
        json.load(open(os.path.join(root, "results", "studies", f"split-fashion-mnist{s}.json")))
        for s in ("", "-bf16")
    )
    assert bf16["command"].endswith("--set model.compute_dtype=bfloat16") and bf16["seeds"] == f32["seeds"]
    assert list(bf16["rows"]) == list(f32["rows"])
    for row in f32["rows"]:
        for key in ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "wf10"):
            a, b = f32["rows"][row]["columns"][key], bf16["rows"][row]["columns"][key]
            assert abs(a["mean"] - b["mean"]) <= max(a["std"], b["std"]) + 1e-9, (row, key, a, b)


# -- the Llama (``LlamaConfig.compute_dtype``, the language-model studies' ``model.compute_dtype``)


def _llama_pair():
    from jaxcl.models import llama

    cfg = llama.tiny(vocab_size=128)
    params = llama.init_params(cfg, seed=0)
    params["embed"] = params["embed"] * 20  # logits of order 1 (the random model's are ~0.01)
    toks = jax.random.randint(jax.random.key(1), (4, 17), 0, cfg.vocab_size)
    return cfg, cfg.replace(compute_dtype="bfloat16"), params, toks


def test_llama_bf16_logits_and_gradient_within_tolerance_of_float32():
    """Stated tolerance (the classifier families' above): logits within 3 % of float32's largest
    logit, the same argmax on 90 % of positions, the gradient of the float32 token loss float32
    with cosine >= 0.99 to float32's."""
    from jaxcl.models import llama

    f32, bf16, params, toks = _llama_pair()
    lf, lb = (jax.jit(llama.make_apply(c))(params, toks) for c in (f32, bf16))
    assert lb.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(lb - lf)))
    assert 0 < err <= 0.03 * float(jnp.max(jnp.abs(lf))), err  # > 0: it did run in bf16
    assert float(jnp.mean(lb.argmax(-1) == lf.argmax(-1))) >= 0.9
    loss = lambda c: lambda p: -llama.token_logprobs(c, p, toks).mean()
    gf, gb = (ravel_pytree(jax.jit(jax.grad(loss(c)))(params))[0] for c in (f32, bf16))
    assert gb.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(gb)))
    cos = float(gf @ gb / (jnp.linalg.norm(gf) * jnp.linalg.norm(gb)))
    assert cos >= 0.99, cos


def test_llama_bf16_forward_matmuls_take_bf16_and_logits_are_float32():
    """Every contraction of the bf16 forward takes bfloat16 inputs; the output head accumulates
    in float32 (float32 logits); the float32 program has no bfloat16 in it."""
    from jaxcl.models import llama

    f32, bf16, params, toks = _llama_pair()
    text = jax.jit(llama.make_apply(bf16)).lower(params, toks).as_text()
    ops = CONTRACTION.findall(text)
    assert len(ops) >= 7, text[:2000]  # q, k, v, scores, weighted values, o, gate, up, down, head
    for a, b, _ in ops:
        assert a.endswith("xbf16>") and b.endswith("xbf16>"), (a, b)
    assert any(out.endswith(f"x{f32.vocab_size}xf32>") for _, _, out in ops), ops  # the head
    assert "bf16" not in jax.jit(llama.make_apply(f32)).lower(params, toks).as_text()


def test_llama_params_and_adamw_state_stay_float32_through_bf16_training():
    import optax

    from jaxcl import engine
    from jaxcl.models import llama

    _, bf16, params, toks = _llama_pair()
    tx = optax.adamw(1e-3)
    step = engine.make_step(lambda p, b, k: (-llama.token_logprobs(bf16, p, b).mean(), {}), tx, norms=False)
    state = engine.init_state(params, tx, 0)
    state, m = jax.jit(lambda s: jax.lax.scan(step, s, jnp.broadcast_to(toks, (3, *toks.shape))))(state)
    floats = lambda tree: [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats(state.params) and all(a.dtype == jnp.float32 for a in floats(state.params))
    assert floats(state.opt_state) and all(a.dtype == jnp.float32 for a in floats(state.opt_state))
    assert bool(jnp.all(jnp.isfinite(m["loss"]))) and float(m["loss"][-1]) < float(m["loss"][0])
    assert not any(
        bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))
    )
