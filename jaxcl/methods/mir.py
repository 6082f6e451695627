"""Maximally Interfered Retrieval, ER-MIR (Aljundi et al., "Online Continual Learning with Maximally
Interfered Retrieval", NeurIPS 2019).

Every step draws ``candidates`` examples from a reservoir buffer, takes a virtual SGD step on the
incoming batch,

    theta_v = theta - lr_v * grad L(f_theta(x_in), y_in),

scores each candidate by how much that step would raise its loss (sec. 3.1),

    s(x, y) = l(f_{theta_v}(x), y) - l(f_theta(x), y),

and replays the ``memory_batch`` candidates with the highest scores together with the incoming
batch: ``L = CE(batch_in) + CE(retrieved)`` (the retrieval is under ``stop_gradient``). All inside
the loss, so selection and training are one compiled step. Defaults: the paper's MNIST settings
(50 candidates, 10 retrieved; virtual step 0.1 as its SGD learning rate).
"""

import jax
import jax.numpy as jnp
import optax

from ..data.replay import reservoir
from ..losses import masked_logits
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


def _ce(apply_fn, params, b, w=None):
    ce = optax.softmax_cross_entropy_with_integer_labels(masked_logits(apply_fn(params, b["x"]), b), b["y"])
    return ce if w is None else ce * w


def mir_scores(apply_fn, params, batch, cand, virtual_lr):
    """Per-candidate loss increase after one virtual SGD step on ``batch`` (no gradient)."""
    params = jax.lax.stop_gradient(params)
    g = jax.grad(lambda p: _ce(apply_fn, p, batch).mean())(params)
    virtual = jax.tree.map(lambda p, gi: p - virtual_lr * gi, params, g)
    sub = {k: v for k, v in cand.items() if k != "weight"}
    return _ce(apply_fn, virtual, sub) - _ce(apply_fn, params, sub)


def mir_loss(apply_fn, k: int, virtual_lr):
    def loss_fn(params, batch, key):
        del key
        cand = batch["memory"]
        cur = {kk: v for kk, v in batch.items() if kk != "memory"}
        scores = mir_scores(apply_fn, params, cur, cand, virtual_lr)
        _, idx = jax.lax.top_k(scores, k)
        picked = jax.tree.map(lambda a: a[idx], cand)
        ce_in = _ce(apply_fn, params, cur).mean()
        w = picked["weight"]
        ce_mem = _ce(apply_fn, params, picked, w).sum() / jnp.maximum(w.sum(), 1.0)
        return ce_in + ce_mem, {"ce": ce_in, "ce_mem": ce_mem, "mir_score": scores.mean()}

    return loss_fn


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    if options["memory_batch"] > options["candidates"]:
        raise ValueError(
            f"mir.memory_batch={options['memory_batch']} is larger than mir.candidates={options['candidates']}; "
            "retrieve at most as many examples as are scored"
        )
    data = reservoir(
        options["capacity"],
        mode="separate",
        memory_size=options["candidates"],
        fields=("x", "y", "t", "mask"),
    )
    loss = mir_loss(model.apply, options["memory_batch"], hp["mir_virtual_lr"])
    return Method(loss, optimizer_from(opt, hp["lr"]), data=data)


SPEC = register(
    MethodSpec(
        "mir",
        build,
        {"lr": LR(1e-3), "mir_virtual_lr": Hparam(0.1, 0.0, None, low_open=True, help="virtual SGD step")},
        {"capacity": 1000, "candidates": 50, "memory_batch": 10, **OPTIMIZER_OPTIONS},
        "ER with maximally interfered retrieval (replay the candidates a virtual step would hurt most)",
        paper="Aljundi et al. 2019, Online Continual Learning with Maximally Interfered Retrieval",
        choices={"optim": OPTIMIZERS},
    )
)
