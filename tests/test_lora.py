"""LoRA as a params split: only adapters train, any optax transform, merge == unmerged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.models import llama, lora


def _setup():
    cfg = llama.tiny(vocab_size=50, n_layers=2)
    base = llama.init_params(cfg, seed=0)
    spec = lora.LoraSpec(targets=lora.LLAMA_ATTN + ("layers/w_up",), rank=4, alpha=8)
    return cfg, base, spec


def test_init_merge_is_identity_and_unmerged_form_matches():
    cfg, base, spec = _setup()
    ad = lora.init(spec, base, jax.random.key(0))
    assert set(ad) == {"layers/wq", "layers/wk", "layers/wv", "layers/wo", "layers/w_up"}
    assert ad["layers/wq"]["a"].shape == (2, 64, 4) and ad["layers/wq"]["b"].shape == (2, 4, 64)
    merged = lora.merge(spec, base, ad)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base)):
        np.testing.assert_array_equal(a, b)
    # with non-zero B, a merged linear equals the unmerged x @ W + scale * (x @ A) @ B
    ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), ad)
    x = jax.random.normal(jax.random.key(2), (3, 64))
    w, a, b = base["layers"]["wq"][1], ad["layers/wq"]["a"][1], ad["layers/wq"]["b"][1]
    merged = lora.merge(spec, base, ad)
    np.testing.assert_allclose(x @ merged["layers"]["wq"][1], x @ w + spec.scale * (x @ a) @ b, atol=1e-5)
    with pytest.raises(ValueError, match="not found"):
        lora.init(lora.LoraSpec(targets=("layers/nope",)), base, jax.random.key(0))


@pytest.mark.parametrize(
    "tx", [optax.adam(1e-2), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))]
)
def test_only_adapters_train_and_merge_matches(tx):
    cfg, base, spec = _setup()
    adapters = lora.init(spec, base, jax.random.key(0))
    apply = llama.make_apply(cfg)
    tokens = jax.random.randint(jax.random.key(3), (4, 12), 0, cfg.vocab_size)

    def full_loss(params, batch, key):
        lp = jax.nn.log_softmax(apply(params, batch[:, :-1]))
        return -jnp.take_along_axis(lp, batch[:, 1:, None], -1).mean(), {}

    @jax.jit
    def train(adapters, opt_state, base, batch):
        loss_fn = lora.wrap_loss(spec, full_loss, base)

        def step(carry, _):
            adapters, opt_state = carry
            (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(adapters, batch, None)
            upd, opt_state = tx.update(g, opt_state, adapters)
            return (optax.apply_updates(adapters, upd), opt_state), loss

        return jax.lax.scan(step, (adapters, opt_state), None, length=20)

    base_copy = jax.tree.map(jnp.copy, base)
    (new, _), losses = train(adapters, tx.init(adapters), base, tokens)
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_copy)):  # base untouched
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(new["layers/wq"]["b"]).max()) > 0  # adapters moved
    merged = lora.merge(spec, base, new)
    np.testing.assert_allclose(
        apply(merged, tokens), lora.wrap_apply(spec, apply)(new, base, tokens), atol=1e-5
    )
    # untargeted weights are identical after merge; targeted ones moved
    np.testing.assert_array_equal(merged["layers"]["w_down"], base["layers"]["w_down"])
    assert not np.allclose(merged["layers"]["wq"], base["layers"]["wq"])
    assert lora.count(new) < llama.param_count(base)


def test_unmerged_llama_adapters_same_gradients_fewer_flops():
    """A Llama's adapters run unmerged (``x @ W0 + s (x @ A) @ B``, lora.attach): the loss and the
    adapters' gradients equal the merged form's, and the compiled gradient skips each target's
    full (in, out) weight gradient ``x^T dy`` (2 N in out FLOPs, N tokens) for the rank-r
    products of the unmerged form (6 N r (in + out): forward and two backward matmuls of x A and
    (x A) B) while the merge's own A @ B and its backward (6 in r out) go: XLA's cost analysis
    counts that difference to 10 % (elementwise adds and scalings it also counts). One layer:
    the analysis counts a scan's body once."""
    cfg = llama.tiny(vocab_size=50, n_layers=1)
    base = llama.init_params(cfg, seed=0)
    spec = lora.LoraSpec(targets=lora.LLAMA_ATTN + ("layers/w_up",), rank=4, alpha=8)
    ad = lora.init(spec, base, jax.random.key(0))
    ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), ad)
    tokens = jax.random.randint(jax.random.key(3), (4, 33), 0, cfg.vocab_size)
    mask = jnp.ones(tokens.shape, bool)

    def loss(join):
        def f(ad, base):
            nll, n = llama.masked_nll(cfg, join(spec, base, ad), tokens, mask)
            return nll.sum() / n.sum()

        return jax.jit(jax.value_and_grad(f))

    (l_m, g_m), (l_u, g_u) = loss(lora.merge)(ad, base), loss(lora.attach)(ad, base)
    np.testing.assert_allclose(l_u, l_m, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_u), jax.tree.leaves(g_m)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert isinstance(lora.attach(spec, base, ad)["layers"]["wq"], lora.LowRank)
    flops = [loss(j).lower(ad, base).compile().cost_analysis() for j in (lora.merge, lora.attach)]
    flops = [(c[0] if isinstance(c, list) else c)["flops"] for c in flops]
    N, r = tokens.shape[0] * (tokens.shape[1] - 1), spec.rank  # masked_nll predicts T - 1 positions
    shapes = [base["layers"][n.split("/")[1]].shape for n in ad]
    expected = sum(L * (2 * N * i * o - 6 * N * r * (i + o) + 6 * i * r * o) for L, i, o in shapes)
    assert 0.9 <= (flops[0] - flops[1]) / expected <= 1.1, (flops, expected)


# -- LoRA as a model option (model.lora): the adapted model, Phase, LMProgram, the studies ------------

from jaxcl import cli  # noqa: E402
from jaxcl.config import ConfigError  # noqa: E402
from jaxcl.engine import init_state, make_step  # noqa: E402
from jaxcl.loops import Phase, PhaseConfig, as_hparams, build_method  # noqa: E402
from jaxcl.methods import get_method  # noqa: E402
from jaxcl.models import from_config, lm, model_config  # noqa: E402
from jaxcl.unlearn.common import UnlearnData  # noqa: E402

N_IN, N_CLS, RANK, ALPHA = 12, 3, 2, 4.0  # scale alpha / rank = 2


def _linear(rank=RANK, targets=()):
    """A softmax-regression classifier (mlp without hidden layers) with model.lora on."""
    sec = model_config("mlp", mlp={"hidden": ()})
    sec["lora"] = lora.section(rank, ALPHA, targets)
    return from_config(sec, (N_IN, 1, 1), N_CLS)


def _problem(seed=0, n=24):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_IN, 1, 1)).astype(np.float32)
    y = (np.arange(n) % N_CLS).astype(np.int32)
    f = y == 0  # the forget class
    a = lambda v: jnp.asarray(v)  # noqa: E731
    return UnlearnData(a(x), a(y), a(x[~f]), a(y[~f]), a(x[f]), a(y[f]), a(x), a(y), a(x[f]), a(y[f]))


def _nonzero(adapters, seed=1):
    return jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(seed), v.shape), adapters)


def test_step_gradient_is_the_full_gradient_through_the_adapter_chain():
    """One SGD step (lr 1) of the registry's finetune on the adapters, against a numpy reference:
    G = dCE/dW at the merged W = W0 + s A B (softmax regression, by hand), dA = s G B^T,
    dB = s A^T G; the bias (not a target) gets no update."""
    model = _linear()
    assert model.lora == lora.LoraSpec(("*kernel",), RANK, ALPHA)  # the default: every kernel
    base = model.init(jax.random.key(0))
    base["head"]["bias"] = jnp.asarray([0.1, -0.2, 0.3])
    ad = _nonzero(lora.init(model.lora, base, jax.random.key(1)))
    x = np.random.default_rng(2).normal(size=(5, N_IN, 1, 1)).astype(np.float32)
    y = np.asarray([0, 1, 2, 1, 0], np.int32)

    @jax.jit
    def step(ad, base, batch):
        adapted = lora.adapt(model, model.lora, base)
        spec = get_method("finetune")
        method = build_method(spec, adapted, as_hparams(spec), spec.split({})[1])
        s = make_step(method.loss_fn, optax.sgd(1.0))
        return s(init_state(ad, optax.sgd(1.0), 0), batch)[0].params

    new = step(ad, base, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    a, b, s = np.asarray(ad["head/kernel"]["a"]), np.asarray(ad["head/kernel"]["b"]), ALPHA / RANK
    w = np.asarray(base["head"]["kernel"]) + s * a @ b
    z = x.reshape(5, N_IN) @ w + np.asarray(base["head"]["bias"])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = x.reshape(5, N_IN).T @ (p - np.eye(N_CLS)[y]) / 5  # dCE/dW
    np.testing.assert_allclose(a - np.asarray(new["head/kernel"]["a"]), s * g @ b.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b - np.asarray(new["head/kernel"]["b"]), s * a.T @ g, rtol=1e-4, atol=1e-6)
    assert set(new) == {"head/kernel"}  # the adapters are all the step trains


@pytest.fixture(scope="module")
def phase_run():
    """finetune through loops.Phase with model.lora on: the state after 6 steps and the run's
    merged params."""
    model, problem = _linear(), _problem()
    phase = Phase(model, get_method("finetune"), PhaseConfig(6, 8, 3, 8))
    hp = as_hparams(get_method("finetune"), {"lr": 0.1})
    base = model.init(jax.random.key(0))
    base_copy = jax.tree.map(np.array, base)
    k_state = jax.random.split(jax.random.key(1))[0]  # the key Phase.run starts its state with
    start = jax.jit(phase.start)(base, k_state, problem, hp)
    one = jax.jit(phase.one_step)
    state = start
    for _ in range(6):
        state = one(state, problem, hp)[0]
    out = jax.jit(phase.run)(base, jax.random.key(1), problem, hp)
    return model, problem, phase, base, base_copy, start, state, out


def test_phase_trains_adapters_only_and_the_base_stays_bit_identical(phase_run):
    model, problem, phase, base, base_copy, start, state, out = phase_run
    assert jax.tree.structure(state.params) == jax.tree.structure(
        lora.init(model.lora, base, jax.random.key(0))
    )
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(base_copy)):
        np.testing.assert_array_equal(got, want)  # the base travelled untouched
    assert float(jnp.abs(state.params["head/kernel"]["b"]).max()) > 0  # B left zero: trained
    np.testing.assert_array_equal(start.params["head/kernel"]["b"], 0)  # the run starts at the base
    # run's merged output: the bias (not a target) is the base's, bit for bit; the kernel moved
    np.testing.assert_array_equal(out["params"]["head"]["bias"], base_copy["head"]["bias"])
    assert not np.allclose(out["params"]["head"]["kernel"], base_copy["head"]["kernel"])


def test_merged_params_give_the_logits_of_base_plus_adapters(phase_run):
    """The merged model's logits against the unmerged form x W0 + s (x A) B + b in numpy."""
    model, problem, phase, base, base_copy, start, state, out = phase_run
    x = np.asarray(problem.x_test).reshape(-1, N_IN)
    a, b = (np.asarray(state.params["head/kernel"][k]) for k in "ab")
    want = x @ base_copy["head"]["kernel"] + (ALPHA / RANK) * (x @ a) @ b + base_copy["head"]["bias"]
    got = model.apply(phase.params(state), problem.x_test)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Phase.run's params are the merged model of the same steps
    np.testing.assert_allclose(
        out["params"]["head"]["kernel"], phase.params(state)["head"]["kernel"], atol=1e-6
    )


def test_ssd_on_adapters_changes_only_adapters(phase_run):
    """SSD's edit (an edit on params) sees the adapters it is given: it dampens adapter entries,
    the merged model differs only in the targets. In a phase, where the adapters would be fresh
    (B = 0, nothing to dampen), SSD edits the full weights: the same model as SSD without LoRA,
    and not the unedited base."""
    model, problem, phase, base, base_copy, start, state, out = phase_run
    spec = get_method("ssd")
    hp = as_hparams(spec, {"alpha": 1.0})
    _, opts = spec.split({"batch_size": 4})

    @jax.jit
    def edit(ad, base):
        method = build_method(spec, lora.adapt(model, model.lora, base), hp, opts)
        return method.edit(ad, problem, hp, jax.random.key(0))

    trained = state.params
    new = edit(trained, base)
    assert jax.tree.structure(new) == jax.tree.structure(trained)
    changed = [not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(new), jax.tree.leaves(trained))]
    assert any(changed)
    merged = lora.merge(model.lora, base, new)
    np.testing.assert_array_equal(merged["head"]["bias"], base_copy["head"]["bias"])
    ssd = Phase(model, spec, PhaseConfig(6, 8, 3, 8), batch_size=4)
    got = jax.jit(ssd.run)(base, jax.random.key(1), problem, hp)["params"]
    plain = Phase(model._replace(lora=None), spec, PhaseConfig(6, 8, 3, 8), batch_size=4)
    want = jax.jit(plain.run)(base, jax.random.key(1), problem, hp)["params"]
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(base_copy)))


def test_gu_projects_adapter_gradients(phase_run):
    """gu-ga on LoRA: its projection's history holds retain gradients of the adapters' shapes,
    and the step's update is orthogonal to the kept retain gradient (per tensor)."""
    from jaxcl.transforms.gu import ProjectOutState

    model, problem, _, base, *_ = phase_run
    spec = get_method("gu-ga", "unlearn")
    phase = Phase(model, spec, PhaseConfig(2, 8, 1, 8), rank=1, optim="sgd")  # Adam would rescale
    hp = as_hparams(spec, {"lr": 0.1})
    state = jax.jit(phase.start)(base, jax.random.key(1), problem, hp)
    new, _ = jax.jit(phase.one_step)(state, problem, hp)
    is_po = lambda s: isinstance(s, ProjectOutState)  # noqa: E731
    (po,) = [s for s in jax.tree.leaves(new.opt_state, is_leaf=is_po) if is_po(s)]
    shapes = jax.tree.map(lambda v: v.shape, state.params)
    assert jax.tree.map(lambda h: h.shape[1:], po.history) == shapes
    upd = jax.tree.map(lambda a, b: a - b, new.params, state.params)
    for u, h in zip(jax.tree.leaves(upd), jax.tree.leaves(po.history)):
        assert abs(float(jnp.vdot(u, h[0]))) < 1e-4 * float(
            jnp.linalg.norm(u) * jnp.linalg.norm(h[0]) + 1e-12
        )
    for got, want in zip(jax.tree.leaves(new.frozen), jax.tree.leaves(base)):
        np.testing.assert_array_equal(got, want)


def test_bad_lora_settings_are_one_line_config_errors():
    sec = lm.section("tiny", compute_dtype="float32")
    sec["lora"] = lora.section(8, 16.0, ("layers/wq", "layers/nope"))
    with pytest.raises(
        ConfigError, match=r"model\.lora\.targets: 'layers/nope' .*valid: layers/wq, layers/wk"
    ):
        lm.check(sec)
    with pytest.raises(ConfigError, match=r"model\.lora\.targets: 'dense' .*valid: head/kernel$"):
        _linear(targets=("dense",))
    with pytest.raises(ConfigError, match=r"model\.lora\.rank=4 exceeds a dimension of head/kernel"):
        _linear(rank=4)
    sec["lora"] = lora.section(-1)
    with pytest.raises(ConfigError, match=r"model\.lora\.rank=-1"):
        lm.check(sec)
    assert _linear(rank=0).lora is None  # rank 0: off
    from jaxcl.loops import Experiment, LoopConfig

    with pytest.raises(ConfigError, match=r"model\.lora\.rank > 0: a continual-learning stream"):
        Experiment(_linear(), get_method("finetune"), LoopConfig())


def test_studies_without_lora_refuse_it_before_anything_runs(tmp_path, capsys):
    argv = ["run", "rft-continual", "--tiny", "--set", "model.lora.rank=8", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "model.lora.rank=8" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,sub,want",
    [
        ("resnet18", {"width": 8}, ["blocks/7/conv1/kernel", "blocks/7/conv2/kernel", "head/kernel"]),
        ("vit", {}, [f"blocks/{i}/fc{j}/kernel" for i in range(4) for j in (1, 2)]),
    ],
)
def test_resnet_and_vit_default_targets_and_adapter_shapes(name, sub, want):
    sec = model_config(name, **{name: sub})
    sec["lora"] = lora.section(4)
    model = from_config(sec, (32, 32, 3), 10)
    base = jax.eval_shape(model.init, jax.random.key(0))
    ad = jax.eval_shape(lambda: lora.init(model.lora, base, jax.random.key(0)))
    assert sorted(ad) == sorted(want)
    w = ad[want[0]]  # a convolution: one rank-4 product per (kh, kw) tap; a dense layer: one
    assert w["a"].shape[-1] == 4 and w["b"].shape[-2] == 4
    assert hasattr(model, "apply_train") == (name == "resnet18")  # kept for the BatchNorm model


def test_llama_defaults_to_query_and_value():
    model = lm.load({**lm.section("tiny", compute_dtype="float32"), "lora": lora.section(8)})[0]
    assert model.lora == lora.LoraSpec(("layers/wq", "layers/wv"), 8, 8.0)


@pytest.mark.parametrize(
    "study,sets",
    [
        ("tofu", ["methods=gu-npo"]),
        ("lm-facts", []),
        ("unlearn-class", ["methods=ssd,gu-ga"]),
    ],
)
def test_tiny_study_runs_with_lora(study, sets, tmp_path):
    argv = ["run", study, "--tiny", "--out", str(tmp_path), "--set", "model.lora.rank=8", "--seeds", "1"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    assert (tmp_path / "results.json").exists()
