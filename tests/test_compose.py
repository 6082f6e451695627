"""Methods composed from the config (``jaxcl/methods/compose.py``): a chain's step equals the same
composition written by hand, the KL term against numpy, conflicts refused in one line, a chain
through the continual-learning loop, the config and the command line."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl import cli, config, grpo
from jaxcl.data import context, streams
from jaxcl.data.loaders import Dataset
from jaxcl.data.replay import reservoir
from jaxcl.engine import init_state, make_step
from jaxcl.loops import Experiment, LoopConfig, as_hparams, build_method
from jaxcl.losses import empirical_fisher, mean_nll, supervised_loss, token_kl, with_ewc_penalty
from jaxcl.methods import get_method
from jaxcl.methods.gu import MEMORY_FIELDS
from jaxcl.models import mlp
from jaxcl.transforms import project_out

MODEL = mlp((4, 4, 1), 3, hidden=(8,))
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.integers(0, 256, (64, 4, 4, 1)), jnp.uint8)
Y = jnp.asarray(RNG.integers(0, 3, 64), jnp.int32)
BATCHES = [  # two "tasks" of 32 rows (EWC's Fisher takes chunks of 32)
    {"x": X[i : i + 32], "y": Y[i : i + 32], "t": jnp.full((32,), i // 32, jnp.int32)} for i in (0, 32)
]


def composed(name, hp=None, **opts):
    spec = get_method(name)
    _, options = spec.split(opts)
    return build_method(spec, MODEL, as_hparams(spec, hp), options), as_hparams(spec, hp)


def run(loss, tx, data, extra_args, consolidate, steps=3):
    """``steps`` steps on task 0, ``consolidate``, ``steps`` steps on task 1: the final params."""
    params = MODEL.init(jax.random.key(0))
    state = init_state(params, tx, jax.random.key(1), data, BATCHES[0])
    step = jax.jit(make_step(loss, tx, data, extra_args=extra_args))
    for t, batch in enumerate(BATCHES):
        if t:
            state = consolidate(state, batch, jax.random.key(2))
        for _ in range(steps):
            state, m = step(state, batch)
    return state.params, m


def test_ewc_plus_gu_equals_the_chain_written_by_hand():
    method, hp = composed("ewc+gu", {"lr": 1e-2, "ewc_lambda": 50.0}, **{"gu.rank": 2, "gu.memory_batch": 8})
    got, m = run(method.loss_fn, method.tx, method.data, method.extra_args, method.consolidate)

    # by hand: EWC's penalised loss; GU's projection, then Adam; anchor then memory as data
    base = supervised_loss(MODEL)
    like = jax.eval_shape(MODEL.init, jax.random.key(0))
    data = context.chain(
        context.ewc_anchor(like), reservoir(1000, mode="separate", memory_size=8, fields=MEMORY_FIELDS)
    )

    def extra_args(params, batch, key):
        g = jax.grad(mean_nll(MODEL))(params, batch["memory"])
        return {"retain_grads": jax.tree.map(lambda a: a * batch["memory"]["weight"].max(), g)}

    def consolidate(state, batch, key):
        fisher = empirical_fisher(base, state.params, batch, key)
        anchor = context.set_ewc_anchor(state.data_state[0], state.params, fisher)
        return state.replace(data_state=(anchor,) + state.data_state[1:])

    tx = optax.chain(project_out(2, "per_tensor"), optax.adam(1e-2))
    want, _ = run(with_ewc_penalty(base, lam=50.0), tx, data, extra_args, consolidate)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    assert float(m["ewc_penalty"]) > 0  # the anchor acts

    # the projection acts: plain EWC ends elsewhere
    plain, _ = composed("ewc", {"lr": 1e-2, "ewc_lambda": 50.0})
    other, _ = run(plain.loss_fn, plain.tx, plain.data, plain.extra_args, plain.consolidate)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(other)))
    assert diff > 1e-4


def test_finetune_plus_kl_equals_cross_entropy_plus_beta_kl_by_hand():
    beta, lr = 0.7, 1e-2
    method, hp = composed("finetune+kl", {"lr": lr, "kl.beta": beta})
    got, m = run(method.loss_fn, method.tx, method.data, method.extra_args, method.consolidate)
    assert float(m["kl"]) > 0

    # by hand: plain CE on task 0 (no reference yet), then CE + beta * KL(p_ref || p) with the
    # reference the params at the task boundary, Adam throughout
    apply = MODEL.apply

    def loss(params, ref, batch, on):
        logits = apply(params, batch["x"])
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1).mean()
        lr_ = jax.nn.log_softmax(apply(ref, batch["x"]))
        kl = (jnp.exp(lr_) * (lr_ - jax.nn.log_softmax(logits))).sum(-1).mean()
        return ce + on * beta * kl

    params = MODEL.init(jax.random.key(0))
    opt = optax.adam(lr)
    os = opt.init(params)
    ref = params
    for t, batch in enumerate(BATCHES):
        if t:
            ref = params
        for _ in range(3):
            g = jax.grad(loss)(params, ref, batch, float(t))
            u, os = opt.update(g, os, params)
            params = optax.apply_updates(params, u)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params)


def test_token_kl_against_numpy():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    T = 2.0

    def logsm(z):
        z = z / T
        return (
            z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        )

    kl = (np.exp(logsm(ref)) * (logsm(ref) - logsm(cur))).sum(-1)
    want = (kl * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(token_kl(ref, cur, mask, T)), want, rtol=1e-5)


def test_grpo_plus_er_replays_rollouts_before_the_reference():
    """er's buffer is the first data slot (rows before the reference log-probs) and fills with
    rollouts; the chain's iteration runs."""
    from jaxcl import tasks
    from jaxcl.hf import ByteTokenizer
    from jaxcl.models import llama
    from jaxcl.models.lm import language_model

    cfg = llama.tiny(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=32)
    model = language_model(cfg, "tiny")
    enc = tasks.encode_prompts(
        ByteTokenizer(), tasks.generate("add", 2, digits=1), prompt_len=8, answer_width=3
    )
    prompts = {k: jnp.asarray(v) for k, v in enc.items()}
    env = grpo.Env(lambda c, m, r: (c < 128).mean(-1).astype(jnp.float32), 258, 256)
    spec = get_method("grpo+er")
    _, opts = spec.split({"group_size": 2, "max_new_tokens": 3, "er.capacity": 16})
    method = build_method(spec, model, as_hparams(spec, {"er.replay_fraction": 1.0}), opts)
    ex = grpo.example_batch(prompts, group_size=2, max_new_tokens=3, pad_id=256)
    state = init_state(model.init(jax.random.key(0)), method.tx, jax.random.key(1), method.data, ex)
    state = method.consolidate(state, None, None)
    assert set(state.data_state[0]) == {"buffer", "seen"} and "adv" in state.data_state[0]["buffer"]
    assert float(state.data_state[1]["on"]) == 1.0  # GRPO's reference, in its own slot
    it = jax.jit(grpo.make_iteration(method, env))
    for _ in range(2):
        state, metrics = it(state, prompts)
    assert int(state.data_state[0]["seen"]) == 2 * 4 and np.isfinite(float(metrics["loss"]))


CONFLICTS = [
    ("kl", "is a modifier, not a method on its own"),
    ("kl+finetune", "kl is a modifier and cannot come first"),
    ("ewc+npo", "npo is a whole method (its own loss and optimizer)"),
    ("grpo+kl", "kl joins bases of kind cl, unlearn, any, and grpo is 'rl'"),
    ("gu-npo+gu", "gu cannot join gu-npo"),
    ("lwf+kl", "kl cannot join lwf"),
    ("ewc+gu+gu", "a piece is repeated"),
    ("ewc+nope", "unknown piece 'nope'"),
    ("ssd+kl", "does not train"),
]


@pytest.mark.parametrize("name,message", CONFLICTS)
def test_conflicts_are_refused_in_one_line(name, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        get_method(name)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_conflict_with_exit_2(tmp_path, capsys):
    rc = cli.main(["run", "split-digits", "--tiny", "--set", "methods=ewc+npo", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "npo is a whole method" in err


def test_config_settings_of_a_chain_come_from_its_pieces_sections():
    cfg = config.load("split-digits")
    cfg = config.resolve(cfg, ["methods=ewc+gu,finetune+kl", "kl.beta=0.5", "gu.rank=3", "ewc.ewc_lambda=7"])
    hp, opts = config.method_settings(cfg, "ewc+gu")
    assert hp["ewc_lambda"] == 7 and opts["gu.rank"] == 3 and "gu.lr" not in hp
    assert config.method_settings(cfg, "finetune+kl")[0]["kl.beta"] == 0.5
    with pytest.raises(config.ConfigError, match="gu.rank"):
        config.resolve(config.load("split-digits"), ["methods=ewc+gu", "gu.rank=0"])


def test_ewc_plus_gu_through_the_continual_learning_loop():
    y = np.repeat(np.arange(4), 12).astype(np.int32)
    x = np.zeros((48, 2, 2, 1), np.uint8)
    x[:, 0, 0, 0], x[:, 1, 1, 0] = y * 40, np.arange(48)
    s = jax.device_put(streams.split_classes(Dataset("fake", x, y, x.copy(), y.copy(), 4), 2))
    loop = LoopConfig(steps_per_task=4, batch_size=4, eval_every=2, eval_per_task=8, consolidate_samples=32)
    exp = Experiment(mlp((2, 2, 1), 4, hidden=(4,)), get_method("ewc+gu", "cl"), loop, **{"gu.rank": 2})
    out = jax.jit(exp.run)(jax.random.key(0), s, exp.default_hparams())
    assert out["R"].shape == (2, 2) and int(out["nonfinite_step"]) == -1
