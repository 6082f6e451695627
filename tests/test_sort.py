"""The SORT study: the prompt / pair builder against hand-made books, the answer scoring on a toy
logits function by hand, the training rows drawn in the loop (format books only, the answer
right), the tiny config end to end with a resume, and bad configs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import config, sort_metrics
from jaxcl.data import sort as sort_data
from jaxcl.hf import ByteTokenizer
from jaxcl.studies import get_study, sort

TOK = ByteTokenizer()
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"  # every segment unique


def _books(*texts):
    ids, spans = [], []
    for k, t in enumerate(texts):
        e = TOK.encode(t)
        spans.append((f"book{k}", len(ids), len(ids) + len(e)))
        ids += e + [TOK.eos_id]
    return sort_data.Books(np.asarray(ids, np.int32), spans)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sort") / "out")
    cfg = config.resolve(config.load("sort", tiny=True))
    return cfg, out, get_study(cfg["study"]).run(cfg, out, verbose=False)


# -- the builder ----------------------------------------------------------------------------------


def test_render_puts_the_excerpt_segments_and_answer_in_place():
    book = _books(ALPHABET).tokens
    X, G, T = 16, 3, 40
    lay = sort_data.make_layout(TOK, "symbols", X, G, True, T, TOK.pad_id)
    assert lay.length == 3 + 3 + 3 + 3 + 1 + 16 + 7 + 1 and lay.answer_pos == lay.length - 1
    toks, mask = sort_data.render(np, lay, book, 2, 1, 8)  # excerpt "CDEFGHIJKLMNOPQR"
    assert TOK.decode(toks[: lay.length]) == ">1:DEF\n2:KLM\nCDEFGHIJKLMNOPQR\nfirst:1"
    assert (toks[lay.length :] == TOK.pad_id).all() and mask.sum() == 1 and mask[lay.answer_pos]
    toks, _ = sort_data.render(np, lay, book, 2, 8, 1)  # the later segment shown first: answer 2
    assert TOK.decode(toks[: lay.length]) == ">1:KLM\n2:DEF\nCDEFGHIJKLMNOPQR\nfirst:2"
    lay0 = sort_data.make_layout(TOK, "symbols", X, G, False, T, TOK.pad_id)
    toks, _ = sort_data.render(np, lay0, book, 2, 8, 1)
    assert TOK.decode(toks[: lay0.length]) == ">1:KLM\n2:DEF\nfirst:2"
    # the same function on the device gives the same row
    got, _ = jax.jit(lambda s, a, b: sort_data.render(jnp, lay, jnp.asarray(book), s, a, b))(2, 8, 1)
    np.testing.assert_array_equal(np.asarray(got), sort_data.render(np, lay, book, 2, 8, 1)[0])
    with pytest.raises(config.ConfigError, match="more than the sequence length 30"):
        sort_data.make_layout(TOK, "symbols", X, G, True, 30, TOK.pad_id)
    with pytest.raises(config.ConfigError, match="answer ' A' is 2 tokens"):
        sort_data.make_layout(TOK, "natural", X, G, True, 200, TOK.pad_id)


def test_pairs_are_in_their_bins_inside_one_book_and_in_both_orders():
    books = _books(ALPHABET[:30], ALPHABET[30:])
    X, G, n_bins = 12, 3, 2
    edges = sort_data.distance_edges(X, G, n_bins)
    assert edges.tolist() == [3, 6, 10]  # distances 3..9 in two bins: 3-5, 6-9
    pairs = sort_data.make_pairs(books, 10, X, G, n_bins, seed=0)
    assert [p.bin for p in pairs] == [0, 1] * 5
    for p in pairs:
        assert edges[p.bin] <= p.j - p.i < edges[p.bin + 1] and 0 <= p.i and p.j + G <= X
        name, b, e = next(s for s in books.spans if s[0] == p.book)
        assert b <= p.start and p.start + X <= e  # the excerpt lies inside one book
    lay = sort_data.make_layout(TOK, "symbols", X, G, True, 40, TOK.pad_id)
    items = sort_data.pair_items(books, lay, pairs)
    assert items["tokens"].shape == (20, 40)
    for k, p in enumerate(pairs):
        ex = TOK.decode(books.tokens[p.start : p.start + X])
        first, second = ex[p.i : p.i + G], ex[p.j : p.j + G]
        assert TOK.decode(items["tokens"][2 * k, : lay.length]) == f">1:{first}\n2:{second}\n{ex}\nfirst:1"
        assert (
            TOK.decode(items["tokens"][2 * k + 1, : lay.length]) == f">1:{second}\n2:{first}\n{ex}\nfirst:2"
        )
        assert TOK.decode([items["correct"][2 * k], items["wrong"][2 * k]]) == "12"
        assert TOK.decode([items["correct"][2 * k + 1], items["wrong"][2 * k + 1]]) == "21"
    # a segment that repeats in its excerpt is never a test segment
    with pytest.raises(config.ConfigError, match="unique in their excerpt"):
        sort_data.make_pairs(_books("ab" * 20), 2, X, G, n_bins, seed=0)


# -- scoring --------------------------------------------------------------------------------------


def test_answer_margins_and_pair_accuracy_by_hand():
    V = 6
    table = np.random.default_rng(0).normal(size=(V, V)).astype(np.float32)
    apply = lambda params, toks: params[toks]  # noqa: E731  logits depend on the current token only
    toks = np.array([[1, 2, 3, 0], [4, 5, 1, 0], [2, 2, 2, 2], [3, 1, 0, 0], [5, 4, 3, 2]], np.int32)
    items = {
        "tokens": toks,
        "answer_pos": np.array([3, 2, 1, 3, 2], np.int32),
        "correct": np.array([0, 1, 2, 3, 4], np.int32),
        "wrong": np.array([1, 0, 3, 2, 5], np.int32),
    }
    got = np.asarray(
        sort_metrics.answer_margins(apply, jnp.asarray(table), jax.tree.map(jnp.asarray, items), 2)
    )
    lsm = table - np.log(np.exp(table).sum(-1, keepdims=True))
    want = [
        lsm[toks[n, items["answer_pos"][n] - 1], items["correct"][n]]
        - lsm[toks[n, items["answer_pos"][n] - 1], items["wrong"][n]]
        for n in range(5)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # both orders of a pair: right in both 1, in one 0.5, a tie counts a half
    acc = sort_metrics.pair_accuracy(np.array([[1.0, -1.0, 2.0, 3.0, -1.0, -2.0, 0.0, 1.0]]))
    np.testing.assert_allclose(acc, [[0.5, 1.0, 0.0, 0.75]])
    # paired: the sign of the sum of a pair's two margins (1-1=0: a half; 2+3>0; -1-2<0; 0+1>0)
    np.testing.assert_allclose(
        sort_metrics.paired_accuracy(np.array([[1.0, -1.0, 2.0, 3.0, -1.0, -2.0, 0.0, 1.0]])),
        [[0.5, 1.0, 0.0, 1.0]],
    )
    # a constant answer bias b (+b on one order, -b on the other) leaves it unchanged, while the
    # plain accuracy drops to exactly 0.5 once the bias dominates
    signal = np.random.default_rng(1).normal(size=(40,))
    biased = signal + 50.0 * np.tile([1.0, -1.0], 20)
    np.testing.assert_array_equal(sort_metrics.paired_accuracy(biased), sort_metrics.paired_accuracy(signal))
    np.testing.assert_array_equal(sort_metrics.pair_accuracy(biased), 0.5)


# -- the loop's training rows ----------------------------------------------------------------------


def test_training_rows_come_from_the_format_books_only_and_are_right(tiny):
    cfg, _, res = tiny
    study = res["study"]
    G = cfg["sort"]["segment_len"]
    fmt = TOK.decode(study.books["context_format"].tokens)
    lay = study.layouts[True]
    batch = jax.jit(lambda k: sort_data.draw_rows(study.data["context_format"], lay, k, 64))(
        jax.random.key(3)
    )
    answers = set()
    for row in np.asarray(batch["tokens"]):
        ex = TOK.decode(row[lay.src == 0])
        s1, s2 = TOK.decode(row[lay.src == 1]), TOK.decode(row[lay.src == 2])
        assert len(ex) == cfg["sort"]["excerpt_len"] and ex in fmt  # an excerpt of a format book
        assert len(s1) == len(s2) == G
        i, j = ex.find(s1), ex.find(s2)
        assert i >= 0 and j >= 0
        if ex.count(s1) == 1 and ex.count(s2) == 1:
            assert TOK.decode([row[lay.answer_pos]]) == ("1" if i < j else "2")
            answers.add("1" if i < j else "2")
    assert answers == {"1", "2"}
    # a batch is of one kind; the language-model rows are windows of the parametric books
    b = jax.jit(lambda k: sort_data.draw_windows(study.data["lm"], k, 8, study.T))(jax.random.key(0))
    lm_text = TOK.decode(study.books["lm"].tokens)
    for row in np.asarray(b["tokens"]):
        assert TOK.decode(row) in lm_text
    assert bool(b["mask"].all())


# -- end to end -----------------------------------------------------------------------------------


def test_tiny_end_to_end_writes_results_and_plots(tiny):
    cfg, out, res = tiny
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["schema"] == "jaxcl-results/1" and saved["study"] == "sort"
    assert list(saved["rows"]) == list(sort.CONDITIONS)
    for png in ("accuracy_vs_distance.png", "accuracy_over_training.png"):
        assert png in saved["plots"] and os.path.exists(os.path.join(out, png))
    S, E = cfg["seeds"], cfg["train"]["steps"] // cfg["train"]["eval_every"]
    assert saved["extra"]["eval_steps"] == [0, 2, 4, 6, 8]
    for row in saved["rows"].values():
        for k in ("acc", "acc_bin0", "acc_bin1", "acc_initial", "book_nll"):
            assert len(row["per_seed"][k]) == S
        assert all(0 <= v <= 1 for k in ("acc", "acc_bin0", "acc_bin1") for v in row["per_seed"][k])
        assert len(row["acc_trace_mean"]) == E + 1 and row["n_pairs"] == cfg["sort"]["pairs"]
    tr = res["traces"]
    assert tr["margin"].shape == (S, E + 1, 3 * 2 * cfg["sort"]["pairs"]) and np.isfinite(tr["margin"]).all()
    assert np.isfinite(tr["loss"][:, 1:]).all()
    nll = tr["book_nll"].mean(0)
    assert (nll[-1] < nll[0]).all()  # the text is being learned
    assert saved["rows"]["parametric"]["books"] == list(cfg["books"]["parametric"])


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tiny):
    cfg, out, res = tiny
    ck = os.path.join(out, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
    assert steps[-1] == 2  # two calls of 4 steps
    shutil.rmtree(os.path.join(ck, str(steps[-1])))
    again = sort.train(res["study"], res["keys"], ckpt_dir=ck, resume=True)
    for k in ("margin", "book_nll", "loss"):
        np.testing.assert_array_equal(again["traces"][k], res["traces"][k])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, match",
    [
        (["sort.segment_len=13"], "sort.segment_len=13 is too long for sort.excerpt_len=24"),
        (["sort.conditions=in_context,recall"], "unknown condition 'recall'"),
        (["sort.distance_bins=40"], "sort.distance_bins=40 is more than the 17 possible distances"),
        (["model.name=smollm2-135m"], "tokenizer mismatch"),
        (["sort.prompt=chat"], "sort.prompt='chat' is not valid"),
        (["books.context="], "has 'in_context' but books.context is empty"),
        (["books.context_format="], "trains on books.context_format, which is empty"),
        (["books.control=bible:jdue"], "unknown text domain 'bible:jdue'.*did you mean bible:jude"),
        (["train.steps=7"], "train.steps=7 must be a multiple of train.eval_every=2"),
        (["train.mix=1,1"], "give 3 non-negative probabilities"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    cfg = config.resolve(config.load("sort", tiny=True), sets)
    with pytest.raises(config.ConfigError, match=match):
        sort.validate(cfg)


def test_shared_text_between_roles_and_short_books_are_clear_errors():
    sets = ["books.context=bible:ruth", "books.context_format=bible:history"]
    cfg = config.resolve(config.load("sort", tiny=True), sets)
    sort.validate(cfg)  # Ruth is in bible:history: test text in a format book
    with pytest.raises(config.ConfigError, match="share text"):
        sort_data.book_documents(cfg["books"])
    with pytest.raises(config.ConfigError, match="'b' has 3 tokens, fewer than the 10"):
        sort_data.encode_books(TOK, {"b": ["abc"]}, 10, "control")


def test_a_scratch_model_on_smollm2s_compact_tokenizer():
    cfg = config.resolve(config.load("sort", tiny=True), ["model.tokenizer=smollm2"])
    sort.validate(cfg)
    docs = sort_data.book_documents(cfg["books"])
    tok = sort_data.tokenizer(cfg["model"]["tokenizer"], docs, cfg["sort"]["prompt"])
    assert 100 < tok.vocab_size < 5000  # only the ids of the run's books and prompts
    ruth = " ".join(d.strip() for d in docs["context_format"]["bible:ruth"])
    assert tok.decode(tok.encode(ruth)) == ruth
    s = cfg["sort"]
    T = sort_data.seq_len(tok, s["prompt"], s["excerpt_len"], s["segment_len"])
    lay = sort_data.make_layout(tok, "symbols", 24, 4, True, T, tok.pad_id)
    assert lay.length == T and len(set(lay.answers)) == 2
