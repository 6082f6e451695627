"""A forgetting problem for classifiers (:class:`UnlearnData`) and its input checks.

An :class:`UnlearnData` is a pytree of device arrays passed as an *argument* to every jitted
function (never closed over), so one compiled program serves every seed under ``vmap``.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import struct


@struct.dataclass
class UnlearnData:
    x_train: jax.Array  # full training set D = retain + forget
    y_train: jax.Array
    x_retain: jax.Array
    y_retain: jax.Array
    x_forget: jax.Array
    y_forget: jax.Array
    x_test: jax.Array  # test examples outside the forget class / sub-class (non-members)
    y_test: jax.Array
    x_test_forget: jax.Array  # test examples of the forget class / sub-class
    y_test_forget: jax.Array

    # the problem protocol the unlearning loop (jaxcl.loops.Unlearning) and the edits use
    @property
    def forget_set(self) -> dict:
        return {"x": self.x_forget, "y": self.y_forget}

    @property
    def retain_set(self) -> dict:
        return {"x": self.x_retain, "y": self.y_retain}

    @property
    def train_set(self) -> dict:
        return {"x": self.x_train, "y": self.y_train}

    def draw(self, key, n: int) -> dict:
        """A batch: ``n`` retain examples at the top level, ``n`` forget examples in ``'forget'``."""
        k_r, k_f = jax.random.split(key)
        return {**sample(self.retain_set, k_r, n), "forget": sample(self.forget_set, k_f, n)}

    def learning(self, x, y) -> UnlearnData:
        """The problem whose retain data is ``(x, y)`` (training the original on the whole
        training set, the oracle on the retain set, an attacker on a forget slice)."""
        return self.replace(x_retain=x, y_retain=y)


def sample(sub: dict, key, n: int) -> dict:
    """``n`` examples of ``sub`` drawn uniformly with replacement."""
    idx = jax.random.randint(key, (n,), 0, jax.tree.leaves(sub)[0].shape[0])
    return jax.tree.map(lambda a: a[idx], sub)


def recalibrate(model, params, x):
    """Refresh BatchNorm running statistics on ``x`` (identity for models without BN)."""
    fn = getattr(model, "recalibrate", None)
    return params if fn is None else fn(params, x)


def check_forget_indices(forget_idx, n_train: int) -> np.ndarray:
    """The forget set as indices into the training set; ValueError when it is empty or not a
    subset of the training data (out of range or repeated indices)."""
    idx = np.asarray(forget_idx)
    if idx.size == 0:
        raise ValueError("the forget set is empty: nothing to unlearn (check --forget-class and --scenario)")
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError("the forget set must be a 1-d array of integer training-set indices")
    if idx.min() < 0 or idx.max() >= n_train:
        raise ValueError(
            f"the forget set is not a subset of the training data: indices must be in "
            f"[0, {n_train}), got [{idx.min()}, {idx.max()}]"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError("the forget set is not a subset of the training data: repeated indices")
    if idx.size >= n_train:
        raise ValueError("the forget set is the whole training set: no retain data is left")
    return idx


def locate_in_train(x_forget: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``x_forget`` in ``x_train``; ValueError when a row is absent."""
    if len(x_forget) == 0:
        raise ValueError("the forget set is empty: nothing to unlearn")
    table = {}
    for i, row in enumerate(np.asarray(x_train)):
        table.setdefault(row.tobytes(), i)
    out = []
    for j, row in enumerate(np.asarray(x_forget)):
        i = table.get(row.tobytes())
        if i is None:
            raise ValueError(
                f"the forget set is not a subset of the training data: example {j} "
                "does not occur in the training set"
            )
        out.append(i)
    return np.asarray(out)
