"""Metrics against hand-computed values."""

import numpy as np
import pytest

from jaxcl import metrics as M

R = np.array([[0.9, 0.1, 0.0], [0.6, 0.8, 0.2], [0.5, 0.7, 0.95]])
B = np.array([0.1, 0.2, 0.3])


def test_gem_metrics():
    assert M.acc(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert M.bwt(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert M.fwt(R, B) == pytest.approx(((0.1 - 0.2) + (0.2 - 0.3)) / 2)
    # task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: max(0.1, 0.8) - 0.7 = 0.1
    assert M.forgetting(R) == pytest.approx(0.25)


def test_trace_metrics():
    # 3 tasks, 2 evaluations per task, evaluated on 3 tasks
    trace = np.zeros((3, 2, 3))
    trace[0] = [[0.5, 0, 0], [0.9, 0, 0]]
    trace[1] = [[0.3, 0.6, 0], [0.7, 0.8, 0]]
    trace[2] = [[0.6, 0.2, 0.5], [0.65, 0.75, 0.9]]
    A, ends = M.flatten_trace(trace)
    np.testing.assert_array_equal(ends, [1, 3, 5])
    # task 0 after eval 1: min(0.3, 0.7, 0.6, 0.65) = 0.3; task 1 after eval 3: min(0.2, 0.75) = 0.2
    assert M.min_acc(A, ends) == pytest.approx(0.25)
    assert M.wc_acc(A, ends) == pytest.approx(0.9 / 3 + (2 / 3) * 0.25)
    # task 0 from eval 1: 0.9 -> 0.3 is the largest drop within a window of 2
    assert M.windowed_forgetting(A, ends, 2) == pytest.approx(0.6)
    # task 1 from eval 3: 0.8 -> 0.2 is within a window of 2 as well
    assert M.windowed_forgetting(A, ends, 3) == pytest.approx(0.6)
    row = M.all_metrics(R, B, trace, w=2)
    assert set(row) == {"acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "wf2"}


def test_summary_mean_std():
    s = M.summary([{"acc": 0.5}, {"acc": 0.7}])
    assert s["acc"]["mean"] == pytest.approx(0.6)
    assert s["acc"]["std"] == pytest.approx(0.1)
