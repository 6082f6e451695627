"""Sequence-order-recall (SORT) scoring: the answer margin of every test item inside the compiled
loop and the accuracies per condition on the host.

Paper: Pink et al., "Assessing Episodic Memory in LLMs with Sequence Order Recall Tasks" (SORT,
2024). Each test pair is scored in both orders (rows ``2k`` and ``2k + 1``, built by
:func:`jaxcl.data.sort.pair_items`); an item's margin is

    m = log p(correct | prompt) - log p(wrong | prompt)

at its answer position. A pair's accuracy is the mean over its two orders of ``[m > 0]`` (a tie
``m = 0`` counts a half), so a constant answer bias scores exactly 50 %; the paired accuracy
``[m_2k + m_2k+1 > 0]`` cancels such a bias (:func:`paired_accuracy`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import probes


def answer_margins(apply, params, items: dict, chunk: int) -> jax.Array:
    """(N,) ``log p(correct) - log p(wrong)`` at each item's answer position (the logits of the
    token before it), ``chunk`` items per forward pass."""
    N, T = items["tokens"].shape
    n_pad = -N % chunk

    def pad(a):
        return jnp.concatenate([a, jnp.repeat(a[:1], n_pad, 0)]) if n_pad else a

    xs = {
        k: pad(items[k]).reshape(-1, chunk, *items[k].shape[1:])
        for k in ("tokens", "answer_pos", "correct", "wrong")
    }

    def one(x):
        logits = apply(params, x["tokens"][:, :-1])
        at = jnp.take_along_axis(logits, (x["answer_pos"] - 1)[:, None, None], 1)[:, 0]
        lp = jax.nn.log_softmax(at.astype(jnp.float32), -1)
        pick = lambda ids: jnp.take_along_axis(lp, ids[:, None], 1)[:, 0]  # noqa: E731
        return pick(x["correct"]) - pick(x["wrong"])

    return jax.lax.map(one, xs).reshape(-1)[:N]


def evaluate(apply, params, data: dict, chunk: int) -> dict:
    """``margin`` (N,) of every test item of ``data["items"]`` and ``book_nll`` (C,): the mean NLL
    per token of each condition's windows ``data["nll_tokens"]`` (C, n, T)."""
    margin = answer_margins(apply, params, data["items"], chunk)
    nll = jax.lax.map(lambda t: probes.sequence_nll(apply, params, t).mean(), data["nll_tokens"])
    return {"margin": margin, "book_nll": nll}


def pair_accuracy(margins) -> np.ndarray:
    """``(..., 2P)`` margins (both orders of each pair in consecutive rows) -> ``(..., P)`` accuracy
    per pair: the mean over its two orders of 1 (margin > 0), 0.5 (a tie) or 0."""
    m = np.asarray(margins)
    hit = (m > 0) + 0.5 * (m == 0)
    return hit.reshape(*m.shape[:-1], -1, 2).mean(-1)


def paired_accuracy(margins) -> np.ndarray:
    """``(..., 2P)`` margins -> ``(..., P)``: 1 where the sum of a pair's two margins is positive
    (0.5 at 0). A constant preference ``b`` for one answer adds ``+b`` to one order's margin and
    ``-b`` to the other's, so it cancels here: the readout of a model whose answers are dominated by
    such a bias (where :func:`pair_accuracy` is exactly 0.5) still shows whether its order signal is
    right."""
    m = np.asarray(margins)
    tot = m.reshape(*m.shape[:-1], -1, 2).sum(-1)
    return (tot > 0) + 0.5 * (tot == 0)


def condition_metrics(traces: dict, rows: dict, pairs: dict, n_bins: int) -> dict:
    """Per condition ``c`` (its items at ``rows[c] = (begin, end)`` of ``traces["margin"]`` (S, E,
    N), its NLL at column ``k`` of ``traces["book_nll"]`` (S, E, C), ``k`` its place in ``rows``):
    ``acc`` (S, E) over its pairs, ``acc_bins`` (S, E, n_bins) by the distance bin of each of
    ``pairs[c]``, ``paired`` (S, E), ``margin`` (S, E) (mean absolute margin), ``book_nll``
    (S, E)."""
    out = {}
    for k, (c, (lo, hi)) in enumerate(rows.items()):
        acc = pair_accuracy(traces["margin"][..., lo:hi])  # S, E, P
        bins = np.asarray([p.bin for p in pairs[c]])
        out[c] = {
            "acc": acc.mean(-1),
            "acc_bins": np.stack([acc[..., bins == b].mean(-1) for b in range(n_bins)], -1),
            "paired": paired_accuracy(traces["margin"][..., lo:hi]).mean(-1),
            "margin": np.abs(traces["margin"][..., lo:hi]).mean(-1),
            "book_nll": traces["book_nll"][..., k],
        }
    return out
