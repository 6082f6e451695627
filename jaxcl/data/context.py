"""Data transforms that carry a method's on-device context into the batch.

Loss wrappers read everything beyond the parameters from the batch; these transforms keep that
context in the train state and add it to every batch:

* :func:`reference` keeps a frozen copy of a model's parameters and adds a function of it to the
  batch (NPO's reference log-likelihoods, KL-regularised fine-tuning); :func:`teacher` is the
  case of a classifier's logits (``batch['ref_logits']``, with ``batch['ref_logits_on']``) for
  :func:`jaxcl.losses.with_kl`.
* :func:`ewc_anchor` keeps EWC's anchor ``theta*`` and Fisher ``F`` and adds them as
  ``batch['ewc']`` for :func:`jaxcl.losses.with_ewc_penalty`.

Consolidating after a task is a state change made with the matching ``set_*`` function.
:func:`chain` composes data transforms, each with its own slot of state.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..engine import DataTransform


def zeros_like_tree(tree):
    """Zeros shaped like ``tree``, whose leaves may be arrays or ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)


def chain(*transforms: DataTransform) -> DataTransform:
    """Apply data transforms in order; the state is a tuple with one entry per transform."""

    def init(example):
        states = []
        for t in transforms:
            states.append(t.init(example))
        return tuple(states)

    def update(batch, state, key):
        new_states = []
        for i, (t, s) in enumerate(zip(transforms, state)):
            batch, s = t.update(batch, s, jax.random.fold_in(key, i))
            new_states.append(s)
        return batch, tuple(new_states)

    def after(batch, state, params, aux, key):
        return tuple(
            s if t.after is None else t.after(batch, s, params, aux, jax.random.fold_in(key, i))
            for i, (t, s) in enumerate(zip(transforms, state))
        )

    return DataTransform(init, update, after if any(t.after is not None for t in transforms) else None)


def reference(fn: Callable, params_like, *, key: str, field: str | None = None) -> DataTransform:
    """A frozen reference model: state ``{'params', 'on'}`` (``on`` starts at 0: no reference
    yet); every batch gains ``batch[key] = fn(ref_params, sub)`` (no gradient) with ``sub`` the
    batch, or ``batch[field]`` when ``field`` is given, and ``batch[key + '_on']``. Make the
    current parameters the reference with :func:`set_teacher` (a state change)."""

    def init(example):
        del example
        return {"params": zeros_like_tree(params_like), "on": jnp.zeros((), jnp.float32)}

    def update(batch, state, rng):
        del rng
        sub = batch if field is None else batch[field]
        out = jax.lax.stop_gradient(fn(state["params"], sub))
        return {**batch, key: out, key + "_on": state["on"]}, state

    return DataTransform(init, update)


def teacher(apply_fn: Callable, params_like, *, key: str = "ref_logits") -> DataTransform:
    """A teacher's logits on ``batch['x']`` for :func:`jaxcl.losses.with_kl` (LwF)."""
    return reference(lambda p, b: apply_fn(p, b["x"]), params_like, key=key)


def set_teacher(state, params):
    """Make ``params`` the teacher (e.g. at the end of a task for LwF)."""
    return {"params": jax.tree.map(jax.lax.stop_gradient, params), "on": jnp.ones((), jnp.float32)}


def freeze_current(train_state, batch=None, key=None):
    """A method's ``consolidate``: the train state's current parameters become the frozen
    teacher / reference of its data state (LwF at a task's end; NPO, DPO, UNDIAL and RMU at the
    start of unlearning)."""
    del batch, key
    return train_state.replace(data_state=set_teacher(train_state.data_state, train_state.params))


def ewc_anchor(params_like, *, key: str = "ewc") -> DataTransform:
    """EWC's anchor and accumulated Fisher diagonal; state ``{'anchor', 'fisher'}``."""

    def init(example):
        del example
        zeros = zeros_like_tree(params_like)
        return {"anchor": zeros, "fisher": zeros}

    def update(batch, state, rng):
        del rng
        return {**batch, key: state}, state

    return DataTransform(init, update)


def set_ewc_anchor(state, params, fisher, *, decay=1.0):
    """After a task: anchor at ``params``; Fisher ``decay * F_old + F_new`` (online EWC,
    Schwarz et al. 2018, with ``decay = 1`` the sum of per-task Fishers)."""
    new_f = jax.tree.map(lambda old, new: decay * old + new, state["fisher"], fisher)
    return {"anchor": jax.tree.map(jax.lax.stop_gradient, params), "fisher": new_f}
