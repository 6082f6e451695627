"""Membership inference and memorisation audits of a language model, for any
:class:`jaxcl.models.lm.LanguageModel` and any batch ``{'tokens': (N, T) int32, 'mask': (N, T)
bool}`` (mask on the scored tokens, TOFU's answers); the relearning attack for language models.

The scored tokens of a row are its targets ``t_{i+1}`` whose position ``i+1`` is in the mask (the
positions :func:`jaxcl.models.llama.masked_nll` scores); ``lp_i = log p(t_{i+1} | t_{<=i})``
under teacher forcing and ``n`` their count. Per-example scores, signed as open-unlearning signs
them (``src/evals/metrics/mia``: the higher a score, the less likely the row is a member):

- LOSS (Yeom et al., 2018): ``L = -(1/n) sum_i lp_i``.
- ZLib (Carlini et al., "Extracting Training Data from Large Language Models", 2021):
  ``L / len(zlib(text))``, the length in bytes of the zlib-compressed UTF-8 text of the scored
  tokens (:func:`zlib_lengths`, on the host: compression is not a JAX operation).
- Reference (Carlini et al., 2021): ``L(theta) - L(theta_ref)``, a reference model's loss
  subtracted (same architecture, other parameters: the retain model, the base model).
- GradNorm (Wang et al., 2024, arXiv:2402.17012): ``||grad_theta L||_2``, the global L2 norm of
  the per-example gradient of the loss (open-unlearning averages the per-tensor norms instead).
- Min-K% (Shi et al., "Detecting Pretraining Data from Large Language Models", 2024):
  ``-(1/|K|) sum_{i in K} lp_i`` with ``K`` the ``max(1, floor(k n))`` smallest ``lp_i``.
- Min-K%++ (Zhang et al., 2024, arXiv:2404.02936): the same over
  ``z_i = (lp_i - mu_i) / sigma_i``, ``mu_i = E_{v ~ p_i}[log p_i(v)]``,
  ``sigma_i^2 = E_{v ~ p_i}[log^2 p_i(v)] - mu_i^2`` (clamped below at 1e-6), the moments of the
  log-probability under the model's own next-token distribution ``p_i`` over the vocabulary.

An attack's AUC (:func:`mia`) is ``P(s(non-member) > s(member))`` (ties one half), by the
Mann-Whitney statistic of :func:`jaxcl.unlearn.eval.auc`: 1 when the attack tells members
(forget rows) from non-members (holdout rows), 0.5 when it cannot; open-unlearning's ``mia_*``.
MUSE's PrivLeak (Shi et al., "MUSE", 2024) is :func:`privleak`. Memorisation audits per row:

- exact memorisation (Tirumala et al., 2022; open-unlearning's ``exact_memorization``):
  ``EM = (1/n) sum_i [argmax_v p_i(v) = t_{i+1}]``;
- extraction strength (Carlini et al., 2021, as open-unlearning's ``extraction_strength``,
  Wang et al., 2025): ``ES = 1 - k*/n``, ``k*`` the smallest ``k`` in ``0..n`` such that every
  scored token from the ``k``-th on is the greedy prediction (``k* = n``: even the last is not;
  open-unlearning's loop gives ``1/n`` instead of 0 in that one case).

The relearning attack (:func:`relearn`): fine-tune on a slice of the forget set for a few steps
(the registry's ``finetune`` on :class:`jaxcl.loops.Phase`, as
:func:`jaxcl.unlearn.eval.relearn` does for classifiers) and trace the forget metrics on the
rest of the forget set inside the compiled loop.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from ..loops import Phase, PhaseConfig, as_hparams
from ..methods import get_method
from .eval import auc
from .lm import LMProblem

ATTACKS = ("loss", "zlib", "reference", "gradnorm", "min_k", "min_k_plus_plus")


# -- per-token statistics and per-example scores (pure, over a batch of logits) -----------------


def _scored(tokens_BxT, mask_BxT):
    """Targets ``t_{i+1}`` and their mask: ``(tokens[:, 1:], mask[:, 1:] as float32)``."""
    return tokens_BxT[:, 1:], mask_BxT[:, 1:].astype(jnp.float32)


def _logp(logits_BxTxV):
    return jax.nn.log_softmax(logits_BxTxV[:, :-1].astype(jnp.float32), -1)


def target_logprobs(logits_BxTxV, tokens_BxT):
    """``lp_BxS``: ``log p(t_{i+1} | t_{<=i})``, ``S = T - 1``."""
    return jnp.take_along_axis(_logp(logits_BxTxV), tokens_BxT[:, 1:, None], -1)[..., 0]


def loss_score(logits_BxTxV, tokens_BxT, mask_BxT):
    """LOSS: the mean NLL of the scored tokens, ``(B,)``."""
    _, m_BxS = _scored(tokens_BxT, mask_BxT)
    lp_BxS = target_logprobs(logits_BxTxV, tokens_BxT)
    return -(lp_BxS * m_BxS).sum(-1) / jnp.maximum(m_BxS.sum(-1), 1.0)


def zlib_score(logits_BxTxV, tokens_BxT, mask_BxT, zlib_len_B):
    """ZLib: LOSS over the zlib-compressed length (bytes) of the scored text (:func:`zlib_lengths`)."""
    return loss_score(logits_BxTxV, tokens_BxT, mask_BxT) / zlib_len_B


def reference_score(logits_BxTxV, ref_logits_BxTxV, tokens_BxT, mask_BxT):
    """Reference: LOSS of the model minus LOSS of the reference model."""
    return loss_score(logits_BxTxV, tokens_BxT, mask_BxT) - loss_score(ref_logits_BxTxV, tokens_BxT, mask_BxT)


def min_k_of(v_BxS, m_BxS, k: float):
    """``-(mean of the max(1, floor(k n)) smallest v over the mask)``; 0 for a row with no scored token."""
    n_B = m_BxS.sum(-1)
    nk_B = jnp.maximum(1.0, jnp.floor(k * n_B + 1e-6))
    v_sorted = jnp.sort(jnp.where(m_BxS > 0, v_BxS, jnp.inf), -1)
    take = jnp.arange(v_BxS.shape[-1])[None, :] < nk_B[:, None]
    s_B = -jnp.where(take, v_sorted, 0.0).sum(-1) / nk_B
    return jnp.where(n_B > 0, s_B, 0.0)


def min_k_score(logits_BxTxV, tokens_BxT, mask_BxT, k: float = 0.4):
    """Min-K%: the negated mean of the lowest ``k`` fraction of the scored tokens' log-probs."""
    _, m_BxS = _scored(tokens_BxT, mask_BxT)
    return min_k_of(target_logprobs(logits_BxTxV, tokens_BxT), m_BxS, k)


def min_k_plus_plus_score(logits_BxTxV, tokens_BxT, mask_BxT, k: float = 0.4):
    """Min-K%++: Min-K% of the log-probs standardised by the mean and standard deviation of
    ``log p`` under the model's own next-token distribution."""
    _, m_BxS = _scored(tokens_BxT, mask_BxT)
    lp_BxSxV = _logp(logits_BxTxV)
    p_BxSxV = jnp.exp(lp_BxSxV)
    mu_BxS = (p_BxSxV * lp_BxSxV).sum(-1)
    var_BxS = jnp.maximum((p_BxSxV * jnp.square(lp_BxSxV)).sum(-1) - jnp.square(mu_BxS), 1e-6)
    lp_BxS = jnp.take_along_axis(lp_BxSxV, tokens_BxT[:, 1:, None], -1)[..., 0]
    return min_k_of((lp_BxS - mu_BxS) / jnp.sqrt(var_BxS), m_BxS, k)


def exact_memorization(logits_BxTxV, tokens_BxT, mask_BxT):
    """EM: the fraction of scored tokens that are the greedy prediction under teacher forcing."""
    t_BxS, m_BxS = _scored(tokens_BxT, mask_BxT)
    hit_BxS = (logits_BxTxV[:, :-1].argmax(-1) == t_BxS).astype(jnp.float32)
    return (hit_BxS * m_BxS).sum(-1) / jnp.maximum(m_BxS.sum(-1), 1.0)


def extraction_strength(logits_BxTxV, tokens_BxT, mask_BxT):
    """ES: ``1 - k*/n``, ``k*`` the first scored index from which every scored token is predicted."""
    t_BxS, m_BxS = _scored(tokens_BxT, mask_BxT)
    miss_BxS = (logits_BxTxV[:, :-1].argmax(-1) != t_BxS) & (m_BxS > 0)
    rank_BxS = jnp.cumsum(m_BxS, -1) - 1.0  # the index of a scored token among its row's
    k_B = jnp.max(jnp.where(miss_BxS, rank_BxS, -1.0), -1) + 1.0
    n_B = m_BxS.sum(-1)
    return jnp.where(n_B > 0, 1.0 - k_B / jnp.maximum(n_B, 1.0), 0.0)


def zlib_lengths(tokens, mask, tokenizer=None) -> np.ndarray:
    """``(N,)`` float32: bytes of ``zlib.compress`` of each row's scored text, decoded by
    ``tokenizer`` (its ``decode(ids)``); without one, of the scored ids as int32 bytes."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    out = []
    for t_S, m_S in zip(tokens[:, 1:], mask[:, 1:]):
        ids = t_S[m_S]
        raw = tokenizer.decode(ids.tolist()).encode("utf-8") if tokenizer else ids.astype(np.int32).tobytes()
        out.append(len(zlib.compress(raw)))
    return np.asarray(out, np.float32)


# -- per-example scores of a model over a batch, in chunks ---------------------------------------


def map_rows(fn, rows: dict, chunk: int):
    """``fn(sub_batch) -> {name: (c,)}`` over ``rows`` in chunks of ``chunk`` rows (``lax.map``;
    the last chunk padded with the first row, its outputs dropped)."""
    n = rows["tokens"].shape[0]
    c = max(1, min(chunk, n))
    nb = -(-n // c)
    pad = lambda a: jnp.concatenate([a, jnp.repeat(a[:1], nb * c - n, 0)]) if nb * c > n else a  # noqa: E731
    chunks = jax.tree.map(lambda a: pad(a).reshape((nb, c) + a.shape[1:]), rows)
    out = jax.lax.map(fn, chunks)
    return jax.tree.map(lambda a: a.reshape((nb * c,) + a.shape[2:])[:n], out)


def gradnorm_score(model, params, rows: dict):
    """GradNorm of every row (one gradient at a time, ``lax.map``: one gradient's memory)."""

    def one(row):
        sub = jax.tree.map(lambda a: a[None], row)

        def loss(p):
            s_B, n_B = model.nll(p, sub)
            return (s_B / jnp.maximum(n_B, 1.0))[0]

        g = jax.grad(loss)(params)
        return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(g)))

    return jax.lax.map(one, rows)


@functools.partial(jax.jit, static_argnames=("model", "k", "chunk"))
def example_scores(model, params, rows: dict, ref_params=None, *, k: float = 0.4, chunk: int = 16):
    """Every per-example score of ``rows`` (``{'tokens', 'mask'}`` and optionally ``'zlib_len'``,
    :func:`zlib_lengths`): ``{attack or audit: (N,)}``; ``reference`` only with ``ref_params``,
    ``zlib`` only with ``'zlib_len'``."""

    def fn(sub):
        t, m = sub["tokens"], sub["mask"]
        logits = model.apply(params, t)
        out = {
            "loss": loss_score(logits, t, m),
            "min_k": min_k_score(logits, t, m, k),
            "min_k_plus_plus": min_k_plus_plus_score(logits, t, m, k),
            "gradnorm": gradnorm_score(model, params, {"tokens": t, "mask": m}),
            "exact_memorization": exact_memorization(logits, t, m),
            "extraction_strength": extraction_strength(logits, t, m),
        }
        if "zlib_len" in sub:
            out["zlib"] = out["loss"] / sub["zlib_len"]
        if ref_params is not None:
            out["reference"] = out["loss"] - loss_score(model.apply(ref_params, t), t, m)
        return out

    return map_rows(fn, rows, chunk)


def with_zlib(rows: dict, tokenizer=None) -> dict:
    """``rows`` with their ``'zlib_len'`` (:func:`zlib_lengths`)."""
    return {**rows, "zlib_len": jnp.asarray(zlib_lengths(rows["tokens"], rows["mask"], tokenizer))}


def mia(
    model,
    params,
    members: dict,
    nonmembers: dict,
    ref_params=None,
    *,
    tokenizer=None,
    k: float = 0.4,
    chunk: int = 16,
) -> dict:
    """The membership-inference suite: ``{attack: AUC}`` of every attack of :data:`ATTACKS`
    (``reference`` only with ``ref_params``) on ``members`` (the forget rows) against
    ``nonmembers`` (holdout rows), AUC as open-unlearning's ``mia_*`` (1: members told apart);
    also ``{audit}_members`` / ``{audit}_nonmembers``, the mean EM and ES of each set. ZLib's
    text is decoded by ``tokenizer`` (without one: the token ids' bytes)."""
    s_mem = example_scores(model, params, with_zlib(members, tokenizer), ref_params, k=k, chunk=chunk)
    s_non = example_scores(model, params, with_zlib(nonmembers, tokenizer), ref_params, k=k, chunk=chunk)
    out = {a: float(auc(s_non[a], s_mem[a])) for a in ATTACKS if a in s_mem}
    for a in ("exact_memorization", "extraction_strength"):
        out[f"{a}_members"], out[f"{a}_nonmembers"] = float(s_mem[a].mean()), float(s_non[a].mean())
    return out


def privleak(auc_unlearned, auc_retrain):
    """MUSE's PrivLeak in percent, ``(AUC'_unl - AUC'_ret) / AUC'_ret * 100``, where MUSE's
    ``AUC' = 1 - AUC`` of :func:`mia` (MUSE labels the forget rows 0 and the holdout rows 1 and
    scores ``-loss``: ``muse_bench/metrics/privleak.py``; open-unlearning's ``privleak`` converts
    the same way). Near 0: the unlearned model leaks as much as one retrained without the forget
    set; negative: under-unlearning (the forget rows still look like members); positive:
    over-unlearning. NaN where the retrained model's ``AUC'`` is 0 (its AUC 1: the attack tells the
    forget rows from the holdout without any training on them, so the ratio has no scale)."""
    a_u, a_r = 1.0 - auc_unlearned, 1.0 - auc_retrain
    return float("nan") if a_r <= 0.0 else (a_u - a_r) / a_r * 100.0


# -- relearning attack -------------------------------------------------------------------------


class RelearnPhase(Phase):
    """A :class:`jaxcl.loops.Phase` whose continual evaluation is the forget metrics on the
    problem's forget rows (the attack's held-out forget rows): NLL, EM and ES."""

    def evaluate(self, params, problem, model=None):
        rows = problem.forget
        logits = (model or self.model).apply(params, rows["tokens"])
        t, m = rows["tokens"], rows["mask"]
        return {
            "forget_nll": loss_score(logits, t, m).mean(),
            "forget_em": exact_memorization(logits, t, m).mean(),
            "forget_es": extraction_strength(logits, t, m).mean(),
        }


def relearn(
    model,
    params,
    forget: dict,
    key,
    *,
    steps: int = 10,
    every: int = 5,
    n: int = 8,
    lr: float = 1e-5,
    batch_size: int = 8,
    eval_cap: int = 64,
) -> dict:
    """Relearning attack on a language model: ``{'forget_nll', 'forget_em', 'forget_es'}``, each
    ``(steps // every + 1,)``: the forget metrics on up to ``eval_cap`` forget rows outside the
    attack slice before the attack and after every ``every`` steps of the registry's ``finetune``
    (Adam, ``lr``, batches of ``min(batch_size, n)`` drawn with replacement) on the first ``n``
    forget rows; one compiled :class:`RelearnPhase`. Compare with the retain model under the
    same attack."""
    n_rows = forget["tokens"].shape[0]
    n = min(n, n_rows - 1)
    if n <= 0:
        raise ValueError(f"relearn: the forget set has {n_rows} row(s); it needs 2 or more")
    held = jax.tree.map(lambda a: a[n : n + eval_cap], forget)
    attack = jax.tree.map(lambda a: a[:n], forget)
    problem = LMProblem(forget=held, forget_alt=held, retain=attack)
    finetune = get_method("finetune")
    phase = RelearnPhase(model, finetune, PhaseConfig(steps, min(batch_size, n), every, eval_cap))
    trace = jax.jit(phase.run)(params, key, problem, as_hparams(finetune, {"lr": lr}))["trace"]
    before = phase.evaluate(params, problem)
    return {k: jnp.concatenate([jnp.asarray(before[k])[None], trace[k]]) for k in before}
