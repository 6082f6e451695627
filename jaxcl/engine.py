"""The functional engine: a train state, a pure training step, and the non-finite guard.

The whole of jaxcl stands on one function type, ``step(state, batch) -> (state, metrics)``,
built by :func:`make_step` from three composable values (the README's "design in one screen"):

* a loss ``LossFn = (params, batch, key) -> (loss, aux)`` (possibly wrapped: ``with_kl``,
  ``with_ewc_penalty``),
* an optax ``GradientTransformationExtraArgs`` (possibly chained with a projection such as
  A-GEM's or GU's, whose extra inputs come from ``extra_args``),
* an optional data transform ``init(example) / update(batch, state, key) -> (batch, state)``
  whose state lives on the device inside :class:`TrainState` (replay buffers, teachers, EWC
  anchors).

Because the step is pure it can be scanned, vmapped over seeds and hyperparameters, and sharded.
Per-step randomness is ``fold_in(state.key, state.step)``: the same seed gives the same run
whatever the loop structure around the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any
LossFn = Callable[[PyTree, dict, jax.Array], tuple[jax.Array, dict]]


class DataTransform(NamedTuple):
    """A transform of the batch that reaches the step, with on-device state.

    ``init(example_batch) -> state`` and ``update(batch, state, key) -> (batch, state)``.
    Optional ``after(batch, state, params, aux, key) -> state`` runs after the loss, with the
    batch the loss saw, the parameters before the update and the loss's ``aux`` (DER's buffer
    stores the logits of the step's own forward pass: ``aux['store_logits']``).
    """

    init: Callable[[dict], PyTree]
    update: Callable[[dict, PyTree, jax.Array], tuple[dict, PyTree]]
    after: Callable | None = None


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step; a pytree, so it scans, vmaps and saves."""

    step: jax.Array  # int32 scalar
    params: PyTree
    opt_state: PyTree
    data_state: PyTree
    key: jax.Array  # typed PRNG key (jax.random.key)
    nonfinite_step: jax.Array  # int32, first step whose loss was not finite, or -1
    # what the step carries untouched: a LoRA run's frozen base (jaxcl.models.lora; the params are
    # its adapters), an argument of the program and never a constant; () otherwise
    frozen: PyTree = ()


def as_typed_key(key) -> jax.Array:
    """Accept a typed key, a raw uint32 key or an int seed; return a typed key."""
    if isinstance(key, int):
        return jax.random.key(key)
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def init_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    key,
    data: DataTransform | None = None,
    example_batch: dict | None = None,
) -> TrainState:
    """Build the initial :class:`TrainState` (pure: works under ``jit`` and ``vmap``)."""
    if data is not None and example_batch is None:
        raise ValueError("init_state: a data transform needs example_batch to size its state")
    data_state = data.init(example_batch) if data is not None else ()
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        data_state=data_state,
        key=as_typed_key(key),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def global_norm(tree: PyTree) -> jax.Array:
    return optax.global_norm(tree)


def make_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    data: DataTransform | None = None,
    *,
    extra_args: Callable[[PyTree, dict, jax.Array], dict] | None = None,
    skip_nonfinite: bool = False,
    norms: bool = True,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Return the pure training step ``(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``(params, batch, key) -> (loss, aux)``; ``aux`` is a dict of scalars or arrays
        (a ``logits`` entry is allowed and dropped from the metrics).
      tx: an optax transform; plain ones are wrapped to accept extra args.
      data: optional data transform applied to the batch before the loss.
      extra_args: ``(params, batch, key) -> dict`` of keyword-only extra args for ``tx.update``
        (A-GEM's and GU's reference gradients).
      skip_nonfinite: when the loss or gradient is not finite, keep params and optimizer state
        unchanged (as ``optax.apply_if_finite`` does). Either way the first such step is
        recorded in ``state.nonfinite_step`` so the caller can stop with a message.

      norms: include the ``grad_norm`` and ``param_norm`` metrics (default). ``False`` drops
        them (two reductions over every parameter per step; a few % of a language model's step,
        where the embedding dominates) and leaves the update bit-identical; ``finite`` then
        checks the loss only, unless ``skip_nonfinite`` (which still checks the gradient), so a
        non-finite gradient under a finite loss is recorded one step later (the parameters then
        turn the loss non-finite).

    Metrics always include ``loss`` and ``finite``, and with ``norms`` ``grad_norm`` (before
    ``tx``) and ``param_norm`` (after the update).
    """
    tx = optax.with_extra_args_support(tx)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        k_data, k_loss, k_extra = jax.random.split(key, 3)
        data_state = state.data_state
        if data is not None:
            batch, data_state = data.update(batch, data_state, k_data)
        (loss, aux), grads = grad_fn(state.params, batch, k_loss)
        if data is not None and data.after is not None:
            data_state = data.after(batch, data_state, state.params, aux, jax.random.fold_in(k_data, 1))
        kwargs = extra_args(state.params, batch, k_extra) if extra_args is not None else {}
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **kwargs)
        params = optax.apply_updates(state.params, updates)
        grad_norm = global_norm(grads) if norms or skip_nonfinite else None
        finite = jnp.isfinite(loss) if grad_norm is None else jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            params = keep(params, state.params)
            opt_state = keep(opt_state, state.opt_state)
        nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            data_state=data_state,
            nonfinite_step=nonfinite_step,
        )
        metrics = {k: v for k, v in aux.items() if k != "logits" and jnp.ndim(v) == 0}
        metrics.update(loss=loss)
        if norms:
            metrics.update(grad_norm=grad_norm, param_norm=global_norm(params))
        metrics.update(finite=finite)
        return new_state, metrics

    return step


class NonFiniteLossError(FloatingPointError):
    """Raised after a run whose loss became NaN or infinite."""


def check_finite(nonfinite_step, *, where: str = "") -> None:
    """Raise :class:`NonFiniteLossError` naming the first bad step (host side, after a run).

    ``nonfinite_step`` may be batched (seeds, grid cells); -1 means all steps were finite.
    """
    import numpy as np

    arr = np.asarray(nonfinite_step)
    batched = arr.ndim > 0
    flat = np.atleast_1d(arr)
    bad = np.argwhere(flat >= 0)
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        step = int(flat[idx])
        run = f" (run index {idx}, e.g. the seed)" if batched else ""
        raise NonFiniteLossError(
            f"the loss became non-finite at step {step}{run}{' ' + where if where else ''}. "
            "Lower the learning rate, check the inputs for NaNs, or pass skip_nonfinite=True "
            "(CLI: --skip-nonfinite) to skip such updates as optax.apply_if_finite does."
        )
