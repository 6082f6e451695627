"""GRPO on the vision-language model: the image tokens before every prompt (``grpo.Context``). The
policy's completion log-probs equal the VLM's own teacher-forced ones (a full forward pass over
the image and the text, no KV cache), left padding changes nothing, the rollout samples after the
image (at a vanishing nucleus it writes the argmax continuation of the full forward pass) and
carries the image into its batch, and the policy gradient reaches the image encoder."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import grpo
from jaxcl.data import multimodal as MM
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.models import vlm

MODEL = vlm.from_section(vlm.section(d_model=32, d_ff=64), (8, 8, 1), 259, 48)
VC = MODEL.vcfg
PARAMS = MODEL.init(jax.random.key(0))
B, T, N = 3, 12, 5
TOK = jax.random.randint(jax.random.key(1), (B, T), 3, 200)
IMG = jax.random.randint(jax.random.key(2), (B, 8, 8, 1), 0, 255).astype(jnp.uint8)
PAD = 3  # left padding of the padded copy


def padded():
    tok = jnp.concatenate([jnp.zeros((B, PAD), TOK.dtype), TOK], 1)
    valid = jnp.concatenate([jnp.zeros((B, PAD), bool), jnp.ones((B, T), bool)], 1)
    return tok, valid


def test_completion_logp_after_the_image_is_the_vlms_own_with_and_without_padding():
    ref = vlm.token_logprobs(VC, PARAMS, IMG, TOK)[:, -N:]  # full forward, no cache, no padding
    ctx = grpo.context_of(MODEL)
    assert ctx is not None and ctx.keys == ("image",)
    pre = ctx.prefix(PARAMS, {"image": IMG})
    assert pre.shape == (B, VC.n_image_tokens, VC.text.d_model)
    got = grpo.completion_logp(VC.text, PARAMS, TOK, jnp.ones((B, T), bool), N, prefix_BxIxD=pre)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    tok, valid = padded()
    got = grpo.completion_logp(VC.text, PARAMS, tok, valid, N, prefix_BxIxD=pre)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # the image is read: another image gives other log-probs
    other = ctx.prefix(PARAMS, {"image": 255 - IMG})
    moved = grpo.completion_logp(VC.text, PARAMS, TOK, jnp.ones((B, T), bool), N, prefix_BxIxD=other)
    assert float(jnp.abs(moved - ref).max()) > 1e-3


def test_rollout_samples_after_the_image_and_carries_it_into_the_batch():
    G = 2
    tok, valid = padded()
    prompts = {"prompt": tok[:, :-N], "prompt_valid": valid[:, :-N], "image": IMG}
    env = grpo.Env(lambda c, m, rows: jnp.zeros(c.shape[0]), eos_id=258, pad_id=0)
    rollout = grpo.make_rollout(
        VC.text, group_size=G, max_new_tokens=N, top_p=1e-6, context=grpo.context_of(MODEL)
    )
    batch, _ = jax.jit(lambda p, pr, k: rollout(p, pr, k, env))(PARAMS, prompts, jax.random.key(3))
    np.testing.assert_array_equal(batch["image"], np.repeat(np.asarray(IMG), G, 0))
    # the argmax continuation by the full forward pass (no cache), one token at a time
    seq = TOK[:, :-N]
    for _ in range(N):
        nxt = jnp.argmax(vlm.forward(VC, PARAMS, IMG, seq)[:, -1], -1).astype(seq.dtype)
        seq = jnp.concatenate([seq, nxt[:, None]], 1)
    np.testing.assert_array_equal(batch["tokens"][:, -N:], np.repeat(np.asarray(seq[:, -N:]), G, 0))
    # the sampling policy's log-probs (mu > 1) read the image too: the VLM's own
    rollout = grpo.make_rollout(VC.text, group_size=G, max_new_tokens=N, context=grpo.context_of(MODEL))
    batch, _ = jax.jit(lambda p, pr, k: rollout(p, pr, k, env))(PARAMS, prompts, jax.random.key(3))
    full = jnp.concatenate([jnp.repeat(TOK[:, :-N], G, 0), batch["tokens"][:, -N:]], 1)
    ref = vlm.token_logprobs(VC, PARAMS, jnp.repeat(IMG, G, 0), full)[:, -N:]
    np.testing.assert_allclose(batch["old_logp"], ref, atol=2e-5)


def test_policy_gradient_reaches_the_image_encoder_and_moves_the_rewarded_completion_up():
    spec = METHODS["grpo"]
    hp, opts = spec.split({"lr": 0.05, "optim": "sgd", "kl": "none"})
    method = build_method(spec, MODEL, as_hparams(spec, hp), opts)
    tok, valid = padded()
    batch = {
        "tokens": tok,
        "valid": valid,
        "completion_mask": jnp.ones((B, N), bool),
        "adv": jnp.asarray([1.0, -1.0, 0.0]),
        "weight": jnp.ones((B,)),
        "image": IMG,
    }
    grads = jax.grad(lambda p: method.loss_fn(p, batch, None)[0])(PARAMS)
    vision = jax.tree.leaves(grads["vision"])
    assert vision and max(float(jnp.abs(g).max()) for g in vision) > 0
    zero = jax.grad(lambda p: method.loss_fn(p, {**batch, "adv": jnp.zeros(B)}, None)[0])(PARAMS)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(zero))
    # one small gradient step: the positive-advantage completion more likely, the negative less
    new = jax.tree.map(lambda p, g: p - 0.05 * g, PARAMS, grads)
    lp = lambda p: vlm.token_logprobs(VC, p, IMG, TOK)[:, -N:].sum(-1)  # noqa: E731
    d = np.asarray(lp(new) - lp(PARAMS))
    assert d[0] > 0 > d[1], d


def test_prompt_rows_split_each_example_into_its_prompt_and_answer():
    x, y = MM.source("digits", "test")
    ex = MM.attributes(x, y, "digits", 12, seed=1, seq_len=48)
    rows = MM.prompt_rows(MM.batch(ex), 30, 6)
    for i in range(12):
        p = rows["prompt"][i][rows["prompt_valid"][i]]
        a = rows["answer"][i][rows["answer_mask"][i]]
        n = len(p) + len(a)
        np.testing.assert_array_equal(np.concatenate([p, a]), ex.tokens[i, :n])
        np.testing.assert_array_equal(ex.mask[i, len(p) : n], True)
        assert rows["prompt_valid"][i, -1] and not ex.mask[i, n:].any()  # left-padded; nothing after
    try:
        MM.prompt_rows(MM.batch(ex), 30, 2)
    except ValueError as e:
        assert "raise the completion length above 2" in str(e)
    else:
        raise AssertionError("a too short completion length was accepted")


def test_exact_answer_reward_is_the_answer_and_its_end_token_exactly():
    eos = 9
    answer = jnp.asarray([[5, 6, eos, 0]] * 5)
    amask = jnp.asarray([[True, True, True, False]] * 5)
    comp = jnp.asarray(
        [
            [5, 6, eos, 0],  # exact
            [5, 6, eos, 7],  # exact: what follows the end token is not read
            [5, 6, 6, eos],  # no end token after the answer
            [5, 7, eos, 0],  # a wrong token
            [5, 6, 0, 0],  # never ends
        ]
    )
    got = MM.exact_answer_reward(comp, None, {"answer": answer, "answer_mask": amask})
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0, 0.0, 0.0])
