"""UER, unbias experience replay (Lin, Shi, Chen, Zhou, Tang and Shao, "UER: A Heuristic Bias
Addressing Approach for Online Continual Learning", ACM MM 2023).

A dot-product logit factors into a norm factor and an angle factor,

    o_c(x) = w_c . h(x) = ||w_c|| ||h(x)|| cos(theta_c(x)),

with ``h`` the penultimate features and ``w_c`` the head's column of class c. The bias towards the
classes of the current data lives mainly in the angle factor, while the norm factor keeps
historical knowledge. UER therefore learns the *current* samples from the angle factor only (a
cosine softmax with scale ``s``) and *replays* buffer samples with both factors (the dot-product
logits, i.e. the network's own output):

    L = CE(s * cos(theta(x)), y) + CE(W^T h(x_m) + b, y_m),     (x, y) current, (x_m, y_m) buffer,

with the buffer a reservoir of ``capacity`` examples (``memory_batch`` drawn per step). Prediction
uses the dot-product logits (the trained network). The head's bias is trained by the replay term
only (cosine logits have no bias); ``s = uer_scale`` is the inverse temperature of the cosine
softmax (10, i.e. temperature 0.1, as for the authors' proxy-based contrastive replay).
"""

import jax.numpy as jnp
import optax

from ..data.replay import reservoir
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


def _unit(a, axis):
    return a / jnp.maximum(jnp.linalg.norm(a, axis=axis, keepdims=True), 1e-12)


def head_weights(params):
    """The classifier head's kernel ``F x C`` and bias ``C`` (every classifier in
    :mod:`jaxcl.models` names its last layer ``head``)."""
    head = params["head"]
    return head["kernel"], head["bias"]


def cosine_logits(model, params, x):
    """``cos(theta_c(x))`` between the features ``h(x)`` and every head column ``w_c``: ``B x C``."""
    w_FxC, _ = head_weights(params)
    return _unit(model.features(params, x), -1) @ _unit(w_FxC, 0)


def uer_loss(model, scale):
    def loss_fn(params, batch, key):
        del key
        b = batch["y"].shape[0]
        mem = batch["memory"]
        xs = jnp.concatenate([batch["x"], mem["x"]])
        feats = model.features(params, xs)
        w_FxC, bias_C = head_weights(params)
        cos = _unit(feats[:b], -1) @ _unit(w_FxC, 0)
        cur = masked_logits(scale * cos, batch)
        ce_cur = optax.softmax_cross_entropy_with_integer_labels(cur, batch["y"]).mean()
        dot = masked_logits(feats[b:] @ w_FxC + bias_C, mem)
        w = mem["weight"]
        ce_mem_B = optax.softmax_cross_entropy_with_integer_labels(dot, mem["y"])
        ce_mem = (ce_mem_B * w).sum() / jnp.maximum(w.sum(), 1.0)
        acc = (masked_logits(feats[:b] @ w_FxC + bias_C, batch).argmax(-1) == batch["y"]).mean()
        return ce_cur + ce_mem, {"ce_angle": ce_cur, "ce_replay": ce_mem, "train_acc": acc}

    return loss_fn


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    data = reservoir(
        options["capacity"],
        mode="separate",
        memory_size=options["memory_batch"],
        fields=("x", "y", "t", "mask"),
    )
    return Method(uer_loss(model, hp["uer_scale"]), optimizer_from(opt, hp["lr"]), data=data)


SPEC = register(
    MethodSpec(
        "uer",
        build,
        {
            "lr": LR(1e-3),
            "uer_scale": Hparam(
                10.0, 0.0, None, low_open=True, help="inverse temperature of the cosine logits"
            ),
        },
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "UER: current samples by the angle factor (cosine logits), replay by norm and angle",
        paper="Lin et al. 2023, UER: A Heuristic Bias Addressing Approach for Online Continual Learning",
        choices={"optim": OPTIMIZERS},
    )
)
