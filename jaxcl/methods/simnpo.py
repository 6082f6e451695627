"""SimNPO: reference-free, length-normalised NPO (Fan, Liu, Lin, Jia, Zhang, Mei and Liu,
"Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning", 2024).

NPO's reference model is replaced by a length normalisation and a margin: with ``|y|`` the number
of scored targets of a forget example (answer tokens; 1 for a classifier),

    F(theta) = c * (2 / beta) * mean -log sigmoid(beta * (NLL(y|x; theta) / |y| - delta))
    L(theta) = F(theta) + w * NLL(theta; D_retain)

(the paper's margin ``gamma`` is ``beta * delta``). Defaults as open-unlearning's TOFU config:
``beta = 4.5``, ``delta = 0``, ``c = 0.125`` (``forget_weight``), ``w = 1``. No reference model:
nothing is kept beside the parameters. Classifiers and language models.
"""

import jax
import jax.numpy as jnp

from ..losses import nll_per_example
from .base import LR, Hparam, register
from .unlearning import RETAIN_WEIGHT, spec


def simnpo_loss(nll_B, count_B, beta, delta):
    """``(2 / beta) * mean softplus(-beta * (nll / count - delta))`` (= -log sigmoid of it)."""
    per_token_B = nll_B / jnp.maximum(count_B, 1.0)
    return (2.0 / beta) * jax.nn.softplus(-beta * (per_token_B - delta)).mean()


def forget_term(model, hp, params_like):
    del params_like
    nll = nll_per_example(model)

    def loss_fn(params, batch, key):
        del key
        s_B, n_B = nll(params, batch["forget"])
        l = hp["forget_weight"] * simnpo_loss(s_B, n_B, hp["beta"], hp["delta"])
        return l, {"simnpo": l, "forget_nll": s_B.sum() / jnp.maximum(n_B.sum(), 1.0)}

    return loss_fn, None, None


SPEC = register(
    spec(
        "simnpo",
        forget_term,
        {
            "lr": LR(1e-5),
            "beta": Hparam(4.5, 0.0, None, low_open=True, help="inverse temperature"),
            "delta": Hparam(0.0, 0.0, None, help="margin on the per-token NLL (paper: gamma = beta*delta)"),
            "forget_weight": Hparam(0.125, 0.0, None, low_open=True, help="weight of the SimNPO term"),
            "retain_weight": RETAIN_WEIGHT,
        },
        summary="reference-free, length-normalised NPO with a margin",
        paper="Fan et al. 2024, Simplicity Prevails: Rethinking NPO for LLM Unlearning",
    )
)
