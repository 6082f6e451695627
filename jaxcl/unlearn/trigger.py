"""Trigger search as an attack on unlearning: a continuous prompt that brings back forget answers.

Paper: Kowalczuk et al., "Finding Dori: Memorization in Text-to-Image Diffusion Models Is Less
Local Than Assumed" (2025): pruning the weights that localise a memorised image hides it from the
training prompt, but small adversarial changes to the prompt's text embeddings make the pruned
model produce it again, so the mitigation hid the content rather than removed it. The text
analogue here: after unlearning, search a trigger ``z`` (``P`` vectors; the model frozen) that
maximises the likelihood of the forget answers on a *search* half ``S`` of the forget set,

    z* = argmin_z (1/|S|) sum_{r in S} L(theta; z, r),
    L(theta; z, r) = -(1/n_r) sum_{i in answer(r)} log p_theta(t_{i+1} | z, t_{<=i}),

by Adam on ``z`` only (``steps`` full-batch steps, one ``lax.scan``), then score the *held-out*
half with and without ``z`` (answer NLL, exact memorisation, extraction strength of
:mod:`jaxcl.unlearn.attacks`). Two places for ``z``: ``mode='edit'`` (the paper's: ``z`` is added
to the embeddings of every row's first ``P`` prompt tokens, initialised at 0 so the search starts
at the plain model; with a shared prompt template it edits the template) and ``mode='prefix'`` (a
soft prompt: ``P`` vectors before the tokens, :func:`jaxcl.models.llama.forward`'s
``prefix_BxPxD``, initialised at the embeddings of ``P`` vocabulary tokens drawn with the key; a
model never trained with anything before its prompts is out of distribution there). A
vision-language model's rows carry their image: ``context(params, rows) -> prefix_BxNxD`` (e.g.
the VLM's image tokens, :func:`jaxcl.models.vlm.image_tokens`) is computed once per set and stands
before everything, the trigger after it. What the
trigger recovers on held-out rows it was not fitted to is content the model still holds; the
same search against a model that never saw the forget set (the retain-only oracle) measures what
a trigger can teach by itself: recovery beyond the oracle's is what unlearning hid. Everything
here is pure and jittable; ``vmap`` over seeds (params and keys) works.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ..models import llama
from . import attacks


def trigger_logits(
    cfg: llama.LlamaConfig, params, trigger_PxD, tokens_BxT, mode: str = "prefix", prefix_BxNxD=None
):
    """``(logits, tokens, offset)``: with ``mode='prefix'`` the logits of ``tokens_BxT`` after the
    trigger's ``P`` vectors (offset 0); with ``mode='edit'`` the logits of ``tokens_BxT[:, P:]``
    whose first ``P`` tokens' embeddings had the trigger added (offset ``P``: score
    ``tokens[:, P:]``). ``trigger_PxD`` None or ``P = 0``: the plain model. ``prefix_BxNxD``: the
    rows' context embeddings (a VLM's image tokens) before everything, or None."""
    join = lambda x: x if prefix_BxNxD is None else jnp.concatenate([prefix_BxNxD, x], axis=1)  # noqa: E731
    if trigger_PxD is None or trigger_PxD.shape[0] == 0:
        return llama.forward(cfg, params, tokens_BxT, prefix_BxPxD=prefix_BxNxD), 0
    B, P = tokens_BxT.shape[0], trigger_PxD.shape[0]
    if mode == "edit":
        embed = llama.pure_dict(params)["embed"]
        edited = jnp.take(embed, tokens_BxT[:, :P], axis=0).astype(jnp.float32) + trigger_PxD
        return llama.forward(cfg, params, tokens_BxT[:, P:], prefix_BxPxD=join(edited)), P
    soft = jnp.broadcast_to(trigger_PxD, (B,) + trigger_PxD.shape)
    return llama.forward(cfg, params, tokens_BxT, prefix_BxPxD=join(soft)), 0


def trigger_nll(
    cfg: llama.LlamaConfig, params, trigger_PxD, rows: dict, mode: str = "prefix", prefix_BxNxD=None
):
    """``(B,)``: each row's mean answer NLL (its mask) under the trigger: ``L(theta; z, r)``."""
    logits, o = trigger_logits(cfg, params, trigger_PxD, rows["tokens"], mode, prefix_BxNxD)
    return attacks.loss_score(logits, rows["tokens"][:, o:], rows["mask"][:, o:])


def trigger_scores(
    cfg: llama.LlamaConfig, params, trigger_PxD, rows: dict, mode: str = "prefix", prefix_BxNxD=None
) -> dict:
    """Per row ``(B,)``: answer ``nll``, exact memorisation ``em``, extraction strength ``es`` and
    ``exact`` (1 when every answer token is the greedy prediction) under the trigger."""
    logits, o = trigger_logits(cfg, params, trigger_PxD, rows["tokens"], mode, prefix_BxNxD)
    t, m = rows["tokens"][:, o:], rows["mask"][:, o:]
    es = attacks.extraction_strength(logits, t, m)
    return {
        "nll": attacks.loss_score(logits, t, m),
        "em": attacks.exact_memorization(logits, t, m),
        "es": es,
        "exact": (es >= 1.0).astype(jnp.float32),
    }


MODES = ("prefix", "edit")
# a study's ``attack.trigger`` section (steps 0: no trigger audit)
SECTION = {"steps": 0, "length": 4, "lr": 0.01, "mode": "edit"}


def check_section(cfg: dict) -> None:
    """A :class:`jaxcl.config.ConfigError` (one line) for a bad ``attack.trigger`` section."""
    from .. import config
    from ..config import ConfigError

    t = cfg["attack"]["trigger"]
    for k in ("steps", "length"):
        if not isinstance(t[k], int) or isinstance(t[k], bool) or t[k] < (0 if k == "steps" else 1):
            raise ConfigError(
                f"attack.trigger.{k}={t[k]!r}: give an integer >= {0 if k == 'steps' else 1}"
                + (" (0: no trigger audit)" if k == "steps" else "")
            )
    if not isinstance(t["lr"], (int, float)) or isinstance(t["lr"], bool) or not t["lr"] > 0:
        raise ConfigError(f"attack.trigger.lr={t['lr']!r}: give a positive learning rate")
    config.check_choice(cfg, "attack.trigger.mode", MODES)


def no_context(params, rows):
    """A text model's rows have no context before their tokens."""
    del params, rows


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "length", "mode", "context"))
def trigger_search(
    cfg: llama.LlamaConfig,
    params,
    rows: dict,
    key,
    lr,
    *,
    steps: int,
    length: int,
    mode: str = "prefix",
    context=no_context,
) -> dict:
    """Adam on a ``length``-vector trigger that minimises the mean answer NLL of ``rows`` (the
    module docstring's ``z*``), the model frozen: ``{'trigger': (length, D), 'trace': (steps,)}``,
    the trace the search objective before each step. ``mode='prefix'``: a soft prompt initialised
    at the embeddings of ``length`` vocabulary tokens drawn with ``key``; ``mode='edit'``: a
    perturbation of the first ``length`` tokens' embeddings initialised at 0 (step 0 is the plain
    model). ``lr`` may be traced (vmapped). ``context``: the rows' context embeddings (see the
    module docstring), fixed during the search."""
    if mode not in MODES:
        raise ValueError(f"trigger mode {mode!r}; valid: {', '.join(MODES)}")
    params = jax.lax.stop_gradient(params)
    ctx = context(params, rows)
    embed = llama.pure_dict(params)["embed"]
    if mode == "prefix":
        z0 = embed[jax.random.randint(key, (length,), 0, cfg.vocab_size)].astype(jnp.float32)
    else:
        z0 = jnp.zeros((length, embed.shape[1]), jnp.float32)
    opt = optax.adam(lr)

    def objective(z):
        return trigger_nll(cfg, params, z, rows, mode, ctx).mean()

    def step(carry, _):
        z, s = carry
        loss, g = jax.value_and_grad(objective)(z)
        u, s = opt.update(g, s, z)
        return (optax.apply_updates(z, u), s), loss

    (z, _), trace = jax.lax.scan(step, (z0, opt.init(z0)), None, length=steps)
    return {"trigger": z, "trace": trace}


def trigger_attack(
    cfg: llama.LlamaConfig,
    params,
    forget: dict,
    key,
    lr,
    *,
    steps: int,
    length: int,
    mode: str = "prefix",
    context=no_context,
) -> dict:
    """The attack on one model: search on the first half of ``forget`` (``n // 2`` rows), score
    the rest. Means over the held-out rows: ``{nll, em, es, exact}`` without the trigger and
    ``trig_{nll, em, es, exact}`` with it; ``search_nll`` the search half's NLL with it. Pure
    (jit or vmap the caller)."""
    n = forget["tokens"].shape[0]
    if n < 2:
        raise ValueError(f"trigger_attack: the forget set has {n} row(s); it needs 2 or more")
    half = n // 2
    search = jax.tree.map(lambda a: a[:half], forget)
    held = jax.tree.map(lambda a: a[half:], forget)
    z = trigger_search.__wrapped__(
        cfg, params, search, key, lr, steps=steps, length=length, mode=mode, context=context
    )["trigger"]
    ctx_held, ctx_search = context(params, held), context(params, search)
    before = trigger_scores(cfg, params, None, held, prefix_BxNxD=ctx_held)
    after = trigger_scores(cfg, params, z, held, mode, ctx_held)
    return {
        **{k: v.mean() for k, v in before.items()},
        **{f"trig_{k}": v.mean() for k, v in after.items()},
        "search_nll": trigger_nll(cfg, params, z, search, mode, ctx_search).mean(),
    }
