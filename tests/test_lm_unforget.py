"""The random-label forgetting study on a language model (``lm-unforget``): the task rows and
their answer masks by hand, the exact-match score against numpy, the tiny study end to end (the
forget rows relabelled, the probe columns), and bad configs."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import config, hf
from jaxcl.studies import lm_unforget


def test_rows_mask_the_answer_and_the_forget_rows_come_first():
    cfg = config.resolve(config.load("lm-unforget", tiny=True))
    tok = hf.ByteTokenizer()
    data, prompt_len, T = lm_unforget.build(cfg, tok)
    d = cfg["data"]
    assert data["forget"]["tokens"].shape == (d["n_forget"], T)
    assert data["retain"]["tokens"].shape[0] == d["n_train"] - d["n_forget"]
    for k, y in (("forget", "y_forget"), ("test", "y_test")):
        rows = data[k]
        m = np.asarray(rows["mask"])
        assert (m.sum(1) == 1).all() and (m.argmax(1) == prompt_len).all()  # one answer token after "="
        ans = np.asarray(rows["tokens"])[np.arange(len(m)), m.argmax(1)]
        np.testing.assert_array_equal([int(chr(a)) for a in ans], data[y])
        assert all(chr(t) == "=" for t in np.asarray(rows["tokens"])[:, prompt_len - 1])
    other = np.asarray(data["other"]["mask"]).sum(1)
    assert (other == other[0]).all() and other[0] >= d["other_digits"]  # one answer length


def test_exact_match_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (4, 6))
    pred = logits.argmax(-1)
    tokens[:2, 3:5] = pred[:2, 2:4]  # rows 0-1 answer as predicted, rows 2-3 not
    tokens[2:, 3] = (pred[2:, 2] + 1) % 7
    mask = np.zeros((4, 6), bool)
    mask[:, 3:5] = True
    model = types.SimpleNamespace(apply=lambda p, x: jnp.asarray(logits))
    got = lm_unforget.exact(model, None, {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)})
    ok = [np.all(pred[i, 2:4] == tokens[i, 3:5]) for i in range(4)]
    assert float(got) == pytest.approx(np.mean(ok)) and 0 < np.mean(ok) < 1


def test_tiny_study_runs_random_label_and_the_probe():
    """Wiring, and that the random labels move the forget rows: at a large learning rate the
    forget rows' exact match changes from the original's."""
    cfg = config.resolve(config.load("lm-unforget", tiny=True), ["random_label.lr=0.05", "unlearn.epochs=8"])
    res = lm_unforget.run(cfg, None, verbose=False)
    assert list(res["rows"]) == ["untrained", "original", "random_label"]
    for row in res["rows"].values():
        for k in ("forget", "retain", "test", "other", "probe_forget", "probe_test"):
            v = np.asarray(row["per_seed"][k])
            assert v.shape == (cfg["seeds"],) and ((v >= 0) & (v <= 1)).all()
    a = np.asarray(res["rows"]["original"]["per_seed"]["forget"])
    b = np.asarray(res["rows"]["random_label"]["per_seed"]["forget"])
    assert not np.allclose(a, b), (a, b)  # the relabelled rows are answered differently


def test_lookup_answers_are_memorised_not_computed():
    a, b = lm_unforget.lookup(200, 0, 2), lm_unforget.lookup(200, 1, 2)
    assert a == lm_unforget.lookup(200, 0, 2) and a != b
    assert all(p.startswith("key ") and p.endswith("=") and len(p) == 9 and len(x) == 4 for p, x in a)
    # the answer is no function of the key: its first digit is near-uniform given the key's first digit
    first = np.array([[int(p[4]), int(x[0])] for p, x in a + b])
    assert abs(np.corrcoef(first.T)[0, 1]) < 0.2


def test_tiny_study_with_the_trigger_audit():
    """The trigger audit adds the retain-only oracle and its columns to every row."""
    sets = ["attack.trigger.steps=3", "data.task=lookup", "seeds=1", "methods=random_label"]
    cfg = config.resolve(config.load("lm-unforget", tiny=True), sets)
    res = lm_unforget.run(cfg, None, verbose=False)
    assert list(res["rows"]) == ["untrained", "original", lm_unforget.ORACLE, "random_label"]
    for row in res["rows"].values():
        for k, _, fmt in lm_unforget.TRIGGER_COLUMNS:
            v = np.asarray(row["per_seed"][k])
            assert v.shape == (1,) and np.isfinite(v).all()
            assert fmt != "pct" or ((v >= 0) & (v <= 1)).all()
    o = res["rows"]["original"]["per_seed"]
    assert o["trig_nll"] != o["held_nll"]  # the trigger moved the scores


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.task=add"], "data.task='add' is not valid"),
        (["data.task=rev", "data.other=rev"], "data.other='rev' is data.task"),
        (["data.digits=12"], "data.digits=12"),
        (["data.n_forget=32"], "data.n_forget=32"),
        (["methods=ssd"], "ssd"),
        (
            ["attack.trigger.steps=-1"],
            r"attack.trigger.steps=-1: give an integer >= 0 \(0: no trigger audit\)",
        ),
        (["attack.trigger.length=0"], "attack.trigger.length=0: give an integer >= 1"),
        (["attack.trigger.lr=0"], r"attack.trigger.lr=0\.0: give a positive learning rate"),
        (["attack.trigger.mode=suffix"], "attack.trigger.mode='suffix' is not valid"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    with pytest.raises(config.ConfigError, match=match):
        lm_unforget.validate(config.resolve(config.load("lm-unforget", tiny=True), sets))
