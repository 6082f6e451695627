"""One language-model training program: a model of :mod:`jaxcl.models.lm`, one registry method
and the one loop (:func:`jaxcl.loops.run_chunks`), as pure functions of ``(key, data, hp)`` that
the studies jit and vmap over seeds (``lm``, ``lm-memory``, ``sort``, ``lm-junk``).

A study gives what is its own: ``draw(data, key) -> batch`` (its training rows, drawn inside the
compiled loop with ``key = fold_in(fold_in(state.key, 0x5EED), state.step)``) and
``evaluate(params, data) -> dict`` (its in-loop evaluation), either as arguments or by overriding
the methods; optionally ``wrap(step, data)`` around the registry's step (e.g. injected rows). The
data is an argument of every program, never a constant inside it; the hyperparameters are traced
where the study passes them (``hp``) and constants where it uses :attr:`LMProgram.hp` inside.

An RL method of the registry (``grpo``) runs on the same loop when the study gives the reward
environment (``env``, :class:`jaxcl.grpo.Env`): its ``draw`` then returns prompt rows
(``prompt``, ``prompt_valid`` and what the reward and the model's context read) and a step is one
RL iteration (:func:`jaxcl.grpo.make_iteration`: rollouts, rewards, the policy updates).
"""

from __future__ import annotations

import jax

from . import grpo
from .config import method_settings
from .loops import as_hparams, build_method, method_state, method_step, run_chunks
from .methods import get_method
from .models import lora
from .parallel import jit_seeds


class LMProgram:
    """Method ``method``'s training of ``model`` with the config's ``<method>`` section (its
    hyperparameters, overridden by ``hp``, and its options, extended by ``opts``), evaluated
    every ``eval_every`` steps. ``pretrained``: the parameters training starts from (``None``: a
    random initialisation). ``mesh``: seeds over its ``seeds`` axis (:meth:`programs`), the
    study's ``draw`` shards every batch over its ``data`` axis. ``name``, ``handles``, ``norms``:
    :func:`jaxcl.loops.method_step`'s. A model with a ``lora`` spec (``model.lora.rank > 0``):
    the method trains low-rank adapters over the frozen initial parameters (the pretrained ones,
    or each seed's random initialisation), which travel in ``TrainState.frozen``; the study's
    ``evaluate`` sees the merged parameters, as does :meth:`params`."""

    def __init__(
        self,
        model,
        cfg: dict,
        method: str = "finetune",
        *,
        eval_every: int,
        hp: dict | None = None,
        opts: dict | None = None,
        pretrained=None,
        mesh=None,
        draw=None,
        evaluate=None,
        name: str | None = None,
        handles=(),
        norms: bool = True,
        env=None,
    ):
        self.model, self.pretrained, self.mesh, self.eval_every = model, pretrained, mesh, eval_every
        spec = getattr(model, "lora", None)
        self.lora = spec if isinstance(spec, lora.LoraSpec) else None
        self.spec = get_method(method)
        values, options = method_settings(cfg, self.spec.name)
        self.opts = {**options, **(opts or {})}
        self.hp = as_hparams(self.spec, {**values, **(hp or {})})
        self.name, self.handles, self.norms = name or self.spec.name, handles, norms
        self.env = env
        if self.spec.kind == "rl" and env is None:
            raise ValueError(f"{self.spec.name} is an RL method: give the study's reward environment (env)")
        if draw is not None:
            self.draw = draw
        if evaluate is not None:
            self.evaluate = evaluate
        self._programs = {}

    # -- the study's parts -----------------------------------------------------------------------

    def draw(self, data, key) -> dict:
        raise NotImplementedError("give draw(data, key) -> batch")

    def evaluate(self, params, data) -> dict:
        raise NotImplementedError("give evaluate(params, data) -> dict")

    def wrap(self, step, data):
        """The step the loop runs (the registry's, unchanged here)."""
        return step

    # -- pure functions ----------------------------------------------------------------------------

    def method(self, hp, frozen=()):
        """The registry's method on :attr:`model`, or with LoRA on the adapters over ``frozen``."""
        model = self.model if self.lora is None else lora.adapt(self.model, self.lora, frozen)
        return build_method(self.spec, model, hp, self.opts)

    def params(self, state):
        """The state's model as ordinary params: with LoRA, the adapters merged into the base."""
        return state.params if self.lora is None else lora.merge(self.lora, state.frozen, state.params)

    def init(self, key, params0, hp, data=None):
        """The train state of one seed: ``key`` split into the initialisation's and the run's,
        the parameters ``params0`` (``None``: ``model.init``); ``data``: a batch drawn from it
        builds the method's data-transform state (replay)."""
        k_init, k_run = jax.random.split(key)
        params = self.model.init(k_init) if params0 is None else params0
        example = None if data is None else self.draw(data, k_init)
        if example is not None and self.spec.kind == "rl":  # a rollout-shaped batch of the prompts
            example = grpo.example_batch(
                example,
                group_size=int(self.opts["group_size"]),
                max_new_tokens=int(self.opts["max_new_tokens"]),
                pad_id=self.env.pad_id,
                mu=int(self.opts["mu"]),
                context_keys=getattr(self.model, "prefix_keys", ()),
            )
        return self.start(params, k_run, hp, example)

    def start(self, params, key, hp, example=None):
        """The train state from ``params`` with the run's ``key`` (:func:`jaxcl.loops.method_state`);
        with LoRA, fresh adapters (``fold_in(key, lora.KEY)``) over the frozen ``params``."""
        method = self.method(hp, params)
        if self.lora is None:
            return method_state(method, params, key, example, mesh=self.mesh)
        adapters = lora.init(self.lora, params, jax.random.fold_in(key, lora.KEY))
        return method_state(method, adapters, key, example, mesh=self.mesh, frozen=params)

    def step(self, hp, frozen=()):
        """The step the loop runs before :meth:`wrap`: the registry's training step, or for an RL
        method one iteration of rollouts and updates (:func:`jaxcl.grpo.make_iteration`)."""
        method = self.method(hp, frozen)
        if self.spec.kind == "rl":
            return grpo.make_iteration(method, self.env, mesh=self.mesh)
        return method_step(method, name=self.name, handles=self.handles, norms=self.norms)

    def call(self, state, hp, data, n_chunks: int):
        """``n_chunks`` chunks of ``eval_every`` steps of the method's step, each followed by
        :meth:`evaluate`: ``(state, trace)`` of :func:`jaxcl.loops.run_chunks`."""
        step = self.step(hp, state.frozen)
        merged = (lambda p: p) if self.lora is None else (lambda p: lora.merge(self.lora, state.frozen, p))
        return run_chunks(
            self.wrap(step, data),
            state,
            lambda k: self.draw(data, k),
            lambda p: self.evaluate(merged(p), data),
            n_chunks,
            self.eval_every,
            mesh=self.mesh,
        )

    def one_step(self, state, hp, data):
        """One training step, the batch drawn as :func:`jaxcl.loops.run_chunks` draws it: the
        per-step program of the compile check (:mod:`jaxcl.compile`)."""
        step = self.step(hp, state.frozen)
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), state.step)
        return self.wrap(step, data)(state, self.draw(data, key))

    def programs(self, C: int):
        """``(init(keys, params0, hp), evaluate(state, data), call(state, hp, data))``, ``call``
        of ``C`` chunks, jitted over seeds and kept (a resumed run compiles nothing new)."""
        if C not in self._programs:
            init = jit_seeds(self.init, (0, None, None), self.mesh, state=True)
            ev = jit_seeds(lambda s, d: self.evaluate(self.params(s), d), (0, None), self.mesh)
            call = jit_seeds(lambda s, h, d: self.call(s, h, d, C), (0, None, None), self.mesh)
            self._programs[C] = (init, ev, call)
        return self._programs[C]

    def compile_programs(self, keys, data, C: int, *, initial: bool = False, label: str = "") -> list:
        """What :func:`jaxcl.driver.train_calls` compiles, abstract (:mod:`jaxcl.compile`):
        ``init``, ``call`` of ``C`` chunks, one training step of every seed and, with
        ``initial``, the evaluation; ``keys`` (S,) and ``data`` arrays or ShapeDtypeStructs, the
        pretrained parameters (:attr:`pretrained`) abstract or real; ``label`` prefixes the names."""
        from .compile import Program, abstract, seeds_spec

        m, sp = self.mesh, seeds_spec(self.mesh)
        init, ev, call = self.programs(C)
        keys, data, hp = abstract(keys, m, sp), abstract(data, m), abstract(self.hp, m)
        pre = None if self.pretrained is None else abstract(self.pretrained, m)
        state = jax.eval_shape(jax.vmap(self.init, in_axes=(0, None, None)), keys, pre, hp)
        state = abstract(state, m, sp)
        step = jit_seeds(self.one_step, (0, None, None), m)
        out = [
            Program(f"{label}init", init, (keys, pre, hp)),
            Program(f"{label}train call ({C} x {self.eval_every} steps)", call, (state, hp, data)),
            Program(f"{label}one step", step, (state, hp, data), steps=1, called=False),
        ]
        if initial:
            out.append(Program(f"{label}evaluate", ev, (state, data)))
        return out
