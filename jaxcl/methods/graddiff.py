"""GradDiff: gradient ascent on the forget set plus descent on the retain set (Liu et al.,
"Continual Learning and Private Unlearning", 2022; the TOFU baseline "grad diff").

    L(theta) = -NLL(theta; D_forget) + w * NLL(theta; D_retain),   w = retain_weight = 1
"""

from .base import LR, register
from .ga import forget_term
from .unlearning import RETAIN_WEIGHT, spec

SPEC = register(
    spec(
        "graddiff",
        forget_term,
        {"lr": LR(5e-5), "retain_weight": RETAIN_WEIGHT},
        summary="gradient ascent on forget + descent on retain",
        paper="Liu, Liu and Stone 2022, Continual Learning and Private Unlearning",
    )
)
