"""Continual-learning metrics, computed on the host from a run's outputs (numpy).

Accuracy matrix ``R[i, j]``: accuracy on task j after training through task i (T x T);
``b[j]``: accuracy of the initial model on task j.

* ACC (average accuracy, Lopez-Paz and Ranzato, GEM, 2017): ``mean_j R[T-1, j]``.
* BWT (backward transfer, GEM): ``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``.
* FWT (forward transfer, GEM): ``1/(T-1) sum_{j>=1} (R[j-1, j] - b[j])``.
* Forgetting (Chaudhry et al., RWalk, 2018): ``1/(T-1) sum_{j<T-1} max_{l<T-1} (R[l, j] - R[T-1, j])``.

From the per-iteration trace ``A[e, j]`` (accuracy on task j at evaluation e; evaluations
``ends[i]`` close task i), after De Lange et al., "Continual evaluation for lifelong learning:
identifying the stability gap" (ICLR 2023):

* min-ACC: for each task j < T-1, the lowest accuracy on j at any evaluation after j was learned
  (``e > ends[j]``), averaged over those tasks.
* WC-ACC: ``(1/T) * A[last, T-1] + (1 - 1/T) * min-ACC`` (the paper's worst-case accuracy, with
  k = T tasks).
* WF_w (windowed forgetting): for each task j, the largest drop ``A[e1, j] - A[e2, j]`` with
  ``ends[j] <= e1 < e2 < e1 + w``; the maximum over tasks j < T-1 (the paper reports the max).
"""

from __future__ import annotations

import numpy as np


def acc(R: np.ndarray) -> float:
    return float(np.mean(R[-1]))


def bwt(R: np.ndarray) -> float:
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def fwt(R: np.ndarray, b: np.ndarray) -> float:
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R: np.ndarray) -> float:
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[: T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def flatten_trace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``trace`` T x E x T (task trained, evaluation within the task, task evaluated) to
    ``A`` (T*E) x T and ``ends[i]``, the index in ``A`` of task i's last evaluation."""
    T, E, _ = trace.shape
    return trace.reshape(T * E, -1), np.arange(1, T + 1) * E - 1


def min_acc(A: np.ndarray, ends: np.ndarray) -> float:
    T = A.shape[1]
    vals = [A[ends[j] + 1 :, j].min() for j in range(T - 1) if ends[j] + 1 < len(A)]
    return float(np.mean(vals)) if vals else float("nan")


def wc_acc(A: np.ndarray, ends: np.ndarray) -> float:
    T = A.shape[1]
    if T < 2:
        return float(A[-1, -1])
    return float(A[-1, T - 1] / T + (1 - 1 / T) * min_acc(A, ends))


def windowed_forgetting(A: np.ndarray, ends: np.ndarray, w: int) -> float:
    T = A.shape[1]
    worst = 0.0
    for j in range(T - 1):
        a = A[ends[j] :, j]
        for e1 in range(len(a)):
            window = a[e1 + 1 : e1 + w]
            if window.size:
                worst = max(worst, float(a[e1] - window.min()))
    return worst


def all_metrics(R: np.ndarray, b: np.ndarray, trace: np.ndarray, w: int = 10) -> dict:
    """Every metric of one run (one seed)."""
    A, ends = flatten_trace(np.asarray(trace))
    R, b = np.asarray(R), np.asarray(b)
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R, b),
        "forgetting": forgetting(R),
        "min_acc": min_acc(A, ends),
        "wc_acc": wc_acc(A, ends),
        f"wf{w}": windowed_forgetting(A, ends, w),
    }


def loss_metrics(L: np.ndarray, b: np.ndarray, trace: np.ndarray, w: int = 10) -> dict:
    """The metrics of a loss matrix ``L[i, j]`` (held-out NLL per token on domain j after training
    through domain i; lower is better, nats), by :func:`all_metrics` of ``-L``, in loss units:

    * ``final_loss``: ``mean_j L[T-1, j]``; ``bwt``: ``mean_{j<T-1} (L[j, j] - L[T-1, j])``
      (negative: the loss of earlier domains went up); ``fwt``: ``mean_{j>=1} (b[j] - L[j-1, j])``;
    * ``forgetting``: ``mean_{j<T-1} (L[T-1, j] - min_{l<T-1} L[l, j])`` (>= 0);
    * ``max_loss``: the highest loss on each learned domain at any later evaluation, averaged (the
      worst case, min-ACC's analogue); ``wc_loss``: WC-ACC's analogue; ``wf<w>``: the largest
      rise of a domain's loss within ``w`` evaluations.
    """
    m = all_metrics(-np.asarray(L), -np.asarray(b), -np.asarray(trace), w)
    return {
        "final_loss": -m["acc"],
        "bwt": m["bwt"],
        "fwt": m["fwt"],
        "forgetting": m["forgetting"],
        "max_loss": -m["min_acc"],
        "wc_loss": -m["wc_acc"],
        f"wf{w}": m[f"wf{w}"],
    }


def gain_vs_standalone(L: np.ndarray, s: np.ndarray) -> float:
    """Continual pre-training against stand-alone fine-tuning (Yildiz et al., "Investigating
    Continual Pretraining in Large Language Models", 2024): ``mean_{j>=1} (s[j] - L[j, j])``, where
    ``L[j, j]`` is the held-out loss on domain j right after training through domains 0..j and
    ``s[j]`` the loss on j after training on j alone, from the same start, for as many steps.
    Positive: the domains before j helped j (forward transfer); domain 0 is left out (its run is
    the stand-alone one)."""
    T = L.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([s[j] - L[j, j] for j in range(1, T)]))


def js_divergence(P: np.ndarray) -> np.ndarray:
    """Pairwise Jensen-Shannon divergence (nats) between the rows of ``P`` (K x V counts or
    probabilities, each row normalised to sum 1): ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2``
    with ``m = (p + q) / 2``; 0 for equal rows, at most ln 2 for disjoint supports. K x K,
    symmetric."""
    P = np.asarray(P, np.float64)
    P = P / P.sum(1, keepdims=True)
    K = len(P)
    out = np.zeros((K, K))
    for a in range(K):
        for b in range(a + 1, K):
            m = (P[a] + P[b]) / 2
            kl = lambda p: float(np.sum(p[p > 0] * np.log(p[p > 0] / m[p > 0])))  # noqa: E731
            out[a, b] = out[b, a] = (kl(P[a]) + kl(P[b])) / 2
    return out


def hedges_g(a, b) -> float:
    """Hedges' g of ``mean(a) - mean(b)`` over independent samples (seeds): Cohen's d with the
    pooled standard deviation ``sqrt(((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a+n_b-2))`` (``ddof=1``)
    times the small-sample correction ``J = 1 - 3 / (4 (n_a + n_b) - 9)``; NaN with fewer than
    two samples on a side, +-inf when both samples are constant and differ."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return float("nan")
    diff = a.mean() - b.mean()
    sp = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if sp == 0:
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / sp * (1 - 3 / (4 * (na + nb) - 9)))


def per_seed(R_S: np.ndarray, b_S: np.ndarray, trace_S: np.ndarray, w: int = 10) -> list[dict]:
    return [all_metrics(R_S[s], b_S[s], trace_S[s], w) for s in range(len(R_S))]


def summary(rows: list[dict]) -> dict:
    """Mean and (population) standard deviation over seeds of every metric."""
    keys = rows[0].keys()
    return {
        k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
        for k in keys
    }


# the continual-learning table's columns (key, label, format of jaxcl.results)
COLUMNS = [
    ("acc", "ACC", "pct"),
    ("bwt", "BWT", "pct"),
    ("fwt", "FWT", "pct"),
    ("forgetting", "Forgetting", "pct"),
    ("min_acc", "min-ACC", "pct"),
    ("wc_acc", "WC-ACC", "pct"),
]
