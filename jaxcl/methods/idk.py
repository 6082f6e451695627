"""IDK: fine-tune the forget questions towards a refusal ("I don't know") while keeping the retain
set (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024).

    L(theta) = NLL(theta; (x_forget, y_refusal)) + w * NLL(theta; D_retain),   w = 1

The refusal targets arrive as ``batch['forget_alt']`` (the forget questions with alternative
answers); only problems that have them (TOFU) can run IDK. The classifier analogue is
``random_label``.
"""

from ..losses import mean_nll
from .base import LR, register
from .unlearning import RETAIN_WEIGHT, spec


def forget_term(model, hp, params_like):
    del hp, params_like
    nll = mean_nll(model)

    def loss_fn(params, batch, key):
        del key
        if "forget_alt" not in batch:
            raise ValueError(
                "idk needs alternative answers for the forget questions (batch['forget_alt']); "
                "this problem has none: use random_label for classifiers"
            )
        l = nll(params, batch["forget_alt"])
        return l, {"idk_nll": l}

    return loss_fn, None, None


SPEC = register(
    spec(
        "idk",
        forget_term,
        {"lr": LR(1e-5), "retain_weight": RETAIN_WEIGHT},
        summary="answer the forget questions with a refusal, keep the retain set",
        paper="Maini et al. 2024, TOFU",
    )
)
