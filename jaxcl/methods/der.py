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
"""

import jax
import jax.numpy as jnp
import optax

from ..data.logit_replay import logit_reservoir
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


def _build(plus):
    def build(model, hp, params_like, **options):
        del params_like
        opt = pop_optimizer(options)
        data = logit_reservoir(
            options["capacity"], model.n_classes, memory_size=options["memory_batch"], draws=2 if plus else 1
        )
        loss = der_loss(model.apply, hp["der_alpha"], hp["der_beta"] if plus else None)
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
