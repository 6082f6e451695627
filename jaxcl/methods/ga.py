"""Gradient ascent (GA) on the forget set (Thudi et al., 2022; Jang et al., "Knowledge Unlearning
for Mitigating Privacy Risks in Language Models", 2023; the TOFU baseline).

    L(theta) = -NLL(theta; D_forget)

Unbounded below: it eventually destroys the model, so learning rate and step count are small.
"""

from ..losses import mean_nll
from .base import LR, register
from .unlearning import spec


def forget_term(model, hp, params_like):
    del hp, params_like
    nll = mean_nll(model)

    def loss_fn(params, batch, key):
        del key
        l = nll(params, batch["forget"])
        return -l, {"forget_nll": l}

    return loss_fn, None, None


SPEC = register(
    spec(
        "ga",
        forget_term,
        {"lr": LR(2e-5)},
        summary="gradient ascent on the forget set",
        paper="Jang et al. 2023, Knowledge Unlearning for Mitigating Privacy Risks in LMs",
    )
)
