"""ER-ACE, experience replay with asymmetric cross-entropy (Caccia et al., "New Insights on
Reducing Abrupt Representation Change in Online Continual Learning", ICLR 2022, eq. 4):

    L = CE_{C_in}(f(x_in), y_in) + CE_{C_all}(f(x_mem), y_mem),

the incoming batch's softmax restricted to the classes present in that batch (``C_in``: the other
logits are masked out, so new classes never push old ones' logits down), the replayed batch's over
all classes. The memory is a reservoir buffer drawn as a separate batch
(:func:`jaxcl.data.replay.reservoir`, ``mode='separate'``; weight 0 while empty).
Task-incremental masks (``batch['mask']``) apply on top.
"""

import jax.numpy as jnp
import optax

from ..data.replay import reservoir
from ..losses import masked_logits
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


def present_mask(y_B, n_classes):
    """``(B, C)``: True on the classes that occur in ``y_B`` (the same row for every example)."""
    present_C = (y_B[:, None] == jnp.arange(n_classes)[None]).any(0)
    return jnp.broadcast_to(present_C, (y_B.shape[0], n_classes))


def ace_loss(apply_fn, n_classes):
    def loss_fn(params, batch, key):
        del key
        b = batch["y"].shape[0]
        mem = batch["memory"]
        raw = apply_fn(params, jnp.concatenate([batch["x"], mem["x"]]))
        cur = masked_logits(raw[:b], batch)
        cur = jnp.where(present_mask(batch["y"], n_classes), cur, jnp.finfo(cur.dtype).min / 2)
        ce_in = optax.softmax_cross_entropy_with_integer_labels(cur, batch["y"]).mean()
        ml = masked_logits(raw[b:], mem)
        w = mem["weight"]
        ce_mem = (optax.softmax_cross_entropy_with_integer_labels(ml, mem["y"]) * w).sum() / jnp.maximum(
            w.sum(), 1.0
        )
        acc = (masked_logits(raw[:b], batch).argmax(-1) == batch["y"]).mean()
        return ce_in + ce_mem, {"ce": ce_in, "ce_mem": ce_mem, "train_acc": acc}

    return loss_fn


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    data = reservoir(
        options["capacity"],
        mode="separate",
        memory_size=options["memory_batch"],
        fields=("x", "y", "t", "mask"),
    )
    return Method(ace_loss(model.apply, model.n_classes), optimizer_from(opt, hp["lr"]), data=data)


SPEC = register(
    MethodSpec(
        "er_ace",
        build,
        {"lr": LR(1e-3)},
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "ER with asymmetric cross-entropy (incoming batch: its own classes only)",
        paper="Caccia et al. 2022, New Insights on Reducing Abrupt Representation Change in Online CL",
        choices={"optim": OPTIMIZERS},
    )
)
