"""Random-label forgetting: fine-tune the forget set with random wrong labels (Graves et al.,
"Amnesiac Machine Learning", 2021; used for LMs in "Unforgettable Generalization in Language
Models", Zhang et al. 2024).

    L(theta) = CE(f(x_f), y_rand) + w * CE(f(x_r), y_r),   w = retain_weight = 1

Classifiers: ``y_rand`` is uniform over the other classes, drawn afresh every step. Language
models (forget rows ``{'tokens', 'mask'}``, the mask on the answer tokens): each row's answer
tokens are replaced by those of another forget row of the batch (the rows rolled by a shift
drawn uniformly from ``1 .. B-1`` every step, :func:`relabel_tokens`), and the loss is the
token-mean NLL of the relabelled answers. The answers must sit at the same positions in every
row (fixed-format items: a classification-style label, or values of one length), so a row's
new answer is another item's real label; where two items share a label the draw keeps it, as a
uniform random label would.
"""

import jax
import jax.numpy as jnp

from ..losses import mean_nll
from .base import LR, register
from .unlearning import RETAIN_WEIGHT, spec


def relabel_tokens(tokens_BxT, mask_BxT, shift):
    """The rows' answer tokens (``mask``) replaced by those of the row ``shift`` places before
    (cyclically); the other tokens unchanged."""
    return jnp.where(mask_BxT, jnp.roll(tokens_BxT, shift, axis=0), tokens_BxT)


def forget_term(model, hp, params_like):
    del hp, params_like
    nll = mean_nll(model)
    if hasattr(model, "nll"):  # a language model

        def lm_loss(params, batch, key):
            f = batch["forget"]
            B = f["tokens"].shape[0]
            if B < 2:
                raise ValueError("random_label on a language model needs >= 2 forget rows a batch")
            shift = jax.random.randint(key, (), 1, B)
            l = nll(params, {**f, "tokens": relabel_tokens(f["tokens"], f["mask"], shift)})
            return l, {"random_ce": l}

        return lm_loss, None, None
    if not hasattr(model, "n_classes"):
        raise ValueError("random_label needs a classifier (n_classes) or a language model (nll)")

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
