"""SSD: Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024). An edit; no training.

Importance of each parameter (:func:`jaxcl.losses.minibatch_importance`, model in evaluation
mode) on the forget set (``I_Df``) and on the whole training set (``I_D``):

    I = (1 / M) * sum_{minibatches m} (d/d theta  mean_{i in m} CE(f_theta(x_i), y_i))^2

then the edit :func:`jaxcl.edits.ssd_dampen`, per parameter:

    theta <- theta * beta   where I_Df > alpha * I_D,   beta = min(lambda * I_D / I_Df, 1)

Both importances average squared gradients of minibatches of the same size, ``batch_size`` or the
forget set's size where that is smaller: a squared minibatch mean carries a noise term ~1/B, so a
4-row forget set against 64-row training minibatches inflates I_Df / I_D about 16x for every
parameter, and alpha = 10 then dampens a quarter of a language model's weights (TOFU's 4 forget
rows on SmolLM2-135M: forget and retain NLL both above 20) where equal minibatches dampen none.
The reference (Foster et al.'s code) uses one data-loader batch size for both, with forget sets of
thousands of images. Since D contains D_f, the forget rows' own minibatches are a share of about
|D_f| / |D| of I_D: selection needs alpha below about |D| / |D_f| (10 for a forget set of a tenth
of the data, TOFU's forget01 against its retain subset included).

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
        n_forget = jax.tree.leaves(data.forget_set)[0].shape[0]
        kw = dict(batch_size=min(options["batch_size"], n_forget), per_example=options["per_example"])
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
