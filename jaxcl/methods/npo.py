"""NPO: Negative Preference Optimization (Zhang, Lin, Bai and Mei, "Negative Preference
Optimization: From Catastrophic Collapse to Effective Unlearning", 2024).

With ``pi_ref`` the frozen model unlearning starts from, on forget examples (y | x):

    F(theta) = (2 / beta) * mean softplus(beta * (log pi_theta(y|x) - log pi_ref(y|x))),  beta = 0.1
    L(theta) = F(theta) + w * NLL(theta; D_retain)     (w = retain_weight; 0 here, 1 in TOFU)

For a language model ``log pi(y|x)`` is the summed log-likelihood of the answer tokens. The
reference log-likelihoods reach the loss through the batch: a reference data transform
(:func:`jaxcl.data.context.reference`) keeps ``pi_ref``'s parameters in the train state (set at the
start of unlearning by ``consolidate``) and adds ``batch['ref_nll']``. Bounded below by 0; as
beta -> 0 it becomes GA with adaptive weights.
"""

from ..data import context
from ..losses import nll_per_example, npo_loss
from .base import LR, Hparam, register
from .unlearning import spec


def forget_term(model, hp, params_like):
    nll = nll_per_example(model)
    ref = context.reference(lambda p, sub: nll(p, sub)[0], params_like, key="ref_nll", field="forget")

    def loss_fn(params, batch, key):
        del key
        s_B, n_B = nll(params, batch["forget"])
        l = npo_loss(s_B, batch["ref_nll"], hp["beta"])
        return l, {"npo": l, "forget_nll": s_B.sum() / n_B.sum()}

    consolidate = context.freeze_current

    return loss_fn, ref, consolidate


SPEC = register(
    spec(
        "npo",
        forget_term,
        {
            "lr": LR(1e-4),
            "beta": Hparam(0.1, 0.0, None, low_open=True, help="inverse temperature"),
            "retain_weight": Hparam(0.0, 0.0, None, help="weight of the retain NLL term"),
        },
        summary="negative preference optimization against the original model",
        paper="Zhang et al. 2024, Negative Preference Optimization",
    )
)
