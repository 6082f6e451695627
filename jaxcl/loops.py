"""Compiled loops: a task under ``lax.scan`` with continual evaluation inside, a whole stream
under a scan over tasks, and seeds / hyperparameter grids under ``vmap``.

Continual evaluation follows De Lange, van de Ven and Tuytelaars, "Continual evaluation for
lifelong learning: identifying the stability gap" (ICLR 2023): every ``eval_every`` steps the
model is evaluated on a fixed held-out subset (``eval_per_task`` test examples) of *every* task,
seen and unseen, inside the compiled loop. At each task end the model is also evaluated on the
full test set of every task, giving the accuracy matrix ``R[i, j]`` (after training task i,
tested on task j); ``R0`` is the accuracy of the initial model (for forward transfer).

Everything here is pure: ``Experiment.run(key, stream, hp)`` is one program; the stream is an
argument (never closed over), so it is not baked into the compiled code as a constant.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .batching import over_seeds
from .data.streams import Stream
from .engine import TrainState, init_state, make_step
from .losses import mean_nll
from .methods.base import Method, MethodSpec
from .models import lora
from .models.base import PureModel, check_input_shape
from .parallel import check_divides, replicated, shard_batch, shard_state


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps_per_task: int = 200
    batch_size: int = 64
    eval_every: int = 10
    eval_per_task: int = 500
    consolidate_samples: int = 256
    skip_nonfinite: bool = False
    # "sequential": step i of a task reads its training rows i*B .. i*B+B-1 (modulo its size) in the
    # stored order (a stream ordered by jaxcl.data.delt) instead of a uniform draw
    order: str = "random"

    def validate(self):
        if self.order not in ("random", "sequential"):
            raise ValueError(f"order={self.order!r}; valid: random, sequential")
        for f in ("steps_per_task", "batch_size", "eval_every", "eval_per_task", "consolidate_samples"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.steps_per_task % self.eval_every:
            raise ValueError(
                f"steps_per_task={self.steps_per_task} must be a multiple of eval_every={self.eval_every}"
            )
        if self.consolidate_samples % 32:
            raise ValueError("consolidate_samples must be a multiple of 32 (Fisher chunk size)")


def accuracy_per_task(apply_fn, params, x_TxM, y_TxM, n_T, masks_TxC, *, limit: int | None = None):
    """Accuracy of ``params`` on every task; only the first ``min(limit, n_T[t])`` examples count."""
    if limit is not None:
        x_TxM, y_TxM = x_TxM[:, :limit], y_TxM[:, :limit]
    m = y_TxM.shape[1]

    def one(x_M, y_M, n, mask_C):
        logits_MxC = apply_fn(params, x_M)
        logits_MxC = jnp.where(mask_C[None], logits_MxC, -jnp.inf)
        valid_M = jnp.arange(m) < n
        correct = ((logits_MxC.argmax(-1) == y_M) & valid_M).sum()
        return correct / jnp.maximum(jnp.minimum(n, m), 1)

    return jax.lax.map(lambda a: one(*a), (x_TxM, y_TxM, n_T, masks_TxC))


def run_chunks(
    step,
    state: TrainState,
    draw,
    evaluate,
    n_chunks: int,
    chunk_len: int,
    *,
    eval_state: bool = False,
    mesh=None,
):
    """The one training loop: ``n_chunks`` chunks of ``chunk_len`` steps under nested
    ``lax.scan``, each chunk followed by ``evaluate(params) -> dict`` (continual evaluation).

    ``draw(key) -> batch`` with ``key = fold_in(fold_in(state.key, 0x5EED), state.step)``: batches
    depend only on the run's key and the step counter, so splitting the chunks over several
    calls (to checkpoint) gives the same run as one call. Returns the state and the trace
    ``{eval keys: (n_chunks, ...), metric: (n_chunks,)}`` (step metrics averaged per chunk).
    ``eval_state=True``: ``evaluate`` receives the whole :class:`TrainState` instead. ``mesh``
    with a ``model`` axis: the state (parameters, optimizer and method states) is kept sharded
    over it from step to step (:func:`jaxcl.parallel.shard_state`, FSDP).
    """
    batch_key = jax.random.fold_in(state.key, 0x5EED)
    state = shard_state(state, mesh)

    def one_step(s, _):
        s, m = step(s, draw(jax.random.fold_in(batch_key, s.step)))
        return shard_state(s, mesh), m

    def chunk(s, _):
        s, m = jax.lax.scan(one_step, s, None, length=chunk_len)
        means = {k: v.astype(jnp.float32).mean() for k, v in m.items()}
        return s, {**evaluate(s if eval_state else s.params), **means}

    return jax.lax.scan(chunk, state, None, length=n_chunks)


def build_method(spec: MethodSpec, model, hp: dict, options: dict) -> Method:
    """``spec.build`` with the abstract parameters of ``model`` (nothing is computed)."""
    params_like = jax.eval_shape(model.init, jax.random.key(0))
    return spec.build(model, hp, params_like, **options)


SCHEDULE_FIELDS = ("consolidate", "sample_seen", "edit", "predict", "rollout")


def method_step(method: Method, *, name: str = "the method", handles=(), skip_nonfinite=False, norms=True):
    """The one road from a :class:`~jaxcl.methods.base.Method` to a step ``(state, batch) ->
    (state, metrics)``: :func:`jaxcl.engine.make_step` with its loss, gradient transform, data
    transform and extra args, and the non-finite guard. The fields a schedule must run itself
    (``consolidate`` at task ends, ``sample_seen`` batches, an ``edit`` after training, ``predict``
    at evaluation, a ``rollout``) are refused by name unless the caller lists them in
    ``handles``, so no schedule drops a method's term silently."""
    for field in SCHEDULE_FIELDS:
        if field not in handles and getattr(method, field) not in (None, False):
            raise ValueError(
                f"{name} needs its {field!r} run by the schedule, and this study's schedule does not run it; "
                "choose a method this study supports"
            )
    if not method.trains:
        raise ValueError(f"{name} is an edit without training steps; this schedule needs a training method")
    return make_step(
        method.loss_fn,
        method.tx,
        method.data,
        extra_args=method.extra_args,
        skip_nonfinite=skip_nonfinite,
        norms=norms,
    )


def method_state(
    method: Method, params, key, example: dict | None = None, *, mesh=None, frozen=()
) -> TrainState:
    """The train state a :func:`method_step` starts from (the data transform's state built from
    ``example`` when the method has one); on ``mesh``'s ``model`` axis, sharded over it
    (:func:`jaxcl.parallel.shard_state`); ``frozen``: what the state carries untouched (a LoRA
    run's base)."""
    return shard_state(init_state(params, method.tx, key, method.data, example).replace(frozen=frozen), mesh)


def as_hparams(spec: MethodSpec, values: dict | None = None) -> dict:
    """A method's traced hyperparameters as float32 arrays (defaults, overridden by ``values``,
    each checked against its valid range)."""
    hp, _ = spec.split(dict(values or {}))
    return {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}


class Experiment:
    """A model, a method and a loop configuration, as pure functions of ``(key, stream, hp)``."""

    def __init__(
        self,
        model: PureModel,
        method: MethodSpec,
        loop: LoopConfig,
        *,
        mesh: jax.sharding.Mesh | None = None,
        **options: Any,
    ):
        """``mesh``: an optional ``(seeds, data, model)`` mesh (:func:`jaxcl.parallel.make_mesh`);
        batches are then sharded over ``data`` inside the compiled loop and the train state over
        ``model``."""
        loop.validate()
        if isinstance(getattr(model, "lora", None), lora.LoraSpec):
            from .config import ConfigError

            raise ConfigError(
                "model.lora.rank > 0: a continual-learning stream trains its model from a random "
                "initialisation, and LoRA adapts given weights; set model.lora.rank=0"
            )
        check_divides(mesh, batch_size=loop.batch_size)
        self.mesh = mesh
        _, self.options = method.split(options)  # unknown or invalid options fail here
        self.model, self.spec, self.loop = model, method, loop

    # -- pieces --------------------------------------------------------------------------------
    def default_hparams(self, **overrides) -> dict:
        return as_hparams(self.spec, overrides)

    def _method(self, hp):
        return build_method(self.spec, self.model, hp, self.options)

    def _apply(self, method: Method, state: TrainState):
        """The classifier evaluated: ``method.predict`` with the state's data (iCaRL, BiC) or
        the model."""
        if method.predict is None:
            return self.model.apply
        return lambda p, x: method.predict(p, state.data_state, x)

    def _batch(self, stream, t, key, method, size):
        k_task, k_idx = jax.random.split(key)
        if method.sample_seen:
            t_B = jax.random.randint(k_task, (size,), 0, t + 1)
        else:
            t_B = jnp.full((size,), t, jnp.int32)
        idx_B = jax.random.randint(k_idx, (size,), 0, stream.train_n[t_B])
        batch = {
            "x": stream.train_x[t_B, idx_B],
            "y": stream.train_y[t_B, idx_B],
            "t": t_B,
            "mask": stream.masks[t_B],
        }
        return shard_batch(batch, self.mesh)

    def check(self, stream: Stream) -> None:
        """Shape checks that run before any compilation."""
        check_input_shape(self.model, stream.input_shape)
        if stream.n_classes != self.model.n_classes:
            raise ValueError(
                f"the stream has {stream.n_classes} classes but model {self.model.name!r} "
                f"has {self.model.n_classes} outputs"
            )

    # -- pure functions ------------------------------------------------------------------------
    def init(self, key, stream: Stream, hp: dict) -> TrainState:
        method = self._method(hp)
        k_init, k_run = jax.random.split(jax.random.key(0) if key is None else key)
        params = self.model.init(k_init)
        example = self._batch(stream, 0, k_init, method, self.loop.batch_size)
        return shard_state(init_state(params, method.tx, k_run, method.data, example), self.mesh)

    def train_chunks(
        self, state: TrainState, stream: Stream, hp: dict, t, n_chunks: int
    ) -> tuple[TrainState, dict]:
        """``n_chunks`` chunks of ``eval_every`` steps on task ``t`` (traced), each followed by an
        evaluation on every task. Splitting a task into several calls (to checkpoint every N
        steps) gives the same result as one call: batches depend only on the state's step."""
        cfg = self.loop
        method = self._method(hp)
        step = method_step(
            method,
            name=self.spec.name,
            handles=("consolidate", "sample_seen", "predict"),
            skip_nonfinite=cfg.skip_nonfinite,
        )
        draw = lambda key: self._batch(stream, t, key, method, cfg.batch_size)
        if cfg.order == "sequential" and not method.sample_seen:
            step = self._read_in_order(step, stream, t)

        def evaluate(s):
            acc_T = accuracy_per_task(
                self._apply(method, s),
                s.params,
                stream.test_x,
                stream.test_y,
                stream.test_n,
                stream.masks,
                limit=cfg.eval_per_task,
            )
            return {"acc": acc_T}

        return run_chunks(
            step, state, draw, evaluate, n_chunks, cfg.eval_every, eval_state=True, mesh=self.mesh
        )

    def _read_in_order(self, step, stream: Stream, t):
        """``step`` on the task's rows in stored order (``loop.order = "sequential"``); the uniform
        draw it is handed is unused (and removed by the compiler)."""
        b, steps = self.loop.batch_size, self.loop.steps_per_task

        def ordered(state, batch):
            del batch
            pos = state.step - t * steps
            idx_B = (pos * b + jnp.arange(b)) % stream.train_n[t]
            rows = {
                "x": stream.train_x[t, idx_B],
                "y": stream.train_y[t, idx_B],
                "t": jnp.full((b,), t, jnp.int32),
                "mask": jnp.broadcast_to(stream.masks[t], (b, stream.masks.shape[1])),
            }
            return step(state, shard_batch(rows, self.mesh))

        return ordered

    def end_task(self, state: TrainState, stream: Stream, hp: dict, t) -> tuple[TrainState, jax.Array]:
        """Consolidate after task ``t`` (a state change) and evaluate on the full test sets:
        row ``t`` of the accuracy matrix."""
        method = self._method(hp)
        if method.consolidate is not None:
            k = jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), -1 - t)
            n = self.loop.consolidate_samples
            idx = jax.random.randint(k, (n,), 0, stream.train_n[t])
            task_batch = {
                "x": stream.train_x[t, idx],
                "y": stream.train_y[t, idx],
                "t": jnp.full((n,), t, jnp.int32),
                "mask": stream.masks[t][None].repeat(n, 0),
            }
            state = method.consolidate(state, task_batch, k)
        r_row = accuracy_per_task(
            self._apply(method, state),
            state.params,
            stream.test_x,
            stream.test_y,
            stream.test_n,
            stream.masks,
        )
        return state, r_row

    def one_step(self, state: TrainState, stream: Stream, hp: dict, t=0) -> tuple[TrainState, dict]:
        """One training step on task ``t``: the per-step program of the compile check
        (:mod:`jaxcl.compile`), the step :meth:`train_chunks` loops over."""
        method = self._method(hp)
        step = method_step(
            method,
            name=self.spec.name,
            handles=("consolidate", "sample_seen", "predict"),
            skip_nonfinite=self.loop.skip_nonfinite,
        )
        key = jax.random.fold_in(state.key, state.step)
        return step(state, self._batch(stream, t, key, method, self.loop.batch_size))

    @property
    def chunks_per_task(self) -> int:
        return self.loop.steps_per_task // self.loop.eval_every

    def train_task(self, state: TrainState, stream: Stream, hp: dict, t) -> tuple[TrainState, dict]:
        """Train on task ``t`` (traced) for ``steps_per_task`` steps, evaluating every
        ``eval_every`` steps on all tasks; consolidate; evaluate on the full test sets."""
        state, trace = self.train_chunks(state, stream, hp, t, self.chunks_per_task)
        state, r_row = self.end_task(state, stream, hp, t)
        return state, {"trace": trace, "R": r_row}

    def initial_accuracy(self, state: TrainState, stream: Stream, hp: dict | None = None) -> jax.Array:
        apply_fn = self.model.apply if hp is None else self._apply(self._method(hp), state)
        return accuracy_per_task(
            apply_fn, state.params, stream.test_x, stream.test_y, stream.test_n, stream.masks
        )

    def run(self, key, stream: Stream, hp: dict) -> dict:
        """The whole stream as one program: ``lax.scan`` over tasks of :meth:`train_task`."""
        state = self.init(key, stream, hp)
        r0 = self.initial_accuracy(state, stream, hp)
        state, out = jax.lax.scan(
            lambda s, t: self.train_task(s, stream, hp, t), state, jnp.arange(stream.n_tasks)
        )
        return {
            "R0": r0,
            "R": out["R"],
            "trace": out["trace"],
            "nonfinite_step": state.nonfinite_step,
            "final_params": state.params,
        }


def seeds_keys(seed: int, n: int) -> jax.Array:
    """Run keys of seeds ``0..n-1`` under the integer ``seed``: seed i's key is
    ``fold_in(key(seed), i)``, the same whatever ``n`` (``--seeds 1`` runs seed 0 of a 5-seed run)."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


def vmap_seeds(fn, exp: Experiment, in_axes):
    """Over seeds: ``vmap`` (with a mesh, the seed axis sharded over its ``seeds`` axis), or a
    compiled ``lax.map`` for convolutional models on the CPU (:mod:`jaxcl.batching`)."""
    if exp.mesh is None:
        return over_seeds(fn, in_axes, model=exp.model)
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name="seeds")


def run_seeds(exp: Experiment, stream: Stream, hp: dict, keys) -> dict:
    """Run every key in ``keys`` as one vmapped, jitted program (sharded when ``exp.mesh``)."""
    exp.check(stream)
    fn = vmap_seeds(exp.run, exp, (0, None, None))
    if exp.mesh is None:
        return jax.jit(fn)(keys, stream, hp)
    check_divides(exp.mesh, batch_size=exp.loop.batch_size, n_seeds=len(keys))
    rep = replicated(exp.mesh)
    keys = jax.device_put(keys, jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec("seeds")))
    stream, hp = jax.device_put((stream, hp), rep)
    return jax.jit(fn)(keys, stream, hp)


def run_grid(exp: Experiment, stream: Stream, hp_grid: dict, keys) -> dict:
    """Every (hyperparameter cell, seed) pair as one program: ``vmap`` over cells of ``vmap``
    over seeds (compiled loops instead for convolutional models on the CPU, see
    :mod:`jaxcl.batching`). ``hp_grid`` leaves have a leading axis of cells."""
    exp.check(stream)
    per_cell = over_seeds(exp.run, (0, None, None), model=exp.model)
    fn = jax.jit(over_seeds(per_cell, (None, None, 0), model=exp.model))
    return fn(keys, stream, hp_grid)


# -- unlearning and fine-tuning phases on a forgetting problem --------------------------------


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """One training phase on a problem (unlearning, or training the original / the oracle)."""

    steps: int = 15
    batch_size: int = 64
    eval_every: int = 5
    eval_size: int = 400  # examples of the forget and the retain set in the continual evaluation
    skip_nonfinite: bool = False

    def validate(self, where: str = "phase"):
        for f in ("steps", "batch_size", "eval_every", "eval_size"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{where}.{f} must be positive, got {getattr(self, f)}")
        if self.steps % self.eval_every:
            raise ValueError(
                f"{where}.steps={self.steps} must be a multiple of {where}.eval_every={self.eval_every}"
            )
        return self


def changed_fraction(before, after):
    """The fraction of parameter entries that differ between two trees of the same structure: what
    an edit (SSD, IAU, the curvature edit) changed, so an edit that selects nothing is seen."""
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(a != b, dtype=jnp.float32), before, after))
    size = sum(a.size for a in jax.tree.leaves(before))
    return sum(diff) / max(size, 1)


class Phase:
    """A model, a method and a :class:`PhaseConfig` as one pure function
    ``run(params, key, problem, hp) -> {'params', 'trace', 'nonfinite_step'}``.

    ``problem`` follows the protocol of :class:`jaxcl.unlearn.common.UnlearnData` (``draw(key, n)``
    and the ``forget_set`` / ``retain_set`` / ``train_set`` sub-batches); every argument is traced,
    so one compiled program serves all seeds (``over_seeds``) and hyperparameter cells. The
    method's ``consolidate`` runs first (the starting model becomes the reference: NPO), then
    :func:`run_chunks` with the forget and retain NLL evaluated every ``eval_every`` steps, then
    the method's edit (SSD, IAU). A model with a ``lora`` spec (``model.lora.rank > 0``): the
    method trains and edits low-rank adapters over the frozen ``params``
    (:func:`jaxcl.models.lora.adapt`; the base travels in ``TrainState.frozen``, an argument),
    and ``run`` returns the merged params; a method that edits the weights themselves
    (``MethodSpec.full_weights``: SSD, the curvature edit) gets the full ``params`` instead, since
    fresh adapters (B = 0) would leave its edit nothing to change.
    """

    def __init__(self, model, method: MethodSpec, phase: PhaseConfig, *, mesh=None, **options: Any):
        self.phase = phase.validate()
        check_divides(mesh, batch_size=phase.batch_size)
        _, self.options = method.split(options)
        if "rank" in self.options and self.options["rank"] > phase.steps:
            raise ValueError(
                f"{method.name}.rank={self.options['rank']} is larger than the history of retain gradients "
                f"({phase.steps} steps): the basis could never fill; lower the rank or raise the steps"
            )
        self.model, self.spec, self.mesh = model, method, mesh
        spec = getattr(model, "lora", None)
        # an edit of the model's own weights (SSD) gets them whole: on fresh adapters it is a no-op
        self.lora = spec if isinstance(spec, lora.LoraSpec) and not method.full_weights else None
        if method.needs_lora and self.lora is None:
            raise ValueError(
                f"{method.name} trains LoRA adapters only and the model has none: set model.lora.rank=8"
            )

    def bound(self, frozen):
        """The model the method trains: ``self.model``, or with LoRA (the model's ``lora``, a
        :class:`jaxcl.models.lora.LoraSpec`) the model whose params are adapters over ``frozen``,
        the base (traced: call inside the program)."""
        return self.model if self.lora is None else lora.adapt(self.model, self.lora, frozen)

    def params(self, state: TrainState):
        """The state's model as ordinary params: with LoRA, the adapters merged into the base."""
        return state.params if self.lora is None else lora.merge(self.lora, state.frozen, state.params)

    def evaluate(self, params, problem, model=None) -> dict:
        nll = mean_nll(model or self.model)
        cap = lambda sub: jax.tree.map(lambda a: a[: self.phase.eval_size], sub)
        return {
            "forget_nll": nll(params, cap(problem.forget_set)),
            "retain_nll": nll(params, cap(problem.retain_set)),
        }

    def _draw(self, problem):
        return lambda k: shard_batch(problem.draw(k, self.phase.batch_size), self.mesh)

    def _step(self, method):
        handles = ("consolidate", "edit")
        return method_step(
            method, name=self.spec.name, handles=handles, skip_nonfinite=self.phase.skip_nonfinite
        )

    def _trained(self, params, key):
        """``(params the method trains, frozen)``: ``(params, ())``, or with LoRA fresh adapters
        (``fold_in(key, lora.KEY)``) and the base ``params``."""
        if self.lora is None:
            return params, ()
        return lora.init(self.lora, params, jax.random.fold_in(key, lora.KEY)), params

    def start(self, params, key, problem, hp: dict, method=None):
        """The train state the loop starts from (``key``: the state's key; the method's
        ``consolidate`` applied: NPO's reference); with LoRA, its params are the adapters and
        ``frozen`` the base ``params``."""
        method = method or build_method(self.spec, self.bound(params), hp, self.options)
        example = self._draw(problem)(key)
        trained, frozen = self._trained(params, key)
        state = init_state(trained, method.tx, key, method.data, example).replace(frozen=frozen)
        state = shard_state(state, self.mesh)
        if method.consolidate is not None:
            state = shard_state(method.consolidate(state, example, key), self.mesh)
        return state

    def one_step(self, state, problem, hp: dict):
        """One training step from ``state`` (:meth:`start`), the batch drawn as
        :func:`run_chunks` draws it: the per-step program of the compile check."""
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), state.step)
        method = build_method(self.spec, self.bound(state.frozen), hp, self.options)
        return self._step(method)(state, self._draw(problem)(key))

    def run(self, params, key, problem, hp: dict) -> dict:
        """With LoRA, the method trains (and edits) adapters over the frozen ``params``; the
        returned params are merged. ``edit_changed``: the fraction of the (trained) parameters the
        method's edit changed (:func:`changed_fraction`; -1 for a method without an edit)."""
        cfg = self.phase
        model = self.bound(params)
        method = build_method(self.spec, model, hp, self.options)
        k_state, k_edit = jax.random.split(key)
        trace, nonfinite = {}, jnp.full((), -1, jnp.int32)
        out = self._trained(params, k_state)[0]
        if method.trains:
            state = self.start(params, k_state, problem, hp, method)
            state, trace = run_chunks(
                self._step(method),
                state,
                self._draw(problem),
                lambda p: self.evaluate(p, problem, model),
                cfg.steps // cfg.eval_every,
                cfg.eval_every,
                mesh=self.mesh,
            )
            out, nonfinite = state.params, state.nonfinite_step
        changed = jnp.full((), -1.0, jnp.float32)
        if method.edit is not None:
            edited = method.edit(out, problem, hp, k_edit)
            changed = changed_fraction(out, edited)
            out = edited
        merged = out if self.lora is None else lora.merge(self.lora, params, out)
        return {"params": merged, "trace": trace, "nonfinite_step": nonfinite, "edit_changed": changed}
