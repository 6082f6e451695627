"""Gradient Episodic Memory (Lopez-Paz and Ranzato, NeurIPS 2017).

An episodic memory (a reservoir buffer on the device, with each example's task id) gives, every
step, one gradient per previous task k (the mean loss over the drawn memory rows of task k, at most
``max_tasks`` tasks); when the current gradient ``g`` conflicts with any of them GEM replaces it by
the closest gradient that does not (eq. 10), through the dual QP of
:func:`jaxcl.transforms.gem.project_gem` solved in JAX by ``qp_iters`` accelerated projected
gradient iterations (tolerance stated there). Defaults: margin 0.5 (GEM's ``memory_strength``,
Mammoth's ``gamma``), memory draws of 64 rows, 200 QP iterations.
"""

import jax
import jax.numpy as jnp
import optax

from ..data.replay import reservoir
from ..losses import supervised_loss
from ..transforms.gem import gem
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


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    base = supervised_loss(model)
    n_tasks = options["max_tasks"]

    def extra_args(params, batch, key):
        mem = batch["memory"]
        t_now = batch["t"][0]

        def task_grad(k):
            w = mem["weight"] * (mem["t"] == k)
            return jax.grad(lambda p: base(p, {**mem, "weight": w}, key)[0])(params), w.sum()

        ks = jnp.arange(n_tasks)
        grads, counts = jax.vmap(task_grad)(ks)
        active = ((ks < t_now) & (counts > 0)).astype(jnp.float32)
        return {"ref_grads": grads, "active": active}

    tx = optax.chain(gem(hp["gem_margin"], options["qp_iters"]), optimizer_from(opt, hp["lr"]))
    data = reservoir(
        options["capacity"],
        mode="separate",
        memory_size=options["memory_batch"],
        fields=("x", "y", "t", "mask"),
    )
    return Method(base, tx, data=data, extra_args=extra_args)


SPEC = register(
    MethodSpec(
        "gem",
        build,
        {"lr": LR(1e-3), "gem_margin": Hparam(0.5, 0.0, None, help="QP margin (memory strength)")},
        {"capacity": 1000, "memory_batch": 64, "max_tasks": 10, "qp_iters": 200, **OPTIMIZER_OPTIONS},
        "GEM: per-task memory gradients as constraints, dual QP solved in JAX",
        paper="Lopez-Paz and Ranzato 2017, Gradient Episodic Memory for Continual Learning",
        choices={"optim": OPTIMIZERS},
    )
)
