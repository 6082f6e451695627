"""From an NNX module to a pure model: ``init(key) -> params`` and ``apply(params, x) -> logits``.

The module is split once (``nnx.split(model, nnx.Param)``); the graph definition is static and
the parameters are a plain pytree, so ``init`` works under ``vmap`` (one model per seed) and
``apply`` under ``jit``/``grad``/``vmap`` with no NNX machinery in the hot loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class PureModel(NamedTuple):
    init: Callable  # key -> params
    apply: Callable  # (params, x_BxHxWxC) -> logits_BxC
    features: Callable  # (params, x) -> penultimate features_BxF
    input_shape: tuple
    n_classes: int
    name: str
    lora: object = None  # a LoraSpec (model.lora, jaxcl.models.lora), "adapters" (lora.adapt), or None


def pure(build: Callable[[nnx.Rngs], nnx.Module], input_shape: tuple, n_classes: int, name: str) -> PureModel:
    """Wrap ``build(rngs) -> module`` (a module with ``__call__`` and ``features``)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param)

    def init(key):
        module = build(nnx.Rngs(params=key))
        state = nnx.split(module, nnx.Param)[1]
        return nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()

    def apply(params, x):
        return nnx.merge(graphdef, params)(x)

    def features(params, x):
        return nnx.merge(graphdef, params).features(x)

    return PureModel(init, apply, features, tuple(input_shape), n_classes, name)


def to_float(x_BxHxWxC: jax.Array) -> jax.Array:
    """uint8 pixels to floats in [-1, 1]; float inputs are passed through."""
    if jnp.issubdtype(x_BxHxWxC.dtype, jnp.integer):
        return x_BxHxWxC.astype(jnp.float32) / 127.5 - 1.0
    return x_BxHxWxC


def check_input_shape(model: PureModel, x_shape: tuple) -> None:
    """Raise a clear error, before any compilation, when data and model disagree."""
    want = tuple(model.input_shape)
    got = tuple(x_shape)
    if want != got:
        raise ValueError(
            f"model {model.name!r} expects inputs of shape {want} (H, W, C) but the "
            f"data has examples of shape {got}; build the model with "
            f"input_shape={got} or pick a data set of the right shape"
        )
