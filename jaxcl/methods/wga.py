"""WGA: weighted gradient ascent (Wang, Zhang, Li, Han, Liu and Sugiyama, "Rethinking LLM
Unlearning Objectives: A Gradient Perspective and Go Beyond", ICLR 2025).

Gradient ascent whose every scored target (answer token; the label of a classifier) is weighted
by its own probability to the power ``beta``, held constant (no gradient through the weight):

    F(theta) = -(1 / N) * sum_{t in mask} sg(p_theta(y_t | y_<t, x)^beta) * (-log p_theta(y_t | y_<t, x))
    L(theta) = F(theta) + w * NLL(theta; D_retain)

with ``N`` the scored targets of the forget batch: tokens already unlikely stop being pushed
down, so the ascent saturates instead of diverging (``beta = 0`` is GA). Defaults as
open-unlearning's config: ``beta = 1``, ``w = 1``, lr 1e-5. Classifiers and language models.
"""

import jax
import jax.numpy as jnp

from ..losses import token_logprobs
from .base import LR, Hparam, register
from .unlearning import RETAIN_WEIGHT, spec


def weighted_ascent(lp_BxT, m_BxT, w_BxT):
    """``-(sum m * sg(w) * nll) / sum m`` with ``nll = -lp``: the weighted ascent's loss."""
    w_BxT = jax.lax.stop_gradient(w_BxT)
    return (m_BxT * w_BxT * lp_BxT).sum() / jnp.maximum(m_BxT.sum(), 1.0)


def forget_term(model, hp, params_like):
    del params_like
    logprobs = token_logprobs(model)

    def loss_fn(params, batch, key):
        del key
        lp_BxT, m_BxT = logprobs(params, batch["forget"])
        l = weighted_ascent(lp_BxT, m_BxT, jnp.exp(hp["beta"] * lp_BxT))
        nll = -(lp_BxT * m_BxT).sum() / jnp.maximum(m_BxT.sum(), 1.0)
        return l, {"wga": l, "forget_nll": nll}

    return loss_fn, None, None


SPEC = register(
    spec(
        "wga",
        forget_term,
        {
            "lr": LR(1e-5),
            "beta": Hparam(1.0, 0.0, None, help="power of the probability weighting each target"),
            "retain_weight": RETAIN_WEIGHT,
        },
        summary="gradient ascent weighted by each target's probability ** beta",
        paper="Wang et al. 2025, Rethinking LLM Unlearning Objectives",
    )
)
