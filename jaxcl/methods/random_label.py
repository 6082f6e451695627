"""Random-label forgetting: fine-tune the forget set with random wrong labels (Graves et al.,
"Amnesiac Machine Learning", 2021; used for LMs in "Unforgettable Generalization in Language
Models", 2024).

    L(theta) = CE(f(x_f), y_rand) + w * CE(f(x_r), y_r),   w = retain_weight = 1

``y_rand`` is uniform over the other classes, drawn afresh every step. Classifiers only.
"""

import jax

from ..losses import mean_nll
from .base import LR, register
from .unlearning import RETAIN_WEIGHT, spec


def forget_term(model, hp, params_like):
    del hp, params_like
    if not hasattr(model, "n_classes"):
        raise ValueError("random_label needs a classifier (a model with n_classes)")
    nll = mean_nll(model)

    def loss_fn(params, batch, key):
        f = batch["forget"]
        shift = jax.random.randint(key, f["y"].shape, 1, model.n_classes)
        l = nll(params, {"x": f["x"], "y": (f["y"] + shift) % model.n_classes})
        return l, {"random_ce": l}

    return loss_fn, None, None


SPEC = register(
    spec(
        "random_label",
        forget_term,
        {"lr": LR(1e-4), "retain_weight": RETAIN_WEIGHT},
        summary="relabel the forget set at random, keep the retain set",
        paper="Graves et al. 2021, Amnesiac Machine Learning",
    )
)
