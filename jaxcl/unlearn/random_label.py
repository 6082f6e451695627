"""Random-label forgetting: fine-tune on the forget set with random wrong labels (Graves et al.,
"Amnesiac Machine Learning", 2021; used for LMs in "Unforgettable Generalization in Language
Models", 2024).

Loss: ``CE(f(x_f), y_rand) + retain_weight * CE(f(x_r), y_r)`` with ``y_rand`` uniform over the
other classes, drawn afresh every step; ``retain_weight = 1`` keeps the retain accuracy (set it
to 0 for the pure forget-set variant).
"""

from __future__ import annotations

import jax
import optax

from .common import UnlearnConfig, UnlearnData, ce_loss, run_steps
from .ga import forget_batch


def loss(apply_fn, n_classes: int, retain_weight: float = 1.0):
    ce = ce_loss(apply_fn)

    def loss_fn(params, batch, key):
        shift = jax.random.randint(key, batch["y"].shape, 1, n_classes)
        y_rand = (batch["y"] + shift) % n_classes
        lf, aux = ce(params, {"x": batch["x"], "y": y_rand}, key)
        lr, _ = ce(params, {"x": batch["retain_x"], "y": batch["retain_y"]}, key)
        return lf + retain_weight * lr, {"random_ce": lf, "retain_ce": lr, "logits": aux["logits"]}

    return loss_fn


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig, *, retain_weight: float = 1.0):
    out, _ = run_steps(
        loss(model.apply, model.n_classes, retain_weight),
        optax.adam(cfg.lr_of("random_label")),
        params,
        key,
        lambda k: forget_batch(data, k, cfg.batch),
        cfg.steps,
    )
    return out
