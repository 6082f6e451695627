"""TOFU's probability, truth ratio and forget quality (jaxcl.tofu.metrics) against an independent
numpy reference written from the definitions (Maini et al., "TOFU: A Task of Fictitious Unlearning
for LLMs", 2024), on hand-made per-token log-probabilities.

For a question q and answer a with token log-probs l_1..l_|a|, the normalised probability is
P(a|q)^(1/|a|) = exp(mean_t l_t). With a paraphrased answer a~ and perturbed answers a^_1..a^_K:

- probability: mean over questions of P(a|q)^(1/|a|) on forget / retain; on real authors / world
  facts P(a|q)^(1/|a|) / (P(a|q)^(1/|a|) + sum_k P(a^_k|q)^(1/|a^_k|));
- truth ratio R = (geometric mean over k of P(a^_k|q)^(1/|a^_k|)) / P(a~|q)^(1/|a~|), as the module
  docstring states and TOFU's and open-unlearning's code compute it (the mean of the normalised
  NLLs); real authors / world facts use a itself for a~; reported as mean min(R, 1/R) on the
  forget set and mean max(0, 1 - R) elsewhere;
- forget quality: the two-sample KS test's p-value between two sets of forget-set truth ratios.
"""

import itertools

import numpy as np
import pytest
import scipy.stats

from jaxcl.tofu import metrics as tm

N_PERT = 3


def make_rows(n=6, seed=0):
    """Rows with answers of 1-8 tokens and one token log-prob vector per (question, answer); the
    perturbed answers are the likelier ones on even rows (R > 1), the unlikelier ones on odd rows."""
    rng = np.random.default_rng(seed)
    rows, logp = [], {}
    for i in range(n):
        q = f"question {i}?"
        answers = {"answer": f"true {i}", "paraphrased_answer": f"para {i}"}
        answers["perturbed_answer"] = [f"wrong {i}.{k}" for k in range(N_PERT)]
        rows.append({"question": q, **answers})
        likely, unlikely = (-1.5, -0.05), (-4.0, -1.0)
        for a in [answers["answer"], answers["paraphrased_answer"], *answers["perturbed_answer"]]:
            lo, hi = likely if (a.startswith("wrong") == (i % 2 == 0)) else unlikely
            logp[(q, a)] = rng.uniform(lo, hi, int(rng.integers(1, 9)))  # the answer's token log-probs
    return rows, logp


def norm_prob(logp, q, a):
    """P(a|q)^(1/|a|) from the product of token probabilities (not from a mean of logs)."""
    lp = logp[(q, a)]
    return float(np.prod(np.exp(lp)) ** (1.0 / len(lp)))


def reference(rows, logp, kind):
    probs, ratios = [], []
    for r in rows:
        q = r["question"]
        p_true = norm_prob(logp, q, r["answer"])
        p_pert = np.array([norm_prob(logp, q, a) for a in r["perturbed_answer"][:N_PERT]])
        if kind in ("forget", "retain"):
            probs.append(p_true)
            p_para = norm_prob(logp, q, r["paraphrased_answer"])
        else:
            probs.append(p_true / (p_true + p_pert.sum()))
            p_para = p_true
        ratios.append(np.prod(p_pert) ** (1.0 / len(p_pert)) / p_para)
    ratios = np.array(ratios)
    stat = np.minimum(ratios, 1 / ratios) if kind == "forget" else np.maximum(0.0, 1 - ratios)
    return float(np.mean(probs)), float(np.mean(stat)), ratios


@pytest.fixture
def fake_model(monkeypatch):
    """eval_set with the model replaced by the hand-made log-probs (and greedy answers = gold)."""
    rows, logp = make_rows()

    def qa_nll(cfg, params, tokenizer, qs, answers, max_len, bs):
        return np.array([-np.mean(logp[(q, a)]) for q, a in zip(qs, answers)])

    monkeypatch.setattr(tm, "_qa_nll", qa_nll)
    monkeypatch.setattr(
        tm, "greedy_answers", lambda cfg, params, tok, qs, **kw: [f"true {i}" for i in range(len(qs))]
    )
    return rows, logp


@pytest.mark.parametrize("kind", ["forget", "retain", "real_authors", "world_facts"])
def test_probability_and_truth_ratio_match_the_definitions(fake_model, kind):
    rows, logp = fake_model
    got = tm.eval_set(None, None, None, rows, kind, max_len=0, batch_size=0, max_new_tokens=0, prompt_len=0)
    prob, tr, ratios = reference(rows, logp, kind)
    np.testing.assert_allclose(got["truth_ratios"], ratios, rtol=1e-10)
    np.testing.assert_allclose(got["prob"], prob, rtol=1e-10)
    np.testing.assert_allclose(got["truth_ratio"], tr, rtol=1e-10)
    assert got["rouge"] == 1.0


def test_the_reference_separates_the_forms():
    """The hand-made data tell the forms apart (a test on them can fail): R is not symmetric around 1,
    the forget form differs from the retain form, the length normalisation matters and the geometric
    mean over perturbed answers differs from the arithmetic one in the paper's formula."""
    rows, logp = make_rows()
    _, tr_forget, ratios = reference(rows, logp, "forget")
    _, tr_retain, _ = reference(rows, logp, "retain")
    assert np.any(ratios > 1) and np.any(ratios < 1)
    assert abs(tr_forget - tr_retain) > 0.05
    long = [k for k, lp in logp.items() if len(lp) > 2]
    assert all(abs(np.exp(logp[k].sum()) - norm_prob(logp, *k)) > 1e-3 for k in long)
    r = rows[0]
    p_pert = np.array([norm_prob(logp, r["question"], x) for x in r["perturbed_answer"]])
    assert abs(p_pert.mean() - np.prod(p_pert) ** (1 / N_PERT)) > 1e-4


def ks_exact_pvalue(x, y):
    """The exact two-sided two-sample KS p-value by enumerating every split of the pooled sample
    (no ties): the share of splits whose statistic is at least the observed one."""

    def stat(a, b):
        grid = np.concatenate([a, b])
        cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)
        return np.max(np.abs(cdf(a) - cdf(b)))

    pooled, n = np.concatenate([x, y]), len(x)
    d_obs = stat(x, y)
    ds = []
    for idx in itertools.combinations(range(len(pooled)), n):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        ds.append(stat(pooled[mask], pooled[~mask]))
    return d_obs, float(np.mean(np.array(ds) >= d_obs - 1e-12))


@pytest.mark.parametrize("shift", [0.0, 0.4, 1.5])
def test_forget_quality_is_the_ks_p_value(shift):
    rng = np.random.default_rng(7)
    x = rng.uniform(0.2, 1.2, 6)
    y = rng.uniform(0.2, 1.2, 7) + shift
    d, p = ks_exact_pvalue(x, y)
    ref = scipy.stats.ks_2samp(x, y)
    np.testing.assert_allclose(ref.statistic, d)
    np.testing.assert_allclose(tm.forget_quality(x, y), p, rtol=1e-9)
    np.testing.assert_allclose(tm.forget_quality(x, y), ref.pvalue, rtol=1e-12)
    if shift == 1.5:  # disjoint samples: the smallest p-value there is, 2 / C(13, 6)
        np.testing.assert_allclose(tm.forget_quality(x, y), 2 / 1716, rtol=1e-9)


def test_evaluation_chunks_pad_a_few_rows_to_a_power_of_two_not_a_whole_batch():
    """``chunk_rows``: a set of n rows is scored in chunks of min(batch, 2^ceil(log2 n)) rows, and
    the per-row NLL does not depend on the chunking (padding rows are dropped)."""
    from jaxcl.models import llama

    assert [tm.chunk_rows(n, 32) for n in (1, 2, 3, 4, 5, 8, 9, 31, 32, 33, 200)] == [
        1, 2, 4, 4, 8, 8, 16, 32, 32, 32, 32
    ]  # fmt: skip
    cfg = llama.LlamaConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    params = llama.init_params(cfg, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, (5, 12)).astype(np.int32)
    mask = rng.random((5, 12)) < 0.6
    one_by_one = np.concatenate(
        [tm.avg_nll(cfg, params, tokens[i : i + 1], mask[i : i + 1], 1) for i in range(5)]
    )
    np.testing.assert_allclose(tm.avg_nll(cfg, params, tokens, mask, 32), one_by_one, rtol=1e-5)
    np.testing.assert_allclose(tm.avg_nll(cfg, params, tokens, mask, 2), one_by_one, rtol=1e-5)


def test_refusals_are_tofus_refusal_sentences_and_no_gold_answer():
    """SafeEraser's refusal measure here (a keyword stand-in for its judge): every refusal
    sentence of TOFU's idontknow.txt, as a model would emit it (other case, curly apostrophes,
    no final period, followed by more text), is a refusal; none of TOFU's 4000 gold answers nor
    the evaluation sets' answers is; the rate is the hand count."""
    from jaxcl.tofu import data as tdata

    if tdata.data_dir() is None:
        pytest.skip("TOFU jsonl folder not found (set JAXCL_TOFU_DIR)")
    idk = tdata.idk_answers()
    assert len(idk) == 100
    for s in idk:
        variant = s.upper().replace("'", "\u2019").rstrip(".") + " about that author, sadly."
        assert tm.is_refusal(variant, idk), s
    # the markers alone (no sentence list) catch only some of TOFU's varied refusals
    assert 0 < tm.refusal_rate(idk) < 0.5
    for split in ("full", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        answers = [r["answer"] for r in tdata.load_split(split)]
        assert tm.refusal_rate(answers, idk) == 0.0, split
    answers = ["Paris.", "I'm not sure.", "She wrote novels.", idk[7], "i don't know"]
    assert tm.refusal_rate(answers, idk) == pytest.approx(3 / 5)
    assert tm.refusal_rate([], idk) == 0.0


def test_sarr_pools_the_harmless_sets_answers(monkeypatch):
    """The evaluator's SARR is the refusal fraction over the retain, real-author and world-fact
    answers pooled (not a mean of the three rates), the forget set apart."""
    from jaxcl.tofu.eval import Evaluator, scores

    gens = {
        "forget": ["I don't know.", "x"],
        "retain": ["a", "b", "c", "I'm not sure."],  # 1 / 4
        "real_authors": ["I don't know."],  # 1 / 1
        "world_facts": ["a", "b", "c"],  # 0 / 3
    }

    def evaluate(cfg, params, tok, sets, **kw):
        res = {k: {"generations": gens[k], "prob": 0.5, "rouge": 0.5, "truth_ratio": 0.5} for k in sets}
        return {**res, "model_utility": 0.5}

    monkeypatch.setattr(tm, "evaluate", evaluate)
    ev = Evaluator(None, None, {k: [] for k in gens}, 8, 1, 1, 1)
    res = ev.metrics(None)
    assert res["retain"]["refusal"] == 0.25 and res["forget"]["refusal"] == 0.5
    assert res["sarr"] == pytest.approx(2 / 8)  # a mean of the three rates would be 5 / 12
    res["forget_quality"] = 1.0
    s = scores(res)
    assert s["sarr"] == pytest.approx(0.25) and s["forget_refusal"] == 0.5
