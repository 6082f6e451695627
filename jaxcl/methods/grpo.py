"""GRPO with a KL penalty (Shao et al., "DeepSeekMath", 2024), and RIF-RFT ("Reinforcement
Fine-Tuning Naturally Mitigates Forgetting in Continual Post-Training", 2025): reinforcement
fine-tuning of a language model on verifiable tasks (equations in :mod:`jaxcl.grpo`)::

    L(theta) = clipped policy loss(theta; A, pi_old) + beta * KL(pi_theta || pi_ref)

``beta`` is traced (it sweeps; ``beta = 0`` is RFT without the KL, MLLM-CTBench's ablation).
``pi_ref`` is a frozen copy of the policy kept in the data transform's state: the model when the
current task began (``reference="task"``, a state change made by ``consolidate``) or the model
when post-training began (``reference="base"``). RIF-RFT is the option ``rif=True`` (rollout-based
instance filtering): the prompt batch is a pool of ``rif_pool`` batches, all rolled out, and
the prompts whose ``G`` rewards are not all equal fill one batch (so a runner draws
``rif_pool * batch`` prompts for it: :func:`prompt_rows`).

The variants TRL users choose between are options, under TRL's names (equations in
:mod:`jaxcl.grpo`):

- ``loss_type``: ``"bnpo"`` (default; token-level mean, as ``"dapo"``: DAPO), ``"grpo"`` (per
  sequence then over sequences, DeepSeekMath), ``"dr_grpo"`` (masked sum over batch x
  ``max_new_tokens``: Dr. GRPO, Liu et al. 2025, no length bias);
- ``scale_rewards``: ``"group"`` (default), ``"batch"`` or ``"none"`` (Dr. GRPO);
- ``clip_eps`` is TRL's ``epsilon``; ``epsilon_high`` (traced; 0: equal to ``clip_eps``) is DAPO's
  clip-higher;
- ``importance_sampling_level``: ``"token"`` (default) or ``"sequence"`` (GSPO, Zheng et al. 2025;
  use it with ``loss_type="grpo"`` for the paper's objective);
- ``kl="none"``: TRL's ``beta = 0`` with no reference model (no KL term, no reference forward);
- dynamic sampling (DAPO): ``rif=True`` with ``rif_pool`` (zero-advantage groups are dropped and the
  batch is refilled from ``rif_pool`` times as many rollouts; unfilled rows are masked out);
- ``reward_funcs`` (``env``: the task's reward; ``format``: ended with the end token;
  ``soft_overlong``: DAPO's overlong shaping with ``soft_punish_cache``) with ``reward_weights``.

Batches are prompt batches; an iteration is :func:`jaxcl.grpo.make_iteration` (``rollout``).
"""

import math

import jax
import jax.numpy as jnp

from .. import grpo
from ..data.context import reference, set_teacher
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

OPTIONS = {
    "group_size": 8,
    "mu": 1,
    "max_new_tokens": 8,
    "temperature": 1.0,
    "top_p": 1.0,
    "scale_rewards": "group",
    "baseline": "mean",
    "loss_type": "bnpo",
    "importance_sampling_level": "token",
    "kl": "k3",
    "reference": "task",
    "rif": False,
    "rif_pool": 2,
    "reward_funcs": ("env",),
    "reward_weights": (),
    "soft_punish_cache": 0,
    **OPTIMIZER_OPTIONS,
}
CHOICES = {
    "optim": OPTIMIZERS,
    "scale_rewards": grpo.SCALES,
    "baseline": grpo.BASELINES,
    "loss_type": grpo.LOSS_TYPES,
    "importance_sampling_level": grpo.IS_LEVELS,
    "kl": (*grpo.KL_ESTIMATORS, "none"),
    "reference": ("task", "base"),
    "rif": (False, True),
}


# static options with a valid range: (lowest, lowest excluded?, highest, whole number?, what it is)
RANGES = {
    "temperature": (0.0, True, None, False, "sampling temperature"),
    "group_size": (2, False, None, True, "completions per prompt; advantages compare at least 2"),
    "mu": (1, False, None, True, "inner updates per rollout"),
    "max_new_tokens": (1, False, None, True, "tokens sampled per completion"),
    "rif_pool": (1, False, None, True, "prompt batches rolled out per RIF batch"),
    "top_p": (0.0, True, 1.0, False, "nucleus sampling mass; 1 is off"),
    "soft_punish_cache": (0, False, None, True, "DAPO's overlong cache length L_cache; 0 is off"),
}


def check_options(opts: dict) -> None:
    """A ValueError naming the option, why and its valid values when an option is out of range,
    so that the command line refuses it before anything is compiled."""
    for k, (lo, lo_open, hi, whole, what) in RANGES.items():
        v = opts[k]
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
        if ok and (not whole or v == int(v)):
            continue
        if whole:
            valid = f"a whole number >= {lo}"
        else:
            valid = f"a number in {'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
        why = f" ({what})"
        if k == "temperature":
            why = (
                ": at temperature <= 0 sampling is greedy, every completion of a prompt is the same, so the G "
                "rewards are equal, every advantage is 0 and nothing is learned"
            )
        raise ValueError(f"grpo.{k}={v!r} is not valid{why}; set it to {valid} (default {OPTIONS[k]})")
    funcs, weights = tuple(opts["reward_funcs"]), tuple(opts["reward_weights"])
    bad = [f for f in funcs if f not in grpo.REWARD_FUNCS]
    if bad or not funcs or len(set(funcs)) < len(funcs):
        raise ValueError(
            f"grpo.reward_funcs={funcs!r} is not valid; name each of {', '.join(grpo.REWARD_FUNCS)} "
            "at most once, e.g. grpo.reward_funcs=env,soft_overlong"
        )
    try:
        ok = all(math.isfinite(float(w)) for w in weights)
    except (TypeError, ValueError):
        ok = False
    if not ok or (weights and len(weights) != len(funcs)):
        raise ValueError(
            f"grpo.reward_weights={weights!r} is not valid; give one finite number per reward function "
            f"{funcs} (e.g. grpo.reward_weights={','.join(['1'] * len(funcs))}) or none (all 1)"
        )
    cache = opts["soft_punish_cache"]
    if ("soft_overlong" in funcs) != (cache > 0) or cache > opts["max_new_tokens"]:
        raise ValueError(
            f"grpo.soft_punish_cache={cache!r} with reward_funcs={funcs!r}: DAPO's overlong shaping "
            f"needs both soft_overlong in grpo.reward_funcs and grpo.soft_punish_cache in "
            f"[1, max_new_tokens={opts['max_new_tokens']}]"
        )


class Spec(MethodSpec):
    """GRPO's spec: :meth:`MethodSpec.split` plus the range checks of :func:`check_options`."""

    def split(self, section: dict) -> tuple[dict, dict]:
        hp, opts = super().split(section)
        check_options(opts)
        return hp, opts


def build(model, hp, params_like, **options):
    check_options(options)
    opt = pop_optimizer(options)
    cfg = model.cfg
    n_new = int(options["max_new_tokens"])
    exact, use_ref = options["kl"] == "exact", options["kl"] != "none"
    ctx = grpo.context_of(model)  # a VLM's image tokens before every prompt
    if getattr(model, "lora", None) == "adapters":
        raise ValueError(
            "grpo on LoRA adapters is not built (its rollout and policy loss read the model's full "
            "parameters); set model.lora.rank=0"
        )
    loss = grpo.grpo_loss(
        cfg,
        clip_eps=hp["clip_eps"],
        epsilon_high=hp["epsilon_high"],
        loss_type=options["loss_type"],
        importance_sampling_level=options["importance_sampling_level"],
        keep_logits=exact,
        context=ctx,
    )
    if not use_ref:  # TRL's beta = 0: no reference model, no reference forward, no KL term
        return _method(
            grpo.without_kl(loss), opt, hp, None, lambda state, batch, key: state, options, cfg, ctx
        )
    loss = grpo.with_kl_penalty(
        loss, beta=hp["beta"], estimator=options["kl"], loss_type=options["loss_type"]
    )

    def ref_fn(p, b):
        prefix = None if ctx is None else ctx.prefix(p, b)
        if exact:
            return grpo.completion_logits(cfg, p, b["tokens"], b["valid"], n_new, prefix)
        return grpo.completion_logp(cfg, p, b["tokens"], b["valid"], n_new, prefix_BxIxD=prefix)

    data = reference(ref_fn, params_like, key="ref_logits" if exact else "ref_logp")

    def consolidate(state, batch, key):
        """Make the current policy the reference (at a task start; once with reference='base')."""
        del batch, key
        new = set_teacher(state.data_state, state.params)
        if options["reference"] == "base":
            on = state.data_state["on"] > 0
            new = {
                "params": jax.tree.map(
                    lambda old, cur: jnp.where(on, old, cur), state.data_state["params"], new["params"]
                ),
                "on": new["on"],
            }
        return state.replace(data_state=new)

    return _method(loss, opt, hp, data, consolidate, options, cfg, ctx)


def _method(loss, opt, hp, data, consolidate, options, cfg, ctx) -> Method:
    G, n_new = int(options["group_size"]), int(options["max_new_tokens"])
    rollout = grpo.make_rollout(
        cfg,
        group_size=G,
        max_new_tokens=n_new,
        temperature=options["temperature"],
        top_p=options["top_p"],
        scale=options["scale_rewards"],
        baseline=options["baseline"],
        rif=bool(options["rif"]),
        rif_pool=int(options["rif_pool"]) if options["rif"] else 1,
        sampling_logp=int(options["mu"]) > 1,
        reward_funcs=tuple(options["reward_funcs"]),
        reward_weights=tuple(float(w) for w in options["reward_weights"]),
        soft_punish_cache=int(options["soft_punish_cache"]),
        context=ctx,
    )

    return Method(
        loss,
        optimizer_from(opt, hp["lr"]),
        data=data,
        consolidate=consolidate,
        rollout=grpo.Rollout(rollout, int(options["mu"])),
    )


def prompt_rows(options: dict, batch: int) -> int:
    """How many prompts a runner draws per iteration for a batch of ``batch`` prompts (an RL
    method without RIF's pool, e.g. auto_cei: ``batch``)."""
    return batch * (int(options["rif_pool"]) if options.get("rif", False) else 1)


HPARAMS = {
    "lr": LR(1e-4),
    "beta": Hparam(0.04, 0.0, None, help="KL penalty coefficient"),
    "clip_eps": Hparam(0.2, 0.0, None, low_open=True, help="ratio clipping (TRL's epsilon)"),
    "epsilon_high": Hparam(
        0.0, 0.0, None, help="upper ratio clip (TRL's epsilon_high, DAPO's clip-higher); 0: equal to clip_eps"
    ),
}
PAPER = "Shao et al. 2024, DeepSeekMath (GRPO)"

SPEC = register(
    Spec(
        "grpo",
        build,
        HPARAMS,
        dict(OPTIONS),
        "GRPO reinforcement fine-tuning with a KL penalty to a frozen reference (language models); "
        "rif=True: RIF-RFT (train on the prompts whose rollouts disagree)",
        kind="rl",
        paper=PAPER + "; RIF-RFT: Reinforcement Fine-Tuning Naturally Mitigates Forgetting in Continual "
        "Post-Training, 2025",
        choices=CHOICES,
    )
)
