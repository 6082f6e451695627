"""Prototype-sample relation distillation, replay-free (Asadi, Davari, Mudur, Aljundi and
Belilovsky, "Prototype-Sample Relation Distillation: Towards Replay-Free Continual Learning",
ICML 2023).

Samples are embedded as ``z(x) = h(x) / ||h(x)||`` (the network's penultimate features) and every
class has a prototype ``p_c`` in the same space (here the normalised column ``w_c / ||w_c||`` of the
classifier head, so no parameter is added). With ``tau`` the temperature, a batch of the current
task and a second randomly shifted view of it:

* supervised contrastive learning (Khosla et al. 2020) of the representation over both views,

      L_SC = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) ),

* prototype learning on the current task's classes ``K_t`` (the classes in the batch), with the
  embeddings held fixed, so only the prototypes move:

      L_P = mean_x -log( exp(sg(z(x)).p_y / tau) / sum_{c in K_t} exp(sg(z(x)).p_c / tau) ),

* relation distillation: the similarity of the new samples to the *old* classes' prototypes
  (classes ``O`` seen before the current task) keeps the distribution it had under the model at the
  end of the previous task (teacher ``z', p'``),

      L_D = mean_x KL( softmax_{c in O}(z'(x).p'_c / tau) || softmax_{c in O}(z(x).p_c / tau) ),

  ``L = L_SC + L_P + lambda * L_D`` (``lambda = prd_distill``; 4 and ``tau = 0.1`` as the authors'
  Split-CIFAR-100 command). No example of an earlier task is stored. Prediction is the nearest
  prototype among the classes seen so far, ``argmax_c z(x).p_c`` (:attr:`Method.predict`).
"""

import jax
import jax.numpy as jnp

from ..data.context import zeros_like_tree
from ..engine import DataTransform
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
from .viewbatch import shift_images

NEG = -1e9


def _unit(a, axis):
    return a / jnp.maximum(jnp.linalg.norm(a, axis=axis, keepdims=True), 1e-12)


def embed(model, params, x):
    """``(z, prototypes)``: normalised features ``B x F`` and normalised head columns ``F x C``."""
    return _unit(model.features(params, x), -1), _unit(params["head"]["kernel"], 0)


def supcon_loss(z_NxF, y_N, tau):
    """Supervised contrastive loss (anchors without a positive are left out)."""
    n = y_N.shape[0]
    eye = jnp.eye(n, dtype=bool)
    sim = jnp.where(eye, NEG, z_NxF @ z_NxF.T / tau)
    logprob = sim - jax.nn.logsumexp(sim, axis=1, keepdims=True)
    pos = (y_N[:, None] == y_N[None]) & ~eye
    n_pos = pos.sum(1)
    per = -(jnp.where(pos, logprob, 0.0)).sum(1) / jnp.maximum(n_pos, 1)
    has = n_pos > 0
    return (per * has).sum() / jnp.maximum(has.sum(), 1)


def restricted_log_softmax(logits_BxC, allowed_C):
    return jax.nn.log_softmax(jnp.where(allowed_C[None], logits_BxC, NEG), axis=-1)


def prototype_loss(z_BxF, protos_FxC, y_B, current_C, tau):
    logp = restricted_log_softmax(jax.lax.stop_gradient(z_BxF) @ protos_FxC / tau, current_C)
    return -jnp.take_along_axis(logp, y_B[:, None], 1).mean()


def relation_distillation(z_BxF, protos_FxC, teacher_cos_BxC, old_C, tau):
    q = restricted_log_softmax(teacher_cos_BxC / tau, old_C)
    s = restricted_log_softmax(z_BxF @ protos_FxC / tau, old_C)
    kl = jnp.where(old_C[None], jnp.exp(q) * (q - s), 0.0).sum(-1)
    return kl.mean()


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    C = model.n_classes
    tau = hp["prd_temp"]

    def init(example):
        del example
        return {
            "teacher": zeros_like_tree(params_like),
            "on": jnp.zeros((), jnp.float32),
            "seen": jnp.zeros((C,), bool),
            "old": jnp.zeros((C,), bool),
        }

    def update(batch, state, key):
        del key
        present = (batch["y"][:, None] == jnp.arange(C)[None]).any(0)
        zt, pt = embed(model, state["teacher"], batch["x"])
        ctx = {
            "teacher_cos": jax.lax.stop_gradient(zt @ pt),
            "old": state["old"] & ~present & (state["on"] > 0),
            "current": present,
        }
        return {**batch, "prd": ctx}, {**state, "seen": state["seen"] | present}

    def loss_fn(params, batch, key):
        ctx = batch["prd"]
        b = batch["y"].shape[0]
        x2 = shift_images(batch["x"], key, options["shift"])
        z, protos = embed(model, params, jnp.concatenate([batch["x"], x2]))
        sc = supcon_loss(z, jnp.concatenate([batch["y"], batch["y"]]), tau)
        lp = prototype_loss(z[:b], protos, batch["y"], ctx["current"], tau)
        ld = relation_distillation(z[:b], protos, ctx["teacher_cos"], ctx["old"], tau)
        acc = ((z[:b] @ protos).argmax(-1) == batch["y"]).mean()
        return sc + lp + hp["prd_distill"] * ld, {"supcon": sc, "proto": lp, "distill": ld, "train_acc": acc}

    def consolidate(state, task_batch, key):
        del task_batch, key
        ds = state.data_state
        new = {
            "teacher": jax.tree.map(jax.lax.stop_gradient, state.params),
            "on": jnp.ones((), jnp.float32),
            "seen": ds["seen"],
            "old": ds["seen"],
        }
        return state.replace(data_state=new)

    def predict(params, data_state, x):
        z, protos = embed(model, params, x)
        return jnp.where(data_state["seen"][None], z @ protos, -jnp.inf)

    return Method(
        loss_fn,
        optimizer_from(opt, hp["lr"]),
        data=DataTransform(init, update),
        consolidate=consolidate,
        predict=predict,
    )


SPEC = register(
    MethodSpec(
        "prd",
        build,
        {
            "lr": LR(1e-3),
            "prd_temp": Hparam(0.1, 0.0, None, low_open=True, help="temperature of the similarities"),
            "prd_distill": Hparam(
                4.0, 0.0, None, help="weight of the prototype-sample relation distillation"
            ),
        },
        {"shift": 2, **OPTIMIZER_OPTIONS},
        "PRD: supervised contrastive features, prototypes, relation distillation; replay-free",
        paper="Asadi et al. 2023, Prototype-Sample Relation Distillation: Towards Replay-Free Continual Learning",
        choices={"optim": OPTIMIZERS},
    )
)
