"""Unlearning a language model: the forgetting problem of encoded question/answer rows
(:class:`LMProblem`) and the phases the LM unlearning studies (TOFU, RESTOR) build from their
config's ``train`` and ``unlearn`` sections: the target's fine-tuning (:func:`trainer`) and a
method's unlearning (:func:`unlearner`), both on :class:`jaxcl.loops.Phase`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ..config import ConfigError, method_settings
from ..loops import Phase, PhaseConfig, as_hparams
from ..methods import get_method
from ..models.lm import LanguageModel
from .common import sample


@struct.dataclass
class LMProblem:
    """A forgetting problem of encoded question/answer pairs (each ``{'tokens': (N, T) int32,
    'mask': (N, T) bool}``, mask on the answer tokens): the protocol of
    :class:`jaxcl.unlearn.common.UnlearnData`, passed as an argument to every jitted phase."""

    forget: dict
    forget_alt: dict  # the forget questions with refusal answers, row for row (IDK's targets)
    retain: dict
    # SafeEraser's prompt-decouple rows, row for row with ``forget`` (jaxcl.methods.pd), or None
    forget_pd: dict | None = None

    @property
    def forget_set(self) -> dict:
        return self.forget

    @property
    def retain_set(self) -> dict:
        return self.retain

    @property
    def train_set(self) -> dict:
        return jax.tree.map(lambda f, r: jnp.concatenate([f, r]), self.forget, self.retain)

    def draw(self, key, n: int) -> dict:
        """``n`` retain rows at the top level, ``n`` forget rows in ``'forget'`` and the same rows
        (the same indices) with refusal answers in ``'forget_alt'`` and, where the problem has
        them, their prompt-decouple rows in ``'forget_pd'``; uniform with replacement."""
        k_r, k_f = jax.random.split(key)
        idx = jax.random.randint(k_f, (n,), 0, self.forget["tokens"].shape[0])
        take = lambda sub: jax.tree.map(lambda a: a[idx], sub)
        out = {
            **sample(self.retain, k_r, n),
            "forget": take(self.forget),
            "forget_alt": take(self.forget_alt),
        }
        if self.forget_pd is not None:
            out["forget_pd"] = take(self.forget_pd)
        return out

    def learning(self, tokens, mask) -> LMProblem:
        """The problem whose retain rows are ``(tokens, mask)``: fine-tuning the target on
        :attr:`train_set`, the retain model on :attr:`retain_set`."""
        return self.replace(retain={"tokens": tokens, "mask": mask})


def n_steps(epochs: float, n: int, batch_size: int) -> int:
    """``max(1, round(epochs * n / batch_size))``: the steps of ``epochs`` passes over ``n`` rows."""
    return max(1, int(round(epochs * n / batch_size)))


def chunk_len(steps: int, every: int) -> int:
    """The largest divisor of ``steps`` that is at most ``every`` (``every <= 0``: ``steps``)."""
    every = steps if every <= 0 else min(every, steps)
    while steps % every:
        every -= 1
    return every


def trainer(model: LanguageModel, cfg: dict, n: int, mesh=None) -> tuple[Phase, dict]:
    """The registry's ``finetune`` with the config's ``train`` recipe (TOFU's) over ``n`` rows, and its hyperparameters as
    Python floats: optax's ``warmup_cosine_decay_schedule`` tests ``peak_value == 0`` in Python,
    so the fine-tuning learning rate is a constant of the program, not a traced argument."""
    t = cfg["train"]
    steps = n_steps(t["epochs"], n, t["batch_size"])
    pc = PhaseConfig(steps, t["batch_size"], chunk_len(steps, t["eval_every"]), cfg["unlearn"]["eval_size"])
    spec = get_method("finetune")
    phase = Phase(
        model,
        spec,
        pc,
        optim="adamw",
        weight_decay=t["weight_decay"],
        clip_norm=t["clip_norm"],
        warmup_cosine_steps=steps,
        mesh=mesh,
    )
    return phase, spec.split({"lr": t["lr"]})[0]


def unlearner(model: LanguageModel, cfg: dict, name: str, n_f: int, mesh=None) -> tuple[Phase, dict]:
    """Method ``name``'s unlearning :class:`Phase` over ``n_f`` forget rows (its config section)
    and its traced hyperparameters; ``mesh``: batches over its ``data`` axis."""
    u = cfg["unlearn"]
    steps = n_steps(u["epochs"], n_f, u["batch_size"])
    hp, opts = method_settings(cfg, name)
    spec = get_method(name, "unlearn")
    pc = PhaseConfig(steps, u["batch_size"], chunk_len(steps, u["eval_every"]), u["eval_size"])
    return Phase(model, spec, pc, mesh=mesh, **opts), as_hparams(spec, hp)


def check_ranks(cfg: dict, methods, n_forget: int) -> None:
    """GU ranks that ``n_forget`` rows' unlearning steps (the ``unlearn`` section) could never
    fill: a :class:`ConfigError` naming the key and the valid range."""
    u = cfg["unlearn"]
    steps = n_steps(u["epochs"], n_forget, u["batch_size"])
    for m in methods:
        opts = method_settings(cfg, m)[1]  # a chain's modifier: gu.rank
        key, rank = next(((k, v) for k, v in opts.items() if k.split(".")[-1] == "rank"), ("rank", 0))
        if rank > steps:
            raise ConfigError(
                f"{m.split('+')[0] + '.' + key if key == 'rank' else key}={rank} is larger than the history of retain gradients ({steps} unlearning "
                f"steps): the basis could never fill; valid: 1 to {steps}"
            )
