"""GRPO against numpy references: advantages (std / none / RLOO), the clipped loss (token and
sequence normalisation), the k3 and exact KL, RIF's selection, and one compiled RL iteration on a
tiny byte-level Llama (rollout, rewards, mu updates), plus the bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import grpo, tasks
from jaxcl.engine import init_state
from jaxcl.hf import ByteTokenizer
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.models import llama
from jaxcl.models.lm import language_model as lm_model

R = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.4, 0.1]], np.float32)


def np_adv(r, scale, baseline, eps=1e-4):
    G = r.shape[1]
    out = np.zeros_like(r)
    for i in range(r.shape[0]):
        for j in range(G):
            b = r[i].mean() if baseline == "mean" else (r[i].sum() - r[i, j]) / (G - 1)
            a = r[i, j] - b
            if scale == "group":
                a /= np.std(r[i], ddof=1) + eps
            out[i, j] = a
    return out


@pytest.mark.parametrize("scale", ["group", "none"])
@pytest.mark.parametrize("baseline", ["mean", "rloo"])
def test_advantages_match_numpy(scale, baseline):
    got = grpo.group_advantages(jnp.asarray(R), scale=scale, baseline=baseline)
    np.testing.assert_allclose(got, np_adv(R, scale, baseline), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[1] == 0)  # equal rewards: no signal


def test_group_of_one_is_a_clear_error():
    with pytest.raises(ValueError, match="group_size G=1.*at least 2"):
        grpo.group_advantages(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="group_size=1"):
        grpo.make_rollout(llama.tiny(), group_size=1)


def test_clipped_loss_matches_numpy_token_and_sequence():
    rng = np.random.default_rng(0)
    logp = rng.normal(-2, 0.5, (4, 5)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (4, 5))).astype(np.float32)
    adv = np.array([1.0, -0.5, 2.0, -1.0], np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
    eps = 0.2
    per = np.zeros_like(logp)
    for i in range(4):
        for t in range(5):
            rho = np.exp(logp[i, t] - old[i, t])
            per[i, t] = -min(rho * adv[i], np.clip(rho, 1 - eps, 1 + eps) * adv[i])
    want_tok = (per * mask).sum() / mask.sum()
    want_seq = np.mean([(per[i] * mask[i]).sum() / mask[i].sum() for i in range(4)])
    got_tok, _ = grpo.clipped_policy_loss(logp, old, adv, mask, clip_eps=eps, loss_type="bnpo")
    got_seq, _ = grpo.clipped_policy_loss(logp, old, adv, mask, clip_eps=eps, loss_type="grpo")
    np.testing.assert_allclose(got_tok, want_tok, rtol=1e-5)
    np.testing.assert_allclose(got_seq, want_seq, rtol=1e-5)
    # ratio 1 (mu = 1): the loss is the policy gradient, -A * d logp
    g = jax.grad(lambda lp: grpo.clipped_policy_loss(lp, jnp.asarray(logp), adv, mask)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(g, -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)


def test_kl_zero_at_reference_and_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    ref = rng.normal(size=(2, 3, 7)).astype(np.float32)
    lsm = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(grpo.kl_exact(logits, logits), 0, atol=1e-6)
    p, q = lsm(logits.astype(np.float64)), lsm(ref.astype(np.float64))
    np.testing.assert_allclose(grpo.kl_exact(logits, ref), (np.exp(p) * (p - q)).sum(-1), rtol=1e-5)
    lp, rp = p[..., 0].astype(np.float32), q[..., 0].astype(np.float32)
    np.testing.assert_allclose(grpo.kl_k3(lp, lp), 0, atol=1e-7)
    np.testing.assert_allclose(grpo.kl_k3(lp, rp), np.exp(rp - lp) - (rp - lp) - 1, rtol=1e-5)
    # the k3 estimate is unbiased: its mean over samples of pi is KL(pi || ref)
    pi, rf = np.exp(p[0, 0]), np.exp(q[0, 0])
    k3_mean = (pi * (rf / pi - np.log(rf / pi) - 1)).sum()
    np.testing.assert_allclose(k3_mean, (pi * (p[0, 0] - q[0, 0])).sum(), rtol=1e-6)


def test_rif_keeps_exactly_the_mixed_prompts():
    r = jnp.array([[1, 1, 1], [0, 1, 0], [0, 0, 0], [0.5, 0.5, 0.4]], jnp.float32)
    np.testing.assert_array_equal(grpo.rif_keep(r), [False, True, False, True])


def test_end_mask():
    through, before = grpo.end_mask(jnp.array([[5, 9, 6, 9], [1, 2, 3, 4]]), 9)
    np.testing.assert_array_equal(through, [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(before, [[1, 0, 0, 0], [1, 1, 1, 1]])


# -- one RL iteration on a tiny model ------------------------------------------------------------

TOK = ByteTokenizer()
CFG = llama.tiny(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=64)
MODEL = lm_model(CFG, "tiny")


def problem(n=4, prompt_len=12):
    pairs = tasks.generate("add", n, digits=1)
    return {
        k: jnp.asarray(v)
        for k, v in tasks.encode_prompts(TOK, pairs, prompt_len=prompt_len, answer_width=4).items()
    }


MIXED = 2  # the one prompt of the pool of 4 whose rollouts get mixed rewards


def by_position(comp, mask, rows):
    """Reward 1 for the first of the G completions of prompt MIXED, 0 elsewhere: exactly one
    prompt with mixed rewards, whatever is sampled."""
    del mask
    first = jnp.arange(comp.shape[0]) % 4 == 0
    return ((rows["idx"] == MIXED) & first).astype(jnp.float32)


def rl_setup(reward, *, mu, rif, n=4, group_size=4, seed=0):
    spec = METHODS["grpo"]
    _, opts = spec.split({"group_size": group_size, "max_new_tokens": 3, "mu": mu, "rif": rif, "rif_pool": 2})
    method = build_method(spec, MODEL, as_hparams(spec), opts)
    prompts = {**problem(n), "idx": jnp.arange(n)}
    env = grpo.Env(reward, TOK.eos_id, TOK.pad_id)
    ex = grpo.example_batch(prompts, group_size=group_size, max_new_tokens=3, pad_id=TOK.pad_id, mu=mu)
    if rif:
        ex = jax.tree.map(lambda a: a[: a.shape[0] // 2], ex)
    state = init_state(MODEL.init(jax.random.key(seed)), method.tx, jax.random.key(1), method.data, ex)
    state = method.consolidate(state, ex, None)
    return method, prompts, env, state


@pytest.fixture(scope="module")
def rif_run():
    """grpo with rif=True (pool of 4 prompts -> batch of 2, mu 2): one rollout, one jitted iteration."""
    method, prompts, env, state = rl_setup(by_position, mu=2, rif=True)
    batch, _ = jax.jit(lambda p, k: method.rollout.fn(p, prompts, k, env))(state.params, jax.random.key(7))
    new_state, metrics = jax.jit(grpo.make_iteration(method, env))(state, prompts)
    return prompts, batch, state, new_state, metrics


def test_rollout_batch_and_rif_selection(rif_run):
    prompts, batch, state, _, _ = rif_run
    assert batch["tokens"].shape == (2 * 4, 12 + 3)  # pool of 4 prompts -> batch of 2
    # the mixed prompt fills the first row (weight 1), the next in pool order the second (weight 0)
    np.testing.assert_array_equal(
        batch["tokens"][:4, :12], jnp.repeat(prompts["prompt"][MIXED : MIXED + 1], 4, 0)
    )
    np.testing.assert_array_equal(batch["tokens"][4:, :12], jnp.repeat(prompts["prompt"][:1], 4, 0))
    np.testing.assert_array_equal(batch["weight"], [1] * 4 + [0] * 4)
    want = np_adv(np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]], np.float32), "group", "mean").reshape(-1)
    np.testing.assert_allclose(batch["adv"], want, rtol=1e-4, atol=1e-6)
    assert float(batch["adv"][0]) > 1.0  # the rewarded completion: 1.5 standard deviations up
    # the sampling policy's log-probs are those of a plain forward pass on the unpadded rows
    n_pad = int((~prompts["prompt_valid"][MIXED]).sum())
    row = batch["tokens"][:1, n_pad:]
    lp = llama.token_logprobs(CFG, state.params, row)[:, -3:]
    np.testing.assert_allclose(batch["old_logp"][:1], lp, rtol=1e-4, atol=1e-4)


def test_iteration_updates_and_reports(rif_run):
    _, _, state, new_state, m = rif_run
    assert int(new_state.step) == 2  # mu inner updates
    np.testing.assert_allclose(float(m["kept"]), 0.25)  # one prompt of the pool of 4 is mixed
    np.testing.assert_allclose(float(m["reward"]), 1 / 16)  # one rewarded completion of 16
    np.testing.assert_allclose(float(m["reward_kept"]), 1 / 4)
    assert float(m["reward_finite"]) == 1.0 and int(new_state.nonfinite_step) == -1
    # inner step 1 sits at the reference (KL 0), inner step 2 has moved: the mean KL is positive
    assert float(m["kl"]) > 1e-9
    moved = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))
    )
    assert moved > 1e-6
    assert np.isfinite(float(m["loss"]))


def test_kl_is_zero_at_the_reference_then_positive():
    """mu = 1: the first iteration's loss is taken at the consolidated parameters (KL exactly 0;
    without the reference it would be KL to a zero model), the second after an update (KL > 0)."""
    method, prompts, env, state = rl_setup(by_position, mu=1, rif=False)
    it = jax.jit(grpo.make_iteration(method, env))
    state1, m1 = it(state, prompts)
    _, m2 = it(state1, prompts)
    np.testing.assert_allclose(float(m1["kl"]), 0.0, atol=1e-7)
    assert float(m2["kl"]) > 1e-9
    # without consolidation the reference is not the policy: the same first iteration sees KL > 0
    unset = state.replace(data_state=method.data.init(None))
    _, m0 = it(unset, prompts)
    assert float(m0["kl"]) > 1e-3


def test_equal_rewards_give_no_update():
    """Every completion rewarded alike: zero advantages, no gradient, parameters and KL unchanged
    (a raw-reward or un-normalised advantage would move them)."""
    method, prompts, env, state = rl_setup(lambda c, m, r: jnp.ones((c.shape[0],)), mu=2, rif=False)
    new, m = jax.jit(grpo.make_iteration(method, env))(state, prompts)
    assert float(m["kept"]) == 0.0 and float(m["reward"]) == 1.0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(float(m["kl"]), 0.0, atol=1e-7)


def test_grpo_raises_the_reward_on_a_toy_task():
    """A verifiable reward (the first generated byte is even; 0.47 at initialisation) on 8 addition
    prompts: 30 GRPO iterations (G = 8, lr 1e-2) raise the policy's exact expected reward
    (the probability mass on even bytes, no sampling noise) on every one of 4 seeds, by more than
    the spread between seeds."""
    G, n_new = 8, 2
    spec = METHODS["grpo"]
    _, opts = spec.split({"group_size": G, "max_new_tokens": n_new})
    method = build_method(spec, MODEL, as_hparams(spec, {"lr": 1e-2}), opts)
    prompts = problem(8)
    env = grpo.Env(lambda comp, mask, rows: (comp[:, 0] % 2 == 0).astype(jnp.float32), TOK.eos_id, TOK.pad_id)
    ex = grpo.example_batch(prompts, group_size=G, max_new_tokens=n_new, pad_id=TOK.pad_id)
    it = grpo.make_iteration(method, env)

    def expected_reward(params):
        logits = grpo.masked_forward(CFG, params, prompts["prompt"], prompts["prompt_valid"])[:, -1]
        return jax.nn.softmax(logits.astype(jnp.float32), -1)[:, 0:256:2].sum(-1).mean()

    def train(key):
        k_init, k_state = jax.random.split(key)
        state = init_state(MODEL.init(k_init), method.tx, k_state, method.data, ex)
        state = method.consolidate(state, ex, None)
        before = expected_reward(state.params)
        state, m = jax.lax.scan(lambda s, _: it(s, prompts), state, None, length=30)
        return before, expected_reward(state.params), m["reward"]

    before, after, sampled = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))
    before, after, sampled = map(np.asarray, (before, after, sampled))
    spread = max(np.ptp(before), np.ptp(after), np.ptp(after - before))
    assert np.all(after - before > 0.2), (before, after)
    assert after.min() - before.max() > spread, (before, after)
    # the rewards the rollouts actually got rise too (first 5 vs last 5 iterations)
    assert np.all(sampled[:, -5:].mean(1) > sampled[:, :5].mean(1) + 0.2), sampled


def test_kl_penalty_is_zero_at_the_reference_and_positive_after_a_move():
    spec = METHODS["grpo"]
    hp = as_hparams(spec, {"beta": 1.0})
    _, opts = spec.split({"group_size": 2, "max_new_tokens": 3})
    method = build_method(spec, MODEL, hp, opts)
    p0 = MODEL.init(jax.random.key(0))
    ex = grpo.example_batch(problem(2), group_size=2, max_new_tokens=3, pad_id=TOK.pad_id)
    ex["tokens"] = jax.random.randint(jax.random.key(2), ex["tokens"].shape, 0, 256)
    state = method.consolidate(init_state(p0, method.tx, jax.random.key(1), method.data, ex), ex, None)
    b, _ = method.data.update(ex, state.data_state, None)
    _, aux = method.loss_fn(p0, b, None)
    np.testing.assert_allclose(aux["kl"], 0.0, atol=1e-6)
    p1 = jax.tree.map(lambda a: a * 1.5, p0)
    _, aux1 = method.loss_fn(p1, b, None)
    lp = grpo.completion_logp(CFG, p1, ex["tokens"], ex["valid"], 3)
    want = np.mean(np.asarray(grpo.kl_k3(lp, b["ref_logp"])))
    np.testing.assert_allclose(aux1["kl"], want, rtol=1e-5)
    assert float(aux1["kl"]) > 0

    # beta is traced: the method built under vmap over beta values (a sweep) gives policy + beta * KL
    def loss_at(beta):
        m = build_method(spec, MODEL, {**hp, "beta": beta}, opts)
        return m.loss_fn(p1, b, None)[0]

    betas = jnp.array([0.0, 0.5, 2.0])
    np.testing.assert_allclose(
        jax.vmap(loss_at)(betas), aux1["policy_loss"] + betas * aux1["kl"], rtol=1e-5, atol=1e-6
    )


def test_bad_rewards_and_prompts_are_clear_errors():
    rollout = grpo.make_rollout(CFG, group_size=2, max_new_tokens=3)
    p0 = MODEL.init(jax.random.key(0))
    wrong = grpo.Env(lambda c, m, r: jnp.zeros((c.shape[0], 2)), TOK.eos_id, TOK.pad_id)
    with pytest.raises(ValueError, match=r"returned shape \(8, 2\).*shape \(8,\)"):
        jax.eval_shape(lambda p: rollout(p, problem(4), jax.random.key(0), wrong), p0)
    long = grpo.make_rollout(CFG, group_size=2, max_new_tokens=60)
    with pytest.raises(ValueError, match="prompt length 12 \\+ max_new_tokens 60 exceeds.*max_seq_len 64"):
        jax.eval_shape(lambda p: long(p, problem(4), jax.random.key(0), wrong), p0)
    with pytest.raises(ValueError, match="prompt_len=4"):
        tasks.encode_prompts(TOK, [("add 1+2=", "3")], prompt_len=4, answer_width=2)


def test_non_finite_rewards_are_flagged_for_the_runner():
    spec = METHODS["grpo"]
    _, opts = spec.split({"group_size": 2, "max_new_tokens": 2})
    method = build_method(spec, MODEL, as_hparams(spec), opts)
    prompts = problem(2)
    env = grpo.Env(lambda c, m, r: jnp.where(c[:, 0] >= 0, jnp.nan, 0.0), TOK.eos_id, TOK.pad_id)
    ex = grpo.example_batch(prompts, group_size=2, max_new_tokens=2, pad_id=TOK.pad_id)
    state = init_state(MODEL.init(jax.random.key(0)), method.tx, jax.random.key(1), method.data, ex)
    state, m = jax.jit(grpo.make_iteration(method, env))(state, prompts)
    assert float(m["reward_finite"]) == 0.0
    assert int(state.nonfinite_step) == 0  # the runner stops with a message naming the reward
