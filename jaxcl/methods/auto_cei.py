"""Auto-CEI, Automatic Curriculum Expert Iteration (Zhao et al., "Automatic Curriculum Expert
Iteration for Reliable LLM Reasoning", ICLR 2025), for language models on verifiable tasks whose
completions write reasoning steps, an answer marker and an answer (equations in
:mod:`jaxcl.auto_cei`).

One iteration (:func:`jaxcl.grpo.make_iteration`, ``mu`` SFT steps per rollout): sample ``G``
completions per prompt, reward them (``R = 1`` correct; a wrong answer is steered to IDK and,
like an IDK answer, gets ``R = 2 sigmoid(c2 (t - c1)) - 1`` after ``t`` reasoning steps), weight
them by their expected copies in the authors' resampling ``w_i = [R_i > -1] (1 + G softmax(R/T)_i)``
and minimise the weighted NLL of the kept completions::

    L(theta) = - sum_i w_i sum_t m_it log pi_theta(o_it | q, o_i<t) / sum_i w_i sum_t m_it

``c1`` (the reasoning steps after which an IDK is rewarded) and ``c2`` are traced, so the
curriculum (:func:`jaxcl.auto_cei.curriculum_update`, run by the study between rounds) moves
``c1`` inside one compiled program. ``steer=False`` is plain expert iteration (keep the correct
completions only). Defaults: ``c2 = 0.4`` and the resampling temperature ``T = 0.6`` are the
defaults of the authors' ``ei_generation.py``; ``c1 = 2`` steps suits the chain task's 1-6 steps
(the authors start it from the measured steps, as the auto-cei study does); ``G = 8`` (the
authors sample 16); the marker / step / IDK ids are the byte tokenizer's ``=``, ``,`` and ``?``.
"""

import jax
import jax.numpy as jnp

from .. import auto_cei as A
from .. import grpo
from ..generate import Sampling, generate_ids
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Hparam,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)

T = A.byte_tokens()
OPTIONS = {
    "group_size": 8,
    "mu": 1,
    "max_new_tokens": 16,
    "temperature": 1.0,
    "steer": True,
    "sep_id": T.sep,
    "mark_id": T.mark,
    "idk_id": T.idk,
    **OPTIMIZER_OPTIONS,
}
CHOICES = {"optim": OPTIMIZERS, "steer": (True, False)}


def weighted_nll(cfg):
    """The weighted SFT loss on a rollout batch ``{'tokens', 'valid', 'completion_mask', 'weight'}``."""

    def loss_fn(params, batch, key):
        del key
        n = batch["completion_mask"].shape[1]
        logp = grpo.completion_logp(cfg, params, batch["tokens"], batch["valid"], n)
        wm = batch["weight"][:, None] * batch["completion_mask"].astype(jnp.float32)
        loss = -(wm * logp).sum() / jnp.maximum(wm.sum(), 1e-6)
        return loss, {"sft_nll": loss}

    return loss_fn


def make_rollout(cfg, hp, opts):
    """``rollout(params, prompts, key, env) -> (batch, metrics)``: ``G`` samples per prompt, the
    Auto-CEI rewards (``env.reward >= 1`` is a correct answer), wrong ones steered to IDK (with
    ``steer``), the expert-iteration weights."""
    G, N = int(opts["group_size"]), int(opts["max_new_tokens"])
    if G < 1 or N < 3:
        raise ValueError(
            f"auto_cei: group_size={G} must be >= 1 and max_new_tokens={N} >= 3 (marker, IDK, end)"
        )
    tok = A.Tokens(int(opts["sep_id"]), int(opts["mark_id"]), int(opts["idk_id"]))
    steer = bool(opts["steer"])
    sampling = Sampling(float(opts["temperature"]), 0, 1.0)

    def rollout(params, prompts, key, env: grpo.Env):
        B, P = prompts["prompt"].shape
        rep = lambda a: jnp.repeat(a, G, axis=0)  # noqa: E731
        ptok, pvalid = rep(prompts["prompt"]), rep(prompts["prompt_valid"])
        comp = generate_ids(
            jax.lax.stop_gradient(params), ptok, pvalid, key, cfg=cfg, max_new_tokens=N,
            cache_len=P + N, sampling=sampling, eos_id=env.eos_id, pad_id=env.pad_id,
        )  # fmt: skip
        rows = jax.tree.map(rep, prompts)
        _, before = grpo.end_mask(comp, env.eos_id)
        r_env = grpo.check_rewards(env.reward(comp, before, rows), B * G)
        _, reasoning, _, idk = A.parse(comp, before, sep_id=tok.sep, mark_id=tok.mark, idk_id=tok.idk)
        correct = (r_env >= 1.0) & ~idk
        if steer:
            comp = A.steer_to_idk(
                comp,
                reasoning,
                ~correct,
                mark_id=tok.mark,
                idk_id=tok.idk,
                eos_id=env.eos_id,
                pad_id=env.pad_id,
            )
        through, before = grpo.end_mask(comp, env.eos_id)
        steps, _, _, _ = A.parse(comp, before, sep_id=tok.sep, mark_id=tok.mark, idk_id=tok.idk)
        r = A.rewards(correct, steps, hp["c1"], hp["c2"], steer=steer)
        w = A.ei_weights(r.reshape(B, G), hp["resample_temp"]).reshape(-1)
        batch = {
            "tokens": jnp.concatenate([ptok, comp], axis=1),
            "valid": jnp.concatenate([pvalid, through], axis=1),
            "completion_mask": through,
            "weight": w,
        }
        metrics = {
            "reward": r.mean(),
            "reward_finite": jnp.all(jnp.isfinite(r_env)),
            "correct": correct.mean(),
            "sampled_idk": idk.mean(),
            "kept": (w > 0).mean(),
            "completion_len": through.sum(-1).mean(),
        }
        return batch, metrics

    return rollout


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    return Method(
        weighted_nll(model.cfg),
        optimizer_from(opt, hp["lr"]),
        consolidate=lambda state, batch, key: state,
        rollout=grpo.Rollout(make_rollout(model.cfg, hp, options), int(options["mu"])),
    )


HPARAMS = {
    "lr": LR(1e-4),
    "c1": Hparam(2.0, None, None, help="reasoning steps after which an IDK answer earns a positive reward"),
    "c2": Hparam(0.4, 0.0, None, low_open=True, help="slope of the IDK reward in the steps"),
    "resample_temp": Hparam(
        0.6, 0.0, None, low_open=True, help="temperature T of the resampling softmax(R/T)"
    ),
}

SPEC = register(
    MethodSpec(
        "auto_cei",
        build,
        HPARAMS,
        dict(OPTIONS),
        "Auto-CEI expert iteration: SFT on sampled correct completions and wrong ones steered to "
        "'I don't know', rewarded only after c1 reasoning steps (language models); steer=False: "
        "plain expert iteration",
        kind="rl",
        paper="Zhao et al. 2025, Automatic Curriculum Expert Iteration for Reliable LLM Reasoning (ICLR)",
        choices=CHOICES,
    )
)
