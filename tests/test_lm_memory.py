"""The lm-memory study (facts, few-shot memories, numeric / entity probes): both configs tiny end
to end, the injection schedule and the injected batches, the host metrics against hand-built
traces, resuming from a checkpoint, and bad configs."""

import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import config, retention
from jaxcl.data import injection
from jaxcl.hf import ByteTokenizer
from jaxcl.studies import get_study, lm_memory


@pytest.fixture(scope="module")
def facts_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lm_facts") / "out")
    cfg = config.resolve(config.load("lm-facts", tiny=True))
    return cfg, out, get_study(cfg["study"]).run(cfg, out, verbose=False)


def test_facts_tiny_writes_one_row_per_condition_and_probe(facts_run):
    cfg, out, res = facts_run
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["schema"] == "jaxcl-results/1" and saved["study"] == "lm-memory"
    assert "retention.png" in saved["plots"] and os.path.exists(os.path.join(out, "retention.png"))
    want = [f"facts {c} / {p}" for c in ("x1", "x2", "never seen") for p in injection.FACT_PROBES]
    want += ["numbers seen", "numbers unseen", "entities seen", "entities unseen"]
    assert list(saved["rows"]) == want
    S, E = cfg["seeds"], cfg["train"]["steps"] // cfg["train"]["eval_every"]
    for name, row in saved["rows"].items():
        for k in ("exact_after", "exact_final", "gain_after", "gain_final", "alpha", "r2"):
            assert len(row["per_seed"][k]) == S, (name, k)
        assert all(0 <= v <= 1 for v in row["per_seed"]["exact_final"])
        assert len(row["curves_mean"]["gain"]) == E
    # exposures: x2 at steps 3 and 5 (spacing 2, last step 5), x1 at step 5 or pushed to 4
    rows = saved["rows"]
    assert rows["facts x2 / memorization"]["exposure_steps"] == [[3, 5]]
    # 4 items want step 5 but 2 fit a step: the numbers' and entities' exposures move earlier
    assert rows["numbers seen"]["exposure_steps"] == [[3, 4]]
    assert rows["entities seen"]["exposure_steps"] == [[2, 4]]
    assert rows["facts never seen / paraphrase"]["exposure_steps"] == []
    # the traces: the initial evaluation first, the evaluated metrics per chunk, finite
    tr = res["traces"]
    assert tr["facts_memorization_logp"].shape == (S, E, 3 * 3)  # 3 entities x 3 attributes
    assert tr["facts_memorization_cf_logp"].shape == (S, E, 3 * 3)  # paired never-seen values
    assert np.isfinite(tr["facts_memorization_logp"]).all() and np.isfinite(tr["loss"]).all()
    assert (np.diff(tr["domain_nll"].mean((0, 2))) < 0).sum() >= E // 2  # the stream is being learned


def test_injected_rows_replace_the_first_rows_at_their_steps(facts_run):
    cfg, _, res = facts_run
    study = res["study"]
    # the study's injection around a step that returns the batch it is given
    step = injection.with_injection(lambda s, b: (s, b), study.data["bank"], study.data["table"], study.mesh)
    table = np.asarray(study.data["table"])
    bank = np.asarray(study.data["bank"]["tokens"])
    batch = study.draw(study.data, jax.random.key(0))
    drawn = np.asarray(batch["tokens"])
    J, seen = table.shape[1], []
    every = jax.jit(jax.vmap(lambda s: step(types.SimpleNamespace(step=s), batch)[1]["tokens"]))
    for s, got in enumerate(np.asarray(every(jnp.arange(cfg["train"]["steps"])))):
        for j, r in enumerate(table[s]):
            np.testing.assert_array_equal(got[j], bank[r] if r >= 0 else drawn[j])
            seen += [r] if r >= 0 else []
        np.testing.assert_array_equal(got[J:], drawn[J:])
    for c in study.conds:  # every injected item appears as often as its exposures
        for r in c.rows:
            assert seen.count(r) == c.exposures


def test_resume_after_an_interruption_equals_the_uninterrupted_run(facts_run):
    cfg, out, res = facts_run
    ck = os.path.join(out, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
    assert steps[-1] == 2  # two calls of 6 steps
    shutil.rmtree(os.path.join(ck, str(steps[-1])))
    again = lm_memory.train(res["study"], res["keys"], ckpt_dir=ck, resume=True)
    for k in ("facts_composition_logp", "numeric_numbers_exact", "loss"):
        np.testing.assert_array_equal(again["traces"][k], res["traces"][k])


def test_fewshot_tiny_end_to_end(tmp_path):
    cfg = config.resolve(config.load("lm-fewshot", tiny=True), ["train.checkpoint=false"])
    res = lm_memory.run(cfg, str(tmp_path / "out"), verbose=False)
    rows = res["rows"]
    assert list(rows) == ["memories x1", "memories x2", "memories novel"]
    for name in ("memories x1", "memories x2"):
        for k in ("auc_after", "auc_final"):
            assert all(0 <= v <= 1 for v in rows[name]["per_seed"][k])
        assert all(0 <= v <= 1 for v in rows[name]["per_seed"]["recall_tok_final"])
    tr = res["traces"]
    S, E = cfg["seeds"], cfg["train"]["steps"] // cfg["train"]["eval_every"]
    assert tr["fewshot_auc"].shape == (S, E, 2) and tr["fewshot_recall_tok"].shape == (S, E, 6)


def test_metrics_against_hand_built_traces():
    """A condition whose log-probability beats its control by 2 * t^-0.5 after its last exposure:
    the power-law fit recovers alpha = 0.5 with R^2 = 1, gains are relative to the control."""
    cfg = {"train": {"eval_every": 10, "steps": 100}, "inject": {"last_step": 29}}
    c = injection.Condition("facts x2", "facts", 2, [0], {"facts_memorization": [0]}, steps=[[19, 29]])
    ctrl = injection.Condition("facts never seen", "facts", 0, [], {"facts_memorization": [1]})
    t = (np.arange(10) + 1) * 10 - 29  # steps since the last exposure at the evaluations (after 10, 20, ...)
    excess = np.where(t > 0, 2.0 * np.maximum(t, 1) ** -0.5, 0.0)
    generic = -3.0 + 0.1 * np.arange(10)  # what both learn
    lp = np.stack([generic + excess, generic], -1)[None]  # (1 seed, 10 evaluations, 2 probes)
    traces = {"facts_memorization_logp": lp, "facts_memorization_exact": (lp > -2.5).astype(float)}
    got, idx = retention.condition_metrics(cfg, c, [c, ctrl], traces)
    assert idx == {"baseline_index": 0, "after_index": 2, "last_exposure": 29}
    per, cur = got["facts x2 / memorization"]
    assert per["alpha"][0] == pytest.approx(0.5) and per["r2"][0] == pytest.approx(1.0)
    assert per["gain_after"][0] == pytest.approx(2.0) == per["gain_peak"][0]  # t = 1
    assert per["gain_final"][0] == pytest.approx(2.0 * 71**-0.5)
    np.testing.assert_allclose(cur["gain"][0], excess)
    got, _ = retention.condition_metrics(cfg, ctrl, [c, ctrl], traces)
    per, _ = got["facts never seen / memorization"]
    assert per["gain_final"][0] == pytest.approx(generic[-1] - generic[0])  # its own change
    # a peak after the first evaluation (Adam's momentum): retention and the fit start there
    late = lp.copy()
    late[0, 2, 0] -= 1.5  # the first evaluation after the exposure is lower than the next
    per, _ = retention.condition_metrics(cfg, c, [c, ctrl], {**traces, "facts_memorization_logp": late})[0][
        "facts x2 / memorization"
    ]
    assert per["gain_peak"][0] == pytest.approx(2.0 * 11**-0.5)
    assert per["alpha"][0] == pytest.approx(0.5) and per["r2"][0] == pytest.approx(1.0)
    assert per["retained"][0] == pytest.approx((71 / 11) ** -0.5)


def test_schedule_caps_rows_per_step_and_moves_exposures_earlier():
    cfg = {"train": {"steps": 20, "eval_every": 2}, "inject": {"last_step": 10, "spacing": 3, "per_step": 2}}
    a = injection.Condition("a", "facts", 3, [0, 1, 2], {})
    b = injection.Condition("b", "facts", 1, [3], {})
    table = injection.schedule(cfg, [a, b])
    assert table.shape == (20, 2)
    counts = {r: int((table == r).sum()) for r in range(4)}
    assert counts == {0: 3, 1: 3, 2: 3, 3: 1}
    assert (table[11:] == -1).all()  # nothing after the last step
    assert a.steps[0] == [4, 7, 10] and b.steps == [[9]]  # step 10 full: b moved to 9
    assert a.steps[2] == [3, 6, 9] or a.steps[2][-1] < 10
    with pytest.raises(config.ConfigError, match="does not fit"):
        injection.schedule({**cfg, "inject": {"last_step": 1, "spacing": 1, "per_step": 1}}, [a, b])


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.domains=bible:lawz"], "unknown text domain 'bible:lawz'.*did you mean bible:law"),
        (["inject.last_step=12"], "inject.last_step=12 is beyond the run"),
        (["inject.spacing=6"], "starts at step -1, before the first evaluation"),
        (["methods=er"], "unknown method 'er' for a lm-memory study; valid: finetune, or a chain"),
        (["fewshot.per_condition=2", "fewshot.source=bible:ruth"], "is a training domain"),
        (["train.checkpoint_every=5"], "checkpoint_every=5 must be 0"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    with pytest.raises(config.ConfigError, match=match):  # refused when resolved or validated
        lm_memory.validate(config.resolve(config.load("lm-facts", tiny=True), sets))


def test_a_probe_longer_than_the_sequence_is_a_clear_error():
    cfg = config.resolve(config.load("lm-facts", tiny=True), ["data.seq_len=64"])
    lm_memory.validate(cfg)
    with pytest.raises(config.ConfigError, match="more than the sequence length data.seq_len=64"):
        injection.build_items(cfg, ByteTokenizer())
    cfg = config.resolve(config.load("lm-fewshot", tiny=True), ["fewshot.length=40"])
    with pytest.raises(config.ConfigError, match="fewshot.length=40 is longer than the sequence length"):
        lm_memory.validate(cfg)


@pytest.mark.parametrize("sets", [[], ["facts.per_condition=2", "numeric.per_kind=2"]])
def test_no_probe_is_its_own_counterfactual(sets):
    """Every probe's counterfactual differs from it in its target tokens, one item per condition
    included (the tiny config: the never-seen control had no other control entity to borrow a
    value from, so its gain was 0 by construction)."""
    from jaxcl.data import injection, text

    cfg = config.resolve(config.load("lm-facts", tiny=True), sets)
    data, _, _ = injection.build_items(cfg, text.tokenizer("byte"), check_schedule=False)
    spans, off = data["probes"]["spans"], data["span_offsets"]
    keys = [k for k in off if f"{k}_cf" in off]
    assert {k.split("_")[0] for k in keys} == {"facts", "numeric"}
    for k in keys:
        (a0, a1), (b0, b1) = off[k], off[f"{k}_cf"]
        for i, j in zip(range(a0, a1), range(b0, b1)):
            t_true = spans["tokens"][i][spans["target"][i].astype(bool)]
            t_cf = spans["tokens"][j][spans["target"][j].astype(bool)]
            assert t_true.tolist() != t_cf.tolist(), f"{k} row {i - a0} is its own counterfactual"


def test_bf16_run_stays_within_tolerance_of_float32(facts_run):
    """``model.compute_dtype=bfloat16`` (bf16 matmuls on float32 master weights) at tiny size:
    every evaluation's held-out NLL of every seed within 0.01 nats/token of the float32 run
    (measured 1.0e-3; the seeds' spread of the final NLL is 0.016), and not identical to it (it
    did run in bf16)."""
    cfg, _, res = facts_run
    bf = lm_memory.run(
        config.resolve(
            config.load("lm-facts", tiny=True), ["model.compute_dtype=bfloat16", "train.checkpoint=false"]
        ),
        None,
        verbose=False,
    )
    a, b = (np.asarray(r["traces"]["domain_nll"]) for r in (res, bf))
    assert a.shape == b.shape and np.all(np.isfinite(b)) and not np.array_equal(a, b)
    assert np.abs(a - b).max() <= 0.01, np.abs(a - b).max()
    assert bf["extra"]["domain_nll_final"] == b[:, -1].tolist()  # the summary's per-seed values


def test_committed_bf16_lm_facts_is_within_tolerance_of_float32():
    """The README's claim on results/studies/lm-facts-bf16.json against the float32 run with the
    same seeds (results/studies/lm-facts-16seeds.json): the final held-out NLL within 0.1
    nats/token of float32's, decided (the paired 95 % interval of bf16 - float32 inside +-0.1;
    measured +0.026, -0.003 to +0.055), and every condition's mean Δlogp (peak, end) within the
    larger of the two runs' seed std of float32's."""
    from jaxcl.results import interval

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    f32, bf16 = (
        json.load(open(os.path.join(root, "results", "studies", f"lm-facts-{s}.json")))
        for s in ("16seeds", "bf16")
    )
    assert bf16["command"].endswith("--set model.compute_dtype=bfloat16") and bf16["seeds"] == f32["seeds"]
    assert "compute_dtype" not in f32["command"] and list(bf16["rows"]) == list(f32["rows"])
    a, b = (np.asarray(s["extra"]["domain_nll_final"]) for s in (f32, bf16))
    assert a.shape == b.shape == (f32["seeds"], 1) and not np.array_equal(a, b)
    d = interval(b - a)
    assert abs(d["mean"]) + d["ci95"] <= 0.1, d
    for row in f32["rows"]:
        for key in ("gain_peak", "gain_final"):
            x, y = f32["rows"][row]["columns"][key], bf16["rows"][row]["columns"][key]
            assert abs(x["mean"] - y["mean"]) <= max(x["std"], y["std"]) + 1e-9, (row, key, x, y)
