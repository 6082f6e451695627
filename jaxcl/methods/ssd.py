"""SSD: Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024). An edit; no training.

Importance of each parameter (:func:`jaxcl.losses.minibatch_importance`, model in evaluation
mode) on the forget set (``I_Df``) and on the whole training set (``I_D``):

    I = (1 / M) * sum_{minibatches m} (d/d theta  mean_{i in m} CE(f_theta(x_i), y_i))^2

then the edit :func:`jaxcl.edits.ssd_dampen`, per parameter:

    theta <- theta * beta   where I_Df > alpha * I_D,   beta = min(lambda * I_D / I_Df, 1)

Defaults lambda = 1, alpha = 10 (ResNet-18; the paper uses alpha = 5 for ViT); both are traced,
so ``jaxcl sweep ... --grid ssd.alpha=5,10,20`` is one program. Options: ``per_example`` (the
empirical Fisher instead of squared minibatch gradients: B-independent, ~B times the compute),
``exclude`` (parameter path fragments left alone, e.g. ``("bn",)``), ``batch_size``.
"""

import jax

from ..edits import ssd_dampen
from ..losses import minibatch_importance
from .base import Hparam, Method, MethodSpec, register


def build(model, hp, params_like, **options):
    del params_like

    def edit(params, data, hp_, key):
        kf, kd = jax.random.split(key)
        kw = dict(batch_size=options["batch_size"], per_example=options["per_example"])
        i_f = minibatch_importance(model, params, data.forget_set, key=kf, **kw)
        i_d = minibatch_importance(model, params, data.train_set, key=kd, **kw)
        return ssd_dampen(
            params, i_f, i_d, alpha=hp_["alpha"], lam=hp_["lambda"], exclude=tuple(options["exclude"])
        )

    return Method(None, None, edit=edit, trains=False)


POSITIVE = dict(low=0.0, high=None, low_open=True)
SPEC = register(
    MethodSpec(
        "ssd",
        build,
        {
            "alpha": Hparam(10.0, **POSITIVE, help="selection threshold I_Df > alpha I_D"),
            "lambda": Hparam(1.0, **POSITIVE, help="dampening strength"),
        },
        {"per_example": False, "exclude": (), "batch_size": 64},
        "selective synaptic dampening (Fisher-ratio edit)",
        kind="unlearn",
        paper="Foster, Schoepf and Brintrup 2024, Selective Synaptic Dampening",
        choices={"per_example": (False, True)},
        full_weights=True,
    )
)
