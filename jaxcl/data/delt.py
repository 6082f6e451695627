"""DELT, data efficacy: score every training sample, optionally select, then order (Dai et al.,
"Data Efficacy for Language Model Training", 2025), applied to each task of a stream.

* **Learnability-Quality Scoring (LQS)**, from gradient consistency along a short proxy training
  run with checkpoints ``theta_1 .. theta_K``: with ``g_k(x)`` the per-sample gradient of the loss at
  ``theta_k`` and ``lambda_k`` the mean gradient of a target set at ``theta_k``,

      LQS(x) = sum_{k=1}^{K-1}  ||lambda_k|| * ( ||g_k(x)|| / ||g_{k+1}(x)|| ) * cos(g_k(x), lambda_k).

  The cosine is the *quality* (the sample pushes the model where the target data wants it); the
  ratio of gradient norms between consecutive checkpoints is the *learnability* (a sample whose
  gradient shrinks as training proceeds is being learned), as in the authors' annotation code.
  Here the proxy run is ``proxy_steps`` SGD steps of a fresh model on the task (checkpoints evenly
  spaced, the first at initialisation), and the target set is ``target`` examples of the task's own
  training data (the test data is never looked at).
* **Selection** (optional, data efficiency): keep the ``select`` fraction with the highest scores.
* **Folding Ordering (FO)**: sort by score ascending and read the sorted list in ``layers`` strided
  folds, ``sorted[0::L] + sorted[1::L] + ... + sorted[L-1::L]``: L easy-to-hard passes, each covering
  the whole score range once, so no sample is repeated and the end of training is not all
  hard samples (the forgetting and distribution bias of a plain sort).

:func:`delt` reorders (and selects) each task's training examples of a :class:`Stream`; training
then has to *read* them in that order: ``loop.order = "sequential"`` (the ``cl`` runner sets it with
``data.order = "delt"``), whose step ``i`` of a task takes rows ``i*B .. i*B + B - 1`` (modulo the
task's size) instead of a uniform draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .streams import Stream


def folding_order(scores, layers: int) -> np.ndarray:
    """Indices of the folding order of ``scores`` (ascending sort, then ``layers`` strided folds)."""
    if layers < 1:
        raise ValueError(f"folding layers={layers} must be >= 1")
    srt = np.argsort(np.asarray(scores), kind="stable")
    return np.concatenate([srt[l::layers] for l in range(layers)])


def _ce(apply_fn):
    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()

    return loss


def proxy_checkpoints(model, x, y, key, *, steps: int, k: int, lr: float = 0.1, batch: int = 64):
    """``k`` checkpoints (a stacked pytree, leading axis ``k``) of ``steps`` SGD steps of a fresh
    ``model`` on ``(x, y)``: the first at initialisation, the last at the end."""
    loss = _ce(model.apply)
    k_init, k_draw = jax.random.split(key)
    params = model.init(k_init)
    every = max(1, steps // max(k - 1, 1))

    def one(p, kk):
        idx = jax.random.randint(kk, (batch,), 0, x.shape[0])
        g = jax.grad(loss)(p, x[idx], y[idx])
        return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    def segment(p, kk):
        p, _ = jax.lax.scan(one, p, jax.random.split(kk, every))
        return p, p

    _, later = jax.lax.scan(segment, params, jax.random.split(k_draw, k - 1))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), params, later)


def lqs_scores(model, checkpoints, x, y, target_x, target_y, *, chunk: int = 256):
    """LQS of every ``(x, y)`` (see the module docstring), ``checkpoints`` stacked on a leading
    axis of ``K >= 2``."""
    loss = _ce(model.apply)
    n = x.shape[0]
    pad = (-n) % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    ys = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]) if pad else y
    xs = xs.reshape((-1, chunk) + x.shape[1:])
    ys = ys.reshape(-1, chunk)

    def stats(params):
        lam = jax.grad(loss)(params, target_x, target_y)
        lam_norm = optax.global_norm(lam)

        def per_chunk(xy):
            def one(xi, yi):
                g = jax.grad(loss)(params, xi[None], yi[None])
                dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(lam)))
                return optax.global_norm(g), dot

            return jax.vmap(one)(*xy)

        norms, dots = jax.lax.map(per_chunk, (xs, ys))
        norms, dots = norms.reshape(-1)[:n], dots.reshape(-1)[:n]
        cos = jnp.clip(dots / jnp.maximum(norms * lam_norm, 1e-20), -1.0, 1.0)
        return lam_norm, norms, cos

    lam_norm, norms, cos = jax.lax.map(stats, checkpoints)  # K, (K, n), (K, n)
    ratio = norms[:-1] / jnp.maximum(norms[1:], 1e-20)
    return (lam_norm[:-1, None] * ratio * cos[:-1]).sum(0)


def delt(
    stream: Stream,
    model,
    *,
    layers: int = 3,
    select: float = 1.0,
    proxy_steps: int = 100,
    checkpoints: int = 3,
    target: int = 256,
    seed: int = 0,
    chunk: int = 256,
) -> tuple[Stream, list[np.ndarray]]:
    """Each task's training examples scored by LQS, the top ``select`` fraction kept, in folding
    order; returns the new stream and each task's scores (in the new order). ``chunk``: examples
    whose per-sample gradients are computed at once."""
    if not 0.0 < select <= 1.0:
        raise ValueError(f"delt select={select} must be in (0, 1]")
    if checkpoints < 2:
        raise ValueError(
            f"delt checkpoints={checkpoints} must be >= 2 (LQS compares consecutive checkpoints)"
        )
    key = jax.random.key(seed)
    ckpt = jax.jit(
        lambda x, y, k: proxy_checkpoints(model, x, y, k, steps=proxy_steps, k=checkpoints),
    )
    score = jax.jit(lambda c, x, y, tx, ty: lqs_scores(model, c, x, y, tx, ty, chunk=chunk))
    rng = np.random.default_rng(seed)
    xs, ys, all_scores = [], [], []
    for t in range(stream.n_tasks):
        n = int(stream.train_n[t])
        x, y = jnp.asarray(stream.train_x[t, :n]), jnp.asarray(stream.train_y[t, :n])
        tidx = rng.choice(n, min(target, n), replace=False)
        c = ckpt(x, y, jax.random.fold_in(key, t))
        s = np.asarray(score(c, x, y, x[tidx], y[tidx]))
        keep = np.argsort(-s, kind="stable")[: max(1, int(round(select * n)))]
        order = keep[folding_order(s[keep], layers)]
        xs.append(np.asarray(stream.train_x[t, order]))
        ys.append(np.asarray(stream.train_y[t, order]))
        all_scores.append(s[order])
    m = max(len(a) for a in ys)
    train_x = np.zeros((stream.n_tasks, m) + stream.train_x.shape[2:], stream.train_x.dtype)
    train_y = np.zeros((stream.n_tasks, m), stream.train_y.dtype)
    for t, (a, b) in enumerate(zip(xs, ys)):
        train_x[t, : len(b)], train_y[t, : len(b)] = a, b
    train_n = np.array([len(b) for b in ys], np.int32)
    return stream._replace(train_x=train_x, train_y=train_y, train_n=train_n), all_scores
