"""Fine-tune: continue training the original model on the retain set only, hoping that
catastrophic forgetting removes the forget set (the weakest baseline; e.g. Golatkar et al., 2020).

Update: Adam on the mean cross-entropy of retain batches, ``cfg.steps`` steps, eval mode.
"""

from __future__ import annotations

import optax

from .common import UnlearnConfig, UnlearnData, ce_loss, run_steps, sample


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig):
    make = lambda k: sample(data.x_retain, data.y_retain, k, cfg.batch)
    out, _ = run_steps(ce_loss(model.apply), optax.adam(cfg.lr_of("finetune")), params, key, make, cfg.steps)
    return out
