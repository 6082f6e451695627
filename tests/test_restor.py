"""The restor study (knowledge recovery after unlearning a corruption): tiny end to end, the
corruption data, and bad configs."""

import json
import os

import numpy as np
import pytest

from jaxcl import config
from jaxcl.data import restor as restor_data
from jaxcl.studies import get_study, restor


def test_tiny_runs_clean_corrupt_and_unlearn(tmp_path):
    cfg = config.resolve(config.load("restor", tiny=True))
    out = str(tmp_path / "out")
    res = get_study(cfg["study"]).run(cfg, out, verbose=False)
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["study"] == "restor" and "recovery.png" in saved["plots"]
    assert list(saved["rows"]) == ["clean", "corrupted", *cfg["methods"]]
    rows = res["rows"]
    S = cfg["seeds"]
    for name, row in rows.items():
        for k in ("pref", "recovery", "exact_true", "exact_wrong", "stream_nll"):
            assert len(row["per_seed"][k]) == S and np.all(np.isfinite(row["per_seed"][k])), (name, k)
    # the central quantities (corruption lowers pref, unlearning raises it): test_study_findings.py
    pref = {n: np.asarray(r["per_seed"]["pref"]) for n, r in rows.items()}
    want = (pref["gu-npo"] - pref["corrupted"]) / (pref["clean"] - pref["corrupted"])
    np.testing.assert_allclose(rows["gu-npo"]["per_seed"]["recovery"], want, rtol=1e-6)
    assert "forget_nll" in rows["gu-npo"]["trace"]  # the unlearning phase's traced forget NLL


def test_wrong_facts_change_every_value_and_keep_the_names():
    cfg = config.resolve(config.load("restor", tiny=True), ["data.n_facts=6"])
    true, wrong = restor_data.facts(cfg)
    for t, w in zip(true, wrong):
        assert w.name == t.name and w.year != t.year and w.city != t.city and w.profession != t.profession


@pytest.mark.parametrize(
    "sets, match",
    [
        (["methods=ga,ssd"], "unknown method 'ssd' for a restor study; valid: ga, graddiff, npo"),
        (["data.domains=bible:lawz"], "unknown text domain"),
        (["gu-npo.rank=9"], "rank=9 is larger than the history"),
        (["data.n_facts=1"], "n_facts must be >= 2"),
    ],
)
def test_bad_configs(sets, match):
    with pytest.raises(config.ConfigError, match=match):  # refused when resolved or validated
        restor.validate(config.resolve(config.load("restor", tiny=True), sets))
