"""Streams of tasks (Avalanche's vocabulary: a benchmark is a stream of experiences).

A :class:`Stream` holds every task's train and test data stacked on a leading task axis,
padded to the largest task (``train_n``/``test_n`` hold the true sizes). It is a pytree of
arrays that goes to the device once; batches are drawn inside the compiled loop by index.

Scenarios (van de Ven, Tuytelaars and Tolias, "Three types of incremental learning", 2022):

* class-incremental: split the classes into tasks, one shared head, no task identity;
* task-incremental: the same split, with the task's classes as a logit mask (``masks[t]``)
  at training and test time (a multi-head model expressed as masking one head);
* domain-incremental: every task has all classes, with a fixed pixel permutation or a
  rotation per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .loaders import Dataset


class Stream(NamedTuple):
    train_x: np.ndarray  # T x N x H x W x C uint8
    train_y: np.ndarray  # T x N int32
    train_n: np.ndarray  # T int32
    test_x: np.ndarray  # T x M x H x W x C uint8
    test_y: np.ndarray  # T x M
    test_n: np.ndarray  # T
    masks: np.ndarray  # T x n_classes bool: classes a task may predict (all True unless task-IL)
    task_classes: np.ndarray  # T x n_classes bool: classes present in the task

    @property
    def n_tasks(self) -> int:
        return self.train_x.shape[0]

    @property
    def n_classes(self) -> int:
        return self.masks.shape[1]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x.shape[2:])


def _stack(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = np.array([len(p) for p in parts], np.int32)
    out = np.zeros((len(parts), n.max()) + parts[0].shape[1:], parts[0].dtype)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    return out, n


def _shuffle(x, y, rng):
    p = rng.permutation(len(y))
    return x[p], y[p]


def _build(train, test, class_sets, n_classes, task_incremental):
    txs, tys = _stack([t[0] for t in train]), _stack([t[1] for t in train])
    sxs, sys_ = _stack([t[0] for t in test]), _stack([t[1] for t in test])
    present = np.zeros((len(class_sets), n_classes), bool)
    for i, cs in enumerate(class_sets):
        present[i, list(cs)] = True
    masks = present.copy() if task_incremental else np.ones_like(present)
    return Stream(txs[0], tys[0], txs[1], sxs[0], sys_[0], sxs[1], masks, present)


def split_classes(
    data: Dataset,
    n_tasks: int,
    *,
    class_order: Sequence[int] | None = None,
    task_incremental: bool = False,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    seed: int = 0,
) -> Stream:
    """Class- (or task-) incremental split: ``n_classes / n_tasks`` classes per task, in
    ``class_order`` (default 0, 1, 2, ...). Examples inside a task are shuffled with ``seed``."""
    order = list(class_order) if class_order is not None else list(range(data.n_classes))
    if sorted(order) != sorted(set(order)) or any(c >= data.n_classes or c < 0 for c in order):
        raise ValueError(f"class_order {order} must list distinct classes of 0..{data.n_classes - 1}")
    if len(order) % n_tasks:
        raise ValueError(f"{len(order)} classes do not split evenly into {n_tasks} tasks")
    per = len(order) // n_tasks
    rng = np.random.default_rng(seed)
    sets, train, test = [], [], []
    for t in range(n_tasks):
        cs = order[t * per : (t + 1) * per]
        sets.append(cs)
        for (x, y), out, cap in (
            ((data.x_train, data.y_train), train, max_train_per_task),
            ((data.x_test, data.y_test), test, max_test_per_task),
        ):
            keep = np.isin(y, cs)
            xs, ys = _shuffle(x[keep], y[keep], rng)
            out.append((xs[:cap], ys[:cap]))
    return _build(train, test, sets, data.n_classes, task_incremental)


def permuted(
    data: Dataset,
    n_tasks: int,
    *,
    seed: int = 0,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
    first_identity: bool = True,
) -> Stream:
    """Domain-incremental permuted images: task t applies a fixed random pixel permutation
    (task 0 the identity when ``first_identity``)."""
    rng = np.random.default_rng(seed)
    shape = data.x_train.shape[1:]
    d = int(np.prod(shape))
    train, test = [], []
    for t in range(n_tasks):
        perm = np.arange(d) if (t == 0 and first_identity) else rng.permutation(d)
        for (x, y), out, cap in (
            ((data.x_train, data.y_train), train, max_train_per_task),
            ((data.x_test, data.y_test), test, max_test_per_task),
        ):
            xs, ys = _shuffle(x, y, rng)
            xs, ys = xs[:cap], ys[:cap]
            out.append((xs.reshape(len(xs), d)[:, perm].reshape((len(xs),) + shape), ys))
    sets = [range(data.n_classes)] * n_tasks
    return _build(train, test, sets, data.n_classes, False)


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate N x H x W x C uint8 images clockwise about their centre (bilinear, zero fill)."""
    n, h, w, c = x.shape
    th = np.deg2rad(degrees)
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    sy = np.cos(th) * yy - np.sin(th) * xx + (h - 1) / 2
    sx = np.sin(th) * yy + np.cos(th) * xx + (w - 1) / 2
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    xf = x.astype(np.float32)
    out = np.zeros_like(xf)
    for dy, dx, wgt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (1, 0, fy * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 1, fy * fx),
    ):
        yi, xi = y0 + dy, x0 + dx
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        vals = xf[:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        out += vals * (wgt * ok)[None, :, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def rotated(
    data: Dataset,
    n_tasks: int,
    *,
    max_degrees: float = 180.0,
    seed: int = 0,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
) -> Stream:
    """Domain-incremental rotations: task t rotates every image by ``t * max_degrees / n_tasks``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for t in range(n_tasks):
        deg = t * max_degrees / n_tasks
        for (x, y), out, cap in (
            ((data.x_train, data.y_train), train, max_train_per_task),
            ((data.x_test, data.y_test), test, max_test_per_task),
        ):
            xs, ys = _shuffle(x, y, rng)
            out.append((rotate_images(xs[:cap], deg), ys[:cap]))
    sets = [range(data.n_classes)] * n_tasks
    return _build(train, test, sets, data.n_classes, False)


def scole(
    data: Dataset,
    n_tasks: int,
    *,
    classes_per_task: int = 2,
    seed: int = 0,
    max_train_per_task: int | None = None,
    max_test_per_task: int | None = None,
) -> Stream:
    """SCoLe (Lesort et al., "Challenging Common Assumptions about Catastrophic Forgetting", CoLLAs
    2023): a long stream of tasks, each made of ``classes_per_task`` classes drawn uniformly at
    random (without replacement inside a task) from all the classes, so every class re-occurs
    about ``n_tasks * classes_per_task / n_classes`` times. One shared head (class-incremental
    masks); task t's test set holds the test examples of its classes, so the mean of a row of the
    accuracy matrix is the accuracy on the classes in proportion to how often they occur."""
    if not 1 <= classes_per_task <= data.n_classes:
        raise ValueError(f"classes_per_task={classes_per_task} must be in 1..{data.n_classes}")
    rng = np.random.default_rng(seed)
    sets, train, test = [], [], []
    for _ in range(n_tasks):
        cs = sorted(rng.choice(data.n_classes, classes_per_task, replace=False).tolist())
        sets.append(cs)
        for (x, y), out, cap in (
            ((data.x_train, data.y_train), train, max_train_per_task),
            ((data.x_test, data.y_test), test, max_test_per_task),
        ):
            keep = np.isin(y, cs)
            xs, ys = _shuffle(x[keep], y[keep], rng)
            out.append((xs[:cap], ys[:cap]))
    return _build(train, test, sets, data.n_classes, False)


def power_law_counts(t: int, n: int, alpha: float) -> np.ndarray:
    """How many of ``n`` rehearsal examples of task ``t`` come from each earlier task ``i < t``:
    proportional to ``(t - i) ** -alpha`` (the time since task i was learned), rounded by largest
    remainder so they sum to ``n`` (``alpha = 0``: uniform over the earlier tasks)."""
    if t <= 0 or n <= 0:
        return np.zeros(max(t, 0), np.int64)
    w = (t - np.arange(t, dtype=np.float64)) ** -float(alpha)
    share = n * w / w.sum()
    counts = np.floor(share).astype(np.int64)
    rest = n - counts.sum()
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return counts


def power_law_rehearsal(stream: Stream, fraction: float, alpha: float = 1.0, *, seed: int = 0) -> Stream:
    """Power-law rehearsal (Gandhi, Shah, Marupudi and Varma, "Catastrophic Interference is
    Mitigated in Naturalistic Power-Law Learning Environments", 2024): while task ``t`` is learned,
    earlier tasks re-occur with a probability that decays as a power law of the time since they
    were learned. Task ``t``'s training set gains ``n_reh = round(fraction / (1 - fraction) * n_t)``
    examples of the earlier tasks, ``power_law_counts(t, n_reh, alpha)`` of them from task ``i``
    (drawn with ``seed``), so a uniformly drawn training example of task ``t`` comes from task
    ``i < t`` with probability ``fraction * (t - i)^-alpha / sum_j (t - j)^-alpha``. ``alpha = 0``
    is uniform rehearsal, the paper's non-power-law control. The test sets are unchanged.

    Task-incremental streams are refused: a rehearsed example would be trained under the current
    task's logit mask, which excludes its label."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"rehearsal fraction={fraction} must be in [0, 1)")
    if alpha < 0:
        raise ValueError(f"rehearsal alpha={alpha} must be >= 0 (0: uniform rehearsal)")
    if not stream.masks.all():
        raise ValueError(
            "power-law rehearsal needs a single-head stream (class-incremental or domain-incremental): "
            "in a task-incremental stream a rehearsed example would be masked out of its own label"
        )
    if fraction == 0.0:
        return stream
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for t in range(stream.n_tasks):
        n_t = int(stream.train_n[t])
        x, y = stream.train_x[t, :n_t], stream.train_y[t, :n_t]
        counts = power_law_counts(t, int(round(fraction / (1.0 - fraction) * n_t)), alpha)
        parts_x, parts_y = [x], [y]
        for i, c in enumerate(counts):
            if c:
                n_i = int(stream.train_n[i])
                idx = rng.choice(n_i, int(c), replace=bool(c > n_i))
                parts_x.append(stream.train_x[i, idx])
                parts_y.append(stream.train_y[i, idx])
        xs.append(np.concatenate(parts_x))
        ys.append(np.concatenate(parts_y))
        p = rng.permutation(len(ys[-1]))
        xs[-1], ys[-1] = xs[-1][p], ys[-1][p]
    train_x, train_n = _stack(xs)
    train_y, _ = _stack(ys)
    return stream._replace(train_x=train_x, train_y=train_y.astype(stream.train_y.dtype), train_n=train_n)


SCENARIOS = {"class-incremental", "task-incremental", "permuted", "rotated", "scole"}


def make_stream(data: Dataset, scenario: str, n_tasks: int, **kwargs) -> Stream:
    if scenario == "scole":
        return scole(data, n_tasks, **kwargs)
    if scenario == "class-incremental":
        return split_classes(data, n_tasks, **kwargs)
    if scenario == "task-incremental":
        return split_classes(data, n_tasks, task_incremental=True, **kwargs)
    if scenario == "permuted":
        return permuted(data, n_tasks, **kwargs)
    if scenario == "rotated":
        return rotated(data, n_tasks, **kwargs)
    raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(sorted(SCENARIOS))}")


def from_config(d: dict, seed: int, model_for=None, *, shapes_only: bool = False) -> Stream:
    """The stream of a config's ``data`` section: ``dataset`` cut into ``n_tasks`` tasks of its
    ``scenario`` (``max_train_per_task`` / ``max_test_per_task`` examples, 0: all;
    ``classes_per_task`` for scole), with ``rehearsal_fraction`` > 0 power-law rehearsal of
    earlier tasks (exponent ``rehearsal_alpha``) and, for ``order: delt``, DELT's scoring and
    folding order (``delt_layers``, ``delt_select``; the scoring model ``model_for(stream)``).
    ``shapes_only``: a stream of the right shapes from :func:`jaxcl.data.loaders.placeholder`
    where the data set's shapes are known (the compile check), the data set itself otherwise."""
    from . import loaders

    if shapes_only and d.get("order", "random") == "delt":
        raise ValueError("data.order=delt: DELT's selection needs the data; compile with data.order=random")

    kw = {k: d[k] for k in ("max_train_per_task", "max_test_per_task") if d[k]}
    if d["scenario"] == "scole":
        kw["classes_per_task"] = d.get("classes_per_task", 2)
    known = shapes_only and d["dataset"] in loaders.SHAPES
    data = loaders.placeholder(d["dataset"]) if known else loaders.load(d["dataset"])
    stream = make_stream(data, d["scenario"], d["n_tasks"], seed=seed, **kw)
    if d.get("rehearsal_fraction", 0.0):
        stream = power_law_rehearsal(
            stream, d["rehearsal_fraction"], d.get("rehearsal_alpha", 1.0), seed=seed
        )
    if d.get("order", "random") == "delt":
        from .delt import delt

        stream, _ = delt(
            stream, model_for(stream), layers=d["delt_layers"], select=d["delt_select"], seed=seed
        )
    return stream
