"""BiC, bias correction (Wu et al., "Large Scale Incremental Learning", CVPR 2019).

Stage 1, training on task n (eq. 2-4): the incoming batch plus ``memory_batch`` rows of a
reservoir memory, with

    L = lambda * L_d + (1 - lambda) * L_c,    lambda = n_old / (n_old + n_new),

old classes being those seen in earlier tasks and absent from the incoming batch,
``L_c`` the cross-entropy and ``L_d = T^2 KL(softmax(o_old^prev / T) || softmax(o_old / T))`` the
distillation of the previous model's logits over the old classes (T = 2).

Stage 2, at the task end (eq. 5): a two-parameter linear layer on the logits of the task's new
classes, ``q_k = alpha * o_k + beta``, fitted by cross-entropy with the network frozen
(``bias_steps`` Adam steps at ``bias_lr``) on a validation set: here the memory, which holds
examples of every task seen (the paper holds out a class-balanced part of its exemplars from
stage 1; the memory rows here were also replayed). Evaluation applies the correction of every
task through :attr:`Method.predict` (the layer of each task end is kept per class).
"""

import jax
import jax.numpy as jnp
import optax

from ..data.context import chain, set_teacher, teacher
from ..data.replay import reservoir
from ..engine import DataTransform
from ..losses import kl_divergence, masked_logits
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


def correct(logits, alpha_C, beta_C):
    """Per-class affine correction ``alpha_c * o_c + beta_c`` (1, 0 for uncorrected classes)."""
    return logits * alpha_C + beta_C


def fit_bias(logits_NxC, y_N, w_N, new_C, steps: int, lr):
    """Fit ``(alpha, beta)`` of the new classes by Adam on the weighted cross-entropy."""
    tx = optax.adam(lr)

    def loss(ab):
        a = jnp.where(new_C, ab[0], 1.0)
        b = jnp.where(new_C, ab[1], 0.0)
        ce = optax.softmax_cross_entropy_with_integer_labels(correct(logits_NxC, a, b), y_N)
        return (ce * w_N).sum() / jnp.maximum(w_N.sum(), 1.0)

    def step(carry, _):
        ab, s = carry
        u, s = tx.update(jax.grad(loss)(ab), s, ab)
        return (optax.apply_updates(ab, u), s), None

    ab0 = jnp.array([1.0, 0.0])
    (ab, _), _ = jax.lax.scan(step, (ab0, tx.init(ab0)), None, length=steps)
    return ab


def bias_state(n_classes):
    def init(example):
        del example
        return {
            "alpha": jnp.ones((n_classes,)),
            "beta": jnp.zeros((n_classes,)),
            "seen": jnp.zeros((n_classes,), bool),
        }

    def update(batch, state, key):
        del key
        return {**batch, "old_classes": state["seen"]}, state

    return DataTransform(init, update)


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    C, T = model.n_classes, options["temperature"]
    mem = reservoir(
        options["capacity"],
        mode="separate",
        memory_size=options["memory_batch"],
        fields=("x", "y", "t", "mask"),
    )
    # the teacher sees the incoming rows and the memory rows together
    teach = teacher(lambda p, x: model.apply(p, x), params_like)
    inner = chain(mem, bias_state(C))
    data = DataTransform(
        lambda ex: (inner.init(ex), teach.init(ex)),
        lambda b, s, k: _update(b, s, k, inner, teach),
        None,
    )

    def loss_fn(params, batch, key):
        del key
        m = batch["memory"]
        x = jnp.concatenate([batch["x"], m["x"]])
        y = jnp.concatenate([batch["y"], m["y"]])
        w = jnp.concatenate([jnp.ones_like(batch["y"], jnp.float32), m["weight"]])
        raw = model.apply(params, x)
        b = batch["y"].shape[0]
        mask = jnp.concatenate([batch["mask"], m["mask"]]) if "mask" in batch else None
        logits = raw if mask is None else masked_logits(raw, {"mask": mask})
        ce = (optax.softmax_cross_entropy_with_integer_labels(logits, y) * w).sum() / w.sum()
        present = (batch["y"][:, None] == jnp.arange(C)[None]).any(0)  # the classes being learned
        old = batch["old_classes"] & ~present
        n_old, n_new = old.sum(), present.sum()
        lam = n_old / jnp.maximum(n_old + n_new, 1)
        neg = jnp.finfo(raw.dtype).min / 2
        ref = jnp.where(old[None], batch["ref_logits"], neg)
        kd = T * T * kl_divergence(ref, jnp.where(old[None], raw, neg), T) * batch["ref_logits_on"]
        acc = (logits[:b].argmax(-1) == batch["y"]).mean()
        return lam * kd + (1 - lam) * ce, {"ce": ce, "kd": kd, "bic_lambda": lam, "train_acc": acc}

    def consolidate(state, task_batch, key):
        del key
        (mem_s, bias_s), teach_s = state.data_state
        buf, filled = mem_s["buffer"], jnp.minimum(mem_s["seen"], options["capacity"])
        w = (jnp.arange(options["capacity"]) < filled).astype(jnp.float32)
        task_C = (task_batch["y"][:, None] == jnp.arange(C)[None]).any(0)
        new_C = task_C & ~bias_s["seen"]
        logits = jax.lax.stop_gradient(model.apply(state.params, buf["x"]))
        ab = fit_bias(logits, buf["y"], w, new_C, options["bias_steps"], hp["bias_lr"])
        any_old = bias_s["seen"].any()  # the first task has nothing to be biased against
        use = new_C & any_old
        bias_s = {
            "alpha": jnp.where(use, ab[0], bias_s["alpha"]),
            "beta": jnp.where(use, ab[1], bias_s["beta"]),
            "seen": bias_s["seen"] | task_C,
        }
        both = jax.tree.map(jax.lax.stop_gradient, state.params)
        return state.replace(data_state=((mem_s, bias_s), set_teacher(teach_s, both)))

    def predict(params, data_state, x):
        bias_s = data_state[0][1]
        return correct(model.apply(params, x), bias_s["alpha"], bias_s["beta"])

    return Method(loss_fn, optimizer_from(opt, hp["lr"]), data=data, consolidate=consolidate, predict=predict)


def _update(batch, state, key, data, teach):
    s_data, s_teach = state
    batch, s_data = data.update(batch, s_data, key)
    both = {"x": jnp.concatenate([batch["x"], batch["memory"]["x"]])}
    tb, s_teach = teach.update(both, s_teach, key)
    return {**batch, "ref_logits": tb["ref_logits"], "ref_logits_on": tb["ref_logits_on"]}, (s_data, s_teach)


SPEC = register(
    MethodSpec(
        "bic",
        build,
        {
            "lr": LR(1e-3),
            "bias_lr": Hparam(0.01, 0.0, None, low_open=True, help="bias layer's learning rate"),
        },
        {"capacity": 1000, "memory_batch": 32, "temperature": 2.0, "bias_steps": 200, **OPTIMIZER_OPTIONS},
        "BiC: replay + distillation, then a 2-parameter bias layer on the new classes' logits",
        paper="Wu et al. 2019, Large Scale Incremental Learning",
        choices={"optim": OPTIMIZERS},
    )
)
