"""GDumb (Prabhu, Torr and Dokania, "GDumb: A Simple Approach that Questions Our Progress in
Continual Learning", ECCV 2020).

A greedy class-balanced sampler fills a memory of ``capacity`` examples from the stream (sec. 3):
an example is stored while the memory has room; once it is full, an example of class y is stored
only if y holds fewer than ``capacity / (number of classes seen)`` slots, replacing a random
example of the largest class. The learner itself is not trained on the stream: when a model is
needed (here at every task end, :attr:`Method.consolidate`), a network is trained *from scratch*
on the memory alone (``retrain_steps`` steps of batches of ``retrain_batch``, Adam at ``lr``)
and replaces the parameters; evaluation during the next task sees that model. The per-example
greedy update runs under ``lax.scan`` over the batch's rows, inside the compiled step.
Defaults: GDumb's own recipe is many epochs of SGD with cutmix; here Adam for ``retrain_steps``
steps (a budget suited to the MLP benchmarks).
"""

import jax
import jax.numpy as jnp
import optax

from ..data.replay import EXAMPLE_FIELDS
from ..engine import DataTransform
from ..losses import supervised_loss
from .base import LR, Method, MethodSpec, register

FIELDS = EXAMPLE_FIELDS


def greedy_balanced(capacity: int, n_classes: int) -> DataTransform:
    """GDumb's class-balanced memory; state ``{'buffer', 'filled', 'counts'}``."""

    def init(example):
        buf = {
            k: jnp.zeros((capacity,) + example[k].shape[1:], example[k].dtype) for k in FIELDS if k in example
        }
        return {
            "buffer": buf,
            "filled": jnp.zeros((), jnp.int32),
            "counts": jnp.zeros((n_classes,), jnp.int32),
        }

    def add(state, item):
        ex, key = item
        y = ex["y"]
        counts, filled = state["counts"], state["filled"]
        seen = ((counts > 0) | (jnp.arange(n_classes) == y)).sum()
        room = filled < capacity
        under = counts[y] * seen < capacity  # counts[y] < capacity / seen
        largest = jnp.argmax(counts)
        slot_ok = state["buffer"]["y"] == largest
        slot_ok &= jnp.arange(capacity) < filled
        g = jax.random.gumbel(key, (capacity,))
        victim = jnp.argmax(jnp.where(slot_ok, g, -jnp.inf))
        store = room | under
        slot = jnp.where(room, filled, victim)
        slot = jnp.where(store, slot, capacity)  # out of range: dropped
        buf = {k: state["buffer"][k].at[slot].set(ex[k], mode="drop") for k in state["buffer"]}
        counts = counts.at[y].add(store.astype(jnp.int32))
        counts = counts.at[largest].add(-(store & ~room).astype(jnp.int32))
        return {"buffer": buf, "filled": filled + room.astype(jnp.int32), "counts": counts}, None

    def update(batch, state, key):
        ex = {k: batch[k] for k in state["buffer"]}
        b = ex["y"].shape[0]
        state, _ = jax.lax.scan(add, state, (ex, jax.random.split(key, b)))
        return batch, state

    return DataTransform(init, update)


def retrain(model, buffer, filled, key, *, steps: int, batch: int, lr):
    """A fresh network trained on the memory for ``steps`` Adam steps (``lax.scan``)."""
    k_init, k_run = jax.random.split(key)
    params = model.init(k_init)
    tx = optax.adam(lr)
    loss = supervised_loss(model)

    def step(carry, k):
        p, s = carry
        idx = jax.random.randint(k, (batch,), 0, jnp.maximum(filled, 1))
        b = jax.tree.map(lambda a: a[idx], buffer)
        b["weight"] = jnp.full((batch,), filled > 0, jnp.float32)
        g = jax.grad(lambda q: loss(q, b, k)[0])(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(k_run, steps))
    return params


def build(model, hp, params_like, **options):
    del params_like
    if options["capacity"] < model.n_classes:
        raise ValueError(
            f"gdumb.capacity={options['capacity']} is smaller than the {model.n_classes} classes: "
            "GDumb's class-balanced memory needs at least one slot per class; raise the capacity"
        )

    def consolidate(state, task_batch, key):
        del task_batch
        ds = state.data_state
        params = retrain(
            model,
            ds["buffer"],
            ds["filled"],
            key,
            steps=options["retrain_steps"],
            batch=options["retrain_batch"],
            lr=hp["lr"],
        )
        return state.replace(params=params)

    zero_loss = lambda params, batch, key: (0.0 * sum(jnp.sum(p) for p in jax.tree.leaves(params)), {})
    return Method(
        zero_loss,
        optax.set_to_zero(),
        data=greedy_balanced(options["capacity"], model.n_classes),
        consolidate=consolidate,
    )


SPEC = register(
    MethodSpec(
        "gdumb",
        build,
        {"lr": LR(1e-3)},
        {"capacity": 1000, "retrain_steps": 500, "retrain_batch": 32},
        "GDumb: greedy class-balanced memory, a network trained from scratch on it at every task end",
        paper="Prabhu et al. 2020, GDumb: A Simple Approach that Questions Our Progress in Continual Learning",
    )
)
