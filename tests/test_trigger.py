"""jaxcl.unlearn.trigger: the search objective against numpy on a tiny Llama (a soft prompt of
token embeddings is the same as those tokens prepended; an empty trigger and a zero edit are the
plain model), and the attack's behaviour: on a tiny Llama that memorised random strings and then
had them gradient-ascended away, a trigger fitted on half of them lowers the other half's NLL
below the no-trigger NLL by more than the same search does on a model that never saw them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.models import llama
from jaxcl.unlearn import trigger

V, PL, AL = 32, 4, 6  # vocabulary, prompt and answer lengths
CFG = llama.LlamaConfig(
    vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=32
)


def rows(seed, n):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, V, (n, PL + AL)).astype(np.int32)
    m = np.zeros_like(t, bool)
    m[:, PL:] = True
    return {"tokens": jnp.asarray(t), "mask": jnp.asarray(m)}


def np_nll(logits, tokens, mask):
    """Each row's mean answer NLL from logits (float64 log-softmax, targets t[1:] where mask[1:])."""
    z = np.asarray(logits, np.float64)[:, :-1]
    lp = z - z.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    t, m = np.asarray(tokens)[:, 1:], np.asarray(mask)[:, 1:]
    picked = np.take_along_axis(lp, t[..., None], -1)[..., 0]
    return -(picked * m).sum(-1) / m.sum(-1)


def test_objective_against_numpy():
    params = llama.init_params(CFG, seed=1)
    r = rows(0, 3)
    plain = np_nll(llama.forward(CFG, params, r["tokens"]), r["tokens"], r["mask"])
    D = CFG.d_model
    got0 = trigger.trigger_nll(CFG, params, jnp.zeros((0, D)), r)
    np.testing.assert_allclose(got0, plain, rtol=1e-5)
    # a soft prompt made of token embeddings = those tokens prepended (their logits dropped)
    ids = jnp.array([5, 17, 2], jnp.int32)
    z = params["embed"][ids]
    cat = jnp.concatenate([jnp.broadcast_to(ids, (3, 3)), r["tokens"]], 1)
    ref = np_nll(llama.forward(CFG, params, cat)[:, 3:], r["tokens"], r["mask"])
    np.testing.assert_allclose(trigger.trigger_nll(CFG, params, z, r), ref, rtol=1e-5)
    assert np.abs(ref - plain).max() > 1e-3  # the prefix changes the scores: the check can fail
    # a zero edit is the plain model; adding e_7 - e_3 to a first token 3 is token 7 in its place
    np.testing.assert_allclose(
        trigger.trigger_nll(CFG, params, jnp.zeros((2, D)), r, "edit"), plain, rtol=1e-5
    )
    threes = {"tokens": r["tokens"].at[:, 0].set(3), "mask": r["mask"]}
    sevens = r["tokens"].at[:, 0].set(7)
    delta = (params["embed"][7] - params["embed"][3])[None]
    ref = np_nll(llama.forward(CFG, params, sevens), sevens, r["mask"])
    np.testing.assert_allclose(
        trigger.trigger_nll(CFG, params, delta, threes, "edit"), ref, rtol=1e-4, atol=1e-6
    )


@functools.partial(jax.jit, static_argnums=(2, 4))
def train(params, batch, steps, lr, sign=1.0):
    opt = optax.adam(lr)

    def step(c, _):
        p, s = c
        g = jax.grad(lambda p: sign * trigger.trigger_nll(CFG, p, None, batch).mean())(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]


@pytest.fixture(scope="module")
def models():
    forget, retain = rows(1, 16), rows(2, 16)
    p0 = llama.init_params(CFG, seed=0)
    original = train(p0, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), forget, retain), 300, 1e-2)
    oracle = train(p0, retain, 300, 1e-2)
    unlearned = train(original, forget, 40, 1e-3, -1.0)
    return forget, original, oracle, unlearned


def test_trigger_recovers_more_than_on_the_oracle(models):
    forget, original, oracle, unlearned = models
    attack = jax.jit(
        jax.vmap(
            lambda p, k: trigger.trigger_attack(CFG, p, forget, k, 0.1, steps=100, length=3, mode="edit"),
            (None, 0),
        )
    )
    keys = jax.random.split(jax.random.key(0), 2)
    u, o = attack(unlearned, keys), attack(oracle, keys)
    assert float(u["nll"][0]) > float(o["nll"][0])  # GA drove the forget NLL above the oracle's
    gain_u, gain_o = u["nll"] - u["trig_nll"], o["nll"] - o["trig_nll"]
    assert (gain_u > 0).all(), gain_u
    assert (gain_u > gain_o).all(), (gain_u, gain_o)


def test_search_is_vmappable_and_lowers_its_objective():
    params = llama.init_params(CFG, seed=0)
    r = rows(3, 4)
    keys = jax.random.split(jax.random.key(1), 2)
    out = jax.vmap(lambda k: trigger.trigger_search(CFG, params, r, k, 0.05, steps=20, length=2))(keys)
    assert out["trigger"].shape == (2, 2, CFG.d_model) and out["trace"].shape == (2, 20)
    assert (out["trace"][:, -1] < out["trace"][:, 0]).all()
    one = trigger.trigger_search(CFG, params, r, keys[1], 0.05, steps=20, length=2)
    np.testing.assert_allclose(out["trigger"][1], one["trigger"], rtol=1e-4, atol=1e-5)
