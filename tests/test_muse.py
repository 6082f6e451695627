"""The MUSE-style study: ROUGE-L on token ids against rouge_score and a plain LCS, the in-loop
MIA AUC against scikit-learn, VerbMem / KnowMem against a decode by full forward passes, the
tiny run end to end through the CLI (every criterion per request and per size, PrivLeak's
reference), and bad configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score

from jaxcl import cli, config
from jaxcl.models import llama, lm
from jaxcl.studies import muse
from jaxcl.unlearn import attacks
from jaxcl.unlearn import muse as M


def _lcs(a, b):
    dp = np.zeros((len(a) + 1, len(b) + 1), int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1, j + 1] = dp[i, j] + 1 if x == y else max(dp[i, j + 1], dp[i + 1, j])
    return dp[-1, -1]


def test_rouge_l_f1_equals_rouge_score_on_token_ids():
    rng = np.random.default_rng(0)
    N, L, M_ = 64, 12, 9
    cand = rng.integers(0, 5, (N, L))
    ref = rng.integers(0, 5, (N, M_))
    cm = rng.random((N, L)) < 0.8
    rm = rng.random((N, M_)) < 0.8
    rm[0] = False  # an empty reference
    cm[0] = False  # and an empty candidate: 0
    got = np.asarray(M.rouge_l_f1(jnp.asarray(cand), jnp.asarray(ref), jnp.asarray(cm), jnp.asarray(rm)))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    words = lambda ids, m: " ".join(f"t{i}" for i, k in zip(ids, m) if k)  # noqa: E731
    for n in range(N):
        a, b = [i for i, k in zip(cand[n], cm[n]) if k], [i for i, k in zip(ref[n], rm[n]) if k]
        want = scorer.score(words(ref[n], rm[n]), words(cand[n], cm[n]))["rougeL"].fmeasure
        assert got[n] == pytest.approx(want, abs=1e-6), n
        lcs = _lcs(a, b)
        assert got[n] == pytest.approx(2 * lcs / max(len(a) + len(b), 1), abs=1e-6)
    np.testing.assert_array_equal(
        np.asarray(M.lcs_length(jnp.asarray(cand), jnp.asarray(cand))), np.full(N, L)
    )  # a sequence with itself


@pytest.fixture(scope="module")
def small():
    cfg = llama.LlamaConfig(
        vocab_size=23, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=32
    )
    model = lm.language_model(cfg)
    return model, model.init(jax.random.key(3))


def _greedy_by_full_forward(model, params, cue, n_new):
    """Greedy continuation by a whole forward pass per token (no cache): the reference decode."""
    seq = np.asarray(cue)
    for _ in range(n_new):
        nxt = np.asarray(model.apply(params, jnp.asarray(seq))[:, -1].argmax(-1))
        seq = np.concatenate([seq, nxt[:, None]], 1)
    return seq[:, cue.shape[1] :]


def test_verbmem_and_knowmem_score_the_greedy_continuation(small):
    model, params = small
    rng = np.random.default_rng(1)
    rows = rng.integers(1, 23, (5, 14)).astype(np.int32)
    got = np.asarray(M.verbmem(model, params, jnp.asarray(rows), 8, 0))
    gen = _greedy_by_full_forward(model, params, rows[:, :8], 6)
    want = [2 * _lcs(g, r) / 12 for g, r in zip(gen, rows[:, 8:])]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # a knowledge question whose answer is the greedy continuation scores 1; a wrong one 0
    cue = rows[:, :8]
    right = gen[:, :3]
    qa = {
        "cue": jnp.asarray(cue),
        "cue_mask": jnp.ones(cue.shape, bool),
        "answer": jnp.asarray(np.concatenate([right, np.zeros((5, 1), np.int32)], 1)),
        "answer_mask": jnp.asarray(np.arange(4)[None] < 3).repeat(5, 0),
    }
    np.testing.assert_allclose(np.asarray(M.knowmem(model, params, qa, 0)), 1.0)
    wrong = {**qa, "answer": jnp.full((5, 4), 24, jnp.int32)}  # an id the model never emits
    np.testing.assert_allclose(np.asarray(M.knowmem(model, params, wrong, 0)), 0.0)


def test_mia_auc_equals_sklearn_and_the_attacks_module(small):
    model, params = small
    rng = np.random.default_rng(2)
    mem = jnp.asarray(rng.integers(0, 23, (9, 10)), jnp.int32)
    non = jnp.asarray(rng.integers(0, 23, (7, 10)), jnp.int32)
    got = float(M.mia_auc(model, params, mem, non))
    score = lambda t: np.asarray(attacks.min_k_score(model.apply(params, t), t, jnp.ones(t.shape, bool), 0.4))  # noqa: E731
    # members are the positives of "looks like a member": a low Min-K% score
    y = np.r_[np.ones(9), np.zeros(7)]
    assert got == pytest.approx(roc_auc_score(y, -np.r_[score(mem), score(non)]), abs=1e-6)
    full = lambda t: {"tokens": t, "mask": jnp.ones(t.shape, bool)}  # noqa: E731
    assert got == pytest.approx(attacks.mia(model, params, full(mem), full(non))["min_k"], abs=1e-6)


def test_tiny_run_through_the_cli(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["run", "muse", "--tiny", "--no-checkpoint", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    R, S = cfg["data"]["requests"], cfg["seeds"]
    assert list(res["rows"]) == [muse.ROW_TARGET, muse.ROW_RETRAIN, *cfg["methods"]]
    assert (out / "criteria.png").exists()
    for name, row in res["rows"].items():
        for k in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak"):
            assert len(row["per_seed"][k]) == S and np.all(np.isfinite(row["per_seed"][k])), (name, k)
    # PrivLeak is relative to the retrained model of the same seed: 0 for it
    np.testing.assert_allclose(res["rows"][muse.ROW_RETRAIN]["per_seed"]["privleak"], 0.0)
    m = cfg["methods"][0]
    seq = res["extra"]["sequential"][m]
    assert len(seq) == R and all(len(s["verbmem_f"]) == S for s in seq)
    np.testing.assert_allclose(res["rows"][m]["per_seed"]["sust_knowmem_r"], seq[-1]["knowmem_r"])
    # C5's sizes: each of scale and the whole forget set; size 1 is the stream's first request
    assert sorted(res["extra"]["scale"][m], key=int) == [str(s) for s in sorted({*cfg["scale"], R})]
    np.testing.assert_allclose(res["extra"]["scale"][m]["1"]["knowmem_r"], seq[0]["knowmem_r"])
    np.testing.assert_allclose(
        res["extra"]["scale"][m][str(R)]["verbmem_f"], res["rows"][m]["per_seed"]["verbmem_f"]
    )
    # every criterion is traced inside the unlearning loop, every eval_every steps
    trace = res["rows"][m]["trace"]
    steps = res["timing"][m]["steps"]
    for k in ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc", "forget_nll"):
        assert len(trace[k]) == steps // cfg["unlearn"]["eval_every"], k
    assert trace["verbmem_f"][-1] == pytest.approx(np.mean(res["rows"][m]["per_seed"]["verbmem_f"]), abs=1e-6)
    # the central quantities: the target knows the forget facts better than the model retrained
    # without them, and unlearning takes that knowledge away (a difference over seeds must exceed
    # twice its standard error; measured: target - retrain 0.12 (0.03-0.21 per seed), target - npo
    # 0.29)
    know = {n: np.asarray(r["per_seed"]["knowmem_f"]) for n, r in res["rows"].items()}
    for diff in (know[muse.ROW_TARGET] - know[muse.ROW_RETRAIN], know[muse.ROW_TARGET] - know[m]):
        assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(S), diff


def test_forget_folds_partition_the_forget_set():
    cfg = config.resolve(
        config.load("muse", tiny=True), ["data.requests=2", "data.n_forget=5", "data.n_facts=3"]
    )
    from jaxcl.unlearn.muse import build, forget_rows, tokenizer

    data = build(cfg, tokenizer(cfg))
    a, b, both = forget_rows(data, [0]), forget_rows(data, [1]), forget_rows(data, [0, 1])
    assert a["tokens"].shape[0] + b["tokens"].shape[0] == both["tokens"].shape[0] == 5 + 3
    rows = lambda r: {x.tobytes() for x in r["tokens"]}  # noqa: E731
    assert rows(a) | rows(b) == rows(both) and not rows(a) & rows(b)
    held = {x.tobytes() for x in data.probe["holdout"]}
    train = rows(both) | {x.tobytes() for x in data.retain["tokens"]}
    assert not held & train  # no model trains on the holdout


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.corpora=bible:genesis"], "give two corpora"),
        (["data.corpora=bible:genesis,convention:democratz"], "unknown text domain"),
        (["data.prefix_len=112"], "prefix_len=112 must be between 1"),
        (["data.n_forget=1"], "n_forget=1 is smaller than data.requests=2"),
        (["scale=2"], "scale=\\[2\\]: sizes in folds"),
        (["model.lora.rank=4"], "model.lora"),
        (["methods=npo,ssd"], "unknown method 'ssd'"),
    ],
)
def test_bad_configs(sets, match):
    with pytest.raises(config.ConfigError, match=match):
        muse.validate(config.resolve(config.load("muse", tiny=True), sets))
