"""U-LiRA: the likelihood-ratio membership test applied to unlearning, as pure jittable functions.

LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles") scores an
example ``(x, y)`` on a model ``f`` by its logit-scaled confidence

    phi = log(p_y / (1 - p_y)),        p = softmax(f(x)),

computed here without forming ``p``: ``log p_y = z_y - LSE(z)`` and
``log(1 - p_y) = LSE_{c != y}(z) - LSE(z)``, so ``phi = z_y - LSE_{c != y}(z)`` (finite for any
finite logits, where ``log(p/(1-p))`` in float32 saturates once ``p_y`` rounds to 1).

Over ``S`` shadow models that saw the example ("in") and ``S`` that did not ("out"), LiRA fits one
Gaussian per example to each population (mean ``mu``, standard deviation ``s`` floored at
``min_std``) and scores a target model's statistic by the log-likelihood ratio

    Lambda(phi) = log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2).

U-LiRA (Hayes et al. 2024, "Inexact Unlearning Needs More Careful Evaluations to Avoid a False
Sense of Privacy") asks the question unlearning has to pass: is the target an *unlearned* model
(trained with the example, then unlearned by the method) or a model *retrained without it*? The
"in" shadows are therefore models unlearned by the method under test (or, as a weaker first step,
the originals) and the "out" shadows are retrained oracles. The attack is reported as its AUC
(Mann-Whitney, :func:`jaxcl.unlearn.eval.auc`) and its accuracy at the best threshold, balanced
over the two kinds of target; 0.5 for both means the unlearned models cannot be told from
retrained ones.

Shapes: ``S`` shadow models, ``N`` examples, ``C`` classes. :func:`leave_one_out` fits on every
seed but one and scores the held-out seed's unlearned and retrained models, so a target never
appears in its own fit (all ``S`` folds in one ``vmap``; the held-out seed is a zero weight, not a
slice, so every fold has the same shape).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .eval import auc

MIN_STD = 1e-3  # floor on a fitted standard deviation (phi units)


def logit_confidence(logits_NxC, y_N):
    """LiRA's statistic ``phi_N = log(p_y / (1 - p_y)) = z_y - logsumexp_{c != y} z_c``."""
    z = logits_NxC.astype(jnp.float32)
    onehot_NxC = jax.nn.one_hot(y_N, z.shape[-1], dtype=bool)
    z_y_N = jnp.take_along_axis(z, y_N[:, None], -1)[:, 0]
    rest_N = jax.nn.logsumexp(jnp.where(onehot_NxC, -jnp.inf, z), axis=-1)
    return z_y_N - rest_N


def fit_gaussian(phi_SxN, weight_S=None, *, min_std: float = MIN_STD):
    """Per-example Gaussian over the shadow axis: ``(mu_N, std_N)``, the (weighted) mean and the
    population standard deviation ``sqrt(sum_s w_s (phi_s - mu)^2 / sum_s w_s)``, floored at
    ``min_std``. Zero weights leave a shadow model out of the fit."""
    w_S = jnp.ones(phi_SxN.shape[0]) if weight_S is None else weight_S
    w_Sx1 = w_S.reshape((-1,) + (1,) * (phi_SxN.ndim - 1))
    total = w_S.sum()
    mu_N = (w_Sx1 * phi_SxN).sum(0) / total
    var_N = (w_Sx1 * jnp.square(phi_SxN - mu_N)).sum(0) / total
    return mu_N, jnp.maximum(jnp.sqrt(var_N), min_std)


def gaussian_logpdf(x, mu, std):
    """``log N(x; mu, std^2)``."""
    return -0.5 * jnp.square((x - mu) / std) - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi)


def log_ratio(phi_N, fit_in, fit_out):
    """LiRA's score ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)`` per example (higher:
    more like the "in" population)."""
    return gaussian_logpdf(phi_N, *fit_in) - gaussian_logpdf(phi_N, *fit_out)


def scores(phi_in_SxN, phi_out_SxN, phi_target_N, weight_S=None, *, min_std: float = MIN_STD):
    """Fit both populations on the shadows (weights ``weight_S``) and score one target model."""
    fit_in = fit_gaussian(phi_in_SxN, weight_S, min_std=min_std)
    fit_out = fit_gaussian(phi_out_SxN, weight_S, min_std=min_std)
    return log_ratio(phi_target_N, fit_in, fit_out)


def best_accuracy(scores_pos, scores_neg):
    """Balanced accuracy ``(TPR + TNR) / 2`` of the rule ``score >= t`` at the best threshold ``t``
    (every observed score, and +inf: the constant rule scores 0.5)."""
    t_T = jnp.concatenate([scores_pos, scores_neg, jnp.array([jnp.inf], scores_pos.dtype)])
    sp, sn = jnp.sort(scores_pos), jnp.sort(scores_neg)
    tpr_T = 1.0 - jnp.searchsorted(sp, t_T, side="left") / sp.shape[0]
    tnr_T = jnp.searchsorted(sn, t_T, side="left") / sn.shape[0]
    return jnp.max(0.5 * (tpr_T + tnr_T))


def decide(scores_pos, scores_neg):
    """U-LiRA's report: ``{'auc', 'acc'}`` of positives (unlearned-model targets) vs negatives
    (retrained-model targets)."""
    pos, neg = scores_pos.reshape(-1), scores_neg.reshape(-1)
    return {"auc": auc(pos, neg), "acc": best_accuracy(pos, neg)}


def leave_one_out(phi_in_SxN, phi_out_SxN, *, min_std: float = MIN_STD):
    """For every seed ``k``: fit on the other ``S - 1`` seeds, score seed ``k``'s "in" model (the
    unlearned one: a positive) and its "out" model (the retrained one: a negative). Returns
    ``(scores_pos_SxN, scores_neg_SxN)``; needs ``S >= 3`` (two shadows per fit)."""
    s = phi_in_SxN.shape[0]
    if s < 3:
        raise ValueError(f"U-LiRA leave-one-out needs 3 or more seeds (2 shadows per fit); got {s}")

    def fold(k):
        w_S = (jnp.arange(s) != k).astype(phi_in_SxN.dtype)
        fit_in = fit_gaussian(phi_in_SxN, w_S, min_std=min_std)
        fit_out = fit_gaussian(phi_out_SxN, w_S, min_std=min_std)
        return log_ratio(phi_in_SxN[k], fit_in, fit_out), log_ratio(phi_out_SxN[k], fit_in, fit_out)

    return jax.vmap(fold)(jnp.arange(s))


def ulira(phi_in_SxN, phi_out_SxN, *, min_std: float = MIN_STD):
    """Leave-one-out U-LiRA over ``S`` seeds: ``{'auc', 'acc', 'scores_pos', 'scores_neg'}``."""
    pos_SxN, neg_SxN = leave_one_out(phi_in_SxN, phi_out_SxN, min_std=min_std)
    return {**decide(pos_SxN, neg_SxN), "scores_pos": pos_SxN, "scores_neg": neg_SxN}
