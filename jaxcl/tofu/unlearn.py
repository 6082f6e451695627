"""Fine-tuning and unlearning steps for TOFU, built on `jaxcl.engine.make_step`.

Unlearning methods (each optionally with GU) are one loss with four coefficients
`hp = [forget_nll, npo, retain, gu]`, so one compiled program runs all of them:

| method | forget term | retain term | paper |
|---|---|---|---|
| GA | -NLL(forget) | - | Jang et al. 2023 / TOFU |
| GradDiff | -NLL(forget) | +NLL(retain) | Liu et al. 2022 / TOFU |
| NPO | (2/b) E[-log sigmoid(-b log(p/p_ref))] on forget | +NLL(retain) | Zhang et al. 2024 |
| IDK | +NLL(forget questions, refusal answers) | +NLL(retain) | TOFU |

The LossFn holds the forget term only. The retain term enters as a gradient: `extra_args`
computes the retain-batch gradient `g_r` at the current params, and `switchable_gu` turns it into
the update `g_f + hp[3] * (P(g_f) - g_f) + hp[2] * g_r`, where `P` is GU's projection
(`jaxcl.unlearn.gu.project_out`: remove the component of the forget gradient in the span of the
last `rank` retain gradients). `hp[3] = 0` is the plain method, `hp[3] = 1` the method with GU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcl import engine
from jaxcl.models import llama
from jaxcl.unlearn import gu

METHODS = {  # [forget_nll, npo, retain, gu]; IDK uses the refusal answers as forget targets
    "ga": (-1.0, 0.0, 0.0),
    "graddiff": (-1.0, 0.0, 1.0),
    "npo": (0.0, 1.0, 1.0),
    "idk": (1.0, 0.0, 1.0),
}


def hparams(method: str, gu: bool) -> jax.Array:
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; valid: {', '.join(METHODS)}")
    return jnp.asarray([*METHODS[method], float(gu)], jnp.float32)


def _token_mean_nll(cfg, params, tokens, mask):
    s, n = llama.masked_nll(cfg, params, tokens, mask)
    return s.sum() / jnp.maximum(n.sum(), 1.0), s


def sft_loss(cfg):
    """Answer-only NLL: the fine-tuning LossFn."""

    def loss_fn(params, batch, key):
        loss, _ = _token_mean_nll(cfg, params, batch["tokens"], batch["mask"])
        return loss, {}

    return loss_fn


def forget_loss(cfg, beta: float):
    """Forget term: hp[0] * NLL(forget) + hp[1] * NPO(forget)."""

    def loss_fn(params, batch, key):
        f, hp = batch["forget"], batch["hp"]
        nll, nll_sum_B = _token_mean_nll(cfg, params, f["tokens"], f["mask"])
        log_ratio_B = -nll_sum_B - f["ref_logp"]
        npo = -(2.0 / beta) * jax.nn.log_sigmoid(-beta * log_ratio_B).mean()
        return hp[0] * nll + hp[1] * npo, {"forget_nll": nll, "npo": npo}

    return loss_fn


def retain_grads_fn(cfg):
    """extra_args: the retain-loss gradient at the current params, and the method coefficients."""

    def extra_args(params, batch, key):
        r = batch["retain"]
        g = jax.grad(lambda p: _token_mean_nll(cfg, p, r["tokens"], r["mask"])[0])(params)
        return {"retain_grads": g, "hp": batch["hp"]}

    return extra_args


def switchable_gu(rank: int = 8, mode: str = "per_tensor") -> optax.GradientTransformationExtraArgs:
    """`g + hp[3] * (GU(g) - g) + hp[2] * retain_grads`: GU on/off and the retain term as data,
    so every method and both GU settings share one compiled step."""
    gu_tx = gu.project_out(rank=rank, mode=mode)

    def update(updates, state, params=None, *, retain_grads, hp, **extra):
        proj, state = gu_tx.update(updates, state, params, retain_grads=retain_grads)
        out = jax.tree.map(
            lambda g, p, r: (g + hp[3] * (p - g) + hp[2] * r).astype(g.dtype), updates, proj, retain_grads
        )
        return out, state

    return optax.GradientTransformationExtraArgs(gu_tx.init, update)


def unlearn_tx(
    lr: float, rank: int = 8, mode: str = "per_tensor", weight_decay: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    return optax.chain(switchable_gu(rank, mode), optax.adamw(lr, weight_decay=weight_decay))


def finetune_tx(lr: float, steps: int, warmup: int | None = None, weight_decay: float = 0.01):
    warmup = max(1, steps // 10) if warmup is None else warmup
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay))


def _gather(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def make_finetune_run(cfg, tx):
    """run(params, data{tokens,mask}, idx_SxB, key) -> (params, metrics per step): one lax.scan."""
    step = engine.make_step(sft_loss(cfg), tx)

    @jax.jit
    def run(params, data, idx_SxB, key):
        state = engine.init_state(params, tx, key)
        state, metrics = jax.lax.scan(lambda s, i: step(s, _gather(data, i)), state, idx_SxB)
        return state.params, metrics

    return run


def make_unlearn_run(cfg, tx, beta: float):
    """run(params, data, forget_idx_SxB, retain_idx_SxB, hp, key): one program for every method."""
    step = engine.make_step(forget_loss(cfg, beta), tx, extra_args=retain_grads_fn(cfg))

    @jax.jit
    def run(params, data, f_idx, r_idx, hp, key):
        state = engine.init_state(params, tx, key)

        def body(s, idx):
            fi, ri = idx
            batch = {"forget": _gather(data["forget"], fi), "retain": _gather(data["retain"], ri), "hp": hp}
            return step(s, batch)

        state, metrics = jax.lax.scan(body, state, (f_idx, r_idx))
        return state.params, metrics

    return run
