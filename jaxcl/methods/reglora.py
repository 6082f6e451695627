"""RegLoRA: LoRA whose update is held at zero where earlier tasks' knowledge sits (Chen, Cong,
Zhao, Yang, Hu, Ip and Kwong, "SEFE: Superficial and Essential Forgetting Eliminator for
Multimodal Continual Instruction Tuning", ICML 2025; SEFE = RegLoRA + answer style
diversification, :func:`jaxcl.data.multimodal.diversify`).

Only LoRA adapters train (``--set model.lora.rank=8``). After each task ``t`` the task's update of
every adapted matrix, ``D_t = A B - (A B)_{start of t}`` (the adapters' product, without the
``alpha / r`` scale, as the authors' ``lora_B @ lora_A``), marks its key elements: the top
``p = 2 %`` of ``|D_t|`` by magnitude, per matrix (per layer of the Llama's stacked weights). The
key set ``K_m`` of matrix ``m`` is the union over the finished tasks. Training the next task:

    L = CE + lambda * (1 / M) * sum_m  mean_{(i, j) in K_m} |(A B - (A B)_{start})_{ij}|

over the ``M`` adapted matrices: the new update is pulled to zero on the positions where earlier
tasks wrote theirs (an L1 penalty on the positions, not on the whole update, so the rest of the
matrix stays free for the new task). Before the first task ends ``K`` is empty and the penalty 0.
A matrix the task left unchanged (an untrained adapter, B = 0) marks no key element.

The authors train a fresh LoRA per task and merge it into the base at the task's end; here one
set of adapters runs through the stream and the anchor ``(A B)_{start}`` is its product at the
task's start, so ``A B - (A B)_{start}`` is exactly the update a fresh per-task LoRA holds.

Defaults from the authors' code (github.com/jinpeng0528/SEFE): ``p = 0.02``
(``key_elements_identification.py``: ``int(0.02 * rows * cols)`` largest), ``lambda = 2500``
(``llava_llama.py``: ``loss_reg * 2.5e3``), the mean over the matrices (``modeling_llama.py``:
the per-matrix means summed, divided by 224 = 32 layers x 7 matrices), LoRA on every linear
(their ``q k v o gate up down``; here ``model.lora.targets``), lr 2e-4 with rank 128 / alpha 256
on a 7B model (here the study's lr). Ties at the p-th magnitude keep every tied element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..data.context import zeros_like_tree
from ..engine import DataTransform
from ..losses import supervised_loss
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

CTX = "reglora"


def product(ad: dict) -> jax.Array:
    """``A @ B`` of one adapted weight, ``(..., in, out)`` (no ``alpha / r`` scale)."""
    return jnp.einsum("...ir,...ro->...io", ad["a"].astype(jnp.float32), ad["b"].astype(jnp.float32))


def key_elements(delta_xIxO: jax.Array, fraction: float) -> jax.Array:
    """Booleans ``(..., in, out)``: per matrix (the last two axes), the ``max(1, int(fraction *
    in * out))`` entries of largest ``|delta|`` (every entry tied with the last one too; never an
    entry the task left at 0, so a matrix the task did not move marks none)."""
    *lead, d_in, d_out = delta_xIxO.shape
    k = max(1, int(fraction * d_in * d_out))
    mag = jnp.abs(delta_xIxO).reshape(*lead, d_in * d_out)
    kth = jax.lax.top_k(mag, k)[0][..., -1:]
    return ((mag >= kth) & (mag > 0)).reshape(delta_xIxO.shape)


def penalty(adapters: dict, anchor: dict, mask: dict) -> jax.Array:
    """``(1 / M) sum_m mean_{K_m} |A B - (A B)_start|`` over every matrix ``m`` of every adapted
    weight (a matrix with no key element yet adds 0)."""
    terms = []
    for name in sorted(adapters):
        diff = jnp.abs(product(adapters[name]) - product(anchor[name]))
        m = mask[name].astype(jnp.float32)
        per = (diff * m).sum((-2, -1)) / jnp.maximum(m.sum((-2, -1)), 1.0)
        terms.append(per.reshape(-1))
    return jnp.concatenate(terms).mean()


def key_state(params_like) -> DataTransform:
    """The on-device state ``{'anchor': adapters at the task's start, 'mask': K per weight}``,
    added to every batch as ``batch['reglora']``; all zeros (no key element) until a task ends."""

    def init(example):
        del example
        anchor = zeros_like_tree(params_like)
        mask = {n: jnp.zeros((*ad["a"].shape[:-1], ad["b"].shape[-1]), bool) for n, ad in params_like.items()}
        return {"anchor": anchor, "mask": mask}

    def update(batch, state, rng):
        del rng
        return {**batch, CTX: state}, state

    return DataTransform(init, update)


def check_model(model) -> None:
    """A :class:`jaxcl.config.ConfigError` when ``model`` has no LoRA adapters."""
    from ..config import ConfigError  # jaxcl.config imports the registry

    if getattr(model, "lora", None) != "adapters":
        raise ConfigError(
            "reglora trains LoRA adapters only and the model has none: set model.lora.rank=8 "
            "(model.lora.targets picks the weights; the authors adapt every linear)"
        )


def build(model, hp, params_like, **options):
    check_model(model)
    opt = pop_optimizer(options)
    fraction = options["key_fraction"]
    if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        from ..config import ConfigError

        raise ConfigError(f"reglora.key_fraction={fraction!r}: give a fraction in (0, 1] (the authors' 0.02)")
    base = supervised_loss(model)

    def loss_fn(params, batch, key):
        loss, aux = base(params, batch, key)
        ctx = batch[CTX]
        reg = penalty(params, ctx["anchor"], ctx["mask"])
        return loss + hp["reg_weight"] * reg, {**aux, "reglora_penalty": reg}

    def consolidate(state, task_batch, key):
        """At a task's end: the task's key elements join ``K``; the anchor moves to the adapters."""
        del task_batch, key
        ds, params = state.data_state, state.params
        mask = {
            n: ds["mask"][n] | key_elements(product(params[n]) - product(ds["anchor"][n]), fraction)
            for n in params
        }
        return state.replace(data_state={"anchor": jax.tree.map(jax.lax.stop_gradient, params), "mask": mask})

    return Method(
        loss_fn, optimizer_from(opt, hp["lr"]), data=key_state(params_like), consolidate=consolidate
    )


SPEC = register(
    MethodSpec(
        "reglora",
        build,
        {
            "lr": LR(1e-3),
            "reg_weight": Hparam(
                2500.0, 0.0, None, help="lambda: weight of the L1 penalty on the key elements"
            ),
        },
        {**OPTIMIZER_OPTIONS, "key_fraction": 0.02},
        "RegLoRA: LoRA whose update is held at zero on earlier tasks' key elements (top 2 % of |AB|)",
        paper="Chen et al., SEFE: Superficial and Essential Forgetting Eliminator (RegLoRA), ICML 2025",
        choices={"optim": OPTIMIZERS},
        needs_lora=True,
    )
)
