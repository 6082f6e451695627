"""SatImp: saturation- and importance-weighted gradient ascent (Yang, Wang, Han, Liu and
Sugiyama, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025).

Gradient ascent with each scored target weighted by the product of a saturation weight
``p^beta1`` (as WGA's) and an importance weight ``(1 - p)^beta2``, both held constant:

    F(theta) = c * (1 / N) * sum_{t in mask} sg(p_t^beta1 (1 - p_t)^beta2) * log p_theta(y_t | y_<t, x)
    L(theta) = F(theta) + w * NLL(theta; D_retain)

with ``p_t = p_theta(y_t | y_<t, x)`` and ``N`` the scored targets. Defaults as open-unlearning's
config: ``beta1 = 5``, ``beta2 = 1``, ``c = 0.1`` (``forget_weight``), ``w = 1``, lr 1e-5.
Classifiers and language models.
"""

import jax.numpy as jnp

from ..losses import token_logprobs
from .base import LR, Hparam, register
from .unlearning import RETAIN_WEIGHT, spec
from .wga import weighted_ascent


def forget_term(model, hp, params_like):
    del params_like
    logprobs = token_logprobs(model)

    def loss_fn(params, batch, key):
        del key
        lp_BxT, m_BxT = logprobs(params, batch["forget"])
        p_BxT = jnp.exp(lp_BxT)
        w_BxT = p_BxT ** hp["beta1"] * (1.0 - p_BxT) ** hp["beta2"]
        l = hp["forget_weight"] * weighted_ascent(lp_BxT, m_BxT, w_BxT)
        nll = -(lp_BxT * m_BxT).sum() / jnp.maximum(m_BxT.sum(), 1.0)
        return l, {"satimp": l, "forget_nll": nll}

    return loss_fn, None, None


SPEC = register(
    spec(
        "satimp",
        forget_term,
        {
            "lr": LR(1e-5),
            "beta1": Hparam(5.0, 0.0, None, help="power of the saturation weight p"),
            "beta2": Hparam(1.0, 0.0, None, help="power of the importance weight 1 - p"),
            "forget_weight": Hparam(0.1, 0.0, None, low_open=True, help="weight of the forget term"),
            "retain_weight": RETAIN_WEIGHT,
        },
        summary="gradient ascent weighted by saturation p**b1 and importance (1-p)**b2",
        paper="Yang et al. 2025, Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
    )
)
