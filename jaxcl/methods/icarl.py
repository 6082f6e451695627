"""iCaRL (Rebuffi, Kolesnikov, Sperl and Lampert, "iCaRL: Incremental Classifier and
Representation Learning", CVPR 2017).

* Exemplars by herding (Alg. 4): for class y with normalised features ``phi(x)`` and mean ``mu``,
  the k-th exemplar is ``argmin_x || mu - 1/k (phi(x) + sum_{j<k} phi(p_j)) ||`` over the not yet
  chosen examples. Built at every task end from ``loop.consolidate_samples`` examples of the task;
  the memory has a fixed ``capacity // n_classes`` slots per class (the paper shrinks m = K/t
  classes seen; a fixed per-class budget keeps the state's shape static).
* Training (Alg. 3): the incoming batch plus ``memory_batch`` exemplars, sigmoid binary
  cross-entropy over all classes, the targets of the old classes (those with exemplars and absent
  from the incoming batch) being the previous model's sigmoid outputs (distillation), the others
  the one-hot label.
* Classification (Alg. 1): nearest mean of exemplars, ``y* = argmin_y || phi(x) - mu_y ||`` on
  normalised features with the means recomputed from the exemplars under the current network
  (:attr:`Method.predict`); classes without exemplars (those of the task being learned) are never
  predicted, as in the paper, whose model only classifies after a task's exemplars are built.
"""

import jax
import jax.numpy as jnp
import optax

from ..engine import DataTransform
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)


def _normalise(f):
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def herding(feats_NxF, valid_N, m: int):
    """Indices of ``m`` exemplars chosen by herding among the ``valid`` rows (normalised features);
    returns ``(idx_m, ok_m)`` with ``ok`` False past the number of valid rows."""
    f = _normalise(feats_NxF)
    n_valid = valid_N.sum()
    mu = (f * valid_N[:, None]).sum(0) / jnp.maximum(n_valid, 1)

    def pick(carry, k):
        acc, used = carry
        cand = jnp.linalg.norm(mu[None] - (acc[None] + f) / (k + 1), axis=-1)
        cand = jnp.where(valid_N & ~used, cand, jnp.inf)
        i = jnp.argmin(cand)
        return (acc + f[i], used.at[i].set(True)), i

    init = (jnp.zeros_like(mu), jnp.zeros(valid_N.shape, bool))
    _, idx = jax.lax.scan(pick, init, jnp.arange(m))
    return idx, jnp.arange(m) < n_valid


def exemplar_init(per_class: int, n_classes: int, params_like):
    """The exemplar memory's ``init``: state ``{'x': (C, m, ...), 'valid': (C, m), 'teacher',
    'on'}``. Its ``update`` (in :func:`build`) adds ``batch['memory']`` (``memory_batch``
    exemplars drawn uniformly, with ``weight``) and the teacher's logits on the batch and the
    memory (``batch['ref_logits']``)."""

    def init(example):
        x = example["x"]
        return {
            "x": jnp.zeros((n_classes, per_class) + x.shape[1:], x.dtype),
            "valid": jnp.zeros((n_classes, per_class), bool),
            "teacher": jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params_like),
            "on": jnp.zeros((), jnp.float32),
        }

    return init


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    C = model.n_classes
    m = options["capacity"] // C
    if m < 1:
        raise ValueError(
            f"icarl.capacity={options['capacity']} is smaller than the {C} classes: iCaRL keeps "
            "capacity // n_classes exemplars per class; raise the capacity"
        )
    mem_n = options["memory_batch"]
    init = exemplar_init(m, C, params_like)

    def update(batch, state, key):
        flat_valid = state["valid"].reshape(-1)
        logits_ = jnp.where(flat_valid, 0.0, -jnp.inf)
        idx = jax.random.categorical(key, logits_, shape=(mem_n,))
        xs = state["x"].reshape((C * m,) + state["x"].shape[2:])[idx]
        ys = (idx // m).astype(jnp.int32)
        w = jnp.full((mem_n,), flat_valid.any(), jnp.float32)
        mem = {"x": xs, "y": ys, "weight": w}
        both = jnp.concatenate([batch["x"], xs])
        ref = jax.lax.stop_gradient(model.apply(state["teacher"], both))
        present_C = (batch["y"][:, None] == jnp.arange(C)[None]).any(0)  # the classes being learned
        old_C = state["valid"].any(1) & (state["on"] > 0) & ~present_C
        return {**batch, "memory": mem, "ref_logits": ref, "old_classes": old_C}, state

    def loss_fn(params, batch, key):
        del key
        mem = batch["memory"]
        x = jnp.concatenate([batch["x"], mem["x"]])
        y = jnp.concatenate([batch["y"], mem["y"]])
        w = jnp.concatenate([jnp.ones_like(batch["y"], jnp.float32), mem["weight"]])
        logits = model.apply(params, x)
        target = jax.nn.one_hot(y, C)
        target = jnp.where(batch["old_classes"][None], jax.nn.sigmoid(batch["ref_logits"]), target)
        bce = optax.sigmoid_binary_cross_entropy(logits, target).sum(-1)
        loss = (bce * w).sum() / w.sum()
        acc = (logits[: batch["y"].shape[0]].argmax(-1) == batch["y"]).mean()
        return loss, {"bce": loss, "train_acc": acc}

    def consolidate(state, task_batch, key):
        del key
        ds = state.data_state
        feats = model.features(state.params, task_batch["x"])

        def per_class(c):
            valid = task_batch["y"] == c
            idx, ok = herding(feats, valid, m)
            return task_batch["x"][idx], ok, valid.any()

        xs, ok, present = jax.vmap(per_class)(jnp.arange(C))
        sel = present.reshape((C,) + (1,) * (xs.ndim - 1))
        new = {
            "x": jnp.where(sel, xs, ds["x"]),
            "valid": jnp.where(present[:, None], ok, ds["valid"]),
            "teacher": jax.tree.map(jax.lax.stop_gradient, state.params),
            "on": jnp.ones((), jnp.float32),
        }
        return state.replace(data_state=new)

    def predict(params, data_state, x):
        ex = data_state["x"].reshape((C * m,) + data_state["x"].shape[2:])
        f_ex = _normalise(model.features(params, ex)).reshape(C, m, -1)
        v = data_state["valid"][..., None]
        mu = _normalise((f_ex * v).sum(1) / jnp.maximum(v.sum(1), 1))
        f = _normalise(model.features(params, x))
        d = ((f[:, None] - mu[None]) ** 2).sum(-1)
        return jnp.where(data_state["valid"].any(1)[None], -d, -jnp.inf)

    return Method(
        loss_fn,
        optimizer_from(opt, hp["lr"]),
        data=DataTransform(init, update),
        consolidate=consolidate,
        predict=predict,
    )


SPEC = register(
    MethodSpec(
        "icarl",
        build,
        {"lr": LR(1e-3)},
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "iCaRL: herding exemplars, distillation, nearest-mean-of-exemplars classifier",
        paper="Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning",
        choices={"optim": OPTIMIZERS},
    )
)
