"""Gradient ascent (GA) on the forget set (Thudi et al., 2022; Jang et al., 2023).

Loss: ``-CE(f_theta(x_f), y_f)``, minimised with Adam for ``cfg.steps`` steps. Unbounded: it
eventually destroys the model, so the learning rate and step count are small. ``loss(apply)``
is reused by GU's ``gu-ga``.
"""

from __future__ import annotations

import optax

from .common import UnlearnConfig, UnlearnData, ce_loss, run_steps


def forget_batch(data: UnlearnData, key, n: int) -> dict:
    """A forget batch with a retain batch alongside (``retain_x``, ``retain_y``)."""
    import jax

    k1, k2 = jax.random.split(key)
    i = jax.random.randint(k1, (n,), 0, data.x_forget.shape[0])
    j = jax.random.randint(k2, (n,), 0, data.x_retain.shape[0])
    return {
        "x": data.x_forget[i],
        "y": data.y_forget[i],
        "retain_x": data.x_retain[j],
        "retain_y": data.y_retain[j],
    }


def loss(apply_fn):
    ce = ce_loss(apply_fn)

    def loss_fn(params, batch, key):
        l, aux = ce(params, batch, key)
        return -l, {"forget_ce": l, "logits": aux["logits"]}

    return loss_fn


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig, *, tx=None, name="ga"):
    tx = optax.adam(cfg.lr_of(name)) if tx is None else tx
    out, _ = run_steps(
        loss(model.apply), tx, params, key, lambda k: forget_batch(data, k, cfg.batch), cfg.steps
    )
    return out
