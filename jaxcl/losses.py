"""Loss functions and loss wrappers (``LossFn -> LossFn``).

A ``LossFn`` is ``(params, batch, key) -> (loss, aux)``. Base losses put their ``logits`` in
``aux`` so that wrappers (``with_kl``) reuse the forward pass. Everything a wrapper needs from
outside the parameters (a teacher's logits, an EWC anchor and Fisher, a traced lambda) arrives in
the batch, filled in by a data transform whose state lives on the device (see
:mod:`jaxcl.data.context`): no array is ever closed over.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from .engine import LossFn


def masked_logits(logits_BxC: jax.Array, batch: dict) -> jax.Array:
    """Apply a task-incremental logit mask when the batch carries one (``batch['mask']``)."""
    mask_BxC = batch.get("mask")
    if mask_BxC is None:
        return logits_BxC
    return jnp.where(mask_BxC, logits_BxC, jnp.finfo(logits_BxC.dtype).min / 2)


def classification_loss(apply_fn: Callable) -> LossFn:
    """Mean softmax cross-entropy of ``apply_fn(params, batch['x'])`` against ``batch['y']``.

    Per-example weights ``batch['weight']`` (optional) turn it into a weighted mean, which
    padding and A-GEM's empty-memory case use.
    """

    def loss_fn(params, batch, key):
        del key
        logits_BxC = masked_logits(apply_fn(params, batch["x"]), batch)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["y"])
        w_B = batch.get("weight")
        if w_B is None:
            loss = ce_B.mean()
        else:
            loss = (ce_B * w_B).sum() / jnp.maximum(w_B.sum(), 1.0)
        acc = (logits_BxC.argmax(-1) == batch["y"]).mean()
        return loss, {"ce": loss, "train_acc": acc, "logits": logits_BxC}

    return loss_fn


def kl_divergence(ref_logits_BxC, logits_BxC, temperature=1.0):
    """Mean over the batch of KL(softmax(ref/T) || softmax(logits/T))."""
    p_ref = jax.nn.softmax(ref_logits_BxC / temperature, axis=-1)
    logp_ref = jax.nn.log_softmax(ref_logits_BxC / temperature, axis=-1)
    logp = jax.nn.log_softmax(logits_BxC / temperature, axis=-1)
    return (p_ref * (logp_ref - logp)).sum(-1).mean()


def with_kl(loss_fn: LossFn, *, weight=1.0, temperature=1.0, ref_key: str = "ref_logits") -> LossFn:
    """Add ``weight * T^2 * KL(softmax(ref/T) || softmax(logits/T))`` to a loss.

    The reference logits come from ``batch[ref_key]`` (computed by a teacher/reference data
    transform); ``batch[ref_key + '_on']`` (0 or 1) switches the term off, e.g. before a first
    teacher exists. The student logits are ``aux['logits']`` of the wrapped loss. LwF (Li and
    Hoiem, 2016) is this wrapper with the previous task's model as reference and T = 2;
    KL-regularised fine-tuning uses the frozen initial model. ``weight`` may be traced.
    """

    def wrapped(params, batch, key):
        loss, aux = loss_fn(params, batch, key)
        ref = masked_logits(batch[ref_key], batch)
        on = batch.get(ref_key + "_on", 1.0)
        kl = kl_divergence(ref, aux["logits"], temperature) * temperature**2
        return loss + on * weight * kl, {**aux, "kl": kl}

    return wrapped


def token_kl(ref_logits_BxTxC, logits_BxTxC, mask_BxT, temperature=1.0) -> jax.Array:
    """``KL(softmax(ref/T) || softmax(logits/T))`` per scored position, averaged over the mask."""
    logp_ref = jax.nn.log_softmax(ref_logits_BxTxC.astype(jnp.float32) / temperature, axis=-1)
    logp = jax.nn.log_softmax(logits_BxTxC.astype(jnp.float32) / temperature, axis=-1)
    kl_BxT = (jnp.exp(logp_ref) * (logp_ref - logp)).sum(-1)
    return (kl_BxT * mask_BxT).sum() / jnp.maximum(mask_BxT.sum(), 1.0)


def with_reference_kl(
    loss_fn: LossFn, model, *, weight=1.0, temperature=1.0, ref_key: str = "kl_ref_logits"
) -> LossFn:
    """Add ``weight * T^2 * KL(p_ref || p_theta)`` on the batch's scored positions (classifiers:
    one per example; language models: the answer tokens, :func:`token_logits`) to a loss.

    Unlike :func:`with_kl` it runs its own forward pass, so it wraps any loss (a language model's
    NLL, NPO's forget term). The reference logits come from ``batch[ref_key]`` (a
    :func:`jaxcl.data.context.reference` transform) and ``batch[ref_key + '_on']`` switches the
    term off before a reference exists. ``weight`` may be traced."""
    logits = token_logits(model)

    def wrapped(params, batch, key):
        loss, aux = loss_fn(params, batch, key)
        logits_BxTxC, _, mask_BxT = logits(params, batch)
        kl = token_kl(batch[ref_key], logits_BxTxC, mask_BxT, temperature) * temperature**2
        return loss + batch.get(ref_key + "_on", 1.0) * weight * kl, {**aux, "kl": kl}

    return wrapped


def ewc_penalty(params, anchor, fisher) -> jax.Array:
    """``0.5 * sum_i F_i (theta_i - theta*_i)^2`` over all leaves."""
    terms = jax.tree.map(lambda p, a, f: (f * (p - a) ** 2).sum(), params, anchor, fisher)
    return 0.5 * sum(jax.tree.leaves(terms))


def with_ewc_penalty(loss_fn: LossFn, *, lam=1.0, ctx_key: str = "ewc") -> LossFn:
    """Elastic weight consolidation (Kirkpatrick et al., PNAS 2017):
    ``L(theta) + lam/2 * sum_i F_i (theta_i - theta*_i)^2``.

    ``batch[ctx_key]`` holds ``{'anchor': theta*, 'fisher': F}``, kept on the device by
    :func:`jaxcl.data.context.ewc_anchor` and updated at task ends (a state change). ``lam``
    may be traced (swept under ``vmap``).
    """

    def wrapped(params, batch, key):
        loss, aux = loss_fn(params, batch, key)
        ctx = batch[ctx_key]
        pen = ewc_penalty(params, ctx["anchor"], ctx["fisher"])
        return loss + lam * pen, {**aux, "ewc_penalty": pen}

    return wrapped


def empirical_fisher(loss_fn: LossFn, params, batch: dict, key, *, chunk: int = 32):
    """Diagonal empirical Fisher: mean over examples of the squared per-example gradient.

    Per-example gradients by ``vmap``, accumulated over chunks of ``chunk`` examples with
    ``lax.scan`` so memory stays at ``chunk`` gradients. ``batch`` leaves have a leading
    example axis whose size must be a multiple of ``chunk`` (or smaller than it: one chunk).
    """
    n = jax.tree.leaves(batch)[0].shape[0]
    chunk = min(chunk, n)
    if n % chunk:
        raise ValueError(f"empirical_fisher: {n} examples is not a multiple of chunk={chunk}")

    def per_example(p, ex):
        one = jax.tree.map(lambda a: a[None], ex)
        return jax.grad(lambda q: loss_fn(q, one, key)[0])(p)

    chunks = jax.tree.map(lambda a: a.reshape((n // chunk, chunk) + a.shape[1:]), batch)

    def body(acc, ch):
        g = jax.vmap(per_example, in_axes=(None, 0))(params, ch)
        return jax.tree.map(lambda s, gi: s + (gi**2).sum(0), acc, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, chunks)
    return jax.tree.map(lambda s: s / n, total)


# -- likelihood of a sub-batch: one definition for classifiers and language models -------------


def nll_per_example(model) -> Callable:
    """``(params, sub_batch) -> (nll_B, count_B)``: the summed negative log-likelihood of each
    example and the number of scored targets in it.

    Classifiers (``model.apply(params, x) -> logits``): the cross-entropy of ``sub['y']`` given
    ``sub['x']``, count 1. Language models (``model.nll``, see :func:`jaxcl.models.llama.lm_model`):
    the sum over the masked target tokens of ``sub['tokens']``, count = the number of such tokens.
    """
    if hasattr(model, "nll"):
        return model.nll

    def nll(params, sub):
        logits_BxC = masked_logits(model.apply(params, sub["x"]), sub)
        ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, sub["y"])
        return ce_B, jnp.ones_like(ce_B)

    return nll


def mean_nll(model) -> Callable:
    """``(params, sub_batch) -> scalar``: NLL per scored target (mean cross-entropy of a
    classifier; token-mean NLL of a language model)."""
    nll = nll_per_example(model)

    def fn(params, sub):
        s_B, n_B = nll(params, sub)
        return s_B.sum() / jnp.maximum(n_B.sum(), 1.0)

    return fn


def token_logits(model) -> Callable:
    """``(params, sub) -> (logits_BxTxC, targets_BxT, mask_BxT)``: the logits of every scored
    position, its target and a float mask of the scored ones.

    Classifiers: one position per example (``T = 1``): the (task-masked) logits of ``sub['x']``,
    target ``sub['y']``, mask 1. Language models (``sub = {'tokens', 'mask'}``): the logits of
    ``tokens[:, :-1]``, targets ``tokens[:, 1:]`` and the answer mask ``mask[:, 1:]`` (the positions
    :func:`nll_per_example` sums over). The full (B, T, V) logits: for methods that need the whole
    distribution (UNDIAL); :func:`token_logprobs` when the target's log-probability is enough.
    Left-padded sequences (``sub = {'tokens', 'valid', 'loss_mask'}``, the RL studies' rows): the
    padding is masked out of attention and the mask is ``loss_mask[:, 1:]``."""
    if getattr(model, "token_logits", None) is not None:  # a model with its own (jaxcl.models.vlm)
        return model.token_logits
    if hasattr(model, "nll"):

        def lm(params, sub):
            if "valid" in sub:
                from .grpo import masked_forward

                logits_BxTxV = masked_forward(model.cfg, params, sub["tokens"][:, :-1], sub["valid"][:, :-1])
                return logits_BxTxV, sub["tokens"][:, 1:], sub["loss_mask"][:, 1:].astype(jnp.float32)
            logits_BxTxV = model.apply(params, sub["tokens"][:, :-1])
            return logits_BxTxV, sub["tokens"][:, 1:], sub["mask"][:, 1:].astype(jnp.float32)

        return lm

    def clf(params, sub):
        logits_BxC = masked_logits(model.apply(params, sub["x"]), sub)
        return logits_BxC[:, None], sub["y"][:, None], jnp.ones(sub["y"].shape + (1,), jnp.float32)

    return clf


def token_logprobs(model) -> Callable:
    """``(params, sub) -> (logp_BxT, mask_BxT)``: ``log p(target)`` at every position of
    :func:`token_logits` and its mask; a language model's without materialising the log-softmax
    (:func:`jaxcl.models.llama.token_logprobs`)."""
    if getattr(model, "token_logprobs", None) is not None:  # a model with its own (jaxcl.models.vlm)
        return model.token_logprobs
    if hasattr(model, "nll"):
        from .models import llama

        def lm(params, sub):
            lp_BxT = llama.token_logprobs(model.cfg, params, sub["tokens"])
            return lp_BxT, sub["mask"][:, 1:].astype(jnp.float32)

        return lm
    logits = token_logits(model)

    def clf(params, sub):
        logits_BxTxC, t_BxT, m_BxT = logits(params, sub)
        lp_BxTxC = jax.nn.log_softmax(logits_BxTxC, -1)
        return jnp.take_along_axis(lp_BxTxC, t_BxT[..., None], -1)[..., 0], m_BxT

    return clf


def npo_loss(nll_B: jax.Array, ref_nll_B: jax.Array, beta) -> jax.Array:
    """NPO (Zhang et al., 2024): ``(2/beta) * mean softplus(beta * (log pi - log pi_ref))`` with
    ``log pi = -nll``; bounded below by 0; ``beta -> 0`` gives gradient ascent."""
    log_ratio_B = -nll_B + jax.lax.stop_gradient(ref_nll_B)
    return (2.0 / beta) * jax.nn.softplus(beta * log_ratio_B).mean()


def with_grad_norm(loss_fn: LossFn, *, weight=0.005) -> LossFn:
    """``L + weight * ||dL/dtheta||^2`` (IAU's training regulariser; double backprop)."""

    def wrapped(params, batch, key):
        (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        gn = sum(jnp.vdot(x, x) for x in jax.tree.leaves(g))
        return l + weight * gn, {**aux, "grad_norm_sq": gn}

    return wrapped


def supervised_loss(model) -> LossFn:
    """The plain training loss of a model: :func:`classification_loss` for a classifier, the
    token-mean NLL (:func:`mean_nll`) for a language model (``model.nll``)."""
    if not hasattr(model, "nll"):
        return classification_loss(model.apply)
    nll = mean_nll(model)

    def loss_fn(params, batch, key):
        del key
        loss = nll(params, batch)
        return loss, {"nll": loss}

    return loss_fn


def minibatch_importance(
    model, params, sub: dict, *, batch_size: int = 64, per_example: bool = False, key=None
):
    """SSD's parameter importance on a data set ``sub`` (leaves with a leading example axis):

        I = (1 / M) * sum_{minibatches m} (d/d theta  mean_{i in m} NLL_i(theta))^2

    over the M full minibatches of ``batch_size`` (the last partial one is dropped), under a
    rolled ``lax.scan``; ``per_example=True`` gives the empirical Fisher instead (mean squared
    per-example gradient, :func:`empirical_fisher`), which does not depend on the batch size.
    """
    n = jax.tree.leaves(sub)[0].shape[0]
    if n == 0:
        raise ValueError("importance: empty data set")
    b = min(batch_size, n)
    nb = n // b
    chunks = jax.tree.map(lambda a: a[: nb * b].reshape((nb, b) + a.shape[1:]), sub)
    nll = mean_nll(model)
    if per_example:
        flat = jax.tree.map(lambda a: a.reshape((nb * b,) + a.shape[2:]), chunks)
        loss = lambda p, batch, k: (nll(p, batch), {})
        return empirical_fisher(loss, params, flat, jax.random.key(0) if key is None else key, chunk=b)
    grad = jax.grad(nll)

    def body(acc, mb):
        return jax.tree.map(lambda a, g: a + jnp.square(g), acc, grad(params, mb)), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), chunks)
    return jax.tree.map(lambda t: t / nb, total)


def mean_grad(model, params, sub: dict, *, chunk: int = 500):
    """Gradient of the mean NLL over ``sub`` (full chunks of ``chunk`` examples, ``lax.map``)."""
    n = jax.tree.leaves(sub)[0].shape[0]
    c = min(chunk, n)
    nb = n // c
    chunks = jax.tree.map(lambda a: a[: nb * c].reshape((nb, c) + a.shape[1:]), sub)
    g = jax.lax.map(lambda mb: jax.grad(mean_nll(model))(params, mb), chunks)
    return jax.tree.map(lambda a: a.mean(0), g)
