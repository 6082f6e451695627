"""GradDiff: gradient ascent on the forget set plus descent on the retain set (Liu et al., 2022;
the TOFU baseline "grad diff").

Loss: ``-CE(forget batch) + retain_weight * CE(retain batch)``, Adam, ``cfg.steps`` steps. Under GU
(``gu-graddiff``) the ascent part is projected and the retain gradient added back
(``project_out(add_retain=True)``), which is the same joint objective.
"""

from __future__ import annotations

import optax

from .common import UnlearnConfig, UnlearnData, ce_loss, run_steps
from .ga import forget_batch


def loss(apply_fn, retain_weight: float = 1.0):
    ce = ce_loss(apply_fn)

    def loss_fn(params, batch, key):
        lf, aux = ce(params, batch, key)
        lr, _ = ce(params, {"x": batch["retain_x"], "y": batch["retain_y"]}, key)
        return -lf + retain_weight * lr, {"forget_ce": lf, "retain_ce": lr, "logits": aux["logits"]}

    return loss_fn


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig):
    out, _ = run_steps(
        loss(model.apply),
        optax.adam(cfg.lr_of("graddiff")),
        params,
        key,
        lambda k: forget_batch(data, k, cfg.batch),
        cfg.steps,
    )
    return out
