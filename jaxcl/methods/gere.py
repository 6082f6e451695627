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

On a language model (``model.nll``: the Llama) the general set is ``general_samples`` token
windows of the first domain's ``consolidate_samples`` (``{'tokens', 'mask'}``), the activation
states are the last layer's hidden states after the final norm (what Hugging Face's
``hidden_states[-1]`` gives) at every position that predicts a token, ``(T - 1) x D`` per window,
with the thresholds per dimension over all of them, and CE is the token-mean NLL of the task
batch and of the replayed windows.
"""

import jax
import jax.numpy as jnp
import optax

from ..engine import DataTransform
from ..losses import masked_logits, mean_nll
from ..models import llama
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


def lm_states(model, params, tokens_BxT):
    """A language model's activation states: the final-norm hidden states of the last layer at
    the positions that predict a token, ``(B, T-1, D)`` float32."""
    h = llama.forward(model.cfg, params, tokens_BxT[:, :-1], return_hidden=True)
    return h.astype(jnp.float32)


def general_set_lm(model, params_like, size: int, mem_n: int) -> DataTransform:
    """:func:`general_set` for token windows: state ``{'tokens', 'mask', 'labels' (size, T-1, D),
    'pos', 'neg', 'on'}``."""

    def init(example):
        t = example["tokens"]
        d = jax.eval_shape(lambda p, x: lm_states(model, p, x), params_like, t[:1]).shape[-1]
        return {
            "tokens": jnp.zeros((size,) + t.shape[1:], t.dtype),
            "mask": jnp.ones((size,) + t.shape[1:], bool),
            "labels": jnp.zeros((size, t.shape[1] - 1, d), jnp.int8),
            "pos": jnp.zeros((d,), jnp.float32),
            "neg": jnp.zeros((d,), jnp.float32),
            "on": jnp.zeros((), jnp.float32),
        }

    def update(batch, state, key):
        idx = jax.random.randint(key, (mem_n,), 0, size)
        g = {k: state[k][idx] for k in ("tokens", "mask", "labels")}
        g.update(pos=state["pos"], neg=state["neg"], weight=jnp.full((mem_n,), state["on"]))
        return {**batch, "general": g}, state

    return DataTransform(init, update)


def collect_lm(model, data_state, params, task_batch):
    """:func:`collect` for token windows: thresholds over every position of every window."""
    size = data_state["tokens"].shape[0]
    idx = jnp.arange(size) % task_batch["tokens"].shape[0]
    tokens, mask = task_batch["tokens"][idx], task_batch["mask"][idx]
    h0 = lm_states(model, params, tokens)
    lab, pos, neg = state_labels(h0.reshape(-1, h0.shape[-1]))
    new = {
        "tokens": tokens.astype(data_state["tokens"].dtype),
        "mask": mask,
        "labels": lab.reshape(h0.shape),
        "pos": pos,
        "neg": neg,
        "on": jnp.ones((), jnp.float32),
    }
    first = data_state["on"] == 0
    return jax.tree.map(lambda a, b: jnp.where(first, a, b), new, data_state)


def gere_lm_loss(model, weight, dynamic: bool):
    """GeRe's loss on a language model: token-mean NLL of the batch and of the general windows,
    and the margin loss on the general windows' states."""
    nll = mean_nll(model)

    def loss_fn(params, batch, key):
        del key
        g = batch["general"]
        ce_task = nll(params, {"tokens": batch["tokens"], "mask": batch["mask"]})
        h_MxTxD = lm_states(model, params, g["tokens"])
        lp_MxT = llama.target_logprobs(model.cfg, params, h_MxTxD, g["tokens"][:, 1:])
        m_MxT = g["mask"][:, 1:].astype(jnp.float32)
        ce_gen = -(lp_MxT * m_MxT).sum() / jnp.maximum(m_MxT.sum(), 1.0)
        on = g["weight"].max()
        ce = jnp.where(on > 0, (ce_task + ce_gen) / 2, ce_task)
        D, T1 = h_MxTxD.shape[-1], h_MxTxD.shape[1]
        w_N = jnp.repeat(g["weight"], T1)
        tm = tm_loss(h_MxTxD.reshape(-1, D), g["labels"].reshape(-1, D), g["pos"], g["neg"], w_N)
        w = jax.lax.stop_gradient(ce / (tm + 1e-8)) if dynamic else weight
        return ce + on * w * tm, {"ce": ce_task, "ce_general": ce_gen, "tm_loss": tm}

    return loss_fn


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
    is_lm = hasattr(model, "nll")
    make_set, gather = (general_set_lm, collect_lm) if is_lm else (general_set, collect)
    data = make_set(model, params_like, options["general_samples"], options["memory_batch"])

    def consolidate(state, task_batch, key):
        del key
        return state.replace(data_state=gather(model, state.data_state, state.params, task_batch))

    loss = (gere_lm_loss if is_lm else gere_loss)(model, hp["gere_weight"], options["dynamic_weight"])
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
