"""What a continual-learning method is in jaxcl, and the registry of methods.

A method is a :class:`Method` value built inside the traced run from the model, the
hyperparameters (``hp``, a dict of possibly traced scalars, so sweeps are ``vmap``) and static
options: a loss, an optax transform, an optional data transform, optional extra args for the
transform, and an optional ``consolidate(state, task_batch, key) -> state`` applied at the end of
every task (a pure state change, not a hook).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import optax

from ..engine import DataTransform, LossFn


class Method(NamedTuple):
    loss_fn: LossFn
    tx: optax.GradientTransformation
    data: DataTransform | None = None
    extra_args: Callable | None = None
    consolidate: Callable | None = None
    sample_seen: bool = False  # draw batches from every task seen so far (joint training)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable  # (model, hp, params_like, **options) -> Method
    hparams: dict  # traced hyperparameters and their defaults (lr always)
    options: dict  # static options and their defaults
    summary: str


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def optimizer(name: str, lr, momentum: float = 0.0) -> optax.GradientTransformation:
    """The inner optimizer of every method (``lr`` may be traced)."""
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adam")
