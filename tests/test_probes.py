"""Memory probes: the fact generator, probe encoding, span / recall / recognition scoring against
numpy and sklearn references on toy models, the power-law fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxcl import probes
from jaxcl.hf import ByteTokenizer
from jaxcl.models import llama


def test_generator_is_deterministic_in_its_seed_and_unique():
    a, b, c = probes.entities(12, 0), probes.entities(12, 0), probes.entities(12, 1)
    assert a == b and a != c
    assert len({e.name for e in a}) == 12 and len({e.city for e in a}) == 12  # cities cue compositions
    assert all(1700 <= e.year < 2000 and e.profession in probes.PROFESSIONS for e in a)
    assert probes.numeric_items(5, 3) == probes.numeric_items(5, 3) != probes.numeric_items(5, 4)
    assert probes.entity_items(4, 0) == probes.entity_items(4, 0)
    assert probes.random_sequences(3, 40, 0) == probes.random_sequences(3, 40, 0)
    assert all(len(s) == 40 for s in probes.random_sequences(3, 40, 0))


def test_probes_mark_the_value_and_memorisation_probes_are_prefixes_of_the_document():
    tok = ByteTokenizer()
    e = probes.entities(1, 5)[0]
    doc, _ = probes.encode_segments(tok, e.document())
    p = probes.encode_probes(tok, e.memorization() + e.paraphrase() + e.composition(), tok.pad_id)
    values = [f" {e.year}", f" {e.city}", f" {e.profession}"] * 2 + [f" {e.year}", f" {e.profession}"]
    for r, v in enumerate(values):
        assert tok.decode(p["tokens"][r][p["target"][r]]) == v
        n = int(p["valid"][r].sum())
        assert not p["valid"][r, n:].any() and (p["tokens"][r, n:] == tok.pad_id).all()
        if r < 3:  # memorisation: the exact text the model was trained on
            assert list(p["tokens"][r, :n]) == doc[:n]
    assert "lives in " + e.city in tok.decode(p["tokens"][7])
    o = probes.entities(2, 6)[1]
    cf = probes.counterfactual(e.memorization()[2], o.memorization()[2])
    assert [t for t, is_t in cf if not is_t] == [t for t, is_t in e.memorization()[2] if not is_t]
    assert [t for t, is_t in cf if is_t] == [f" {o.profession}"]
    with pytest.raises(ValueError, match="1 target segments but the other probe has 3"):
        probes.counterfactual(e.paraphrase()[0], e.document())
    with pytest.raises(ValueError, match="more than the sequence length 10"):
        probes.encode_probes(tok, e.paraphrase(), tok.pad_id, length=10)


def _bigram(V=5):
    # logits of the next token depend only on the current one; row i's argmax is (i + 1) % V
    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, V)).astype(np.float32)
    table[np.arange(V), (np.arange(V) + 1) % V] += 10.0
    return table, lambda params, tokens: params[tokens]


def test_span_scores_equal_a_hand_computed_bigram_model():
    table, apply = _bigram()
    t64 = table.astype(np.float64)
    logp = t64 - np.log(np.exp(t64).sum(-1, keepdims=True))
    tokens = np.array([[0, 1, 2, 4], [3, 4, 0, 0]], np.int32)
    target = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], bool)
    got = jax.jit(lambda p, b: probes.span_scores(apply, p, b))(
        jnp.asarray(table), {"tokens": tokens, "target": target}
    )
    # row 0: targets 2 (after 1: the argmax) and 4 (after 2: argmax is 3); row 1: 4 after 3, 0 after 4
    want_lp = [logp[1, 2] + logp[2, 4], logp[3, 4] + logp[4, 0]]
    np.testing.assert_allclose(got["logp"], want_lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["logp_tok"], np.array(want_lp) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["exact"], [0.0, 1.0])
    np.testing.assert_allclose(got["tok_acc"], [0.5, 1.0])
    nll = probes.sequence_nll(apply, jnp.asarray(table), jnp.asarray(tokens))
    want = -np.array([logp[tokens[r, :-1], tokens[r, 1:]].mean() for r in range(2)])
    np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-6)


def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    f = jax.jit(probes.auc)
    for n in (7, 40):
        s = rng.integers(0, 5, n).astype(np.float32)  # many ties
        y = rng.random(n) < 0.4
        y[0], y[1] = True, False
        np.testing.assert_allclose(f(jnp.asarray(s), jnp.asarray(y)), roc_auc_score(y, s), rtol=1e-6)
    s = rng.normal(size=30).astype(np.float32)
    y = rng.random(30) < 0.5
    np.testing.assert_allclose(f(s, y), roc_auc_score(y, s), rtol=1e-6)
    assert float(f(s, y)) == pytest.approx(1.0 - float(f(-s, y)))
    assert np.isnan(float(f(s, np.ones(30, bool))))


def test_greedy_recall_with_the_kv_cache_equals_step_by_step_argmax():
    cfg = llama.tiny(vocab_size=32, n_layers=1, max_seq_len=64)
    params = llama.init_params(cfg, seed=3)
    params = jax.tree.map(lambda a: a * 8.0 if a.ndim == 2 else a, params)  # peaked logits: no argmax ties
    rng = np.random.default_rng(0)
    cue = rng.integers(0, 32, (3, 6)).astype(np.int32)
    seq = np.concatenate([cue, np.zeros((3, 5), np.int32)], 1)
    fwd = jax.jit(lambda p, t: llama.forward(cfg, p, t))  # causal: the zeros after i do not matter
    for i in range(6, 11):  # no cache: the whole sequence again for every new token
        seq[:, i] = np.asarray(fwd(params, jnp.asarray(seq))[:, i - 1].argmax(-1))
    want = seq[:, 6:]
    target = want.copy()
    target[1, 2] = (target[1, 2] + 1) % 32  # row 1: one of five tokens wrong
    got = jax.jit(lambda p, c, t: probes.greedy_recall(cfg, p, c, t))(params, cue, target)
    np.testing.assert_array_equal(got["generated"], want)
    np.testing.assert_array_equal(got["exact"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(got["tok_acc"], [1.0, 0.8, 1.0])


def test_power_law_fit():
    t = np.arange(1, 50)
    fit = probes.power_law_fit(t, 3.0 * t**-0.4)
    assert (
        fit["alpha"] == pytest.approx(0.4)
        and fit["c"] == pytest.approx(3.0)
        and fit["r2"] == pytest.approx(1)
    )
    noisy = probes.power_law_fit(t, 3.0 * t**-0.4 * np.exp(np.random.default_rng(0).normal(0, 0.3, t.size)))
    assert 0.2 < noisy["alpha"] < 0.6 and 0.1 < noisy["r2"] < 0.99
    y = 3.0 * t**-0.4
    y[::2] = -1.0  # non-positive points are left out
    assert probes.power_law_fit(t, y)["n"] == (y > 0).sum()
    assert np.isnan(probes.power_law_fit([1, 2], [1, 0.5])["alpha"])
