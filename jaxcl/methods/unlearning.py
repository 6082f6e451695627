"""The common form of the unlearning methods that train (GA, GradDiff, NPO, IDK, random labels)
and GU attached to them.

Such a method is a *forget term* ``F(theta; batch['forget'])`` plus, when the method has a
``retain_weight`` hyperparameter ``w``, the retain term ``w * NLL(theta; retain batch)`` (the
retain examples are the batch's top-level fields; :func:`jaxcl.losses.mean_nll`, so the same
method runs on classifiers and language models):

    L(theta) = F(theta) + w * NLL_retain(theta)

With GU (Geometric-disentanglement Unlearning, 2025; :func:`jaxcl.transforms.project_out`) the
loss is the forget term alone; its gradient is projected onto the orthogonal complement of the
last ``rank`` retain gradients, and ``w * g_retain`` is added back:

    update = P_perp(grad F) + w * grad NLL_retain,   then the optimizer.

A method file provides ``forget_term(model, hp, params_like, **options) -> (loss_fn, data,
consolidate)`` and registers :func:`spec`; ``gu.py`` registers the GU variant of each.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from ..losses import mean_nll
from ..transforms import project_out
from .base import LR, OPTIMIZER_OPTIONS, Hparam, Method, MethodSpec, optimizer_from, pop_optimizer

RETAIN_WEIGHT = Hparam(1.0, 0.0, None, help="weight of the retain NLL term")
GU_OPTIONS = {"rank": 8, "mode": "per_tensor", "preconditioned": False}
GU_CHOICES = {"mode": ("per_tensor", "global"), "preconditioned": (False, True)}


def objective(forget_loss, model, hp) -> Callable:
    """``F + w * NLL_retain`` (``w = hp['retain_weight']``; no retain term without it)."""
    if "retain_weight" not in hp:
        return forget_loss
    retain = mean_nll(model)

    def loss_fn(params, batch, key):
        lf, aux = forget_loss(params, batch, key)
        lr = retain(params, batch)
        return lf + hp["retain_weight"] * lr, {**aux, "forget_term": lf, "retain_nll": lr}

    return loss_fn


def retain_grads_args(model, hp) -> Callable:
    """``extra_args`` for GU: the retain-NLL gradient at the current parameters and its weight."""
    grad = jax.grad(mean_nll(model))

    def extra(params, batch, key):
        del key
        return {"retain_grads": grad(params, batch), "retain_scale": hp.get("retain_weight", 0.0)}

    return extra


def builder(forget_term: Callable, *, gu: bool = False) -> Callable:
    """The ``build`` of a method given its forget term (plain, or with GU attached)."""

    def build(model, hp, params_like, **options):
        opt = pop_optimizer(options)
        gu_opts = {k: options.pop(k) for k in GU_OPTIONS} if gu else {}
        forget_loss, data, consolidate = forget_term(model, hp, params_like, **options)
        if not gu:
            return Method(
                objective(forget_loss, model, hp),
                optimizer_from(opt, hp["lr"]),
                data=data,
                consolidate=consolidate,
            )
        inner = optax.sgd(hp["lr"]) if gu_opts["preconditioned"] else optimizer_from(opt, hp["lr"])
        tx = optax.chain(project_out(gu_opts["rank"], gu_opts["mode"], gu_opts["preconditioned"]), inner)
        return Method(
            forget_loss, tx, data=data, extra_args=retain_grads_args(model, hp), consolidate=consolidate
        )

    return build


def spec(name, forget_term, hparams, *, summary, paper, options=None, gu=False) -> MethodSpec:
    """The registry record of an unlearning method (``gu=True``: its GU variant)."""
    options = {**OPTIMIZER_OPTIONS, **(options or {}), **(GU_OPTIONS if gu else {})}
    hparams = {"lr": LR(1e-4), **hparams}
    return MethodSpec(
        name,
        builder(forget_term, gu=gu),
        hparams,
        options,
        summary,
        kind="unlearn",
        paper=paper,
        choices=dict(GU_CHOICES) if gu else {},
    )
