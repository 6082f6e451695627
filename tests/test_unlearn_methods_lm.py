"""The newer unlearning methods (SimNPO, WGA, SatImp, UNDIAL, DPO/IdkDPO): each loss against a
numpy implementation on hand-made batches, and a behaviour test of what each is for, on a
classifier and on a tiny Llama."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams, build_method
from jaxcl.losses import mean_nll, supervised_loss
from jaxcl.methods import METHODS
from jaxcl.methods.dpo import dpo_loss
from jaxcl.methods.simnpo import simnpo_loss
from jaxcl.methods.undial import adjusted_target
from jaxcl.models import llama, mlp
from jaxcl.models.lm import language_model

NEW = ("simnpo", "wga", "satimp", "undial", "dpo")


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softplus(x):
    return np.logaddexp(0.0, x)


# -- a "classifier" whose parameters are its logits: gradients by hand ------------------------

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-2.0, 1.5, 0.0], [3.0, 0.0, -1.0]], np.float32)
Y = np.array([0, 2, 1, 0], np.int32)
RAW = types.SimpleNamespace(apply=lambda p, x: p["z"])  # no .nll: the classifier path


def raw_batch():
    sub = {"x": jnp.zeros((4, 1)), "y": jnp.asarray(Y)}
    return {"x": sub["x"], "y": sub["y"], "forget": sub}


def forget_loss(name, model, hp_over=None):
    spec = METHODS[name]
    hp = as_hparams(spec, hp_over or {})
    loss_fn, _, _ = __import__(f"jaxcl.methods.{name}", fromlist=["forget_term"]).forget_term(model, hp, None)
    return loss_fn, {k: float(v) for k, v in hp.items()}


def test_simnpo_loss_matches_numpy():
    nll = np.array([3.0, 0.4, 7.5, 1.2], np.float32)
    cnt = np.array([3.0, 1.0, 5.0, 0.0], np.float32)  # an empty answer counts as 1 token
    for beta, delta in ((4.5, 0.0), (1.0, 0.3), (0.2, 2.0)):
        want = (2 / beta) * np_softplus(-beta * (nll / np.maximum(cnt, 1) - delta)).mean()
        got = simnpo_loss(jnp.asarray(nll), jnp.asarray(cnt), beta, delta)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_simnpo_needs_no_reference():
    spec = METHODS["simnpo"]
    m = build_method(spec, mlp((4, 4, 1), 3, hidden=(8,)), as_hparams(spec), spec.split({})[1])
    assert m.data is None and m.consolidate is None


def test_simnpo_forget_term_on_classifier_logits():
    loss_fn, hp = forget_loss("simnpo", RAW)
    nll = -np_log_softmax(LOGITS)[np.arange(4), Y]
    want = hp["forget_weight"] * (2 / hp["beta"]) * np_softplus(-hp["beta"] * (nll - hp["delta"])).mean()
    got, _ = loss_fn({"z": jnp.asarray(LOGITS)}, raw_batch(), None)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["wga", "satimp"])
@pytest.mark.parametrize("over", [{}, {"beta": 2.0, "beta1": 0.5, "beta2": 3.0}])
def test_weighted_ascent_loss_and_gradient_match_numpy(name, over):
    over = {k: v for k, v in over.items() if k in METHODS[name].hparams}
    loss_fn, hp = forget_loss(name, RAW, over)
    lp = np_log_softmax(LOGITS)[np.arange(4), Y]
    p = np.exp(lp)
    if name == "wga":
        w, c = p ** hp["beta"], 1.0
    else:
        w, c = p ** hp["beta1"] * (1 - p) ** hp["beta2"], hp["forget_weight"]
    want = c * (w * lp).mean()
    # the weights are constants: d/dz = c/N * w * (onehot - softmax)
    onehot = np.eye(3)[Y]
    want_g = c / 4 * w[:, None] * (onehot - np.exp(np_log_softmax(LOGITS)))
    (got, _), g = jax.value_and_grad(loss_fn, has_aux=True)({"z": jnp.asarray(LOGITS)}, raw_batch(), None)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(g["z"], want_g, rtol=1e-4, atol=1e-7)


def test_undial_target_is_a_distribution_lowering_only_the_target():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 7)).astype(np.float32)
    t = rng.integers(0, 7, (2, 5))
    q = np.asarray(adjusted_target(jnp.asarray(ref), jnp.asarray(t), 10.0))
    p = np.exp(np_log_softmax(ref))
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
    is_t = np.eye(7, dtype=bool)[t]
    assert (q[is_t] < p[is_t]).all()  # the target's mass falls
    assert (q[~is_t] > p[~is_t]).all()  # the others rise...
    ratio = (q / p)[~is_t].reshape(2, 5, 6)  # ...by one common factor per position
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[..., :1], ratio.shape), rtol=1e-4)
    np.testing.assert_allclose(adjusted_target(jnp.asarray(ref), jnp.asarray(t), 0.0), p, rtol=1e-5)


# -- the tiny Llama: answer-masked batches ------------------------------------------------------

CFG = llama.tiny(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=16)
LM = language_model(CFG, "tiny")
LM_PARAMS = LM.init(jax.random.key(0))


def lm_rows(seed, n=4, T=10):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, T), bool)
    mask[:, 5:] = True  # the answer: the last 5 tokens
    mask[0, 8:] = False  # one row with a shorter answer
    return {"tokens": jnp.asarray(rng.integers(0, 32, (n, T)), jnp.int32), "mask": jnp.asarray(mask)}


def np_token_logprobs(params, sub):
    z = np.asarray(LM.apply(params, sub["tokens"][:, :-1]))
    t = np.asarray(sub["tokens"][:, 1:])
    lp = np.take_along_axis(np_log_softmax(z.astype(np.float64)), t[..., None], -1)[..., 0]
    return z, t, lp, np.asarray(sub["mask"][:, 1:], np.float64)


@pytest.mark.parametrize("name", ["wga", "satimp", "simnpo"])
def test_lm_forget_terms_match_numpy(name):
    f = lm_rows(1)
    loss_fn, hp = forget_loss(name, LM)
    _, _, lp, m = np_token_logprobs(LM_PARAMS, f)
    p = np.exp(lp)
    if name == "wga":
        want = (m * p ** hp["beta"] * lp).sum() / m.sum()
    elif name == "satimp":
        w = p ** hp["beta1"] * (1 - p) ** hp["beta2"]
        want = hp["forget_weight"] * (m * w * lp).sum() / m.sum()
    else:
        nll = -(m * lp).sum(-1) / m.sum(-1)
        want = hp["forget_weight"] * (2 / hp["beta"]) * np_softplus(-hp["beta"] * (nll - hp["delta"])).mean()
    got, _ = loss_fn(LM_PARAMS, {"forget": f}, None)
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_lm_undial_matches_numpy():
    f = lm_rows(2)
    loss_fn, hp = forget_loss("undial", LM)
    z, t, lp, m = np_token_logprobs(LM_PARAMS, f)
    ref = np.random.default_rng(3).normal(size=z.shape).astype(np.float32) * 2
    adj = ref - hp["beta"] * np.eye(32)[t]
    q = np.exp(np_log_softmax(adj.astype(np.float64)))
    ce = -(q * np_log_softmax(z.astype(np.float64))).sum(-1)
    want = (m * ce).sum() / m.sum()
    got, _ = loss_fn(LM_PARAMS, {"forget": f, "ref_logits_tok": jnp.asarray(ref)}, None)
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_dpo_loss_matches_numpy():
    rng = np.random.default_rng(4)
    nw, rw, nl, rl = (rng.uniform(0.5, 9, 6).astype(np.float32) for _ in range(4))
    for beta in (0.1, 1.0, 3.0):
        margin = (rw - nw) - (rl - nl)
        want = -(2 / beta) * np.log(1 / (1 + np.exp(-beta * margin))).mean()
        got = dpo_loss(*(jnp.asarray(a) for a in (nw, rw, nl, rl)), beta)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_lm_dpo_prefers_the_alternative_over_the_forget_answer():
    f, alt = lm_rows(5), lm_rows(6)
    loss_fn, hp = forget_loss("dpo", LM)
    ref = {"w": LM.nll(LM_PARAMS, alt)[0], "l": LM.nll(LM_PARAMS, f)[0]}
    batch = {"forget": f, "forget_alt": alt, "ref_nll_pair": ref}
    # at the reference: margin 0, loss (2/beta) log 2
    np.testing.assert_allclose(loss_fn(LM_PARAMS, batch, None)[0], 2 / hp["beta"] * np.log(2), rtol=1e-5)
    g = jax.grad(lambda p: loss_fn(p, batch, None)[0])(LM_PARAMS)
    gw = jax.grad(lambda p: LM.nll(p, alt)[0].mean())(LM_PARAMS)
    gl = jax.grad(lambda p: LM.nll(p, f)[0].mean())(LM_PARAMS)
    # at margin 0 the gradient is (grad nll_w - grad nll_l) (d softplus(0) = 1/2, times 2/beta * beta)
    want = jax.tree.map(lambda a, b: a - b, gw, gl)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


# -- behaviour: a few steps forget the forget set more than the retain set ----------------------


def run_steps(name, model, params, batch, n, hp_over):
    spec = METHODS[name]
    hp = as_hparams(spec, hp_over)
    m = build_method(spec, model, hp, spec.split({"rank": 2} if name.startswith("gu-") else {})[1])
    state = init_state(params, m.tx, jax.random.key(0), m.data, batch)
    if m.consolidate is not None:
        state = m.consolidate(state, batch, jax.random.key(1))
    step = make_step(m.loss_fn, m.tx, m.data, extra_args=m.extra_args)
    return jax.lax.scan(lambda s, _: (step(s, batch)[0], None), state, None, length=n)[0].params


def trained(model, params, batch, steps, lr):
    tx = optax.adam(lr)
    step = make_step(supervised_loss(model), tx)
    state = init_state(params, tx, jax.random.key(0))
    return jax.lax.scan(lambda s, _: (step(s, batch)[0], None), state, None, length=steps)[0].params


LR_OVER = {"lr": 3e-3}


@pytest.mark.parametrize("name", [*NEW, "gu-simnpo", "gu-dpo", "random_label"])
def test_lm_unlearning_raises_forget_nll_more_than_retain(name):
    f, r, alt = lm_rows(10), lm_rows(11), lm_rows(12)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), f, r)
    p0 = jax.jit(lambda p: trained(LM, p, both, 150, 1e-2))(LM_PARAMS)
    batch = {**r, "forget": f, "forget_alt": alt}
    p1 = jax.jit(lambda p: run_steps(name, LM, p, batch, 10, LR_OVER))(p0)
    nll = mean_nll(LM)
    d_f = float(nll(p1, f) - nll(p0, f))
    d_r = float(nll(p1, r) - nll(p0, r))
    assert np.isfinite(d_f) and d_f > 0, d_f
    if name.endswith("dpo"):  # DPO is for preferring the alternative answer to the forget answer
        d_alt = float(nll(p1, alt) - nll(p0, alt))
        assert d_alt < 0 < d_f, (d_alt, d_f)
    else:  # random tokens: forget and retain rows share nothing but the model
        assert d_f > d_r, (d_f, d_r)


def test_classifier_unlearning_raises_forget_nll_more_than_retain():
    model = mlp((4, 4, 1), 3, hidden=(16,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (48, 4, 4, 1)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, 3, 48), jnp.int32)
    fi, ri = np.flatnonzero(np.asarray(y) == 0)[:8], np.flatnonzero(np.asarray(y) != 0)[:16]
    p0 = jax.jit(lambda p: trained(model, p, {"x": x, "y": y}, 200, 1e-2))(model.init(jax.random.key(0)))
    fb = {"x": x[fi], "y": y[fi]}
    batch = {"x": x[ri], "y": y[ri], "forget": fb, "forget_alt": {"x": fb["x"], "y": (fb["y"] + 1) % 3}}
    nll = mean_nll(model)
    for name in NEW:
        p1 = jax.jit(lambda p, name=name: run_steps(name, model, p, batch, 10, {"lr": 1e-2}))(p0)
        d_f = float(nll(p1, fb) - nll(p0, fb))
        d_r = float(nll(p1, {"x": x[ri], "y": y[ri]}) - nll(p0, {"x": x[ri], "y": y[ri]}))
        assert d_f > 0 and d_f > d_r, (name, d_f, d_r)


@pytest.mark.parametrize("name", ["ssd", "iau"])
def test_lm_edit_methods_forget_more_than_retain(name):
    """SSD and IAU (edits, no training steps) on a language model: the edit reads the LM's
    forget / train / retain rows (:class:`jaxcl.unlearn.lm.LMProblem`), changes the parameters and
    raises the forget rows' NLL more than the retain rows'. SSD at alpha 1.2: the forget rows are
    half of the training rows, so their minibatches are half of I_D's and I_Df > alpha * I_D
    needs alpha < 2."""
    from jaxcl.unlearn.lm import LMProblem

    f, r, alt = lm_rows(10), lm_rows(11), lm_rows(12)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), f, r)
    p0 = jax.jit(lambda p: trained(LM, p, both, 150, 1e-2))(LM_PARAMS)
    spec = METHODS[name]
    hp = as_hparams(spec, {"alpha": 1.2} if name == "ssd" else {})
    m = build_method(spec, LM, hp, spec.split({})[1])
    assert not m.trains and m.edit is not None
    p1 = jax.jit(m.edit)(p0, LMProblem(forget=f, forget_alt=alt, retain=r), hp, jax.random.key(0))
    nll = mean_nll(LM)
    d_f = float(nll(p1, f) - nll(p0, f))
    d_r = float(nll(p1, r) - nll(p0, r))
    assert np.isfinite(d_f) and d_f > 0 and d_f > d_r, (d_f, d_r)


# -- random labels on the Llama: each answer replaced by another row's --------------------------


def test_relabel_tokens_by_hand():
    from jaxcl.methods.random_label import relabel_tokens

    tokens = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    mask = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 1]], bool)
    got = np.asarray(relabel_tokens(jnp.asarray(tokens), jnp.asarray(mask), 1))
    np.testing.assert_array_equal(got, [[1, 8, 9], [4, 2, 3], [7, 8, 6]])


def test_lm_random_label_is_the_nll_of_another_rows_answer():
    f = lm_rows(7)
    f = {"tokens": f["tokens"], "mask": f["mask"].at[0, 8:].set(True)}  # aligned answers
    loss_fn, _ = forget_loss("random_label", LM)
    tok, m = np.asarray(f["tokens"]), np.asarray(f["mask"])

    def np_nll(shift):
        t = np.where(m, np.roll(tok, shift, 0), tok)
        _, _, lp, mm = np_token_logprobs(LM_PARAMS, {"tokens": jnp.asarray(t), "mask": m})
        return -(mm * lp).sum() / mm.sum()

    for k in range(4):
        got = float(loss_fn(LM_PARAMS, {"forget": f}, jax.random.key(k))[0])
        diffs = [abs(got - np_nll(s)) / np_nll(s) for s in range(4)]
        assert min(diffs[1:]) < 2e-5 and diffs[0] > 1e-3, diffs  # a real shift, never the true answers
