"""Reservoir replay: a fixed-capacity buffer that lives on the device.

Experience replay (ER; Chaudhry et al., "On Tiny Episodic Memories in Continual Learning",
2019) keeps a buffer filled by reservoir sampling (Vitter, 1985): the i-th example ever seen
(0-based) goes to slot i while i < capacity, and afterwards to a uniformly random slot
``r ~ U{0..i}`` when ``r < capacity`` (otherwise it is dropped), so every example seen so far is
in the buffer with the same probability ``capacity / seen``.

As a data transform (``init / update``) it does two things every step, inside the compiled
loop: it writes the incoming batch into the buffer and it mixes buffer samples into the batch.

* ``mode="mix"``: the first ``round(fraction * B)`` rows of the batch are replaced by samples
  drawn uniformly from the buffer (when it is not empty). ``fraction`` may be a traced value,
  so it can be swept with ``vmap``; the batch shape never changes.
* ``mode="separate"``: the batch gains ``batch["memory"]``, a separate batch of ``memory_size``
  buffer samples with per-row ``weight`` (0 while the buffer is empty), as A-GEM needs.

Replayed rows are drawn before the incoming batch is stored, so a step never replays its own
inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import DataTransform

# The per-example entries of any model's batch: a classifier's input ``x``, label ``y``, task ``t``
# and class ``mask``; a language model's ``tokens`` and answer ``mask``; the VLM's ``image``
# (jaxcl.models.vlm). A buffer that replays language-model or VLM rows stores all of them, so a
# replayed answer keeps its own image.
EXAMPLE_FIELDS = ("x", "y", "t", "mask", "tokens", "image")


def _count(name: str, value, valid: str) -> int:
    """A positive whole number (``200`` or ``200.0``), or a ValueError naming ``name``."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not (ok and np.isfinite(value) and value >= 1 and value == int(value)):
        raise ValueError(f"reservoir: {name}={value!r} is not valid; give {valid}")
    return int(value)


def _check_fraction(fraction) -> None:
    """``fraction`` must lie in [0, 1]. A traced value (swept under ``vmap``) cannot be read here;
    the method's hyperparameter range (``Hparam``) checks it before the program is built."""
    if isinstance(fraction, jax.core.Tracer):
        return
    try:
        f = np.asarray(fraction, np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"reservoir: fraction={fraction!r} is not a number; give a number in [0, 1]"
        ) from None
    if f.size == 0 or not np.all(np.isfinite(f) & (f >= 0.0) & (f <= 1.0)):
        raise ValueError(
            f"reservoir: fraction={fraction!r} is out of range; valid: [0, 1] (the share of each "
            "batch replaced by buffer samples)"
        )


def reservoir(
    capacity: int,
    fraction=0.5,
    *,
    mode: str = "mix",
    memory_size: int | None = None,
    fields: Sequence[str] = ("x", "y", "t"),
) -> DataTransform:
    """Reservoir replay buffer; see the module docstring. ``fields`` are the per-example
    entries of the batch that are stored and replayed (those absent from the batch are skipped).
    """
    capacity = _count("capacity", capacity, "a whole number of examples >= 1")
    if mode not in ("mix", "separate"):
        raise ValueError(f"reservoir: mode must be 'mix' or 'separate', got {mode!r}")
    _check_fraction(fraction)
    if memory_size is not None:
        memory_size = _count(
            "memory_size", memory_size, "a whole number of rows >= 1 (or None: the batch size)"
        )

    def stored(batch):
        return {k: batch[k] for k in fields if k in batch}

    def init(example_batch):
        ex = stored(example_batch)
        if not ex:
            raise ValueError(f"reservoir: the batch has none of the fields {tuple(fields)}")
        buf = {k: jnp.zeros((capacity,) + v.shape[1:], v.dtype) for k, v in ex.items()}
        return {"buffer": buf, "seen": jnp.zeros((), jnp.int32)}

    def sample(state, key, n):
        filled = jnp.minimum(state["seen"], capacity)
        idx = jax.random.randint(key, (n,), 0, jnp.maximum(filled, 1))
        return jax.tree.map(lambda b: b[idx], state["buffer"]), filled > 0

    def write(state, batch, key):
        ex = stored(batch)
        b = jax.tree.leaves(ex)[0].shape[0]
        i_B = state["seen"] + jnp.arange(b, dtype=jnp.int32)
        r_B = jax.random.randint(key, (b,), 0, jnp.iinfo(jnp.int32).max) % (i_B + 1)
        slot_B = jnp.where(i_B < capacity, i_B, r_B)
        slot_B = jnp.where(slot_B < capacity, slot_B, capacity)  # capacity = out of range: dropped
        buf = {k: state["buffer"][k].at[slot_B].set(ex[k], mode="drop") for k in ex}
        return {"buffer": buf, "seen": state["seen"] + b}

    def update(batch, state, key):
        k_sample, k_write = jax.random.split(key)
        b = jax.tree.leaves(stored(batch))[0].shape[0]
        if mode == "mix":
            rep, nonempty = sample(state, k_sample, b)
            n_rep = jnp.round(fraction * b).astype(jnp.int32)
            use_B = (jnp.arange(b) < n_rep) & nonempty
            mixed = dict(batch)
            for k, v in rep.items():
                sel = use_B.reshape((b,) + (1,) * (v.ndim - 1))
                mixed[k] = jnp.where(sel, v, batch[k])
            out = mixed
        else:
            m = memory_size or b
            rep, nonempty = sample(state, k_sample, m)
            rep["weight"] = jnp.full((m,), nonempty, jnp.float32)
            out = {**batch, "memory": rep}
        return out, write(state, batch, k_write)

    return DataTransform(init, update)
