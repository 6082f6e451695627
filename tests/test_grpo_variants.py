"""The GRPO variants of TRL's GRPOTrainer as options of the one grpo method, each against a numpy
reference on a hand-made batch plus a property: ``loss_type`` (bnpo / dapo / grpo / dr_grpo),
``scale_rewards`` (group / batch / none), ``epsilon_high`` (DAPO's clip-higher),
``importance_sampling_level="sequence"`` (GSPO), ``kl="none"`` (beta = 0 without a reference
model), DAPO's soft overlong punishment and several rewards with weights; the default options
give bitwise the loss, gradients and rollout of the GRPO before the variants (the module at
commit ed6d04b, read from git)."""

import subprocess
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import config, grpo, tasks
from jaxcl.engine import init_state
from jaxcl.hf import ByteTokenizer
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.models import llama
from jaxcl.models.lm import language_model as lm_model

# hand-made batch: 3 completions of up to 4 tokens; the log-ratios are chosen to sit inside and
# outside the clip ranges on both sides
LOG_RATIO = np.log(np.array([[1.1, 1.25, 1.4, 0.7], [0.9, 0.75, 1.3, 1.0], [1.0, 1.5, 1.2, 0.6]]))
OLD = np.array([[-1.0, -2.0, -0.5, -3.0], [-1.5, -0.2, -2.5, -1.0], [-0.7, -1.1, -2.0, -0.4]])
LOGP = (OLD + LOG_RATIO).astype(np.float32)
OLD = OLD.astype(np.float32)
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
ADV = np.array([1.0, -1.0, 0.5], np.float32)


def np_loss(logp, old, adv, mask, eps, eps_high, loss_type, level="token"):
    """Independent float64 reference of the clipped surrogate and its aggregation."""
    lr = logp.astype(np.float64) - old
    m = mask.astype(np.float64)
    if level == "sequence":
        lr = np.repeat(((lr * m).sum(1) / np.maximum(m.sum(1), 1))[:, None], lr.shape[1], 1)
    rho = np.exp(lr)
    a = adv[:, None].astype(np.float64)
    per = -np.minimum(rho * a, np.clip(rho, 1 - eps, 1 + eps_high) * a)
    B, N = per.shape
    if loss_type in ("bnpo", "dapo"):
        return (per * m).sum() / m.sum()
    if loss_type == "dr_grpo":
        return (per * m).sum() / (B * N)
    rows = [(per[i] * m[i]).sum() / m[i].sum() for i in range(B) if m[i].sum() > 0]
    return np.mean(rows)


def loss(logp, **kw):
    return grpo.clipped_policy_loss(jnp.asarray(logp), OLD, ADV, MASK, **kw)[0]


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_clipped_loss_variants_match_numpy(loss_type, level, eps_high):
    got = loss(
        LOGP, clip_eps=0.2, epsilon_high=eps_high, loss_type=loss_type, importance_sampling_level=level
    )
    want = np_loss(LOGP, OLD, ADV, MASK, 0.2, 0.2 if eps_high is None else eps_high, loss_type, level)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dr_grpo_has_no_length_bias_and_grpo_has():
    """At ratio 1 the gradient on a token is -A m / (B N) for dr_grpo whatever its row's length;
    grpo's is -A / (B |o_i|): a token of a shorter completion weighs more."""
    adv = jnp.array([1.0, 1.0, 1.0])
    g = lambda lt: jax.grad(
        lambda lp: grpo.clipped_policy_loss(lp, jax.lax.stop_gradient(lp), adv, MASK, loss_type=lt)[0]
    )(jnp.asarray(LOGP))
    dr, gr = np.asarray(g("dr_grpo")), np.asarray(g("grpo"))
    np.testing.assert_allclose(dr, -MASK.astype(float) / (3 * 4), rtol=1e-6)
    np.testing.assert_allclose(gr, -MASK.astype(float) / (3 * MASK.sum(1, keepdims=True)), rtol=1e-6)
    assert gr[2, 0] == pytest.approx(2 * gr[0, 0])  # 2 tokens vs 4: twice the weight per token
    # padding columns added to the batch change dr_grpo's constant N, never the relative weights
    pad = lambda a, v: np.concatenate([a, np.full((3, 2), v, a.dtype)], 1)
    lp2 = pad(LOGP, 0.0)
    l4 = grpo.clipped_policy_loss(LOGP, OLD, ADV, MASK, loss_type="dr_grpo")[0]
    l6 = grpo.clipped_policy_loss(lp2, pad(OLD, 0.0), ADV, pad(MASK, False), loss_type="dr_grpo")[0]
    np.testing.assert_allclose(l6 * 6, l4 * 4, rtol=1e-6)
    g4 = grpo.clipped_policy_loss(LOGP, OLD, ADV, MASK, loss_type="grpo")[0]
    g6 = grpo.clipped_policy_loss(lp2, pad(OLD, 0.0), ADV, pad(MASK, False), loss_type="grpo")[0]
    np.testing.assert_allclose(g6, g4, rtol=1e-6)


def test_epsilon_high_lets_positive_ratios_through_up_to_it():
    """A > 0: the gradient on a token is non-zero for ratios up to 1 + epsilon_high (1.28) and zero
    above; with epsilon_high = clip_eps it is zero above 1.2. A < 0 keeps the lower bound 0.8."""
    ratios = np.array([[1.1, 1.25, 1.3, 0.7], [0.9, 0.75, 1.25, 1.0]])
    old = np.zeros_like(ratios, np.float32)
    lp = np.log(ratios).astype(np.float32)
    adv, mask = jnp.array([1.0, -1.0]), np.ones_like(ratios, bool)
    g = lambda eh: np.asarray(
        jax.grad(lambda x: grpo.clipped_policy_loss(x, old, adv, mask, clip_eps=0.2, epsilon_high=eh)[0])(
            jnp.asarray(lp)
        )
    )
    assert np.all(g(0.28)[0, :2] != 0) and g(0.28)[0, 2] == 0
    assert g(None)[0, 1] == 0 and g(None)[0, 0] != 0
    assert g(0.28)[0, 3] != 0  # A > 0, ratio below 1 - eps: not clipped (min takes the unclipped)
    # negative advantage: clipped below 0.8 either way, the upper side is never clipped
    np.testing.assert_array_equal(g(0.28)[1], g(None)[1])
    assert g(0.28)[1, 1] == 0 and g(0.28)[1, 2] != 0
    # a traced epsilon_high of 0 is clip_eps (the default of the method), bitwise
    np.testing.assert_array_equal(g(jnp.float32(0.0)), g(None))


def test_gspo_ratio_is_constant_over_a_sequence():
    lr = np.asarray(grpo.log_ratio(jnp.asarray(LOGP), OLD, MASK, "sequence"))
    for i in range(3):
        want = (LOG_RATIO[i] * MASK[i]).sum() / MASK[i].sum()
        np.testing.assert_allclose(lr[i], want, rtol=1e-5)
    # its gradient spreads one sequence-level weight evenly over the row's tokens
    g = jax.grad(lambda x: loss(x, importance_sampling_level="sequence", clip_eps=10.0, loss_type="grpo"))(
        jnp.asarray(LOGP)
    )
    g = np.asarray(g)
    for i in range(3):
        np.testing.assert_allclose(g[i][MASK[i]], g[i][MASK[i]][0], rtol=1e-5)
        assert np.all(g[i][~MASK[i]] == 0)


R = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.4, 0.1]], np.float32)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards_match_numpy(scale):
    b = R.mean(1, keepdims=True)
    std = {"group": np.std(R, 1, ddof=1, keepdims=True), "batch": np.std(R, ddof=1), "none": None}[scale]
    want = R - b if std is None else (R - b) / (std + 1e-4)
    got = grpo.group_advantages(jnp.asarray(R), scale=scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # property: "none" scales with the rewards, "group" does not
    got3 = grpo.group_advantages(jnp.asarray(3 * R), scale=scale)
    if scale == "none":
        np.testing.assert_allclose(got3, 3 * np.asarray(got), rtol=1e-5, atol=1e-6)
    elif scale == "group":
        np.testing.assert_allclose(got3[2], got[2], rtol=1e-3)


def test_soft_overlong_punishment_matches_dapo():
    L, C = 8, 3
    n = np.arange(0, L + 1)
    want = np.where(n <= L - C, 0.0, (L - C - n) / C)
    got = np.asarray(grpo.soft_overlong_punishment(jnp.asarray(n), L, C))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[L] == -1.0 and np.all(np.diff(got) <= 0)


# -- on a tiny model: the method's options -----------------------------------------------------

TOK = ByteTokenizer()
CFG = llama.tiny(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=64)
MODEL = lm_model(CFG, "tiny")
SPEC = METHODS["grpo"]


def problem(n=2, prompt_len=12):
    pairs = tasks.generate("add", n, digits=1)
    enc = tasks.encode_prompts(TOK, pairs, prompt_len=prompt_len, answer_width=4)
    return {k: jnp.asarray(v) for k, v in enc.items()}


def fixed_batch(G=2, n_new=3, seed=2):
    """A rollout-shaped batch with random tokens, advantages, old log-probs and one unfilled row."""
    ex = grpo.example_batch(problem(2), group_size=G, max_new_tokens=n_new, pad_id=TOK.pad_id, mu=2)
    k = jax.random.split(jax.random.key(seed), 4)
    n = ex["adv"].shape[0]
    ex["tokens"] = jax.random.randint(k[0], ex["tokens"].shape, 0, 256)
    ex["adv"] = jax.random.normal(k[1], (n,))
    ex["old_logp"] = -3.0 + 0.5 * jax.random.normal(k[2], ex["old_logp"].shape) - 2.5
    ex["completion_mask"] = ex["completion_mask"].at[1, 2].set(False)
    ex["weight"] = ex["weight"].at[-1].set(0.0)
    return ex


def method_and_state(sets=None, hp=None, *, seed=0):
    _, opts = SPEC.split({"group_size": 2, "max_new_tokens": 3, **(sets or {})})
    m = build_method(SPEC, MODEL, as_hparams(SPEC, hp), opts)
    ex = fixed_batch()
    p0 = MODEL.init(jax.random.key(seed))
    state = init_state(p0, m.tx, jax.random.key(1), m.data, ex)
    state = m.consolidate(state, ex, None)
    return m, state, ex


def git_module(commit: str, path: str, name: str):
    """A module of this package at an earlier commit (its relative imports resolve to today's
    package); skips where git or the commit is missing."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(
            ["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git or commit {commit} not available")
    mod = types.ModuleType(name)
    mod.__package__ = "jaxcl"
    exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)
    return mod


BEFORE = "ed6d04b"  # the last commit before the variants


def test_default_options_give_bitwise_the_loss_and_rollout_of_before():
    old = git_module(BEFORE, "jaxcl/grpo.py", "jaxcl.grpo_before_variants")
    m, state, ex = method_and_state()
    hp = as_hparams(SPEC)
    # the reference moves away from the policy so the KL is not 0
    state = state.replace(params=jax.tree.map(lambda a: a * 1.3, state.params))
    batch, _ = m.data.update(ex, state.data_state, None)
    old_loss = old.with_kl_penalty(
        old.grpo_loss(CFG, clip_eps=hp["clip_eps"], norm="token"),
        beta=hp["beta"],
        estimator="k3",
        norm="token",
    )
    vg = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))(state.params, batch, None)
    (l_new, a_new), g_new = vg(m.loss_fn)
    (l_old, a_old), g_old = vg(old_loss)
    assert float(a_new["kl"]) > 0 and float(a_new["clip_frac"]) > 0
    np.testing.assert_array_equal(l_new, l_old)
    for k in a_old:
        np.testing.assert_array_equal(a_new[k], a_old[k], err_msg=k)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_old)):
        np.testing.assert_array_equal(a, b)
    # the rollout: same completions, rewards, advantages and metrics
    env = tasks.env(TOK, partial=True)
    prompts = problem(4)
    new_r = grpo.make_rollout(CFG, group_size=4, max_new_tokens=3)
    old_r = old.make_rollout(CFG, group_size=4, max_new_tokens=3)
    run = lambda f: jax.jit(lambda p, k: f(p, prompts, k, env))(state.params, jax.random.key(3))
    (b_new, m_new), (b_old, m_old) = run(new_r), run(old_r)
    assert set(b_new) == set(b_old) and set(m_new) == set(m_old)
    for k in b_old:
        np.testing.assert_array_equal(b_new[k], b_old[k], err_msg=k)
    for k in m_old:
        np.testing.assert_array_equal(m_new[k], m_old[k], err_msg=k)


@pytest.mark.parametrize(
    "sets",
    [
        {"loss_type": "dr_grpo", "scale_rewards": "none"},
        {"loss_type": "grpo", "importance_sampling_level": "sequence"},
        {"loss_type": "dapo"},
    ],
)
def test_method_loss_is_the_numpy_loss_plus_beta_kl(sets):
    """The method's loss on a fixed batch: the numpy clipped loss of its options (on the policy's
    log-probs) plus beta times the k3 KL aggregated the same way."""
    hp = {"epsilon_high": 0.28, "beta": 0.5}
    m, state, ex = method_and_state(sets, hp)
    p1 = jax.tree.map(lambda a: a * 1.3, state.params)
    batch, _ = m.data.update(ex, state.data_state, None)
    got, aux = m.loss_fn(p1, batch, None)
    lp = np.asarray(grpo.completion_logp(CFG, p1, ex["tokens"], ex["valid"], 3), np.float64)
    mask = np.asarray(ex["completion_mask"]) & (np.asarray(ex["weight"])[:, None] > 0)
    lt, level = sets["loss_type"], sets.get("importance_sampling_level", "token")
    want_pol = np_loss(
        lp, np.asarray(ex["old_logp"], np.float64), np.asarray(ex["adv"]), mask, 0.2, 0.28, lt, level
    )
    d = np.asarray(batch["ref_logp"], np.float64) - lp
    k3 = np.exp(d) - d - 1
    m_ = mask.astype(np.float64)
    B, N = k3.shape
    if lt in ("bnpo", "dapo"):
        kl = (k3 * m_).sum() / m_.sum()
    elif lt == "dr_grpo":
        kl = (k3 * m_).sum() / (B * N)
    else:
        kl = np.mean([(k3[i] * m_[i]).sum() / m_[i].sum() for i in range(B) if m_[i].sum() > 0])
    np.testing.assert_allclose(aux["policy_loss"], want_pol, rtol=1e-4)
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(got, want_pol + 0.5 * kl, rtol=1e-4)


def test_kl_none_has_no_reference_and_no_reference_forward():
    """TRL's beta = 0: kl="none" builds no reference (no data transform, so no reference forward
    pass in the step) and the loss is the policy loss; the iteration program does fewer FLOPs."""
    m0, state0, ex = method_and_state({"kl": "none", "mu": 2})
    assert m0.data is None
    loss0, aux0 = m0.loss_fn(state0.params, ex, None)
    np.testing.assert_array_equal(loss0, aux0["policy_loss"])
    assert "kl" not in aux0
    m1, state1, _ = method_and_state({"mu": 2}, {"beta": 0.0})
    env = tasks.env(TOK)
    prompts = problem(2)

    def flops(m, s):
        c = jax.jit(grpo.make_iteration(m, env)).lower(s, prompts).compile().cost_analysis()
        c = c[0] if isinstance(c, list) else c
        return c["flops"]

    assert flops(m0, state0) < flops(m1, state1)
    s, met = jax.jit(grpo.make_iteration(m0, env))(state0, prompts)
    assert np.isfinite(float(met["loss"])) and "kl" not in met


def weighted_rollout_check(weights):
    def first_even(comp, mask, rows):
        return (comp[:, 0] % 2 == 0).astype(jnp.float32)

    def long_answer(comp, mask, rows):
        return mask.sum(-1).astype(jnp.float32)

    rollout = grpo.make_rollout(
        CFG,
        group_size=4,
        max_new_tokens=4,
        reward_funcs=(first_even, long_answer, "soft_overlong", "format"),
        reward_weights=weights,
        soft_punish_cache=2,
    )
    p = MODEL.init(jax.random.key(0))
    env = grpo.Env(lambda c, m, r: jnp.zeros(c.shape[0]), TOK.eos_id, TOK.pad_id)
    batch, met = jax.jit(lambda p, k: rollout(p, problem(2), k, env))(p, jax.random.key(5))
    comp = np.asarray(batch["tokens"])[:, -4:]
    is_eos = comp == TOK.eos_id
    before = np.cumsum(is_eos, 1) == 0
    length = np.minimum(before.sum(1) + 1, 4)  # through the end token, or all 4
    terms = np.stack(
        [
            comp[:, 0] % 2 == 0,
            before.sum(1),
            np.where(length <= 2, 0.0, (2 - length) / 2),
            is_eos.any(1),
        ],
        1,
    ).astype(np.float64)
    w = np.asarray(weights or (1.0,) * 4)
    r = (terms * w).sum(1).reshape(2, 4)
    want = (r - r.mean(1, keepdims=True)) / (np.std(r, 1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(batch["adv"], want.reshape(-1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(met["reward"], r.mean(), rtol=1e-5)
    np.testing.assert_allclose(met["reward_soft_overlong"], terms[:, 2].mean(), rtol=1e-5)
    np.testing.assert_allclose(met["reward_long_answer"], terms[:, 1].mean(), rtol=1e-5)


@pytest.mark.parametrize("weights", [(), (1.0, 0.25, 0.5, -2.0)])
def test_several_rewards_with_weights_match_numpy(weights):
    weighted_rollout_check(weights)


def test_options_from_a_study_config_and_their_errors():
    cfg = config.resolve(
        config.load("rft-continual", tiny=True),
        [
            "grpo.loss_type=dr_grpo",
            "grpo.scale_rewards=none",
            "grpo.epsilon_high=0.28",
            "grpo.importance_sampling_level=sequence",
            "grpo.kl=none",
            "grpo.reward_funcs=env,soft_overlong",
            "grpo.reward_weights=1,0.5",
            "grpo.soft_punish_cache=4",
        ],
    )
    hp, opts = config.method_settings(cfg, "grpo")
    assert opts["loss_type"] == "dr_grpo" and opts["reward_funcs"] == ("env", "soft_overlong")
    assert hp["epsilon_high"] == 0.28 and opts["kl"] == "none"
    build_method(SPEC, MODEL, as_hparams(SPEC, hp), opts)
    with pytest.raises(ValueError, match="loss_type='nope' is not valid; valid: bnpo, grpo, dr_grpo, dapo"):
        SPEC.split({"loss_type": "nope"})
    with pytest.raises(ValueError, match="soft_punish_cache=0.*needs both soft_overlong"):
        SPEC.split({"reward_funcs": ("env", "soft_overlong")})
    with pytest.raises(ValueError, match="reward_weights=.*one finite number per reward function"):
        SPEC.split({"reward_funcs": ("env", "format"), "reward_weights": ("1",)})
    with pytest.raises(ValueError, match="reward_funcs=.*not valid"):
        SPEC.split({"reward_funcs": ("env", "len")})


def test_epsilon_high_and_beta_sweep_as_one_program():
    """epsilon_high and beta are traced: the method built under vmap over their values (one
    program) gives each value's loss."""
    _, opts = SPEC.split({"group_size": 2, "max_new_tokens": 3, "mu": 2})
    m, state, ex = method_and_state({"mu": 2})
    batch, _ = m.data.update(ex, state.data_state, None)
    p1 = jax.tree.map(lambda a: a * 1.3, state.params)

    def loss_at(eh, beta):
        hp = {**as_hparams(SPEC), "epsilon_high": eh, "beta": beta}
        return build_method(SPEC, MODEL, hp, opts).loss_fn(p1, batch, None)[0]

    ehs, betas = jnp.array([0.0, 0.28, 0.5]), jnp.array([0.0, 0.04, 1.0])
    swept = jax.jit(jax.vmap(loss_at))(ehs, betas)
    one = [float(loss_at(jnp.float32(e), jnp.float32(b))) for e, b in zip(ehs, betas)]
    np.testing.assert_allclose(swept, one, rtol=1e-5)
    assert len(set(np.round(np.asarray(swept), 6))) == 3
