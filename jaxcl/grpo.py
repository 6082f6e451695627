"""KL-regularised reinforcement fine-tuning of a language model: GRPO, its KL penalty as a loss
wrapper, rollouts inside the compiled program, and rollout-based instance filtering (RIF).

GRPO (Shao et al., "DeepSeekMath", 2024). For each prompt ``q`` the sampling policy
``pi_old`` (the parameters at the start of the iteration) draws ``G`` completions ``o_1..o_G``
with rewards ``r_1..r_G``. Several reward functions ``R_k`` with weights ``w_k`` (TRL's
``reward_funcs`` / ``reward_weights``) give ``r_i = sum_k w_k R_k(o_i)``; DAPO's (Yu et al. 2025)
soft overlong punishment (TRL's ``soft_punish_cache``) is one of them, for a completion of ``|o|``
tokens and ``L_max = max_new_tokens`` (TRL's ``max_completion_length``)::

    R_len(o) = 0                                  if |o| <= L_max - L_cache
             = ((L_max - L_cache) - |o|) / L_cache   if L_max - L_cache < |o| <= L_max

Group-relative advantages (one value per completion, shared by its tokens; TRL's
``scale_rewards``)::

    A_i = (r_i - mean(r)) / (std(r) + eps)        # scale_rewards="group" (std with ddof=1, as TRL)
    A_i = (r_i - mean(r)) / (std(r_batch) + eps)  # scale_rewards="batch" (std over the whole batch)
    A_i =  r_i - mean(r)                          # scale_rewards="none" (Dr. GRPO, Liu et al. 2025)
    A_i =  r_i - (sum_j r_j - r_i) / (G - 1)      # baseline="rloo" (leave-one-out, Ahmadian et al. 2024)

The clipped surrogate (PPO, Schulman et al. 2017) on every completion token ``t``, with the ratio
``rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)`` (TRL's
``importance_sampling_level="token"``) or the sequence-level ratio of GSPO (Zheng et al. 2025,
``importance_sampling_level="sequence"``), the same for every token of completion ``i``::

    s_i = exp( (1 / |o_i|) sum_t log rho_it )

and the clip range ``[1 - eps_low, 1 + eps_high]`` (TRL's ``epsilon`` = ``clip_eps`` and
``epsilon_high``; ``eps_high > eps_low`` is DAPO's clip-higher)::

    l_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)

aggregated over the ``B`` completions' masked tokens ``m_it`` (TRL's ``loss_type``; ``N`` the
completion length ``max_new_tokens``)::

    "bnpo" / "dapo":  sum_it m_it l_it / sum_it m_it        (token level, DAPO; this program's batch
                                                           is the global batch, so the two agree)
    "grpo":           (1/B) sum_i sum_t m_it l_it / sum_t m_it   (per sequence, DeepSeekMath)
    "dr_grpo":        sum_it m_it l_it / (B N)              (Dr. GRPO: no length bias)

(per-sequence means count only rows with at least one token). ``mu > 1`` inner updates reuse one
rollout; with ``mu = 1`` the ratio is 1 and the loss is the policy gradient.

The KL penalty to a frozen reference ``pi_ref`` (:func:`with_kl_penalty`, a ``LossFn`` wrapper
whose coefficient ``beta`` may be traced, so it sweeps) adds ``beta * KL`` with, per token,

    k3:    exp(log pi_ref - log pi_theta) - (log pi_ref - log pi_theta) - 1     (Schulman 2020)
    exact: sum_v pi_theta(v) (log pi_theta(v) - log pi_ref(v))                  (over the vocabulary)

aggregated as the policy loss (the same ``loss_type``). TRL's ``beta = 0`` (no reference model)
is the method option ``kl="none"``: no KL term and no reference forward pass (a traced ``beta``
of 0, as in a sweep over ``beta``, still computes the reference and multiplies its KL by 0). The
reference log-probs reach the loss in the batch
(``batch['ref_logp']``, ``batch['ref_logits']`` for the exact KL), computed by a
:func:`jaxcl.data.context.reference` data transform whose state holds the reference parameters,
as LwF's teacher logits are.

RIF-RFT ("Reinforcement Fine-Tuning Naturally Mitigates Forgetting in Continual
Post-Training", 2025): prompts whose ``G`` rollouts all get the same reward have zero advantage and
give no learning signal; :func:`rif_keep` marks the others, the batch is refilled from a larger
pool of prompts, and the kept fraction is reported per iteration. This is DAPO's dynamic sampling
(drop the groups whose rewards are all equal and refill the batch from extra rollouts) with a fixed
oversampling factor, as a compiled program needs: rows the pool cannot fill are masked out
(``weight`` 0) and the filled fraction is reported (``filled``).

One RL iteration (rollout of ``B x G`` completions with the KV cache of :mod:`jaxcl.generate`,
rewards in JAX, advantages, ``mu`` updates) is one pure function (:func:`make_iteration`) that
:func:`jaxcl.loops.run_chunks` scans like any training step.

A policy that reads more than the prompt's tokens (a vision-language model: the image tokens
``H_v`` before the text, :mod:`jaxcl.models.vlm`) passes a :class:`Context`: every log-prob is
``pi_theta(o_it | H_v(x), q, o_i<t)``, the rollouts sample with the same prefix in the KV cache, and
the prefix is recomputed from the prompt rows' fields (the image) with the current parameters, so
the policy gradient reaches the image encoder too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .engine import LossFn
from .generate import Sampling, generate_ids
from .models import llama


class Context(NamedTuple):
    """Input embeddings placed before every prompt: ``prefix(params, rows) -> (B, I, D)`` from the
    prompt rows' fields ``keys`` (a vision-language model's image tokens from ``rows['image']``,
    :attr:`jaxcl.models.vlm.VisionLanguageModel.prefix`). The rollout carries those fields into its
    batch, where the policy loss and the reference read them."""

    prefix: Callable
    keys: tuple[str, ...]


def context_of(model) -> Context | None:
    """The :class:`Context` of a model of the registry (a VLM's image tokens), or None (the Llama)."""
    prefix = getattr(model, "prefix", None)
    return None if prefix is None else Context(prefix, tuple(model.prefix_keys))


SCALES = ("group", "batch", "none")  # TRL's scale_rewards
BASELINES = ("mean", "rloo")
LOSS_TYPES = ("bnpo", "grpo", "dr_grpo", "dapo")  # TRL's loss_type
IS_LEVELS = ("token", "sequence")  # TRL's importance_sampling_level (sequence: GSPO)
KL_ESTIMATORS = ("k3", "exact")
REWARD_FUNCS = ("env", "format", "soft_overlong")  # built-in reward functions of a rollout


# -- the objective --------------------------------------------------------------------------------


def group_advantages(r_BxG, *, scale: str = "group", baseline: str = "mean", eps: float = 1e-4):
    """Advantages of ``G`` completions per prompt (equations in the module docstring; ``scale`` is
    TRL's ``scale_rewards``)."""
    G = r_BxG.shape[-1]
    if G < 2:
        raise ValueError(
            f"group_size G={G}: group-relative advantages need at least 2 completions per prompt; "
            "set group_size >= 2"
        )
    if scale not in SCALES or baseline not in BASELINES:
        raise ValueError(f"scale_rewards must be one of {SCALES} and baseline one of {BASELINES}")
    r = r_BxG.astype(jnp.float32)
    if baseline == "mean":
        b = r.mean(-1, keepdims=True)
    else:
        b = (r.sum(-1, keepdims=True) - r) / (G - 1)
    a = r - b
    if scale == "group":
        a = a / (jnp.std(r, axis=-1, keepdims=True, ddof=1) + eps)
    elif scale == "batch":
        a = a / (jnp.std(r, ddof=1) + eps)
    return a


def normalise(x_BxN, mask_BxN, loss_type: str = "bnpo"):
    """Aggregate per-token values over the masked-in tokens by TRL's ``loss_type`` (module
    docstring): ``bnpo`` / ``dapo`` token mean, ``grpo`` per row then over rows with at least one
    token, ``dr_grpo`` the masked sum over ``B * N`` (rows times the completion length)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not valid; valid: {', '.join(LOSS_TYPES)}")
    m = mask_BxN.astype(jnp.float32)
    if loss_type in ("bnpo", "dapo"):
        return (x_BxN * m).sum() / jnp.maximum(m.sum(), 1.0)
    if loss_type == "dr_grpo":
        return (x_BxN * m).sum() / (x_BxN.shape[0] * x_BxN.shape[1])
    n_B = m.sum(-1)
    per_B = (x_BxN * m).sum(-1) / jnp.maximum(n_B, 1.0)
    return per_B.sum() / jnp.maximum((n_B > 0).sum(), 1)


def log_ratio(logp_BxN, old_logp_BxN, mask_BxN, level: str = "token"):
    """``log rho`` per token (``token``) or GSPO's sequence-level ``(1/|o_i|) sum_t log rho_it``
    repeated over the row's tokens (``sequence``; 0 for a row without tokens)."""
    if level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level={level!r} is not valid; valid: {', '.join(IS_LEVELS)}")
    d_BxN = logp_BxN - old_logp_BxN
    if level == "token":
        return d_BxN
    m = mask_BxN.astype(jnp.float32)
    seq_B = (d_BxN * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
    return jnp.broadcast_to(seq_B[:, None], d_BxN.shape)


def clipped_policy_loss(
    logp_BxN,
    old_logp_BxN,
    adv_B,
    mask_BxN,
    *,
    clip_eps=0.2,
    epsilon_high=None,
    loss_type: str = "bnpo",
    importance_sampling_level: str = "token",
):
    """The clipped surrogate loss ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)`` aggregated by
    ``loss_type``, and the fraction of tokens whose ratio lies outside the clip range.

    ``clip_eps`` is TRL's ``epsilon`` (``eps_low``); ``epsilon_high`` (``None`` or, traced, a value
    <= 0: equal to ``clip_eps``) is DAPO's clip-higher; ``importance_sampling_level="sequence"``
    is GSPO's sequence-level ratio."""
    lo = clip_eps
    hi = clip_eps if epsilon_high is None else jnp.where(epsilon_high > 0, epsilon_high, clip_eps)
    ratio = jnp.exp(log_ratio(logp_BxN, old_logp_BxN, mask_BxN, importance_sampling_level))
    a = adv_B[:, None]
    per_tok = -jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - lo, 1.0 + hi) * a)
    if epsilon_high is None:
        clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)
    else:
        clipped = (((ratio - 1.0) > hi) | ((1.0 - ratio) > lo)).astype(jnp.float32)
    return normalise(per_tok, mask_BxN, loss_type), normalise(clipped, mask_BxN, "bnpo")


def kl_k3(logp_BxN, ref_logp_BxN):
    """Per-token k3 estimate of KL(pi || pi_ref) from the sampled tokens' log-probs (>= 0)."""
    d = ref_logp_BxN - logp_BxN
    return jnp.exp(d) - d - 1.0


def kl_exact(logits_BxNxV, ref_logits_BxNxV):
    """Per-token KL(pi || pi_ref) over the whole vocabulary."""
    logp = jax.nn.log_softmax(logits_BxNxV, axis=-1)
    ref = jax.nn.log_softmax(ref_logits_BxNxV, axis=-1)
    return (jnp.exp(logp) * (logp - ref)).sum(-1)


def masked_forward(cfg, params, tokens_BxT, valid_BxT, prefix_BxIxD=None):
    """Logits of a left-padded batch: padded positions are masked out of attention and every row's
    RoPE positions start at its first real token (as :func:`jaxcl.generate.generate` sees it);
    ``prefix_BxIxD``: input embeddings before the tokens (a VLM's image tokens, positions 0 .. I-1,
    as :func:`jaxcl.generate.generate_ids` places them); the logits cover the T tokens."""
    B, T = tokens_BxT.shape
    I = 0 if prefix_BxIxD is None else prefix_BxIxD.shape[1]  # noqa: E741
    if I:
        valid_BxT = jnp.concatenate([jnp.ones((B, I), bool), valid_BxT], axis=1)
    pos = jnp.maximum(jnp.cumsum(valid_BxT, axis=1) - 1, 0).astype(jnp.int32)
    cache = llama.init_cache(cfg, B, I + T)
    logits, _ = llama.forward(
        cfg,
        params,
        tokens_BxT,
        positions_BxT=pos,
        token_mask_BxT=valid_BxT,
        cache=cache,
        prefix_BxPxD=prefix_BxIxD,
    )
    return logits


def completion_logits(cfg, params, tokens_BxT, valid_BxT, n_completion: int, prefix_BxIxD=None):
    """Logits predicting the last ``n_completion`` tokens: ``(B, N, V)``."""
    logits = masked_forward(cfg, params, tokens_BxT[:, :-1], valid_BxT[:, :-1], prefix_BxIxD)
    return logits[:, -n_completion:]


def completion_logp(cfg, params, tokens_BxT, valid_BxT, n_completion: int, *, logits=None, prefix_BxIxD=None):
    """log pi(token) of the last ``n_completion`` tokens given everything before (and the
    ``prefix_BxIxD`` embeddings before that): ``(B, N)``."""
    if logits is None:
        logits = completion_logits(cfg, params, tokens_BxT, valid_BxT, n_completion, prefix_BxIxD)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(lp, tokens_BxT[:, -n_completion:, None], axis=-1)[..., 0]


def grpo_loss(
    cfg,
    *,
    clip_eps=0.2,
    epsilon_high=None,
    loss_type: str = "bnpo",
    importance_sampling_level: str = "token",
    keep_logits: bool = False,
    context: Context | None = None,
) -> LossFn:
    """The GRPO policy loss on a rollout batch ``{'tokens', 'valid', 'completion_mask', 'old_logp',
    'adv', 'weight'}`` (without ``old_logp`` (``mu = 1``) the ratio is taken against the policy's own
    log-probs with the gradient stopped: ratio 1, the same gradient, one forward pass fewer)
    (``weight``: 0 for rows RIF could not fill). ``aux`` carries the policy's ``logp`` (and
    ``logits`` with ``keep_logits``) and the ``mask`` for :func:`with_kl_penalty`; see
    :func:`clipped_policy_loss` for the options (TRL's names). ``context``: the prefix read from
    the batch's context fields (:class:`Context`), with the gradient."""

    def loss_fn(params, batch, key):
        del key
        n = batch["completion_mask"].shape[1]
        prefix = None if context is None else context.prefix(params, batch)
        logits = completion_logits(cfg, params, batch["tokens"], batch["valid"], n, prefix)
        logp = completion_logp(cfg, params, batch["tokens"], batch["valid"], n, logits=logits)
        mask = batch["completion_mask"] & (batch["weight"][:, None] > 0)
        loss, clipped = clipped_policy_loss(
            logp,
            batch.get("old_logp", jax.lax.stop_gradient(logp)),
            batch["adv"],
            mask,
            clip_eps=clip_eps,
            epsilon_high=epsilon_high,
            loss_type=loss_type,
            importance_sampling_level=importance_sampling_level,
        )
        aux = {"policy_loss": loss, "clip_frac": clipped, "logp": logp, "mask": mask}
        if keep_logits:
            aux["logits"] = logits
        return loss, aux

    return loss_fn


def without_kl(loss_fn: LossFn) -> LossFn:
    """The policy loss alone (TRL's ``beta = 0``: no reference model): drops the per-token arrays
    :func:`grpo_loss` leaves in ``aux`` for :func:`with_kl_penalty`."""

    def wrapped(params, batch, key):
        loss, aux = loss_fn(params, batch, key)
        return loss, {k: v for k, v in aux.items() if k not in ("logp", "mask", "logits")}

    return wrapped


def with_kl_penalty(loss_fn: LossFn, *, beta, estimator: str = "k3", loss_type: str = "bnpo") -> LossFn:
    """``loss + beta * KL(pi_theta || pi_ref)`` per completion token (k3 or exact; see the module
    docstring), aggregated by ``loss_type`` as the policy loss. Reads ``aux['logp']`` /
    ``aux['logits']`` and ``aux['mask']`` of the wrapped loss and ``batch['ref_logp']`` /
    ``batch['ref_logits']``; ``beta`` may be traced."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl={estimator!r} is not valid; valid: {', '.join(KL_ESTIMATORS)}")

    def wrapped(params, batch, key):
        loss, aux = loss_fn(params, batch, key)
        if estimator == "k3":
            kl_BxN = kl_k3(aux["logp"], batch["ref_logp"])
        else:
            kl_BxN = kl_exact(aux["logits"], batch["ref_logits"])
        kl = normalise(kl_BxN, aux["mask"], loss_type)
        out = {k: v for k, v in aux.items() if k not in ("logp", "mask", "logits")}
        return loss + beta * kl, {**out, "kl": kl}

    return wrapped


def rif_keep(r_BxG):
    """RIF: True for prompts whose rollouts do not all get the same reward."""
    return jnp.any(r_BxG != r_BxG[:, :1], axis=-1)


# -- rollouts -------------------------------------------------------------------------------------


class Env(NamedTuple):
    """What a rollout needs from the problem: the reward of completions and the special tokens.

    ``reward(completion_BxN, mask_BxN, prompts_batch_rows) -> r_B`` with ``mask`` the completion
    tokens before the end token and ``prompts_batch_rows`` the prompt batch's entries repeated per
    completion."""

    reward: Callable
    eos_id: int
    pad_id: int


class Rollout(NamedTuple):
    """A method's rollout ``fn(params, prompts, key, env) -> (batch, metrics)`` and its number of
    inner updates per rollout (``mu``)."""

    fn: Callable
    mu: int = 1


def end_mask(tokens_BxN, eos_id: int):
    """``(through_eos, before_eos)``: completion tokens up to and including the first end token,
    and those strictly before it."""
    is_eos = tokens_BxN == eos_id
    seen = jnp.cumsum(is_eos, axis=1)
    before = seen == 0
    through = before | (is_eos & (seen == 1))
    return through, before


def check_rewards(r, n: int, where: str = "reward"):
    """Trace-time shape check of a reward function's output."""
    if r.shape != (n,):
        raise ValueError(
            f"the {where} function returned shape {tuple(r.shape)}; it must return one float per "
            f"completion, shape ({n},)"
        )
    return r.astype(jnp.float32)


def soft_overlong_punishment(length_B, max_completion_len: int, soft_punish_cache: int):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13; TRL's
    ``get_soft_overlong_punishment``): 0 up to ``L_max - L_cache`` tokens, then falling linearly to
    -1 at ``L_max`` (``length_B``: completion tokens through the end token; a completion that never
    ends counts ``L_max``)."""
    L, C = float(max_completion_len), float(soft_punish_cache)
    n = length_B.astype(jnp.float32)
    return jnp.where(n <= L - C, 0.0, jnp.maximum((L - C - n) / C, -1.0))


def reward_terms(
    reward_funcs, env: Env, comp_BxN, through_BxN, before_BxN, rows, *, max_new_tokens, soft_punish_cache
):
    """``{name: r_B}`` of each reward function (TRL's ``reward_funcs``): ``env`` (the environment's
    reward, e.g. the verifiable answer's correctness), ``format`` (1 when the completion ends with
    the end token within ``max_new_tokens``, else 0), ``soft_overlong``
    (:func:`soft_overlong_punishment`), or a callable ``(comp, mask, rows) -> r_B`` named by its
    ``__name__``."""
    n = comp_BxN.shape[0]
    out = {}
    for f in reward_funcs:
        if callable(f):
            out[f.__name__] = check_rewards(f(comp_BxN, before_BxN, rows), n, f.__name__)
        elif f == "env":
            out[f] = check_rewards(env.reward(comp_BxN, before_BxN, rows), n)
        elif f == "format":
            out[f] = jnp.any(comp_BxN == env.eos_id, axis=-1).astype(jnp.float32)
        elif f == "soft_overlong":
            out[f] = soft_overlong_punishment(through_BxN.sum(-1), max_new_tokens, soft_punish_cache)
        else:
            raise ValueError(
                f"reward function {f!r} is not valid; valid: {', '.join(REWARD_FUNCS)} or a callable"
            )
    return out


def make_rollout(
    cfg,
    *,
    group_size: int = 8,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    scale: str = "group",
    baseline: str = "mean",
    rif: bool = False,
    rif_pool: int = 1,
    sampling_logp: bool = True,
    reward_funcs=("env",),
    reward_weights=(),
    soft_punish_cache: int = 0,
    context: Context | None = None,
) -> Callable:
    """``rollout(params, prompts, key, env) -> (batch, metrics)``.

    ``prompts`` holds ``prompt`` (B, P) left-padded token ids with ``prompt_valid`` (B, P) and any
    per-prompt fields the reward reads. Every prompt gets ``group_size`` sampled completions of
    ``max_new_tokens`` tokens (one batch through the KV cache); rewards, advantages and the
    sampling policy's log-probs (``old_logp``, only with ``sampling_logp``: needed for ``mu > 1``)
    go into the batch. The reward is ``sum_k w_k R_k`` over ``reward_funcs`` (:func:`reward_terms`)
    with ``reward_weights`` (empty: all 1; TRL's names), each function's mean reported as
    ``reward_<name>`` when there are several. With ``rif`` (DAPO's dynamic sampling), the ``B``
    prompts are a pool of ``rif_pool`` batches: prompts with mixed rewards fill the
    ``B // rif_pool`` rows of the batch (mixed first, in pool order), rows left without one get
    ``weight`` 0; ``filled`` reports the fraction filled. ``context`` (:class:`Context`): every
    completion is sampled after its prompt's prefix (the image tokens of the sampling parameters)
    and the prompt rows' ``context.keys`` fields go into the batch."""
    G = group_size
    if G < 2:
        raise ValueError(
            f"group_size={G}: GRPO's group-relative advantages need at least 2 completions per "
            "prompt; set group_size >= 2"
        )
    if not temperature > 0:
        raise ValueError(
            f"temperature={temperature!r}: at temperature <= 0 sampling is greedy, every completion of "
            "a prompt is the same, so every advantage is 0 and nothing is learned; set temperature > 0"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (nucleus sampling mass; 1 is off)")
    reward_funcs = tuple(reward_funcs)
    if not reward_funcs:
        raise ValueError("reward_funcs is empty; name at least one reward function, e.g. env")
    if reward_weights and len(reward_weights) != len(reward_funcs):
        raise ValueError(
            f"reward_weights {tuple(reward_weights)} has {len(reward_weights)} values for "
            f"{len(reward_funcs)} reward_funcs {reward_funcs}; give one weight per function (or none: all 1)"
        )
    if "soft_overlong" in reward_funcs and not 0 < soft_punish_cache <= max_new_tokens:
        raise ValueError(
            f"soft_punish_cache={soft_punish_cache!r}: the soft_overlong reward needs a cache length "
            f"L_cache in [1, max_new_tokens={max_new_tokens}]"
        )
    sampling = Sampling(float(temperature), 0, float(top_p))

    def rollout(params, prompts, key, env: Env):
        P = prompts["prompt"].shape[1]
        sampler = jax.lax.stop_gradient(params)
        prefix = None if context is None else context.prefix(sampler, prompts)
        I = 0 if prefix is None else prefix.shape[1]  # noqa: E741
        if I + P + max_new_tokens > cfg.max_seq_len:
            raise ValueError(
                f"prompt length {P}{f' + {I} prefix tokens' if I else ''} + max_new_tokens "
                f"{max_new_tokens} exceeds the model's context (max_seq_len {cfg.max_seq_len}); "
                "shorten the prompts or max_new_tokens"
            )
        B = prompts["prompt"].shape[0]
        rep = lambda a: jnp.repeat(a, G, axis=0)
        tok = rep(prompts["prompt"])
        valid = rep(prompts["prompt_valid"])
        prefix = None if prefix is None else rep(prefix)
        comp = generate_ids(
            sampler,
            tok,
            valid,
            key,
            prefix,
            cfg=cfg,
            max_new_tokens=max_new_tokens,
            cache_len=I + P + max_new_tokens,
            sampling=sampling,
            eos_id=env.eos_id,
            pad_id=env.pad_id,
        )
        through, before = end_mask(comp, env.eos_id)
        rows = jax.tree.map(rep, prompts)
        terms = reward_terms(
            reward_funcs,
            env,
            comp,
            through,
            before,
            rows,
            max_new_tokens=max_new_tokens,
            soft_punish_cache=soft_punish_cache,
        )
        if len(terms) == 1 and not reward_weights:
            (r,) = terms.values()
        else:
            w = reward_weights or (1.0,) * len(terms)
            r = sum(float(wk) * rk for wk, rk in zip(w, terms.values()))
        r_BxG = r.reshape(B, G)
        adv_BxG = group_advantages(r_BxG, scale=scale, baseline=baseline)
        keep_B = rif_keep(r_BxG)
        weight_B = jnp.ones((B,), jnp.float32)
        metrics = {"reward": r.mean(), "reward_finite": jnp.all(jnp.isfinite(r)), "kept": keep_B.mean()}
        if len(terms) > 1:
            metrics.update({f"reward_{k}": v.mean() for k, v in terms.items()})
        tokens = jnp.concatenate([tok, comp], axis=1)
        full_valid = jnp.concatenate([valid, through], axis=1)
        if rif:
            n = B // rif_pool
            order = jnp.argsort(~keep_B, stable=True)[:n]  # mixed prompts first, pool order
            weight_B = keep_B[order].astype(jnp.float32)
            sel = (order[:, None] * G + jnp.arange(G)).reshape(-1)
            tokens, full_valid, through = tokens[sel], full_valid[sel], through[sel]
            rows = jax.tree.map(lambda a: a[sel], rows)
            prefix = None if prefix is None else prefix[sel]
            adv_BxG, r_BxG = adv_BxG[order], r_BxG[order]
            metrics["reward_kept"] = (r_BxG.mean(-1) * weight_B).sum() / jnp.maximum(weight_B.sum(), 1)
            metrics["filled"] = weight_B.mean()
        batch = {
            "tokens": tokens,
            "valid": full_valid,
            "completion_mask": through,
            "adv": adv_BxG.reshape(-1),
            "weight": jnp.repeat(weight_B, G),
        }
        if context is not None:
            batch.update({k: rows[k] for k in context.keys})
        if sampling_logp:
            batch["old_logp"] = completion_logp(
                cfg, sampler, tokens, full_valid, max_new_tokens, prefix_BxIxD=prefix
            )
        metrics["completion_len"] = through.sum(-1).mean()
        return batch, metrics

    return rollout


def make_iteration(method, env: Env, *, skip_nonfinite: bool = False, mesh=None):
    """One RL iteration as a pure step ``(state, prompts) -> (state, metrics)`` for
    :func:`jaxcl.loops.run_chunks`: the method's rollout with the current parameters, then ``mu``
    steps of :func:`jaxcl.engine.make_step` on that batch (``lax.scan``). Metrics: the step
    metrics averaged over the inner steps, plus the rollout's (``reward``, ``kept``, ...). With a
    ``mesh`` (:func:`jaxcl.parallel.make_mesh`) the prompts and the rollout batch are sharded over
    its ``data`` axis (the parameters replicated): same result as one device.
    """
    from .loops import method_step
    from .parallel import shard_batch

    if method.rollout is None:
        raise ValueError("make_iteration needs a method with a rollout (an RL method such as grpo)")
    # the one road from a Method to a step (its loss, transforms, data transform, extra args);
    # the caller consolidates (the KL reference) where a task starts (jaxcl.posttrain)
    step = method_step(
        method, name="the RL method", handles=("rollout", "consolidate"), skip_nonfinite=skip_nonfinite
    )
    mu = int(method.rollout.mu)

    def iteration(state, prompts):
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0x0A11), state.step)
        batch, rmetrics = method.rollout.fn(state.params, shard_batch(prompts, mesh), key, env)
        batch = shard_batch(batch, mesh)
        state, m = jax.lax.scan(lambda s, _: step(s, batch), state, None, length=mu)
        metrics = {k: v.astype(jnp.float32).mean() for k, v in m.items()}
        finite = rmetrics.pop("reward_finite")
        metrics.update({k: v.astype(jnp.float32) for k, v in rmetrics.items()})
        metrics["reward_finite"] = finite.astype(jnp.float32)
        bad = (state.nonfinite_step < 0) & ~finite
        state = state.replace(nonfinite_step=jnp.where(bad, state.step, state.nonfinite_step))
        return state, metrics

    return iteration


def example_batch(
    prompts, *, group_size: int, max_new_tokens: int, pad_id: int, mu: int = 1, context_keys=()
):
    """A rollout-shaped batch of zeros for ``init_state`` (sizes data-transform state), with the
    prompts' ``context_keys`` fields repeated per completion (:class:`Context`)."""
    B, P = prompts["prompt"].shape
    n = B * group_size
    T = P + max_new_tokens
    return (
        {k: jnp.repeat(prompts[k], group_size, axis=0) for k in context_keys}
        | {
            "tokens": jnp.full((n, T), pad_id, jnp.int32),
            "valid": jnp.ones((n, T), bool),
            "completion_mask": jnp.ones((n, max_new_tokens), bool),
            "adv": jnp.zeros((n,), jnp.float32),
            "weight": jnp.ones((n,), jnp.float32),
        }
        | ({"old_logp": jnp.zeros((n, max_new_tokens), jnp.float32)} if mu > 1 else {})
    )
