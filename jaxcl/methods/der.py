"""Dark Experience Replay, DER and DER++ (Buzzega et al., "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020).

A reservoir buffer keeps, with each example, the logits ``z`` the network produced when it was
trained on it (:func:`jaxcl.data.logit_replay.logit_reservoir`). With ``(x', z')`` and
``(x'', y'')`` two independent draws from the buffer:

    DER   (eq. 6):  L = CE(f(x), y) + alpha * || f(x') - z' ||_2^2
    DER++ (eq. 7):  L = CE(f(x), y) + alpha * || f(x') - z' ||_2^2 + beta * CE(f(x''), y'')

(the squared error as a mean over rows and logits, as Mammoth's ``F.mse_loss``). One forward pass
over the current batch and the memory draws together. Defaults: Mammoth's Split-CIFAR-10 settings
at buffer 200 (DER alpha = 0.3; DER++ alpha = 0.1, beta = 0.5), memory draws of the batch size.

Language models (the Llama, the VLM of :mod:`jaxcl.models.vlm`): an example is a sequence, its
"logits" those of every position (``(T - 1) x V``, :func:`jaxcl.losses.token_logits`), stored with
its tokens, answer mask and image. CE is the token-mean NLL of the answer tokens, and the logit
term the squared error averaged over the vocabulary and the stored rows' answer positions:

    || f(x') - z' ||^2 = sum_{i, t} w_i m_it mean_v (f(x')_itv - z'_itv)^2 / sum_{i, t} w_i m_it

(``m`` the answer mask, ``w`` the row's weight: 0 for an empty buffer); DER++'s replayed-label term
the NLL of the replayed answers. Memory: ``capacity x (T - 1) x V`` float32 logits.
"""

import jax
import jax.numpy as jnp
import optax

from ..data.logit_replay import logit_reservoir
from ..losses import masked_logits, token_logits
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


def _ce(logits, y, w=None):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return ce.mean() if w is None else (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


def der_loss(apply_fn, alpha, beta=None):
    """The DER (``beta is None``) or DER++ loss over ``batch`` with its memory draws."""
    draws = ["memory"] + ([] if beta is None else ["memory2"])

    def loss_fn(params, batch, key):
        del key
        b = batch["y"].shape[0]
        mems = [batch[k] for k in draws]
        xs = jnp.concatenate([batch["x"]] + [m["x"] for m in mems])
        raw = apply_fn(params, xs)
        cur = raw[:b]
        ce = _ce(masked_logits(cur, batch), batch["y"])
        m1 = mems[0]
        raw1 = raw[b : b + m1["y"].shape[0]]
        w1 = m1["weight"]
        mse = (((raw1 - m1["logits"]) ** 2).mean(-1) * w1).sum() / jnp.maximum(w1.sum(), 1.0)
        loss = ce + alpha * mse
        aux = {"ce": ce, "der_mse": mse, "store_logits": jax.lax.stop_gradient(cur)}
        if beta is not None:
            m2 = mems[1]
            raw2 = raw[b + m1["y"].shape[0] :]
            ce2 = _ce(masked_logits(raw2, m2), m2["y"], m2["weight"])
            loss = loss + beta * ce2
            aux["der_ce"] = ce2
        aux["train_acc"] = (masked_logits(cur, batch).argmax(-1) == batch["y"]).mean()
        return loss, aux

    return loss_fn


def _token_nll(logits_NxTxV, t_NxT, w_NxT):
    """Weighted mean NLL of the targets over the weighted positions."""
    lp_NxTxV = jax.nn.log_softmax(logits_NxTxV.astype(jnp.float32), -1)
    lp_NxT = jnp.take_along_axis(lp_NxTxV, t_NxT[..., None], -1)[..., 0]
    return -(lp_NxT * w_NxT).sum() / jnp.maximum(w_NxT.sum(), 1.0)


def der_lm_loss(model, alpha, beta=None):
    """The DER / DER++ loss of a language model (the module docstring): the current batch and
    the memory draws in one forward pass of :func:`jaxcl.losses.token_logits`."""
    logits = token_logits(model)
    draws = ["memory"] + ([] if beta is None else ["memory2"])

    def loss_fn(params, batch, key):
        del key
        mems = [batch[k] for k in draws]
        fields = [k for k in mems[0] if k not in ("logits", "weight")]
        sizes = [batch[fields[0]].shape[0]] + [m[fields[0]].shape[0] for m in mems]
        rows = {k: jnp.concatenate([batch[k]] + [m[k] for m in mems]) for k in fields}
        logits_NxTxV, t_NxT, m_NxT = logits(params, rows)
        cut = lambda a, i: a[sum(sizes[:i]) : sum(sizes[: i + 1])]  # noqa: E731
        cur = cut(logits_NxTxV, 0)
        ce = _token_nll(cur, cut(t_NxT, 0), cut(m_NxT, 0))
        w1_NxT = cut(m_NxT, 1) * mems[0]["weight"][:, None]
        sq_NxT = ((cut(logits_NxTxV, 1).astype(jnp.float32) - mems[0]["logits"]) ** 2).mean(-1)
        mse = (sq_NxT * w1_NxT).sum() / jnp.maximum(w1_NxT.sum(), 1.0)
        loss = ce + alpha * mse
        aux = {"ce": ce, "der_mse": mse, "store_logits": jax.lax.stop_gradient(cur)}
        if beta is not None:
            w2_NxT = cut(m_NxT, 2) * mems[1]["weight"][:, None]
            ce2 = _token_nll(cut(logits_NxTxV, 2), cut(t_NxT, 2), w2_NxT)
            loss = loss + beta * ce2
            aux["der_ce"] = ce2
        return loss, aux

    return loss_fn


def _build(plus):
    def build(model, hp, params_like, **options):
        opt = pop_optimizer(options)
        beta = hp["der_beta"] if plus else None
        if hasattr(model, "nll"):  # a language model: every position's logits per sequence
            logits = token_logits(model)
            shape = lambda ex: jax.eval_shape(logits, params_like, ex)[0].shape[1:]  # noqa: E731
            loss = der_lm_loss(model, hp["der_alpha"], beta)
        else:
            shape, loss = model.n_classes, der_loss(model.apply, hp["der_alpha"], beta)
        data = logit_reservoir(
            options["capacity"], shape, memory_size=options["memory_batch"], draws=2 if plus else 1
        )
        return Method(loss, optimizer_from(opt, hp["lr"]), data=data)

    return build


PAPER = "Buzzega et al. 2020, Dark Experience for General Continual Learning: a Strong, Simple Baseline"
SPEC = register(
    MethodSpec(
        "der",
        _build(False),
        {"lr": LR(1e-3), "der_alpha": Hparam(0.3, 0.0, None, help="logit-matching weight")},
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "dark experience replay: match the buffer's stored logits",
        paper=PAPER,
        choices={"optim": OPTIMIZERS},
    )
)
SPEC_PP = register(
    MethodSpec(
        "derpp",
        _build(True),
        {
            "lr": LR(1e-3),
            "der_alpha": Hparam(0.1, 0.0, None, help="logit-matching weight"),
            "der_beta": Hparam(0.5, 0.0, None, help="replayed-label weight"),
        },
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "DER++: stored-logit matching plus cross-entropy on replayed labels",
        paper=PAPER,
        choices={"optim": OPTIMIZERS},
    )
)
