"""What a method is in jaxcl, and the one registry of methods (continual learning and unlearning,
classifiers and language models).

A method is one file that registers one :class:`MethodSpec`: a name, a ``build`` function, its
traced hyperparameters (:class:`Hparam`, with defaults and valid ranges; swept by ``vmap``), its
static options (with defaults), the paper and a one-line summary. Inside the traced run,
``build(model, hp, params_like, **options)`` returns a :class:`Method` value made of the four
levels' pieces:

* a loss ``LossFn = (params, batch, key) -> (loss, aux)`` (possibly wrapped),
* an optax ``GradientTransformationExtraArgs`` (with ``extra_args`` feeding its keyword inputs),
* an optional data transform (``init / update``, state on the device),
* an optional edit ``(params, data, hp, key) -> params`` applied after the training steps
  (``trains=False`` for methods that are only an edit, such as SSD),
* an optional ``consolidate(state, batch, key) -> state``: a pure state change when what has been
  learned so far becomes the past (end of a task in continual learning; the start of an
  unlearning phase, where it makes the original model the reference),
* an optional ``predict(params, data_state, x) -> logits``: the classifier used at evaluation
  when it is not the trained network alone (iCaRL's nearest mean of exemplars from its buffer,
  BiC's bias correction); :class:`jaxcl.loops.Experiment` evaluates with it.

``kind`` says which problems a method applies to: ``"cl"`` (a stream of tasks), ``"unlearn"`` (a
forgetting problem: batches carry the retain data at the top level and ``batch['forget']``), or
``"any"`` (both: fine-tuning).

A method may also join a chain ``base+modifier+...`` (:mod:`.compose`) after a base: its
:class:`Joins` says how (its modifier form, the kinds of bases it joins, whether it is only a
modifier). ``get_method("ewc+gu")`` returns the composed spec.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import optax

from ..engine import DataTransform, LossFn

KINDS = ("cl", "unlearn", "any", "rl")


class Method(NamedTuple):
    loss_fn: LossFn | None
    tx: optax.GradientTransformation | None
    data: DataTransform | None = None
    extra_args: Callable | None = None
    consolidate: Callable | None = None
    sample_seen: bool = False  # draw batches from every task seen so far (joint training)
    edit: Callable | None = None  # (params, data, hp, key) -> params, after the training steps
    trains: bool = True  # False: the method is only an edit (no training steps)
    rollout: Any = None  # RL methods: a jaxcl.grpo.Rollout (fn, mu); iterations by grpo.make_iteration
    # classifiers: (params, data_state, x) -> logits used at evaluation instead of model.apply (iCaRL's
    # nearest-mean-of-exemplars, BiC's bias layer); None: model.apply
    predict: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Hparam:
    """A traced hyperparameter: its default and the valid interval (``None``: unbounded)."""

    default: float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the interval excludes ``low`` (e.g. a learning rate > 0)
    help: str = ""

    def describe(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}]"

    def check(self, key: str, value) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}={value!r} is not a number; valid: a number in {self.describe()}"
            ) from None
        bad = not math.isfinite(v)
        bad |= self.low is not None and (v <= self.low if self.low_open else v < self.low)
        bad |= self.high is not None and v > self.high
        if bad:
            raise ValueError(f"{key}={value!r} is out of range; valid: {self.describe()}")
        return v


LR = lambda default: Hparam(default, 0.0, None, low_open=True, help="learning rate")  # noqa: E731


@dataclasses.dataclass(frozen=True)
class Joins:
    """How a method joins a chain ``base+modifier+...`` after its base (:mod:`.compose`).

    ``build(model, hp, params_like, **options) -> compose.Modifier`` is its modifier form (a loss
    wrapper, a gradient transform placed before the base's optimizer, a data transform, extra
    args, a consolidate), built from its own section minus ``lr`` and the optimizer options
    (the base's optimizer is the chain's). ``kinds``: the kinds of bases it joins. ``alone``:
    False for a piece that is only a modifier (refused alone and as a base). ``rows``: its data
    transform replaces rows of the batch (replay), so it runs before every other piece's data
    transform (which then see the replayed rows). ``conflicts``: ``fnmatch`` patterns of pieces it
    cannot share a chain with, and why. ``base_defaults``: ``(pattern, hparam, value)``, its own
    default of ``hparam`` in a chain whose base matches the ``fnmatch`` pattern (a paper's value
    per base method)."""

    build: Callable
    kinds: tuple[str, ...]
    alone: bool = True
    rows: bool = False
    conflicts: tuple[tuple[str, str], ...] = ()
    base_defaults: tuple[tuple[str, str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable  # (model, hp, params_like, **options) -> Method
    hparams: dict[str, Hparam]  # traced hyperparameters (``lr`` for every method that trains)
    options: dict[str, Any]  # static options and their defaults
    summary: str
    kind: str = "cl"
    paper: str = ""
    choices: dict[str, tuple] = dataclasses.field(default_factory=dict)  # valid values of options
    joins: Joins | None = None  # its modifier form in a chain ``base+this`` (None: a base only)
    # it trains LoRA adapters only (GS-LoRA): a phase refuses a model without ``model.lora``
    needs_lora: bool = False
    # it edits the model's own weights (SSD's dampening, the curvature edit's projections): with
    # ``model.lora`` a phase gives it the full weights, as fresh adapters (B = 0) leave it nothing to
    # edit (the merged model would be the unedited one)
    full_weights: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def alone(self) -> bool:
        """Whether it runs alone (and as a chain's base); False for a modifier-only piece."""
        return self.joins is None or self.joins.alone

    def applies_to(self, kind: str) -> bool:
        return self.alone and (self.kind == "any" or self.kind == kind)

    def defaults(self) -> dict:
        return {**{k: h.default for k, h in self.hparams.items()}, **self.options}

    def split(self, section: dict) -> tuple[dict, dict]:
        """A config section ``{name: value}`` as checked ``(hparams, options)``."""
        unknown = set(section) - set(self.hparams) - set(self.options)
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no setting(s) {sorted(unknown)}; valid: "
                f"{', '.join(sorted(self.defaults()))}"
            )
        hp = {k: h.check(f"{self.name}.{k}", section.get(k, h.default)) for k, h in self.hparams.items()}
        opts = {k: section.get(k, v) for k, v in self.options.items()}
        for k, valid in self.choices.items():
            if opts[k] not in valid:
                raise ValueError(
                    f"{self.name}.{k}={opts[k]!r} is not valid; valid: {', '.join(map(str, valid))}"
                )
        return hp, opts


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str, kind: str | None = None) -> MethodSpec:
    """The registered method ``name``, or the chain ``a+b+...`` composed (:mod:`.compose`)."""
    if "+" in name:
        from .compose import compose

        return compose(name, kind)
    if name in METHODS and not METHODS[name].alone:
        from .compose import alone_error

        raise ValueError(alone_error(name))
    valid = sorted(n for n, s in METHODS.items() if kind is None or s.applies_to(kind))
    if name not in METHODS or (kind is not None and not METHODS[name].applies_to(kind)):
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(valid)}")
    return METHODS[name]


OPTIMIZERS = ("sgd", "adam", "adamw")
OPTIMIZER_OPTIONS = {
    "optim": "adam",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "clip_norm": 0.0,
    "warmup_cosine_steps": 0,
    "lr_restart_every": 0,
}


def optimizer(
    name: str,
    lr,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    clip_norm: float = 0.0,
    warmup_cosine_steps: int = 0,
    lr_restart_every: int = 0,
) -> optax.GradientTransformation:
    """The inner optimizer of every method (``lr`` may be traced).

    ``clip_norm > 0`` clips the global gradient norm first; ``warmup_cosine_steps = N > 0`` warms
    the learning rate up linearly over N/10 steps and decays it by a cosine to lr/10 at step N
    (TOFU's fine-tuning recipe); ``lr_restart_every = M > 0`` restarts that schedule every M
    steps (re-warming at each new domain of continual pre-training: Gupta et al., "Continual
    Pre-Training of Large Language Models: How to (re)warm your model?", 2023).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    sched = lr
    if warmup_cosine_steps:
        warm = max(1, warmup_cosine_steps // 10)
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, max(warmup_cosine_steps, warm + 1), 0.1)
        if lr_restart_every:
            sched = lambda count: lr * unit(count % lr_restart_every)
        else:
            sched = lambda count: lr * unit(count)  # lr may be traced (swept)
    if name == "sgd":
        tx = optax.sgd(sched, momentum=momentum or None)
    elif name == "adam":
        tx = optax.adam(sched)
    else:
        tx = optax.adamw(sched, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def optimizer_from(options: dict, lr) -> optax.GradientTransformation:
    """:func:`optimizer` from a method's options (those of :data:`OPTIMIZER_OPTIONS`)."""
    return optimizer(
        options["optim"],
        lr,
        options["momentum"],
        weight_decay=options["weight_decay"],
        clip_norm=options["clip_norm"],
        warmup_cosine_steps=options["warmup_cosine_steps"],
        lr_restart_every=options.get("lr_restart_every", 0),
    )


def pop_optimizer(options: dict) -> dict:
    """Split the optimizer's options off a build's ``**options`` (returns them, removes them)."""
    return {k: options.pop(k, v) for k, v in OPTIMIZER_OPTIONS.items()}
