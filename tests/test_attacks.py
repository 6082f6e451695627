"""jaxcl.unlearn.attacks: every score against a numpy re-implementation (open-unlearning's
per-row definitions) on logits computed once by the model, AUC against sklearn, and the
behaviours the attacks exist for on a tiny random Llama: a model fine-tuned on the members
gives them away, an untouched one does not; PrivLeak's sign; EM = ES = 1 on a memorised row;
the relearning attack brings a forgotten set back."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from jaxcl.hf import ByteTokenizer
from jaxcl.models import lm
from jaxcl.unlearn import attacks

T, ANSWER = 20, 12  # sequence length; the last ANSWER positions are scored


@pytest.fixture(scope="module")
def setup():
    tok = ByteTokenizer()
    model, _, _ = lm.load(lm.section("xs"), tokenizer=tok, max_seq_len=T)
    params = model.init(jax.random.key(0))
    return model, params, tok


def rows(seed, n, vocab=256, answer=ANSWER):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(32, vocab, (n, T)).astype(np.int32)
    mask = np.zeros((n, T), bool)
    mask[:, T - answer :] = True
    return {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}


# -- numpy references, one row at a time (open-unlearning's per-row code paths) ----------------


def np_row(logits_TxV, tokens_T, mask_T):
    """Scored positions' full log-prob rows and targets, as tokenwise_vocab_logprobs selects them."""
    z = logits_TxV[:-1].astype(np.float64)
    lp = z - z.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    keep = mask_T[1:]
    return lp[keep], tokens_T[1:][keep]


def np_scores(logits, tokens, mask, k, tokenizer):
    out = {n: [] for n in ("loss", "min_k", "min_k_plus_plus", "em", "es", "zlib")}
    for lg, t, m in zip(logits, tokens, mask):
        lp_V, tgt = np_row(lg, t, m)
        lp = lp_V[np.arange(len(tgt)), tgt]
        loss = -lp.mean()
        out["loss"].append(loss)
        nk = max(1, int(len(lp) * k))
        out["min_k"].append(-np.mean(np.sort(lp)[:nk]))
        mu = (np.exp(lp_V) * lp_V).sum(-1)
        var = np.maximum((np.exp(lp_V) * lp_V**2).sum(-1) - mu**2, 1e-6)
        out["min_k_plus_plus"].append(-np.mean(np.sort((lp - mu) / np.sqrt(var))[:nk]))
        pred = lp_V.argmax(-1)
        out["em"].append((pred == tgt).mean())
        n = len(tgt)
        ks = next((j for j in range(n + 1) if np.array_equal(pred[j:], tgt[j:])), n)
        out["es"].append(1 - ks / n)
        out["zlib"].append(loss / len(zlib.compress(tokenizer.decode(tgt.tolist()).encode("utf-8"))))
    return {n: np.asarray(v) for n, v in out.items()}


def test_scores_match_numpy(setup):
    model, params, tok = setup
    b = rows(1, 6)
    mask = np.asarray(b["mask"]).copy()
    mask[1, : T - 5] = False  # rows of different answer lengths (5, 7, 12)
    mask[2, : T - 7] = False
    b = {"tokens": b["tokens"], "mask": jnp.asarray(mask)}
    ref_params = model.init(jax.random.key(1))
    logits = np.asarray(model.apply(params, b["tokens"]))
    ref_logits = np.asarray(model.apply(ref_params, b["tokens"]))
    k = 0.4
    got = attacks.example_scores(model, params, attacks.with_zlib(b, tok), ref_params, k=k, chunk=4)
    want = np_scores(logits, np.asarray(b["tokens"]), mask, k, tok)
    want_ref = np_scores(ref_logits, np.asarray(b["tokens"]), mask, k, tok)
    for name, key in [
        ("loss", "loss"),
        ("min_k", "min_k"),
        ("min_k_plus_plus", "min_k_plus_plus"),
        ("exact_memorization", "em"),
        ("extraction_strength", "es"),
        ("zlib", "zlib"),
    ]:
        np.testing.assert_allclose(got[name], want[key], rtol=2e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["reference"], want["loss"] - want_ref["loss"], rtol=2e-4, atol=1e-5)


def test_gradnorm_matches_one_row_gradients(setup):
    model, params, _ = setup
    b = rows(2, 3)
    got = attacks.example_scores(model, params, b, chunk=2)["gradnorm"]
    for i in range(3):
        sub = {"tokens": b["tokens"][i : i + 1], "mask": b["mask"][i : i + 1]}
        g = jax.grad(lambda p, sub=sub: (lambda s, n: (s / n)[0])(*model.nll(p, sub)))(params)
        want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
        np.testing.assert_allclose(got[i], want, rtol=1e-4)


def test_extraction_strength_hand_made():
    """Logits that predict chosen tokens: ES and EM against their definitions by hand."""
    V = 5
    tokens = np.array([[0, 1, 2, 3, 4, 1], [0, 1, 2, 3, 4, 1], [0, 1, 2, 3, 4, 1]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1]] * 3, bool)  # scored targets: positions 2..5 (4 tokens)
    preds = tokens[:, 1:].copy()  # row 0: all right
    preds[1, 2] = 0  # row 1: the 2nd scored token (target at position 3) wrong -> k* = 2
    preds[2, 4] = 0  # row 2: the last wrong -> k* = 4, ES = 0
    logits = np.zeros((3, 6, V), np.float32)
    logits[:, :-1][np.arange(3)[:, None], np.arange(5)[None], preds] = 5.0
    es = attacks.extraction_strength(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    em = attacks.exact_memorization(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(es, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(em, [1.0, 0.75, 0.75])


def test_min_k_hand_made():
    v = jnp.array([[-1.0, -5.0, -3.0, -2.0, 9.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the masked 9 never counts
    np.testing.assert_allclose(attacks.min_k_of(v, m, 0.5), [4.0])  # mean of -5, -3
    np.testing.assert_allclose(attacks.min_k_of(v, m, 0.1), [5.0])  # at least one token
    np.testing.assert_allclose(attacks.min_k_of(v, 0 * m, 0.5), [0.0])  # no scored token


def test_auc_against_sklearn():
    rng = np.random.default_rng(0)
    for n_p, n_n in ((7, 11), (30, 30)):
        pos = rng.integers(0, 6, n_p).astype(np.float32)  # ties
        neg = rng.normal(2.0, 2.0, n_n).round().astype(np.float32)
        want = roc_auc_score(np.r_[np.ones(n_p), np.zeros(n_n)], np.r_[pos, neg])
        np.testing.assert_allclose(float(attacks.auc(jnp.asarray(pos), jnp.asarray(neg))), want, rtol=1e-6)


def finetuned(model, params, batch, steps=60, lr=3e-3):
    """Adam on the batch's mean answer NLL, ``steps`` full-batch steps (one lax.scan)."""
    tx = optax.adam(lr)

    def loss(p):
        s, n = model.nll(p, batch)
        return s.sum() / n.sum()

    def body(c, _):
        p, s = c
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0])(params)


@pytest.fixture(scope="module")
def members_model(setup):
    model, params, _ = setup
    members, nonmembers = rows(10, 24), rows(11, 24)
    return finetuned(model, params, members), members, nonmembers


def test_mia_separates_members_only_after_training(setup, members_model):
    model, params, tok = setup
    trained, members, nonmembers = members_model
    before = attacks.mia(model, params, members, nonmembers, tokenizer=tok)
    after = attacks.mia(model, trained, members, nonmembers, params, tokenizer=tok)
    for a in ("loss", "min_k", "min_k_plus_plus", "zlib", "reference", "gradnorm"):
        assert after[a] > 0.8, (a, after[a])
    for a in ("loss", "min_k", "min_k_plus_plus", "zlib", "gradnorm"):
        assert abs(before[a] - 0.5) < 0.25, (a, before[a])
    assert after["exact_memorization_members"] > after["exact_memorization_nonmembers"]


def test_privleak_sign(setup, members_model):
    model, params, _ = setup
    trained, members, nonmembers = members_model
    auc_retrain = attacks.mia(model, params, members, nonmembers)["loss"]  # never saw the members
    auc_kept = attacks.mia(model, trained, members, nonmembers)["loss"]  # did not unlearn them
    assert attacks.privleak(auc_kept, auc_retrain) < -50  # under-unlearning: large negative
    assert attacks.privleak(auc_retrain, auc_retrain) == pytest.approx(0.0)
    assert attacks.privleak(0.3, 0.5) == pytest.approx((0.7 - 0.5) / 0.5 * 100)  # over-unlearning
    assert math.isnan(attacks.privleak(0.5, 1.0))  # no scale: the retrained model's AUC' is 0


def test_exact_memorisation_of_a_memorised_row(setup):
    model, params, _ = setup
    one = rows(20, 1)
    mem = finetuned(model, params, one, steps=150)
    s = attacks.example_scores(model, mem, one)
    assert float(s["exact_memorization"][0]) == 1.0
    assert float(s["extraction_strength"][0]) == 1.0
    s0 = attacks.example_scores(model, params, one)
    assert float(s0["exact_memorization"][0]) < 0.5


def test_relearn_brings_back_a_forgotten_set(setup):
    """Forget rows duplicated, so the held-out rows are the attack slice's: a few steps of
    fine-tuning lower their NLL and raise their EM; the trace starts at the untouched model."""
    model, params, _ = setup
    base = rows(30, 4)
    forget = jax.tree.map(lambda a: jnp.concatenate([a, a]), base)
    out = attacks.relearn(
        model, params, forget, jax.random.key(0), steps=20, every=10, n=4, lr=3e-3, batch_size=4
    )
    assert out["forget_nll"].shape == (3,)
    s0 = attacks.example_scores(model, params, base)
    np.testing.assert_allclose(out["forget_nll"][0], s0["loss"].mean(), rtol=1e-5)
    assert out["forget_nll"][-1] < out["forget_nll"][0] - 1.0
    assert out["forget_em"][-1] > out["forget_em"][0]
