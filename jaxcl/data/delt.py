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

Against the authors' code (``microsoft/DELT``, ``data_scoring/lqs/annotation``): their per-sample
term is the same product ``||lambda|| * (||g_t|| / ||g_other||) * cos(g_t, lambda)``, but their
``lambda_t`` is the adjoint of a PDS-style backward pass through the proxy run (the target gradient
at ``theta_t`` plus ``lambda_{t+1}`` minus ``lr`` times a Hessian-vector product). Here
``lambda_k`` is only its first term, the target gradient at ``theta_k``: no Hessian products.

:func:`delt` reorders (and selects) each task's training examples of a :class:`Stream`; training
then has to *read* them in that order: ``loop.order = "sequential"`` (the ``cl`` runner sets it with
``data.order = "delt"``), whose step ``i`` of a task takes rows ``i*B .. i*B + B - 1`` (modulo the
task's size) instead of a uniform draw. :func:`order_windows` does the same for a language
model's packed token windows (the ``lm`` study's ``pretrain@delt`` rows, :mod:`jaxcl.data.text`):
the per-sample loss is the window's NLL per token.
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
    def loss(params, batch):
        logits = apply_fn(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss


def _take(data, idx):
    return jax.tree.map(lambda a: a[idx], data)


def sgd_checkpoints(loss, params, data, key, *, steps: int, k: int, lr: float = 0.1, batch: int = 64):
    """``k`` checkpoints (a stacked pytree, leading axis ``k``) of ``steps`` SGD steps from
    ``params`` on ``data`` (a pytree of arrays with a leading example axis; ``loss(params,
    rows) -> scalar``): the first at ``params``, the last at the end."""
    n = jax.tree.leaves(data)[0].shape[0]
    every = max(1, steps // max(k - 1, 1))

    def one(p, kk):
        g = jax.grad(loss)(p, _take(data, jax.random.randint(kk, (batch,), 0, n)))
        return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    def segment(p, kk):
        p, _ = jax.lax.scan(one, p, jax.random.split(kk, every))
        return p, p

    _, later = jax.lax.scan(segment, params, jax.random.split(key, k - 1))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), params, later)


def proxy_checkpoints(model, x, y, key, *, steps: int, k: int, lr: float = 0.1, batch: int = 64):
    """:func:`sgd_checkpoints` of a fresh classifier ``model`` on ``(x, y)``."""
    k_init, k_draw = jax.random.split(key)
    return sgd_checkpoints(
        _ce(model.apply), model.init(k_init), {"x": x, "y": y}, k_draw, steps=steps, k=k, lr=lr, batch=batch
    )


def lqs(loss, checkpoints, data, target, *, chunk: int = 256):
    """LQS (the module docstring's equation) of every example of ``data`` (a pytree with a
    leading example axis) against the ``target`` examples, ``loss(params, rows) -> scalar`` (a
    mean over rows), ``checkpoints`` stacked on a leading axis of ``K >= 2``."""
    n = jax.tree.leaves(data)[0].shape[0]
    pad = (-n) % chunk

    def blocks(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((-1, chunk) + a.shape[1:])

    data_b = jax.tree.map(blocks, data)

    def stats(params):
        lam = jax.grad(loss)(params, target)
        lam_norm = optax.global_norm(lam)

        def one(row):
            g = jax.grad(loss)(params, jax.tree.map(lambda a: a[None], row))
            dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(lam)))
            return optax.global_norm(g), dot

        norms, dots = jax.lax.map(jax.vmap(one), data_b)
        norms, dots = norms.reshape(-1)[:n], dots.reshape(-1)[:n]
        cos = jnp.clip(dots / jnp.maximum(norms * lam_norm, 1e-20), -1.0, 1.0)
        return lam_norm, norms, cos

    lam_norm, norms, cos = jax.lax.map(stats, checkpoints)  # K, (K, n), (K, n)
    ratio = norms[:-1] / jnp.maximum(norms[1:], 1e-20)
    return (lam_norm[:-1, None] * ratio * cos[:-1]).sum(0)


def lqs_scores(model, checkpoints, x, y, target_x, target_y, *, chunk: int = 256):
    """:func:`lqs` of a classifier's ``(x, y)`` against ``(target_x, target_y)``."""
    return lqs(_ce(model.apply), checkpoints, {"x": x, "y": y}, {"x": target_x, "y": target_y}, chunk=chunk)


def select_and_fold(scores, *, select: float = 1.0, layers: int = 3) -> np.ndarray:
    """DELT's selection then ordering: the indices of the top ``select`` fraction of ``scores``
    (at least one), in :func:`folding_order`."""
    if not 0.0 < select <= 1.0:
        raise ValueError(f"delt select={select} must be in (0, 1]")
    s = np.asarray(scores)
    keep = np.argsort(-s, kind="stable")[: max(1, int(round(select * len(s))))]
    return keep[folding_order(s[keep], layers)]


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
        order = select_and_fold(s, select=select, layers=layers)
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


def lm_loss(nll):
    """A language model's mean NLL per token of a batch of windows (``nll(params, {'tokens',
    'mask'}) -> (sum_B, count_B)``, ``LanguageModel.nll``) as a ``loss(params, tokens_BxT)``."""

    def loss(params, tokens_BxT):
        s, c = nll(params, {"tokens": tokens_BxT, "mask": jnp.ones_like(tokens_BxT, bool)})
        return s.sum() / jnp.maximum(c.sum(), 1.0)

    return loss


def order_windows(
    nll,
    params,
    windows_NxT,
    *,
    layers: int = 3,
    select: float = 1.0,
    proxy_steps: int = 100,
    checkpoints: int = 3,
    target: int = 256,
    lr: float = 0.1,
    batch: int = 16,
    seed: int = 0,
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """DELT on language-model windows: ``(order, scores)``, the indices of ``windows_NxT`` to read
    (the top ``select`` fraction in folding order) and every window's LQS. The proxy run is
    ``proxy_steps`` SGD steps (``lr``, ``batch`` windows a step) from ``params`` (a fresh
    initialisation); the target set is ``target`` windows of the same pool, drawn with ``seed``."""
    if checkpoints < 2:
        raise ValueError(
            f"delt checkpoints={checkpoints} must be >= 2 (LQS compares consecutive checkpoints)"
        )
    loss = lm_loss(nll)
    w = jnp.asarray(windows_NxT)
    n = w.shape[0]
    tidx = np.random.default_rng(seed).choice(n, min(target, n), replace=False)
    key = jax.random.key(seed)

    @jax.jit
    def scores_of(params, w, t):
        c = sgd_checkpoints(loss, params, w, key, steps=proxy_steps, k=checkpoints, lr=lr, batch=batch)
        return lqs(loss, c, w, t, chunk=min(chunk, n))

    s = np.asarray(scores_of(params, w, w[tidx]))
    if not np.isfinite(s).all():
        raise FloatingPointError(
            f"delt: {int((~np.isfinite(s)).sum())} LQS scores are not finite (the proxy run diverged): lower "
            "the proxy learning rate (data.delt_lr)"
        )
    return select_and_fold(s, select=select, layers=layers), s
