"""Shared pieces of the unlearning methods: the data of a forgetting problem, batch sampling,
the compiled training loop, the configuration, and input checks.

An :class:`UnlearnData` is a pytree of device arrays passed as an *argument* to every jitted
function (never closed over), so one compiled program serves every seed under ``vmap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ..engine import init_state, make_step
from ..losses import classification_loss


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


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    # the original model and the oracle (retrain) share this recipe
    train_steps: int = 600
    train_lr: float = 1e-3
    batch: int = 64
    # unlearning
    steps: int = 40
    lr: tuple = (
        ("finetune", 1e-3),
        ("ga", 2e-5),
        ("graddiff", 5e-5),
        ("npo", 1e-4),
        ("random_label", 1e-4),
        ("gu-ga", 2e-5),
        ("gu-graddiff", 5e-5),
        ("gu-npo", 1e-4),
    )
    npo_beta: float = 0.1
    gu_rank: int = 8
    gu_mode: str = "per_tensor"
    gu_preconditioned: bool = False
    ssd_alpha: float = 10.0
    ssd_lambda: float = 1.0
    ssd_per_example: bool = False
    ssd_exclude: tuple = ()
    iau_lr: float = 1e-3
    iau_reg: float = 0.005
    # evaluation
    eval_cap: int = 2000  # examples per split in the representation / MIA metrics
    relearn_steps: int = 20
    relearn_every: int = 5
    relearn_n: int = 64  # size of the forget slice the attacker fine-tunes on
    relearn_lr: float = 1e-4

    def lr_of(self, method: str) -> float:
        return dict(self.lr)[method]

    def validate(self):
        for f in (
            "train_steps",
            "batch",
            "steps",
            "gu_rank",
            "eval_cap",
            "relearn_steps",
            "relearn_every",
            "relearn_n",
        ):
            if getattr(self, f) <= 0:
                raise ValueError(f"UnlearnConfig.{f} must be positive, got {getattr(self, f)}")
        if self.ssd_alpha <= 0 or self.ssd_lambda <= 0:
            raise ValueError(
                f"SSD needs alpha > 0 and lambda > 0, got alpha={self.ssd_alpha}, lambda={self.ssd_lambda}"
            )
        if self.gu_rank > self.steps:
            raise ValueError(
                f"GU rank {self.gu_rank} is larger than the history of retain "
                f"gradients ({self.steps} unlearning steps): the basis could never "
                "fill; lower --gu-rank or raise the number of steps"
            )
        if self.gu_mode not in ("per_tensor", "global"):
            raise ValueError(f"gu_mode must be per_tensor or global, got {self.gu_mode!r}")
        if self.npo_beta <= 0:
            raise ValueError(f"NPO needs beta > 0, got {self.npo_beta}")
        if self.relearn_steps % self.relearn_every:
            raise ValueError("relearn_steps must be a multiple of relearn_every")
        return self


def train_apply(model) -> Callable:
    """The training-mode forward pass (batch statistics for BatchNorm models)."""
    return getattr(model, "apply_train", model.apply)


def recalibrate(model, params, x):
    """Refresh BatchNorm running statistics on ``x`` (identity for models without BN)."""
    fn = getattr(model, "recalibrate", None)
    return params if fn is None else fn(params, x)


def sample(x, y, key, n: int) -> dict:
    idx = jax.random.randint(key, (n,), 0, x.shape[0])
    return {"x": x[idx], "y": y[idx]}


def run_steps(
    loss_fn, tx, params, key, make_batch: Callable, steps: int, *, data=None, data_state=None, extra_args=None
):
    """``steps`` pure training steps under ``lax.scan``; ``make_batch(key) -> batch``.

    ``data_state`` (optional) replaces the data transform's initial state (e.g. a teacher set
    to the original parameters). Returns ``(params, metrics_per_step)``.
    """
    k_state, k_batch = jax.random.split(key)
    example = make_batch(k_batch) if data is not None else None
    state = init_state(params, tx, k_state, data, example)
    if data_state is not None:
        state = state.replace(data_state=data_state)
    step = make_step(loss_fn, tx, data, extra_args=extra_args)

    def body(s, i):
        return step(s, make_batch(jax.random.fold_in(k_batch, i)))

    state, metrics = jax.lax.scan(body, state, jnp.arange(steps))
    return state.params, metrics


def train_classifier(
    model,
    params,
    key,
    x,
    y,
    cfg: UnlearnConfig,
    *,
    steps: int | None = None,
    lr: float | None = None,
    loss_wrap=None,
):
    """Adam on the mean cross-entropy (training mode), then BatchNorm recalibration on ``x``."""
    loss = classification_loss(train_apply(model))
    if loss_wrap is not None:
        loss = loss_wrap(loss)
    tx = optax.adam(cfg.train_lr if lr is None else lr)
    params, m = run_steps(
        loss,
        tx,
        params,
        key,
        lambda k: sample(x, y, k, cfg.batch),
        cfg.train_steps if steps is None else steps,
    )
    return recalibrate(model, params, x[: min(x.shape[0], 4000)]), m


def ce_loss(apply_fn):
    """Mean cross-entropy of ``apply_fn`` on ``batch['x'], batch['y']`` (eval mode)."""
    return classification_loss(apply_fn)


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
