"""Forgetting metrics that a head-only edit cannot fool, all in JAX and jit-compiled.

* ``accuracy`` on forget / retain / test (and the forget class's test examples).
* Membership inference (``mia``): logistic regression, trained in JAX, on per-example features of
  the model's outputs (cross-entropy loss, prediction entropy, max probability) for retain
  examples (members) vs held-out test examples (non-members), half of each to fit, half to score.
  Reported: the attack's balanced accuracy and AUC on the held-out halves, and ``mia_forget``, the
  fraction of forget examples it calls members (SSD's metric; compare with the oracle's).
* Representation level ("Are We Truly Forgetting?", 2025): linear CKA (Kornblith et al., 2019)
  between the unlearned model's penultimate features on the forget examples and those of the
  original and of the oracle; and a linear probe (softmax regression on frozen penultimate
  features, all classes, training examples) scored on the forget class's test examples. A method
  that only edits the head keeps a high probe accuracy and CKA ~ 1 to the original.
* Relearning attack (``relearn``): fine-tune the unlearned model for k steps (the registry's
  ``finetune``, Adam, through the one loop :class:`jaxcl.loops.Phase`) on a small slice of the
  forget set and record forget accuracy (on the rest of the forget set) along the way; compare
  with the oracle under the same attack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ..loops import Phase, PhaseConfig, as_hparams
from ..methods import get_method
from .common import UnlearnData


def batched(fn, params, x, chunk: int = 500):
    """``fn(params, x)`` over ``x`` in chunks (``lax.map``), padding the last chunk."""
    n = x.shape[0]
    c = min(chunk, n)
    nb = -(-n // c)
    pad = nb * c - n
    xp = jnp.concatenate([x, jnp.repeat(x[:1], pad, 0)]) if pad else x
    out = jax.lax.map(lambda xb: fn(params, xb), xp.reshape((nb, c) + x.shape[1:]))
    return out.reshape((nb * c,) + out.shape[2:])[:n]


def accuracy(apply_fn, params, x, y):
    return (batched(apply_fn, params, x).argmax(-1) == y).mean()


def output_features(apply_fn, params, x, y):
    """Per-example attack features: loss, entropy, max probability."""
    logits = batched(apply_fn, params, x)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]
    ent = -(jnp.exp(logp) * logp).sum(-1)
    return jnp.stack([loss, ent, jnp.exp(logp).max(-1)], -1)


def logistic_regression(x_NxF, y_N, *, steps: int = 300, lr: float = 0.1, l2: float = 1e-4):
    """Binary logistic regression by Adam on standardised features; returns a predict function's
    parameters ``(mu, sd, w, b)``."""
    mu, sd = x_NxF.mean(0), x_NxF.std(0) + 1e-6
    z = (x_NxF - mu) / sd
    p0 = (jnp.zeros(x_NxF.shape[1]), jnp.zeros(()))
    tx = optax.adam(lr)

    def loss(p):
        w, b = p
        return optax.sigmoid_binary_cross_entropy(z @ w + b, y_N).mean() + l2 * (w @ w)

    def body(c, _):
        p, s = c
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
    return mu, sd, p[0], p[1]


def predict_proba(lr_params, x_NxF):
    mu, sd, w, b = lr_params
    return jax.nn.sigmoid(((x_NxF - mu) / sd) @ w + b)


def auc(scores_pos, scores_neg):
    """Area under the ROC curve by the Mann-Whitney statistic (ties count one half)."""
    s = jnp.concatenate([scores_pos, scores_neg])
    sorted_s = jnp.sort(s)  # average ranks of ties
    first = jnp.searchsorted(sorted_s, s, side="left")
    last = jnp.searchsorted(sorted_s, s, side="right")
    ranks = (first + last + 1) / 2.0
    n_p, n_n = scores_pos.shape[0], scores_neg.shape[0]
    return (ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n)


def mia(apply_fn, params, data: UnlearnData, cap: int = 2000):
    n = min(cap, data.x_retain.shape[0], data.x_test.shape[0]) // 2 * 2
    h = n // 2
    f_mem = output_features(apply_fn, params, data.x_retain[:n], data.y_retain[:n])
    f_non = output_features(apply_fn, params, data.x_test[:n], data.y_test[:n])
    x_fit = jnp.concatenate([f_mem[:h], f_non[:h]])
    y_fit = jnp.concatenate([jnp.ones(h), jnp.zeros(h)])
    lr_p = logistic_regression(x_fit, y_fit)
    p_mem, p_non = predict_proba(lr_p, f_mem[h:]), predict_proba(lr_p, f_non[h:])
    acc = 0.5 * ((p_mem > 0.5).mean() + (p_non <= 0.5).mean())
    f_forget = output_features(apply_fn, params, data.x_forget[:cap], data.y_forget[:cap])
    p_forget = predict_proba(lr_p, f_forget)
    return {"mia_attack_acc": acc, "mia_attack_auc": auc(p_mem, p_non), "mia_forget": (p_forget > 0.5).mean()}


def linear_cka(x_NxA, y_NxB):
    """Linear CKA: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features."""
    x = x_NxA - x_NxA.mean(0)
    y = y_NxB - y_NxB.mean(0)
    num = jnp.sum(jnp.square(y.T @ x))
    den = jnp.sqrt(jnp.sum(jnp.square(x.T @ x))) * jnp.sqrt(jnp.sum(jnp.square(y.T @ y)))
    return num / jnp.maximum(den, 1e-12)


def linear_probe(
    feat_fn, params, x_train, y_train, x_eval, y_eval, n_classes: int, *, steps: int = 300, lr: float = 0.05
):
    """Softmax regression on frozen features; accuracy on ``(x_eval, y_eval)``."""
    f_tr = batched(feat_fn, params, x_train)
    f_ev = batched(feat_fn, params, x_eval)
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    z_tr, z_ev = (f_tr - mu) / sd, (f_ev - mu) / sd
    p0 = (jnp.zeros((f_tr.shape[1], n_classes)), jnp.zeros((n_classes,)))
    tx = optax.adam(lr)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(z_tr @ p[0] + p[1], y_train).mean()

    def body(c, _):
        p, s = c
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
    return ((z_ev @ p[0] + p[1]).argmax(-1) == y_eval).mean()


def evaluate(
    model,
    params,
    data: UnlearnData,
    params_orig,
    params_oracle,
    *,
    eval_cap: int = 400,
    n_classes: int | None = None,
):
    """All scalar metrics of one unlearned model (pure; over seeds with ``over_seeds``).

    ``eval_cap`` bounds the examples per split of the MIA, CKA and probe metrics (the retain
    accuracy uses ``4 * eval_cap``); ``n_classes`` defaults to ``model.n_classes``.
    """
    cap = eval_cap
    out = {
        "forget_acc": accuracy(model.apply, params, data.x_forget, data.y_forget),
        "retain_acc": accuracy(model.apply, params, data.x_retain[: 4 * cap], data.y_retain[: 4 * cap]),
        "test_acc": accuracy(model.apply, params, data.x_test, data.y_test),
        "test_forget_acc": accuracy(model.apply, params, data.x_test_forget, data.y_test_forget),
    }
    out.update(mia(model.apply, params, data, cap))
    xf = data.x_forget[:cap]
    feats = batched(model.features, params, xf)
    out["cka_orig"] = linear_cka(feats, batched(model.features, params_orig, xf))
    out["cka_oracle"] = linear_cka(feats, batched(model.features, params_oracle, xf))
    out["probe_forget_acc"] = linear_probe(
        model.features,
        params,
        data.x_train[:cap],
        data.y_train[:cap],
        data.x_test_forget[:cap],
        data.y_test_forget[:cap],
        model.n_classes if n_classes is None else n_classes,
    )
    return out


def relearn(
    model,
    params,
    data: UnlearnData,
    key,
    *,
    steps: int = 10,
    every: int = 5,
    n: int = 64,
    lr: float = 1e-4,
    batch_size: int = 64,
    eval_cap: int = 400,
):
    """Relearning attack: forget accuracy (on up to ``eval_cap`` forget examples outside the
    attack slice) after 0, every, 2*every, ..., ``steps`` steps of the registry's ``finetune``
    (Adam, ``lr``, batches of ``min(batch_size, n)`` drawn with replacement) on the first ``n``
    forget examples: one :class:`jaxcl.loops.Phase` on ``data.learning(slice)``."""
    n = min(n, data.x_forget.shape[0] - 1)
    if n <= 0:
        raise ValueError(
            f"relearn: the forget set has {data.x_forget.shape[0]} example(s); it needs 2 or more"
        )
    held_out = (data.x_forget[n : n + eval_cap], data.y_forget[n : n + eval_cap])
    problem = data.learning(data.x_forget[:n], data.y_forget[:n]).replace(
        x_forget=held_out[0], y_forget=held_out[1]
    )
    finetune = get_method("finetune")
    # the attacker fine-tunes every weight, whatever model.lora the unlearning used
    phase = AttackPhase(
        model._replace(lora=None), finetune, PhaseConfig(steps, min(batch_size, n), every, eval_cap)
    )
    trace = phase.run(params, key, problem, as_hparams(finetune, {"lr": lr}))["trace"]
    acc0 = accuracy(model.apply, params, *held_out)
    return jnp.concatenate([acc0[None], trace["forget_acc"]])


class AttackPhase(Phase):
    """A :class:`jaxcl.loops.Phase` whose continual evaluation is the accuracy on the problem's
    forget set (the relearning attack's held-out forget examples)."""

    def evaluate(self, params, problem, model=None):
        model = model or self.model
        return {"forget_acc": accuracy(model.apply, params, problem.x_forget, problem.y_forget)}
