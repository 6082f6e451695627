"""Continual post-training of a language model as compiled programs: what the rft-continual
study (and studies built on its rows) run, on :func:`jaxcl.loops.run_chunks` and
:func:`jaxcl.grpo.make_iteration`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import grpo, hf, tasks
from .config import method_settings
from .data import verifiable
from .loops import as_hparams, build_method, method_state, method_step, run_chunks
from .methods import get_method
from .methods import grpo as grpo_method
from .models import lm
from .parallel import jit_seeds, shard_batch


class PostTraining:
    """The compiled programs of continual post-training, configured by a config's ``base``,
    ``post``, ``finetune`` and ``grpo`` sections: a base SFT on the mix of every task and the
    corpus, then per task a row's SFT steps (``sft``; ``mtl-sft`` on every task seen so far) or
    GRPO iterations (``rft``; ``rft-nokl`` without the KL term; ``rif-rft`` with RIF-RFT's
    selection), each chunk followed by the in-loop evaluation. One model, data and environment; the
    data (on the device) is an argument of every compiled program, never a constant inside it."""

    @classmethod
    def from_config(cls, cfg: dict, mesh=None, *, shapes_only: bool = False) -> PostTraining:
        """The model (:func:`jaxcl.models.lm.load`: a scratch Llama over bytes, or
        SmolLM2-135M-Instruct with its chat template; scoring left-padded prompts and
        completions), the data of :func:`jaxcl.data.verifiable.build` on the device and the
        tasks' reward environment; ``pretrained``: the loaded params (None for a scratch model).
        ``shapes_only``: the pretrained params as ``jax.ShapeDtypeStruct``s and the data left on
        the host (the compile check, :mod:`jaxcl.compile`; the data is small host text)."""
        m, d = cfg["model"], cfg["data"]
        chat = m["name"] == "smollm2-135m"
        tok = None if chat else hf.ByteTokenizer()
        model, params, tok = lm.load(
            m,
            max_seq_len=d["prompt_len"] + d["answer_len"],
            tokenizer=tok,
            padded=True,
            shapes_only=shapes_only,
        )
        data = verifiable.build(d, tok, cfg["seed"], chat)
        data = data if shapes_only else jax.device_put(jax.tree.map(jnp.asarray, data))
        out = cls(cfg, model, tok, data, tasks.env(tok, partial=d["partial_reward"]), mesh)
        out.pretrained = params
        return out

    def __init__(self, cfg: dict, model, tok, data, env, mesh=None):
        self.cfg, self.model, self.tok, self.data, self.env = cfg, model, tok, data, env
        self.mesh = mesh  # seeds over its seeds axis; SFT batches, prompts and rollouts over data
        self.evaluate = verifiable.evaluator(model, env, cfg["data"]["answer_len"])
        self.T = len(cfg["data"]["tasks"])
        self._programs = {}

    # base SFT on the mix: one program per seed batch
    def base(self, key, params, data):
        """Base SFT on the mix (``params`` None: from a random initialisation)."""
        b = self.cfg["base"]
        spec = get_method("finetune")
        hp = as_hparams(spec, {"lr": b["lr"]})
        _, opts = spec.split({"clip_norm": 1.0, "warmup_cosine_steps": b["steps"]})
        method = build_method(spec, self.model, hp, opts)
        k_init, k_run = jax.random.split(key)
        params = self.model.init(k_init) if params is None else params
        state = method_state(method, params, k_run)
        step = method_step(method, name="finetune")
        K = data["sft"]["tokens"].shape[0]
        draw = lambda k: shard_batch(
            verifiable.sft_draw(data, 0, False, k, b["batch_size"], b["corpus_fraction"], n_tasks=K),
            self.mesh,
        )
        evaluate = lambda p: self.evaluate(p, data)
        if b["steps"] == 0:
            return {"params": params, "eval": jax.tree.map(lambda a: a[None], evaluate(params))}
        state, trace = run_chunks(
            step, state, draw, evaluate, b["steps"] // b["eval_every"], b["eval_every"], mesh=self.mesh
        )
        return {"params": state.params, "eval": trace, "nonfinite_step": state.nonfinite_step}

    def row_method(self, row: str):
        """``(spec, hp, options, seen)`` of a row (a chain ``grpo+er``: its own method)."""
        if "+" in row:
            hp, opts = method_settings(self.cfg, row)
            return get_method(row), hp, opts, False
        if row in ("sft", "mtl-sft"):
            hp, opts = method_settings(self.cfg, "finetune")
            return get_method("finetune"), hp, opts, row == "mtl-sft"
        hp, opts = method_settings(self.cfg, "grpo")
        if row == "rft-nokl":
            hp = {**hp, "beta": 0.0}
        if row == "rif-rft":
            opts = {**opts, "rif": True}
        return get_method("grpo"), hp, opts, False

    def programs(self, row: str):
        """The compiled ``(init, task)`` of a row, vmapped over seeds; rows that differ only in
        traced values share them (sft and mtl-sft; rft and rft-nokl)."""
        kind = {"mtl-sft": "sft", "rft-nokl": "rft"}.get(row, row)
        if kind not in self._programs:
            init = jit_seeds(lambda p, k, d: self.init(kind, p, k, d), (0, 0, None), self.mesh)
            task = jit_seeds(
                lambda s, t, h, seen, first, d: self.task(kind, s, t, h, seen, first, d),
                (0, None, None, None, None, None),
                self.mesh,
                donate_argnums=0,
            )
            self._programs[kind] = (init, task)
        return self._programs[kind]

    def init(self, row, params, key, data):
        spec, hp, opts, _ = self.row_method(row)
        method = build_method(spec, self.model, as_hparams(spec, hp), opts)
        example = None
        if spec.kind == "rl":
            prompts = verifiable.rl_draw(data, 0, key, self.cfg["post"]["batch_size"])
            example = grpo.example_batch(
                prompts,
                group_size=opts["group_size"],
                max_new_tokens=opts["max_new_tokens"],
                pad_id=self.env.pad_id,
            )
        elif method.data is not None:  # an SFT chain's data transform (kl's reference) sized by a batch
            example = verifiable.sft_draw(data, 0, False, key, self.cfg["post"]["batch_size"])
        return method_state(method, params, key, example, mesh=self.mesh)

    @property
    def chunks_per_call(self) -> int:
        """Evaluation chunks per call of a task program: ``post.checkpoint_every`` steps (0: the
        whole task)."""
        p = self.cfg["post"]
        return (p["checkpoint_every"] or p["steps_per_task"]) // p["eval_every"]

    def task(self, row: str, state, t, hp, seen, first, data):
        """Post-train on task ``t`` (traced; with ``seen``, traced, on every task up to it) for
        :attr:`chunks_per_call` chunks of ``eval_every`` steps / iterations, each followed by the
        evaluation. ``first`` (traced): the task starts here, so a method with a ``consolidate``
        consolidates first (GRPO's and ``kl``'s reference becomes the current model)."""
        consolidate = self._method(row, hp).consolidate
        if consolidate is not None:
            new = consolidate(state, None, None).data_state
            keep = jax.tree.map(lambda a, b: jnp.where(first, a, b), new, state.data_state)
            state = state.replace(data_state=keep)
        step, draw = self._step_draw(row, t, hp, seen, data)
        evaluate = lambda params: self.evaluate(params, data)
        p = self.cfg["post"]
        return run_chunks(step, state, draw, evaluate, self.chunks_per_call, p["eval_every"], mesh=self.mesh)

    def one_step(self, row: str, state, t, hp, seen, data):
        """One SFT step or GRPO iteration of task ``t``, its batch drawn as :meth:`task` draws it:
        the per-step program of the compile check (:mod:`jaxcl.compile`)."""
        step, draw = self._step_draw(row, t, hp, seen, data)
        return step(state, draw(jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), state.step)))

    def _method(self, row: str, hp):
        spec, _, opts, _ = self.row_method(row)
        return build_method(spec, self.model, hp, opts)

    def _step_draw(self, row: str, t, hp, seen, data):
        """``(step, draw)`` of a row on task ``t``: a GRPO iteration on prompts, or an SFT step on
        rows (``seen``: of every task up to ``t``)."""
        p = self.cfg["post"]
        spec, _, opts, _ = self.row_method(row)
        method = self._method(row, hp)
        if spec.kind == "rl":
            step = grpo.make_iteration(method, self.env, mesh=self.mesh)
            n = grpo_method.prompt_rows(opts, p["batch_size"])
            return step, lambda k: verifiable.rl_draw(data, t, k, n)
        step = method_step(method, name=row, handles=("consolidate",))  # run by task()
        return step, lambda k: shard_batch(verifiable.sft_draw(data, t, seen, k, p["batch_size"]), self.mesh)

    def hparams(self, row: str) -> dict:
        """The row's traced hyperparameters."""
        spec, hp, _, _ = self.row_method(row)
        return as_hparams(spec, hp)
