"""A reservoir buffer that also stores the network's logits (DER / DER++ logit replay; Buzzega
et al., "Dark Experience for General Continual Learning: a Strong, Simple Baseline", NeurIPS 2020).

The logits of an example are the ones the network produced when the example was trained on (the
forward pass of that step, before the update), so the buffer is written *after* the loss
(:attr:`jaxcl.engine.DataTransform.after`), from ``aux['store_logits']``. Reservoir sampling as
:mod:`jaxcl.data.replay`: the i-th example ever seen goes to slot i while i < capacity, afterwards
to a uniformly random slot ``r ~ U{0..i}`` when ``r < capacity``.

``update`` adds ``draws`` independent memory batches of ``memory_size`` rows as ``batch['memory']``
(and ``batch['memory2']``, ... for the next draws), each with the stored ``logits`` and a per-row
``weight`` (0 while the buffer is empty).

A classifier's logits are one row of ``n_logits`` per example; a language model's are every
position's (``T - 1 x V`` per sequence, with its ``tokens``, ``mask`` and, for the VLM, its
``image``): ``n_logits`` is then a function of the example batch giving that shape, and the buffer
holds ``capacity x (T - 1) x V`` floats (0.03 GB per 512 sequences of 56 byte tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..engine import DataTransform
from .replay import EXAMPLE_FIELDS

FIELDS = EXAMPLE_FIELDS
MAX_GIB = 8  # a buffer larger than this per seed is refused (a language model's vocabulary adds up)


def memory_key(i: int) -> str:
    return "memory" if i == 0 else f"memory{i + 1}"


def logit_reservoir(
    capacity: int, n_logits: int | Callable, *, memory_size: int = 32, draws: int = 1
) -> DataTransform:
    """The buffer of ``capacity`` examples with their logits: ``n_logits`` per example, or
    ``n_logits(example_batch) -> shape`` of one example's logits (a language model's ``(T - 1, V)``)."""
    if capacity <= 0:
        raise ValueError(f"logit buffer: capacity must be positive, got {capacity}")
    if memory_size <= 0:
        raise ValueError(f"logit buffer: memory_size must be positive, got {memory_size}")

    def init(example):
        buf = {
            k: jnp.zeros((capacity,) + example[k].shape[1:], example[k].dtype) for k in FIELDS if k in example
        }
        shape = tuple(n_logits(example)) if callable(n_logits) else (n_logits,)
        gib = capacity * math.prod(shape) * 4 / 2**30
        if gib > MAX_GIB:
            raise ValueError(
                f"logit buffer: {capacity} examples x {shape} float32 logits need {gib:.1f} GiB per seed "
                f"(more than {MAX_GIB}); lower the method's capacity (e.g. derpp.capacity)"
            )
        buf["logits"] = jnp.zeros((capacity, *shape), jnp.float32)
        return {"buffer": buf, "seen": jnp.zeros((), jnp.int32)}

    def update(batch, state, key):
        filled = jnp.minimum(state["seen"], capacity)
        out = dict(batch)
        for i in range(draws):
            idx = jax.random.randint(jax.random.fold_in(key, i), (memory_size,), 0, jnp.maximum(filled, 1))
            mem = jax.tree.map(lambda b: b[idx], state["buffer"])
            mem["weight"] = jnp.full((memory_size,), filled > 0, jnp.float32)
            out[memory_key(i)] = mem
        return out, state

    def after(batch, state, params, aux, key):
        del params
        ex = {k: batch[k] for k in FIELDS if k in batch}
        ex["logits"] = jax.lax.stop_gradient(aux["store_logits"]).astype(jnp.float32)
        b = ex["logits"].shape[0]
        i_B = state["seen"] + jnp.arange(b, dtype=jnp.int32)
        r_B = jax.random.randint(key, (b,), 0, jnp.iinfo(jnp.int32).max) % (i_B + 1)
        slot_B = jnp.where(i_B < capacity, i_B, r_B)
        slot_B = jnp.where(slot_B < capacity, slot_B, capacity)  # out of range: dropped
        buf = {k: state["buffer"][k].at[slot_B].set(ex[k], mode="drop") for k in state["buffer"]}
        return {"buffer": buf, "seen": state["seen"] + b}

    return DataTransform(init, update, after)
