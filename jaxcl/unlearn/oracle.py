"""Oracle: retrain from scratch on the retain data only (the gold standard every unlearning
method is measured against; exact unlearning by definition).

Same recipe as the original model (:func:`jaxcl.unlearn.common.train_classifier`): Adam, the same
number of steps and batch size, a fresh initialisation drawn from ``key``.
"""

from __future__ import annotations

from .common import UnlearnConfig, UnlearnData, train_classifier


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig):
    del params  # the oracle never sees the original model
    import jax

    k_init, k_train = jax.random.split(key)
    fresh = model.init(k_init)
    out, _ = train_classifier(model, fresh, k_train, data.x_retain, data.y_retain, cfg)
    return out


retrain = run
