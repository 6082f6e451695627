"""GS-LoRA and GS-LoRA++: forgetting with group-sparse LoRA adapters (Zhao, Ni, Wang, Fan, Zhu,
Wang, Chen, Meng and Zhang, "Continual Forgetting for Pre-trained Vision Models", CVPR 2024;
Zhao, Zhu, Ni, Zhu, Meng and Zhang, "Practical Continual Forgetting for Pre-trained Vision
Models", T-PAMI 2026, which adds the prototype terms of GS-LoRA++).

Only LoRA adapters train (``--set model.lora.rank=8``; the base stays frozen: without adapters
the method refuses, it never trains the full weights). With ``D_r`` the retain and ``D_f`` the
forget data, ``W_g`` the adapter matrices (A and B) of group ``g`` and ``CE`` the mean
cross-entropy (a language model: the token-mean NLL of the answer tokens):

    L = CE(D_r) + beta * ReLU(BND - CE(D_f)) + alpha_t * sum_g ||W_g||_F

    alpha_t = 0 for the first ``warmup_steps`` steps (the paper's sparsity warm-up), alpha after.

The forget term pushes the forget cross-entropy up to the bound ``BND`` and then stops (unlike
gradient ascent, it cannot diverge); the group lasso (a sum of unsquared group norms) drives whole
groups of adapters to zero, so only a few blocks change. Groups (``grouping``): ``block`` (the
authors' default: one group per block, a ViT block's two FFN adapters together; a Llama layer's
adapters of every target together), ``lora`` (one group per adapted weight, per layer), ``matrix``
(each A and each B alone). The penalty's gradient is added to the loss gradient before the
optimizer (:func:`group_lasso`, an optax transform holding the step count for the warm-up), which
is the authors' ``loss.backward()`` of the summed loss.

GS-LoRA++ (``gs_lora_pp``, classifiers) adds prototype terms on the penultimate features ``f(x)``
(a ViT's normalised class token, the authors' ``embeds``), with ``p_c`` the original model's mean
feature of class ``c`` and ``KL(p, f) = sum_d softmax(p)_d (log softmax(p)_d - log softmax(f)_d)``
averaged over the batch:

    L_pp = L + w_f * ReLU(BND_pro - KL(p_y, f(x_f))) + w_r * KL(p_y, f(x_r))

(forget features pushed away from their class prototype up to a bound, retain features pulled
to theirs). The authors compute the prototypes once, over the forgetting data, before training;
here they are the running class means of the frozen original model's features over the batches
drawn so far (retain and forget rows; :func:`prototypes`), the same means as the data grows.

Defaults from the authors' code (github.com/bjzhb666/GS-LoRA: ``engine.py``,
``train/train_own_forget.py``, ``scripts/run_forget.sh``): AdamW, weight decay 0.05, lr 1e-2,
beta 0.15, alpha 0.01 (the scripts; argparse defaults 0.03 / 0.1), grouping ``block``, sparsity
warm-up over the first 20 of 100 epochs (here ``warmup_steps``, a number of steps, default 0
because a method does not know its phase's length: set it to a fifth of the phase; without it
Adam shrinks the A factors to zero before B has moved and nothing is forgotten, measured on the
tiny ViT of ``tests/test_gs_lora.py``), ``BND = 10`` (argparse default; the scripts use 110 with CosFace logits of
scale 64, which a softmax classifier has not), GS-LoRA++ ``w_f = 0.5``, ``w_r = 0`` (the script;
0.001 in its 12-layer variant), ``BND_pro = 18`` (``engine.py``). Not here: the cosine learning
rate schedule and the weight averaging (EMA) of the authors' later epochs. The metrics
``groups_off`` (the fraction of groups whose norm is below ``tol``) and ``group_norm_max`` reach
the phase's trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ..data import context
from ..engine import DataTransform
from ..losses import mean_nll
from ..models import lora
from .base import LR, OPTIMIZER_OPTIONS, Hparam, Method, MethodSpec, optimizer_from, pop_optimizer, register

GROUPINGS = ("block", "lora", "matrix")
OPTIONS = {**OPTIMIZER_OPTIONS, "optim": "adamw", "weight_decay": 0.05, "grouping": "block", "tol": 1e-2}
HPARAMS = {
    "lr": LR(1e-2),
    "beta": Hparam(0.15, 0.0, None, help="weight of the bounded forget term"),
    "bnd": Hparam(10.0, 0.0, None, help="BND: the forget cross-entropy the forget term stops at"),
    "alpha": Hparam(0.01, 0.0, None, help="weight of the group lasso over adapter groups"),
    "warmup_steps": Hparam(0.0, 0.0, None, help="steps with alpha = 0 (sparsity warm-up)"),
}
PP_HPARAMS = {
    "pro_f_weight": Hparam(0.5, 0.0, None, help="weight of the forget prototype push"),
    "pro_r_weight": Hparam(0.0, 0.0, None, help="weight of the retain prototype pull"),
    "bnd_pro": Hparam(18.0, 0.0, None, help="bound of the forget prototype KL"),
}


def group_key(name: str, part: str, grouping: str) -> str:
    """The group of adapter matrix ``part`` (``a`` or ``b``) of the weight at path ``name``."""
    if grouping == "matrix":
        return f"{name}/{part}"
    if grouping == "lora":
        return name
    parts = name.split("/")
    if parts[0] == "layers" and len(parts) == 2:  # a Llama's stacked weights: the layer axis
        return "layers"
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def group_sq_norms(adapters, grouping: str, stacked: bool):
    """Squared Frobenius norms of the adapter groups, a vector ``(G,)``; ``stacked``: the
    adapters carry a leading layer axis (the Llama), one group per layer."""
    groups = {}
    for name in sorted(adapters):
        for part in ("a", "b"):
            x = adapters[name][part].astype(jnp.float32)
            sq = jnp.sum(jnp.square(x), axis=tuple(range(1 if stacked else 0, x.ndim)))
            k = group_key(name, part, grouping)
            groups[k] = groups.get(k, 0.0) + sq
    return jnp.concatenate([jnp.atleast_1d(v) for v in groups.values()])


def safe_norm(sq):
    """``sqrt(sq)`` with gradient 0 (not inf) at 0."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def group_lasso_penalty(adapters, grouping: str, stacked: bool):
    """``sum_g ||W_g||_F``."""
    return safe_norm(group_sq_norms(adapters, grouping, stacked)).sum()


def group_lasso(alpha, warmup_steps, grouping: str, stacked: bool) -> optax.GradientTransformation:
    """Add ``alpha_t * grad sum_g ||W_g||_F`` to the updates (``alpha_t = 0`` while the step count
    is below ``warmup_steps``); state: the step count."""

    def init(params):
        del params
        return {"count": jnp.zeros((), jnp.int32)}

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("group_lasso needs the params")
        on = (state["count"] >= warmup_steps).astype(jnp.float32)
        g = jax.grad(group_lasso_penalty)(params, grouping, stacked)
        updates = jax.tree.map(lambda u, d: u + (alpha * on * d).astype(u.dtype), updates, g)
        return updates, {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def kl_to_prototypes(feats_BxD, protos_BxD):
    """``mean_b KL(softmax(p_b) || softmax(f_b))``."""
    lp = jax.nn.log_softmax(protos_BxD.astype(jnp.float32), axis=-1)
    lf = jax.nn.log_softmax(feats_BxD.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lf), axis=-1))


def prototypes(model, params_like) -> DataTransform:
    """The frozen original model (state ``params``, set by :func:`freeze_original`) and the
    running sums and counts of its features per class over every batch's retain and forget rows;
    adds ``batch['protos']``, the class means ``(C, D)``."""

    def init(example):
        f = jax.eval_shape(model.features, params_like, example["x"])
        c = jax.eval_shape(model.apply, params_like, example["x"])
        return {
            "params": context.zeros_like_tree(params_like),
            "sum": jnp.zeros((c.shape[-1], f.shape[-1]), jnp.float32),
            "count": jnp.zeros((c.shape[-1],), jnp.float32),
        }

    def update(batch, state, key):
        del key
        x = jnp.concatenate([batch["x"], batch["forget"]["x"]])
        y = jnp.concatenate([batch["y"], batch["forget"]["y"]])
        f = jax.lax.stop_gradient(model.features(state["params"], x)).astype(jnp.float32)
        onehot = jax.nn.one_hot(y, state["count"].shape[0], dtype=jnp.float32)
        state = {**state, "sum": state["sum"] + onehot.T @ f, "count": state["count"] + onehot.sum(0)}
        protos = state["sum"] / jnp.maximum(state["count"], 1.0)[:, None]
        return {**batch, "protos": protos}, state

    return DataTransform(init, update)


def freeze_original(train_state, batch=None, key=None):
    """``consolidate`` at the start of unlearning: the current params become the frozen original
    model the prototypes are computed with."""
    del batch, key
    ds = train_state.data_state
    return train_state.replace(
        data_state={**ds, "params": jax.tree.map(jax.lax.stop_gradient, train_state.params)}
    )


def check_model(model, name: str) -> bool:
    """Whether ``model`` is a language model; a :class:`jaxcl.config.ConfigError` when it has no
    adapters."""
    from ..config import ConfigError  # jaxcl.config imports the registry

    if getattr(model, "lora", None) != "adapters":
        raise ConfigError(
            f"{name} trains LoRA adapters only and the model has none: set model.lora.rank=8 "
            "(the paper's rank; model.lora.targets picks the weights)"
        )
    return hasattr(model, "nll")


def build(model, hp, params_like, *, pp: bool = False, name: str = "gs_lora", **options):
    if check_model(model, name) and pp:
        raise ValueError(f"{name}: prototypes are class means of a classifier's features; use gs_lora")
    opt = pop_optimizer(options)
    grouping, tol = options["grouping"], options["tol"]
    stacked = lora.family(model) == "llama"
    ce = mean_nll(model)

    def loss_fn(params, batch, key):
        del key
        retain = ce(params, batch)
        forget_ce = ce(params, batch["forget"])
        forget = jax.nn.relu(hp["bnd"] - forget_ce)
        loss = retain + hp["beta"] * forget
        norms = safe_norm(group_sq_norms(params, grouping, stacked))
        aux = {
            "retain_ce": retain,
            "forget_ce": forget_ce,
            "group_lasso": norms.sum(),
            "group_norm_max": norms.max(),
            "groups_off": jnp.mean((norms < tol).astype(jnp.float32)),
        }
        if pp:
            protos = batch["protos"]
            kl_f = kl_to_prototypes(
                model.features(params, batch["forget"]["x"]), protos[batch["forget"]["y"]]
            )
            kl_r = kl_to_prototypes(model.features(params, batch["x"]), protos[batch["y"]])
            loss = loss + hp["pro_f_weight"] * jax.nn.relu(hp["bnd_pro"] - kl_f) + hp["pro_r_weight"] * kl_r
            aux.update(proto_kl_forget=kl_f, proto_kl_retain=kl_r)
        return loss, aux

    tx = optax.chain(
        group_lasso(hp["alpha"], hp["warmup_steps"], grouping, stacked), optimizer_from(opt, hp["lr"])
    )
    if not pp:
        return Method(loss_fn, tx)
    return Method(loss_fn, tx, data=prototypes(model, params_like), consolidate=freeze_original)


def objective(model, hp, params, batch, *, grouping="block", pp=False, step=None):
    """The whole GS-LoRA objective ``L`` (the loss plus ``alpha_t`` times the group lasso) at
    ``params`` (adapters) on ``batch``: what the step's gradient is the gradient of."""
    loss, _ = build(model, hp, None, pp=pp, **{**OPTIONS, "grouping": grouping})[0](params, batch, None)
    on = 1.0 if step is None else float(step >= hp["warmup_steps"])
    stacked = lora.family(model) == "llama"
    return loss + on * hp["alpha"] * group_lasso_penalty(params, grouping, stacked)


def spec(name: str, pp: bool, summary: str) -> MethodSpec:
    return MethodSpec(
        name,
        lambda model, hp, params_like, **o: build(model, hp, params_like, pp=pp, name=name, **o),
        {**HPARAMS, **(PP_HPARAMS if pp else {})},
        dict(OPTIONS),
        summary,
        kind="unlearn",
        paper=(
            "Zhao et al., Practical Continual Forgetting for Pre-trained Vision Models (GS-LoRA++), T-PAMI 2026"
            if pp
            else "Zhao et al., Continual Forgetting for Pre-trained Vision Models (GS-LoRA), CVPR 2024"
        ),
        choices={"grouping": GROUPINGS},
        needs_lora=True,
    )


SPEC = register(spec("gs_lora", False, "LoRA adapters only: retain CE, forget CE up to a bound, group lasso"))
SPEC_PP = register(spec("gs_lora_pp", True, "GS-LoRA plus forget/retain prototype terms on the features"))
