"""Forgetting scenarios on Fashion-MNIST (or any :class:`jaxcl.data.loaders.Dataset`).

* ``full-class``: forget every training example of one class; the class's test examples are the
  forget-test split, the other test examples the non-member test split.
* ``sub-class``: Fashion-MNIST has no labelled sub-classes, so one is defined deterministically:
  the examples of the class on the positive side of the class's first principal component (in
  pixel space, about half of the class; e.g. light vs dark or wide vs narrow garments). The rest
  of the class is retained; test examples are split by the same projection.
* ``random``: a random 10% of the training examples (all classes); forget-test is the whole
  test set.

The training set is subsampled per class (``n_per_class``) so the default study fits the CPU.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .common import UnlearnData, check_forget_indices

SCENARIOS = ("full-class", "sub-class", "random")


def _subsample(x, y, n_per_class, rng):
    if n_per_class is None:
        return x, y
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_per_class] for c in np.unique(y)])
    idx = rng.permutation(idx)
    return x[idx], y[idx]


def _subsets(ds, n_per_class, n_test, rng):
    """The training subsample (``n_per_class`` per class) and the test subsample (``n_test``)."""
    xtr, ytr = _subsample(ds.x_train, ds.y_train, n_per_class, rng)
    xte, yte = ds.x_test, ds.y_test
    if n_test is not None:
        sel = rng.permutation(len(yte))[:n_test]
        xte, yte = xte[sel], yte[sel]
    return xtr, ytr, xte, yte


def from_indices(
    x_train, y_train, x_test, y_test, forget_idx, test_forget_mask, *, seed: int = 0
) -> UnlearnData:
    """An :class:`UnlearnData` from a forget set given as training-set indices.

    ``test_forget_mask`` marks test examples of the forgotten class / sub-class (all ``True`` for
    random forgetting: then the whole test set is both splits). Raises ``ValueError`` for an
    empty forget set or one that is not a subset of the training data.
    """
    forget_idx = check_forget_indices(forget_idx, len(y_train))
    rng = np.random.default_rng(seed)
    forget_idx = rng.permutation(forget_idx)
    keep = np.ones(len(y_train), bool)
    keep[forget_idx] = False
    retain_idx = rng.permutation(np.flatnonzero(keep))
    tfm = np.asarray(test_forget_mask, bool)
    if tfm.all():
        test_idx = forget_test_idx = np.arange(len(y_test))
    else:
        test_idx, forget_test_idx = np.flatnonzero(~tfm), np.flatnonzero(tfm)
        if forget_test_idx.size == 0:
            raise ValueError("no test example belongs to the forget class / sub-class")
    a = lambda v: jnp.asarray(v)
    return UnlearnData(
        a(x_train),
        a(y_train),
        a(x_train[retain_idx]),
        a(y_train[retain_idx]),
        a(x_train[forget_idx]),
        a(y_train[forget_idx]),
        a(x_test[test_idx]),
        a(y_test[test_idx]),
        a(x_test[forget_test_idx]),
        a(y_test[forget_test_idx]),
    )


def make(
    ds,
    scenario: str = "full-class",
    forget_class: int = 3,
    *,
    n_per_class=None,
    n_test=None,
    random_fraction: float = 0.1,
    seed: int = 0,
) -> UnlearnData:
    """Build the forgetting problem; every check runs before any array reaches the device."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    if scenario != "random" and not 0 <= forget_class < ds.n_classes:
        raise ValueError(f"--forget-class must be in [0, {ds.n_classes}), got {forget_class}")
    if not 0 < random_fraction < 1:
        raise ValueError(f"random_fraction must be in (0, 1), got {random_fraction}")
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = _subsets(ds, n_per_class, n_test, rng)
    if scenario == "full-class":
        forget_idx = np.flatnonzero(ytr == forget_class)
        tfm = yte == forget_class
    elif scenario == "sub-class":
        cls = xtr[ytr == forget_class].reshape(-1, int(np.prod(xtr.shape[1:]))).astype(np.float32)
        if len(cls) < 2:
            raise ValueError(f"class {forget_class} has fewer than 2 training examples")
        mu = cls.mean(0)
        _, _, vt = np.linalg.svd(cls - mu, full_matrices=False)
        pc = vt[0]
        proj = lambda x: (x.reshape(len(x), -1).astype(np.float32) - mu) @ pc
        forget_idx = np.flatnonzero((ytr == forget_class) & (proj(xtr) > 0))
        tfm = (yte == forget_class) & (proj(xte) > 0)
    else:
        n_f = max(1, int(round(random_fraction * len(ytr))))
        forget_idx = rng.permutation(len(ytr))[:n_f]
        tfm = np.ones(len(yte), bool)
    return from_indices(xtr, ytr, xte, yte, forget_idx, tfm, seed=seed)


def stream(ds, requests, *, n_per_class=None, n_test=None, seed: int = 0):
    """Continual forgetting: one :class:`UnlearnData` per request of ``requests`` (a class each,
    in order) and the whole test set ``(x, y)``. Request ``t``'s training data holds the classes
    not requested before it (its forget set: class ``requests[t]``, its retain set: the classes
    never requested up to ``t``); the subsample is :func:`make`'s for the same ``seed``, so the
    original is trained on the data of ``unlearn-class``."""
    requests = [int(c) for c in requests]
    if (
        not requests
        or len(set(requests)) != len(requests)
        or not all(0 <= c < ds.n_classes for c in requests)
    ):
        raise ValueError(f"requests must be distinct classes in [0, {ds.n_classes}), got {requests}")
    if len(requests) >= ds.n_classes:
        raise ValueError(f"{len(requests)} requests leave no class to retain")
    rng = np.random.default_rng(seed)
    xtr, ytr, xte, yte = _subsets(ds, n_per_class, n_test, rng)
    out = []
    for t, c in enumerate(requests):
        keep, keep_te = ~np.isin(ytr, requests[:t]), ~np.isin(yte, requests[:t])
        x, y = xtr[keep], ytr[keep]
        out.append(
            from_indices(
                x, y, xte[keep_te], yte[keep_te], np.flatnonzero(y == c), yte[keep_te] == c, seed=seed
            )
        )
    return out, (jnp.asarray(xte), jnp.asarray(yte))
