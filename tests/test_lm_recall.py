"""The memorisation probe of a pretrained model (study ``lm-recall``, :mod:`jaxcl.data.recall`,
:mod:`jaxcl.studies.lm_recall`): the recall items cut from verses by hand, the controls a
derangement of values, the scores against a numpy log-softmax of the model's logits, the
summary against numpy, and the study's central quantity: a model that memorised the items'
verses recalls their values exactly and prefers them to the control values beyond the items'
interval, where the same model untrained does neither. The tiny run through the CLI; bad input
exits 2 in one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl import cli, probes
from jaxcl.data import recall, text
from jaxcl.models import lm
from jaxcl.studies import lm_recall as S


def test_number_spans_by_hand():
    v = "And Methuselah lived an hundred eighty and seven years, and begat Lamech:"
    assert [v[a:b] for a, b in recall.number_spans(v)] == ["hundred eighty and seven"]
    v = "were forty and six thousand and five hundred. And seven days and twenty and"
    assert [v[a:b] for a, b in recall.number_spans(v)] == ["forty and six thousand and five hundred"]
    assert [v[a:b] for a, b in recall.number_spans(v, min_words=1)] == [
        "forty and six thousand and five hundred",
        "seven",
        "twenty",
    ]


def test_entity_span_skips_stop_words_early_words_and_names_in_the_context():
    v = "And the LORD God said unto Moses, Go unto Pharaoh and speak to Aaron"
    a, b = recall.entity_span(v, "")
    assert v[a:b] == "Moses"
    a, b = recall.entity_span(v, "Moses went up")
    assert v[a:b] == "Pharaoh"  # Moses is in the previous verse: copyable
    assert recall.entity_span("And Adam knew Eve his wife", "") is None  # fewer than 5 words before
    v = "And unto the man he said, Because thou hast hearkened unto Eve"
    a, b = recall.entity_span(v, "")
    assert v[a:b] == "Eve"  # not Because: a capital after punctuation starts a clause


def test_items_and_counterfactual_pairs():
    verses = ["In the beginning.", "And Enos lived ninety and five years and begat Cainan", "Then came Jared"]
    (item,) = recall.items(verses, "numbers")
    assert item == [
        ("In the beginning. And Enos lived", False),
        (" ninety and five", True),
        (" years and begat Cainan", False),
    ]
    found = [[(f"ctx {i}", False), (f" v{i % 3}", True), (".", False)] for i in range(7)]
    cf = recall.pair_counterfactuals(found, seed=1)
    for a, b in zip(found, cf):
        assert b[0] == a[0] and b[2] == a[2] and recall.target(b) != recall.target(a)
        assert recall.target(b) in {recall.target(x) for x in found}
    with pytest.raises(ValueError, match="two different"):
        recall.pair_counterfactuals(found[:1] * 3, 0)


def test_fit_cuts_the_context_from_the_left_only():
    tok = text.tokenizer("byte")
    segs = [("abcdefghij", False), ("XY", True), ("z", False)]
    ids, tgt = S.fit(tok, segs, 6)
    assert bytes(ids).decode() == "hijXYz" and tgt == [False, False, False, True, True, False]
    assert S.fit(tok, segs, 3) is None  # the target would start the probe


def _tiny():
    model, params, tok = lm.load({"name": "tiny", "tokenizer": "byte", "compute_dtype": "float32"})
    return model, params, tok


def _np_logp_tok(model, params, probe):
    z = np.asarray(model.apply(params, jnp.asarray(probe["tokens"][:, :-1])), np.float64)
    z = z - z.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    t, m = probe["tokens"][:, 1:], probe["target"][:, 1:]
    lpt = np.take_along_axis(lp, t[..., None], -1)[..., 0]
    exact = np.all((lp.argmax(-1) == t) | ~m, -1)
    return (lpt * m).sum(-1) / m.sum(-1), exact


def test_scores_and_summary_against_numpy():
    model, params, tok = _tiny()
    items = probes.numeric_items(5, 0)
    true_p, ctrl_p = S.encode(tok, items, recall.pair_counterfactuals(items, 0), 48, 0)
    true = S.score(model.apply, params, true_p, batch_size=2)  # 3 batches, the last padded
    ctrl = S.score(model.apply, params, ctrl_p, batch_size=4)
    for got, p in ((true, true_p), (ctrl, ctrl_p)):
        lp, exact = _np_logp_tok(model, params, p)
        np.testing.assert_allclose(got["logp_tok"], lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["exact"], exact)
    s = S.summary(true, ctrl)
    pref = true["logp_tok"] - ctrl["logp_tok"]
    assert s["n"] == 5 and s["pref"] == pytest.approx(pref.mean())
    assert s["pref_ci"] == pytest.approx(1.96 * pref.std(ddof=1) / np.sqrt(5))
    hand = {"exact": np.array([1.0, 1, 0, 0]), "logp_tok": np.zeros(4), "tok_acc": np.ones(4)}
    s = S.summary(hand, {**hand, "exact": np.array([0.0, 1, 0, 0])})
    assert s["exact"] == 0.5 and s["exact_cf"] == 0.25
    assert s["exact_diff_ci"] == pytest.approx(1.96 * np.std([1, 0, 0, 0], ddof=1) / 2)


def test_a_model_that_memorised_the_verses_recalls_their_values():
    """The central quantity: after 150 Adam steps on the items' own text the tiny model recalls
    most values exactly, never the control values, and prefers the true value by more than the
    items' 95 % interval; untrained it does none of this."""
    model, params0, tok = _tiny()
    verses = [v for b, _, v in text.bible_verses() if b == "Genesis"]
    items = recall.items(verses, "numbers")[:8]
    true_p, ctrl_p = S.encode(tok, items, recall.pair_counterfactuals(items, 0), 160, 0)
    toks = jnp.asarray(true_p["tokens"])
    valid = jnp.asarray(true_p["tokens"] != 0)

    def loss(p):
        lp = jax.nn.log_softmax(model.apply(p, toks[:, :-1]), -1)
        lpt = jnp.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]
        return -(lpt * valid[:, 1:]).sum() / valid[:, 1:].sum()

    opt = optax.adam(3e-3)

    @jax.jit
    def train(p):
        def step(c, _):
            p, s = c
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=150)[0][0]

    before = S.summary(*(S.score(model.apply, params0, p, 8) for p in (true_p, ctrl_p)))
    after = S.summary(*(S.score(model.apply, train(params0), p, 8) for p in (true_p, ctrl_p)))
    assert before["exact"] == 0 and abs(before["pref"]) < 0.5
    assert after["exact"] >= 0.75 and after["exact_cf"] == 0, after
    assert after["pref"] > 1.0 and after["pref"] - after["pref_ci"] > 0, after


def test_tiny_run_through_the_cli(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["run", "lm-recall", "--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"]) == [
        "numbers (bible:genesis)",
        "numbers (fictional)",
        "entities (bible:genesis)",
        "entities (fictional)",
    ]
    row = res["rows"]["numbers (bible:genesis)"]["summary"]
    assert row["n"]["mean"] == 12 and 0 <= row["exact"]["mean"] <= 1
    assert (out / "recall.png").stat().st_size > 0
    for bad, key in (
        ("data.kinds=dates", "data.kinds"),
        ("data.source=zen", "zen"),
        ("data.n_items=1", "n_items"),
    ):
        capsys.readouterr()
        assert cli.main(["run", "lm-recall", "--tiny", "--set", bad, "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], err
