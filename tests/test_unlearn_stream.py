"""Continual forgetting (study ``unlearn-stream``, :mod:`jaxcl.studies.unlearn_stream`): the
stream's problems against numpy (each request's forget set is its class, earlier requests' classes
are gone, the subsample is ``unlearn-class``'s), the columns against a hand computation of
GS-LoRA's H-Mean, and the tiny study through the CLI: every request's class is forgotten while the
never-requested classes stay above chance, the oracle is the zero of the gap, bad requests exit 2
in one line."""

import json

import numpy as np
import pytest

from jaxcl import cli
from jaxcl.data import loaders
from jaxcl.studies.unlearn_stream import stream_metrics
from jaxcl.unlearn import scenarios


class Toy:
    """A 4-class data set: 6 training and 2 test examples per class, pixel = label."""

    n_classes = 4
    y_train = np.repeat(np.arange(4), 6)
    x_train = (
        np.repeat(y_train[:, None, None, None], 2, 1).astype(np.float32) + np.arange(24)[:, None, None, None]
    )
    y_test = np.repeat(np.arange(4), 2)
    x_test = y_test[:, None, None, None].astype(np.float32)


def test_each_request_forgets_its_class_from_what_earlier_requests_left():
    problems, (xt, yt) = scenarios.stream(Toy, [2, 0])
    assert len(problems) == 2 and np.asarray(yt).tolist() == Toy.y_test.tolist()
    p1, p2 = (np.asarray(p.y_train) for p in problems)
    np.testing.assert_array_equal(np.bincount(p1, minlength=4), [6, 6, 6, 6])
    np.testing.assert_array_equal(np.bincount(p2, minlength=4), [6, 6, 0, 6])  # class 2 gone
    for p, c, gone in ((problems[0], 2, []), (problems[1], 0, [2])):
        assert set(np.asarray(p.y_forget).tolist()) == {c} and len(p.y_forget) == 6
        assert not set(np.asarray(p.y_retain).tolist()) & {c, *gone}
        assert set(np.asarray(p.y_test_forget).tolist()) == {c}
        assert not set(np.asarray(p.y_test).tolist()) & {c, *gone}
    # the original's training data is unlearn-class's subsample for the same seed
    ds = loaders.load("fashion-mnist")
    ref = scenarios.make(ds, "full-class", 3, n_per_class=20, n_test=50)
    got, (xt, yt) = scenarios.stream(ds, [3, 5], n_per_class=20, n_test=50)
    np.testing.assert_array_equal(np.asarray(got[0].x_train), np.asarray(ref.x_train))
    assert sorted(np.asarray(yt).tolist()) == sorted(np.concatenate([ref.y_test, ref.y_test_forget]).tolist())
    for bad in ([3, 3], [], [4], list(range(4))):
        with pytest.raises(ValueError, match="requests"):
            scenarios.stream(Toy, bad)


def test_columns_against_a_hand_computation():
    # 1 seed, 4 classes, requests 1 then 3; rows: original, after request 1, after request 2
    acc0 = np.array([[0.9, 0.8, 0.7, 0.6]])
    acc = np.array([[[0.9, 0.8, 0.7, 0.6], [0.8, 0.1, 0.6, 0.5], [0.7, 0.2, 0.5, 0.0]]])
    m = stream_metrics(acc, acc0, [1, 3], oracle_SK=np.array([[0.85, 0.0, 0.65, 0.0]]))
    f, r = (0.2 + 0.0) / 2, (0.7 + 0.5) / 2
    drop = (0.8 + 0.6) / 2 - f
    np.testing.assert_allclose(m["forget_acc"], [f])
    np.testing.assert_allclose(m["old_forget_acc"], [0.2])
    np.testing.assert_allclose(m["retain_acc"], [r])
    np.testing.assert_allclose(m["h_mean"], [2 * r * drop / (r + drop)])
    np.testing.assert_allclose(m["gap"], [(abs(f - 0.0) + abs(r - 0.75)) / 2])
    # after request 1: forgotten {1}, retained {0, 2, 3}
    r1, d1 = (0.8 + 0.6 + 0.5) / 3, 0.8 - 0.1
    np.testing.assert_allclose(m["h_mean_curve"], [[2 * r1 * d1 / (r1 + d1), m["h_mean"][0]]])
    # nothing forgotten (the original): H = 0
    assert stream_metrics(np.stack([acc0] * 3, 1), acc0, [1, 3])["h_mean"][0] == 0.0


def test_tiny_stream_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "unlearn-stream", "--tiny", "--set", "methods=finetune,gs_lora", "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "stream.png").exists()
    rows = res["rows"]
    assert list(rows) == ["original", "oracle", "finetune", "gs_lora"]
    mean = lambda r, k: np.mean(rows[r]["per_seed"][k])  # noqa: E731
    assert mean("oracle", "forget_acc") == 0.0 and mean("oracle", "gap") == 0.0
    assert mean("original", "h_mean") == 0.0 and mean("original", "forget_acc") > 0.2
    for m in ("finetune", "gs_lora"):
        assert mean(m, "forget_acc") < 0.1, m  # both requests' classes are gone
        assert mean(m, "retain_acc") > 0.2, m  # the rest above chance (1 / 8)
        acc = np.asarray(res["extra"]["class_acc"][m])  # (S, T + 1, K)
        assert acc.shape == (2, 3, 10)
    capsys.readouterr()
    for bad in ("data.requests=3,3", "data.requests=12"):
        bad_argv = ["run", "unlearn-stream", "--tiny", "--set", bad, "--out", str(tmp_path / "b")]
        assert cli.main(bad_argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "data.requests" in err
