"""Each study's central quantity, on a run small enough for the suite: RESTOR's corruption lowers
the preference for the true facts and unlearning raises it again; lm-memory's injected facts gain
log-probability over never-seen ones; SORT's in-loop scorer gives an oracle 100 %, a reversed one
0 % and a constant one 50 %.

The tiny configs are too small for these effects, so each run raises its training (``--set``
overrides below); seeds are vmapped, so 8 of them cost little. A difference over seeds must exceed
twice its standard error; the numbers measured when this file was written are in the comments
(unoptimised XLA, as the suite runs)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import config
from jaxcl import sort_metrics as SM
from jaxcl.loops import seeds_keys
from jaxcl.studies import get_study, sort


def _run(name, sets, tmp_path):
    cfg = config.resolve(config.load(name, tiny=True), sets)
    return cfg, get_study(cfg["study"]).run(cfg, str(tmp_path / "out"), verbose=False)


def _clears_noise(diff):
    """The mean of the per-seed differences is more than twice its standard error."""
    d = np.asarray(diff, float)
    se = d.std(ddof=1) / np.sqrt(len(d))
    return d.mean() > 2 * se, (d.mean(), se, d)


# -- RESTOR ---------------------------------------------------------------------------------------


def test_restor_corruption_lowers_and_unlearning_raises_the_true_preference(tmp_path):
    # the tiny config learns the facts barely (4 steps; clean - corrupted pref ~0.01): 8x the
    # fact documents, 3 epochs, and a longer, stronger gradient ascent
    sets = ["seeds=8", "methods=ga", "clean.repeats=32", "corrupt.repeats=32", "train.epochs=3"]
    sets += ["unlearn.epochs=12", "ga.lr=3e-3"]
    _, res = _run("restor", sets, tmp_path)
    pref = {n: np.asarray(r["per_seed"]["pref"]) for n, r in res["rows"].items()}
    # measured: clean 0.209 (0.19-0.24), corrupted 0.006 (-0.06-0.04): clean - corrupted 0.20,
    # SE 0.010, > 0 in every seed
    ok, got = _clears_noise(pref["clean"] - pref["corrupted"])
    assert ok and (got[2] > 0).all(), got
    # measured: ga 0.094, ga - corrupted 0.088, SE 0.023 (3.8 SE; per seed 0.003-0.19)
    ok, got = _clears_noise(pref["ga"] - pref["corrupted"])
    assert ok, got
    # recovery = (ga - corrupted) / (clean - corrupted): measured 0.43 ± 0.34 (SE 0.12)
    ok, got = _clears_noise(res["rows"]["ga"]["per_seed"]["recovery"])
    assert ok, got


# -- lm-memory ------------------------------------------------------------------------------------


def test_lm_facts_injected_facts_gain_over_never_seen_ones(tmp_path):
    # facts.per_condition=3: with the tiny config's one fact per condition, the never-seen fact's
    # counterfactual value is its own, so its gain is 0 by construction; 3 facts per condition
    # need 4 injected rows per step (so batches of 8) and a higher learning rate for a clear gain
    sets = ["seeds=8", "facts.per_condition=3", "train.batch_size=8", "inject.per_step=4", "finetune.lr=1e-2"]
    cfg, res = _run("lm-facts", sets, tmp_path)
    assert max(cfg["facts"]["exposures"]) == 2
    rows = res["rows"]
    # measured (mean over seeds; x2 - never seen, smallest seed):
    #   gain_after  memorization 0.063 - (-0.002): diff 0.065, SE 0.006, min 0.050
    #   gain_final  memorization 0.222 - (-0.001): diff 0.223, SE 0.013, min 0.165
    #               paraphrase   0.224 - 0.007:    diff 0.217, SE 0.017, min 0.117
    #               composition  0.187 - (-0.005): diff 0.192, SE 0.005, min 0.176
    for col, probes in (
        ("gain_after", ("memorization",)),
        ("gain_final", ("memorization", "paraphrase", "composition")),
    ):
        for probe in probes:
            x2 = np.asarray(rows[f"facts x2 / {probe}"]["per_seed"][col])
            never = np.asarray(rows[f"facts never seen / {probe}"]["per_seed"][col])
            assert (x2 > never).all(), (col, probe, x2, never)  # per seed
            ok, got = _clears_noise(x2 - never)
            assert ok, (col, probe, got)


# -- SORT -----------------------------------------------------------------------------------------
# A trained positive control is out of reach at the suite's cost: the README's default run stays at
# exactly 50 %, and 400 steps of in-context SORT only, with 8-token excerpts, 2-token segments, a
# 2-layer model and lr 1e-2 (4 seeds, ~40 s) also stay at 50.0 % in every seed (answer loss 0.70,
# ln 2 = 0.69). So the scorer gets its controls from hand-built answer logits instead.


def _oracle(lay, tokens, vocab_size):
    """(B, L, V) logits +1 on the right answer, -1 on the other, read from an in-context prompt
    alone: where each shown segment occurs in the excerpt. 0 where a segment is not found (a
    prompt without the excerpt)."""
    src = lay.src[: tokens.shape[1]]
    ex = tokens[:, np.flatnonzero(src == 0)]
    s1, s2 = tokens[:, np.flatnonzero(src == 1)], tokens[:, np.flatnonzero(src == 2)]
    X, G = ex.shape[1], s1.shape[1]
    win = ex[:, np.arange(X - G + 1)[:, None] + np.arange(G)]  # (B, W, G) every G-window
    hit1, hit2 = (win == s1[:, None]).all(-1), (win == s2[:, None]).all(-1)
    first = jnp.sign(jnp.argmax(hit2, -1) - jnp.argmax(hit1, -1))  # +1: the first shown came first
    first = jnp.where(hit1.any(-1) & hit2.any(-1), first, 0)
    a1, a2 = lay.answers
    logits = first[:, None, None] * jnp.zeros(vocab_size).at[a1].set(1.0).at[a2].set(-1.0)
    return jnp.broadcast_to(logits, (*tokens.shape, vocab_size))


def _const(lay, vocab_size):
    return jnp.zeros(vocab_size).at[lay.answers[0]].set(1.0)  # always "the first shown came first"


def test_sort_scorer_controls_oracle_reversed_constant(tmp_path):
    cfg = config.resolve(config.load("sort", tiny=True), ["train.checkpoint=false"])
    study = sort.Study(cfg)
    lay, V = study.layouts[True], study.model.cfg.vocab_size

    # the scorer alone (sort_metrics.evaluate, which Study.evaluate calls) on logits that are only
    # w["o"] x the oracle + w["c"] x a constant preference
    def margins(w):
        apply = lambda p, t: p["o"] * _oracle(lay, t, V) + p["c"] * _const(lay, V)  # noqa: E731
        return SM.evaluate(apply, w, study.data, cfg["train"]["eval_chunk"])

    score = jax.jit(margins)
    want = {  # in_context accuracy, paired accuracy
        "oracle": ((1.0, 0.0), 1.0, 1.0),
        "reversed": ((-1.0, 0.0), 0.0, 0.0),
        "constant": ((0.0, 1.0), 0.5, 0.5),  # both orders: once right, once wrong; cancels when paired
        "ties": ((0.0, 0.0), 0.5, 0.5),
    }
    for name, ((o, c), acc, paired) in want.items():
        ev = jax.tree.map(np.asarray, score({"o": jnp.float32(o), "c": jnp.float32(c)}))
        traces = {k: v[None, None] for k, v in ev.items()}  # one seed, one evaluation
        met = SM.condition_metrics(traces, study.rows, study.pairs, cfg["sort"]["distance_bins"])
        assert met["in_context"]["acc"][0, 0] == acc and met["in_context"]["paired"][0, 0] == paired, name
        np.testing.assert_array_equal(met["in_context"]["acc_bins"][0, 0], acc)
        for cond in ("parametric", "control"):  # no excerpt: the oracle sees nothing, a tie
            assert met[cond]["acc"][0, 0] == 0.5 and met[cond]["paired"][0, 0] == 0.5, (name, cond)

    # through the loop: the model's logits plus 100 x the oracle, trained and scored by sort.train
    # (the runner's in-loop evaluation) for every seed and evaluation
    model = study.model
    study.model = model._replace(apply=lambda p, t: model.apply(p, t) + 100.0 * _oracle(lay, t, V))
    tr = sort.train(study, seeds_keys(cfg["seed"], cfg["seeds"]))["traces"]
    met = SM.condition_metrics(tr, study.rows, study.pairs, cfg["sort"]["distance_bins"])
    assert tr["margin"].shape[:2] == (cfg["seeds"], 1 + cfg["train"]["steps"] // cfg["train"]["eval_every"])
    np.testing.assert_array_equal(met["in_context"]["acc"], 1.0)
    np.testing.assert_array_equal(met["in_context"]["paired"], 1.0)
