"""GeRe, general sample replay with the threshold-based margin loss ("GeRe: Towards Efficient
Anti-Forgetting in Continual Learning of LLM via General Samples Replay", arXiv 2508.04676, 2025).

A small *fixed* set of general samples ``G`` is collected once, before continual fine-tuning, with
the activation states ``h0(x)`` (last hidden layer) the base model gives them. Per feature
dimension d, over the whole set, ``mu_d`` and ``sigma_d`` give two thresholds
``pos_d = mu_d + sigma_d`` and ``neg_d = mu_d - sigma_d``, and each stored state takes one of three
labels: positive (``h0 >= pos``), negative (``h0 <= neg``) or neutral. The threshold-based margin
(TM) loss keeps the current states ``h(x)`` on the same side of the thresholds:

    l(h) = [h0 <= neg] relu(h - neg) + [neg < h0 < pos] (relu(h - pos) + relu(neg - h))
           + [h0 >= pos] relu(pos - h),
    L_TM = sum_{x, d} l / #{(x, d): l > 0},

and training on a task minimises

    L = (CE_task + CE_general) / 2 + w * L_TM

(the reference trainer's ``w_strategy``: a fixed weight, 100 by default there, or ``dynamic``
``w = CE / L_TM`` with no gradient through the ratio).

In a classifier stream the "base model" is the network after the first task: at the first task
end (``consolidate``) ``general_samples`` rows of that task's ``loop.consolidate_samples``
examples (repeated when fewer) become the general set with their features
``model.features`` (the penultimate activations); it stays fixed afterwards. Each step replays
``memory_batch`` of them.
"""

import jax
import jax.numpy as jnp
import optax

from ..engine import DataTransform
from ..losses import masked_logits
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Hparam,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)

NEG, NEUTRAL, POS = 0, 1, 2


def state_labels(h0_NxF):
    """GeRe's thresholds ``mu +- sigma`` per dimension (over the set) and the three-way labels of
    ``h0``: ``(labels_NxF int8, pos_F, neg_F)``."""
    mu, sigma = h0_NxF.mean(0), h0_NxF.std(0)
    pos, neg = mu + sigma, mu - sigma
    lab = jnp.where(h0_NxF <= neg, NEG, jnp.where(h0_NxF >= pos, POS, NEUTRAL)).astype(jnp.int8)
    return lab, pos, neg


def tm_loss(h_BxF, labels_BxF, pos_F, neg_F, weight_B=None):
    """The threshold-based margin loss: the sum of the violations over the number of violating
    entries (rows with ``weight`` 0 count for nothing)."""
    l_neg = jax.nn.relu(h_BxF - neg_F)
    l_neu = jax.nn.relu(h_BxF - pos_F) + jax.nn.relu(neg_F - h_BxF)
    l_pos = jax.nn.relu(pos_F - h_BxF)
    l = jnp.where(labels_BxF == NEG, l_neg, jnp.where(labels_BxF == POS, l_pos, l_neu))
    if weight_B is not None:
        l = l * weight_B[:, None]
    return l.sum() / (jax.lax.stop_gradient((l > 0).sum()) + 1e-8)


def general_set(model, params_like, size: int, mem_n: int) -> DataTransform:
    """The fixed general set: state ``{'x', 'y', 'mask', 'labels', 'pos', 'neg', 'on'}``; each batch
    gains ``batch['general']`` (``mem_n`` rows drawn uniformly, with the thresholds and ``weight``
    = on)."""

    def init(example):
        x = example["x"]
        f = jax.eval_shape(model.features, params_like, x[:1]).shape[-1]
        c = model.n_classes
        return {
            "x": jnp.zeros((size,) + x.shape[1:], x.dtype),
            "y": jnp.zeros((size,), jnp.int32),
            "mask": jnp.ones((size, c), bool),
            "labels": jnp.zeros((size, f), jnp.int8),
            "pos": jnp.zeros((f,), jnp.float32),
            "neg": jnp.zeros((f,), jnp.float32),
            "on": jnp.zeros((), jnp.float32),
        }

    def update(batch, state, key):
        idx = jax.random.randint(key, (mem_n,), 0, size)
        g = {k: state[k][idx] for k in ("x", "y", "mask", "labels")}
        g.update(pos=state["pos"], neg=state["neg"], weight=jnp.full((mem_n,), state["on"]))
        return {**batch, "general": g}, state

    return DataTransform(init, update)


def collect(model, data_state, params, task_batch):
    """The general set from ``task_batch`` under ``params`` (done once: a set already collected is
    kept)."""
    size = data_state["x"].shape[0]
    n = task_batch["y"].shape[0]
    idx = jnp.arange(size) % n
    x = task_batch["x"][idx]
    h0 = model.features(params, x)
    lab, pos, neg = state_labels(h0)
    mask = task_batch.get("mask")
    new = {
        "x": x,
        "y": task_batch["y"][idx].astype(jnp.int32),
        "mask": jnp.ones_like(data_state["mask"]) if mask is None else mask[idx],
        "labels": lab,
        "pos": pos,
        "neg": neg,
        "on": jnp.ones((), jnp.float32),
    }
    first = data_state["on"] == 0
    return jax.tree.map(lambda a, b: jnp.where(first, a, b), new, data_state)


def gere_loss(model, weight, dynamic: bool):
    def loss_fn(params, batch, key):
        del key
        b = batch["y"].shape[0]
        g = batch["general"]
        xs = jnp.concatenate([batch["x"], g["x"]])
        feats = model.features(params, xs)
        w_FxC, bias_C = params["head"]["kernel"], params["head"]["bias"]
        logits = feats @ w_FxC + bias_C
        cur = masked_logits(logits[:b], batch)
        ce_task = optax.softmax_cross_entropy_with_integer_labels(cur, batch["y"]).mean()
        on = g["weight"].max()
        gl = masked_logits(logits[b:], g)
        ce_gen = optax.softmax_cross_entropy_with_integer_labels(gl, g["y"]).mean()
        ce = jnp.where(on > 0, (ce_task + ce_gen) / 2, ce_task)
        tm = tm_loss(feats[b:], g["labels"], g["pos"], g["neg"], g["weight"])
        w = jax.lax.stop_gradient(ce / (tm + 1e-8)) if dynamic else weight
        acc = (cur.argmax(-1) == batch["y"]).mean()
        return ce + on * w * tm, {"ce": ce_task, "ce_general": ce_gen, "tm_loss": tm, "train_acc": acc}

    return loss_fn


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    data = general_set(model, params_like, options["general_samples"], options["memory_batch"])

    def consolidate(state, task_batch, key):
        del key
        return state.replace(data_state=collect(model, state.data_state, state.params, task_batch))

    loss = gere_loss(model, hp["gere_weight"], options["dynamic_weight"])
    return Method(loss, optimizer_from(opt, hp["lr"]), data=data, consolidate=consolidate)


SPEC = register(
    MethodSpec(
        "gere",
        build,
        {
            "lr": LR(1e-3),
            "gere_weight": Hparam(100.0, 0.0, None, help="weight of the threshold-based margin loss"),
        },
        {"general_samples": 256, "memory_batch": 32, "dynamic_weight": False, **OPTIMIZER_OPTIONS},
        "GeRe: replay of a fixed general set with a threshold-based margin loss on its activations",
        paper="GeRe: Towards Efficient Anti-Forgetting in Continual Learning of LLM via General Samples "
        "Replay (arXiv 2508.04676, 2025)",
        choices={"optim": OPTIMIZERS, "dynamic_weight": (False, True)},
    )
)
