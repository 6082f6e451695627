"""DPO for unlearning, IdkDPO on TOFU (Rafailov et al., "Direct Preference Optimization", 2023;
as an unlearning baseline: Maini et al., "TOFU", 2024; Zhang et al., "Negative Preference
Optimization", 2024).

The forget answer is the rejected response ``y_l`` and the problem's alternative answer for the
same question (``batch['forget_alt']``) the preferred ``y_w``; with ``pi_ref`` the frozen model
unlearning starts from and ``r(y) = log pi_theta(y|x) - log pi_ref(y|x)``:

    F(theta) = -(2 / beta) * mean log sigmoid(beta * (r(y_w) - r(y_l)))
    L(theta) = F(theta) + w * NLL(theta; D_retain)

On TOFU the alternatives are refusals ("I don't know"-style answers), which makes this IdkDPO,
open-unlearning's DPO trainer on its IDK data. Defaults as open-unlearning's config: ``beta = 0.1``,
``w = 1``. The four reference log-likelihoods reach the loss through the batch as NPO's
(:func:`jaxcl.data.context.reference`, set by ``consolidate``). Language models, and classifiers
given alternative labels; problems without ``forget_alt`` refuse it.
"""

import jax
import jax.numpy as jnp

from ..data import context
from ..losses import nll_per_example
from .base import LR, Hparam, register
from .unlearning import RETAIN_WEIGHT, spec


def dpo_loss(nll_w_B, ref_nll_w_B, nll_l_B, ref_nll_l_B, beta):
    """``-(2/beta) mean log sigmoid(beta ((ref_nll_w - nll_w) - (ref_nll_l - nll_l)))``."""
    sg = jax.lax.stop_gradient
    margin_B = (sg(ref_nll_w_B) - nll_w_B) - (sg(ref_nll_l_B) - nll_l_B)
    return (2.0 / beta) * jax.nn.softplus(-beta * margin_B).mean()


def forget_term(model, hp, params_like):
    nll = nll_per_example(model)

    def both(p, batch):
        if "forget_alt" not in batch:
            raise ValueError(
                "dpo needs alternative answers for the forget questions (batch['forget_alt']); "
                "this problem has none"
            )
        return {"w": nll(p, batch["forget_alt"])[0], "l": nll(p, batch["forget"])[0]}

    ref = context.reference(both, params_like, key="ref_nll_pair")

    def loss_fn(params, batch, key):
        del key
        s_w, _ = nll(params, batch["forget_alt"])
        s_l, n_l = nll(params, batch["forget"])
        r = batch["ref_nll_pair"]
        l = dpo_loss(s_w, r["w"], s_l, r["l"], hp["beta"])
        return l, {"dpo": l, "forget_nll": s_l.sum() / jnp.maximum(n_l.sum(), 1.0)}

    consolidate = context.freeze_current

    return loss_fn, ref, consolidate


SPEC = register(
    spec(
        "dpo",
        forget_term,
        {
            "lr": LR(1e-5),
            "beta": Hparam(0.1, 0.0, None, low_open=True, help="inverse temperature"),
            "retain_weight": RETAIN_WEIGHT,
        },
        summary="DPO: the alternative (refusal) answer preferred to the forget answer",
        paper="Rafailov et al. 2023, DPO; TOFU's IdkDPO (Maini et al. 2024)",
    )
)
