"""Junk-data decline (study ``lm-junk``): Hedges' g by hand, the task probe's masks and scoring
on an oracle model, the tiny study end to end, and bad configs."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import config
from jaxcl import metrics as M
from jaxcl.data import junk as junk_data
from jaxcl.hf import ByteTokenizer
from jaxcl.studies import lm_junk


def test_hedges_g_by_hand():
    a, b = [3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 2.0]
    # means 4 and 2; sample variances 1 and 2/3; pooled sd sqrt((2*1 + 3*2/3) / 5) = sqrt(0.8)
    want = 2.0 / np.sqrt(0.8) * (1 - 3 / (4 * 7 - 9))
    assert M.hedges_g(a, b) == pytest.approx(want)
    assert M.hedges_g(b, a) == pytest.approx(-want)
    assert np.isnan(M.hedges_g([1.0], b))


def test_task_probe_masks_the_answer_and_scores_an_oracle():
    tok = ByteTokenizer()
    probe = junk_data.task_probe(tok, [("add 2+3=", "5"), ("rev 12=", "21")], 16)
    t, m = probe["tokens"], probe["mask"]
    assert bytes(t[0, :10].tolist()).decode() == "add 2+3=5\n"
    assert m[0].tolist() == [i == 8 for i in range(16)]
    assert np.flatnonzero(m[1]).tolist() == [7, 8]
    V = tok.vocab_size

    def oracle(params, x):  # predicts the true next token everywhere (shift of the probe)
        nxt = jnp.concatenate([jnp.asarray(t)[:, 1:], jnp.zeros((2, 1), jnp.int32)], 1)[:, : x.shape[1]]
        return jnp.eye(V)[nxt + params]

    p = {k: jnp.asarray(v)[None] for k, v in probe.items()}
    np.testing.assert_allclose(junk_data.task_accuracy(oracle, 0, p), [1.0])
    np.testing.assert_allclose(junk_data.task_accuracy(oracle, 1, p), [0.0])  # every prediction off by one


def test_tiny_study_end_to_end(tmp_path):
    cfg = config.resolve(config.load("lm-junk", tiny=True))
    out = str(tmp_path / "out")
    res = lm_junk.run(cfg, out, verbose=False)
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["study"] == "lm-junk" and "dose_response.png" in saved["plots"]
    assert list(saved["rows"]) == ["junk 0%", "junk 100%"]
    for row in saved["rows"].values():
        for k in ("task_acc", "base_loss", "control_loss", "junk_loss"):
            v = np.asarray(row["per_seed"][k])
            assert v.shape == (cfg["seeds"],) and np.all(np.isfinite(v))
    # training on junk only lowers the junk loss more than training on control only, and vice versa
    r0, r1 = saved["rows"]["junk 0%"]["summary"], saved["rows"]["junk 100%"]["summary"]
    assert r1["junk_loss"]["mean"] < r0["junk_loss"]["mean"]
    assert r0["control_loss"]["mean"] < r1["control_loss"]["mean"]
    assert set(res["extra"]["hedges_g"]) == {"task_acc", "base_loss"}


@pytest.mark.parametrize(
    "sets, match",
    [
        (["junk.ratios=0,1.5"], "fractions in"),
        (["data.tasks=add,divide"], "unknown task 'divide'"),
        (["model.name=huge"], "model.name='huge' is not valid"),
        (["junk.eval_every=3"], "multiple of junk.eval_every=3"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    cfg = config.resolve(config.load("lm-junk", tiny=True), sets)
    with pytest.raises(config.ConfigError, match=match):
        lm_junk.validate(cfg)
