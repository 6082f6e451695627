"""UNDIAL: self-distillation with adjusted logits (Dong, Lin, Belinkov, Ou and Vlachos,
"UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
2024).

The model is distilled towards the original model's distribution at every scored position with
the target's logit lowered by ``beta``: with ``z_ref`` the frozen original model's logits and
``e_y`` the one-hot of the target,

    q = softmax(z_ref - beta * e_y)            (a distribution: only the target's mass falls)
    F(theta) = (1 / N) * sum_{t in mask} CE(q_t, softmax(z_theta,t))
    L(theta) = F(theta) + w * NLL(theta; D_retain)

``N``: the scored targets of the forget batch (answer tokens; open-unlearning averages over every
position of the sequence, prompt included). Defaults as open-unlearning's config: ``beta = 10``,
``w = 0``, lr 1e-4. The reference logits reach the loss through the batch as NPO's reference
log-likelihoods do (:func:`jaxcl.data.context.reference`, set at the start of unlearning by
``consolidate``): a language model's are (B, T, V). Classifiers and language models.
"""

import jax
import jax.numpy as jnp

from ..data import context
from ..losses import token_logits
from .base import LR, Hparam, register
from .unlearning import spec


def adjusted_target(ref_logits_BxTxV, targets_BxT, beta):
    """``softmax(z_ref - beta * onehot(target))``: the distillation target."""
    onehot = jax.nn.one_hot(targets_BxT, ref_logits_BxTxV.shape[-1], dtype=ref_logits_BxTxV.dtype)
    return jax.nn.softmax(ref_logits_BxTxV - beta * onehot, axis=-1)


def forget_term(model, hp, params_like):
    logits = token_logits(model)
    ref = context.reference(
        lambda p, sub: logits(p, sub)[0], params_like, key="ref_logits_tok", field="forget"
    )

    def loss_fn(params, batch, key):
        del key
        z_BxTxV, t_BxT, m_BxT = logits(params, batch["forget"])
        q_BxTxV = adjusted_target(batch["ref_logits_tok"], t_BxT, hp["beta"])
        ce_BxT = -(q_BxTxV * jax.nn.log_softmax(z_BxTxV, -1)).sum(-1)
        n = jnp.maximum(m_BxT.sum(), 1.0)
        l = (ce_BxT * m_BxT).sum() / n
        lp_BxT = jnp.take_along_axis(jax.nn.log_softmax(z_BxTxV, -1), t_BxT[..., None], -1)[..., 0]
        return l, {"undial": l, "forget_nll": -(lp_BxT * m_BxT).sum() / n}

    consolidate = context.freeze_current

    return loss_fn, ref, consolidate


SPEC = register(
    spec(
        "undial",
        forget_term,
        {
            "lr": LR(1e-4),
            "beta": Hparam(10.0, 0.0, None, help="how far the target's logit is lowered"),
            "retain_weight": Hparam(0.0, 0.0, None, help="weight of the retain NLL term"),
        },
        summary="self-distillation towards the original logits with the target's lowered",
        paper="Dong et al. 2024, UNDIAL: Self-Distillation with Adjusted Logits",
    )
)
