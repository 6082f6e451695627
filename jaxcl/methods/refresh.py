"""Refresh learning, unlearn-then-relearn as a plug-in for any continual-learning method (Wang, Li,
Shen and Huang, "A Unified and General Framework for Continual Learning", ICLR 2024).

Each step first *unlearns* the current data a little, then *relearns* it with the host method's
loss ``L_CL``:

    unlearn:  theta' = theta + gamma F^-1 grad L_CE(theta) + N(0, 2 gamma F^-1)
    relearn:  theta  <- theta' - eta * update(grad L_CL(theta')).

As in the authors' code, the ascent direction is taken per tensor, rescaled to the tensor's norm,
and preconditioned by ``(1 + c F)^-1`` instead of ``F^-1`` (finite where the Fisher is 0):

    Delta = delta * (||theta|| / ||g|| * g + sigma * eps) / (1 + c F),   g = grad L_CE(theta),  eps ~ N(0, I),

with ``F`` the diagonal Fisher of the last task (the mean over ``loop.consolidate_samples`` of its
examples of ``p(y|x) * (grad log p(y|x))^2``), recomputed at every task end. Defaults are the
authors': ``delta = 1e-5``, ``sigma = 1e-3``, ``c = 1e-3``.

:func:`with_refresh` turns any registered method into its refreshed version (its data, consolidation,
prediction and extra gradient inputs are kept); ``er_refresh`` and ``derpp_refresh`` are registered.
How it maps onto the four levels: the data transform adds ``F`` and a noise key to the batch, the
loss is the host's loss at ``theta + stop_gradient(Delta)`` (so the gradient is ``grad L_CL(theta')``),
and the optimizer adds ``Delta`` to the host optimizer's update (``Delta`` recomputed from the same
batch and key in ``extra_args``: one extra gradient of the cross-entropy per step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ..data.context import zeros_like_tree
from ..engine import DataTransform
from ..losses import classification_loss
from . import der, er
from .base import Hparam, Method, MethodSpec, register


def unlearn_displacement(ce_loss, params, batch, fisher, key, *, delta, noise, fisher_coef):
    """``Delta`` of the module docstring: per tensor, the cross-entropy's ascent direction rescaled
    to the tensor's norm, plus noise, preconditioned by ``(1 + c F)^-1``, times ``delta``."""
    g = jax.grad(lambda p: ce_loss(p, batch, None)[0])(params)
    leaves, tdef = jax.tree.flatten(params)
    eps = [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(jax.random.split(key, len(leaves)), leaves)]
    eps = jax.tree.unflatten(tdef, eps)

    def one(p, gi, f, e):
        u = gi * jnp.linalg.norm(p.ravel()) / (jnp.linalg.norm(gi.ravel()) + 1e-20)
        return delta * (u + noise * e) / (1.0 + fisher_coef * f)

    return jax.tree.map(one, params, g, fisher, eps)


def task_fisher(apply_fn, params, batch, *, chunk: int = 32):
    """Mean over the examples of ``p(y|x) * (grad log p(y|x))^2`` (the authors' weighting)."""
    n = batch["y"].shape[0]
    chunk = chunk if n % chunk == 0 else n

    def per_example(x, y):
        def logp(p):
            return jax.nn.log_softmax(apply_fn(p, x[None]))[0, y]

        lp, g = jax.value_and_grad(logp)(params)
        return jax.tree.map(lambda a: jnp.exp(lp) * a**2, g)

    xs = batch["x"].reshape((n // chunk, chunk) + batch["x"].shape[1:])
    ys = batch["y"].reshape(n // chunk, chunk)

    def body(acc, xy):
        f = jax.vmap(per_example)(*xy)
        return jax.tree.map(lambda a, b: a + b.sum(0), acc, f), None

    total, _ = jax.lax.scan(body, zeros_like_tree(params), (xs, ys))
    return jax.tree.map(lambda a: a / n, total)


def add_displacement(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """The host optimizer's update plus the ``refresh_delta`` extra argument."""
    inner = optax.with_extra_args_support(inner)

    def update(updates, state, params=None, *, refresh_delta, **extra):
        u, state = inner.update(updates, state, params, **extra)
        return jax.tree.map(jnp.add, u, refresh_delta), state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def refreshed(method: Method, model, hp, params_like, fisher_coef: float) -> Method:
    """``method`` with refresh learning (see the module docstring)."""
    base_data = method.data
    ce = classification_loss(model.apply)

    def init(example):
        return (base_data.init(example) if base_data else (), {"fisher": zeros_like_tree(params_like)})

    def update(batch, state, key):
        k_base, k_noise = jax.random.split(key)
        s0 = state[0]
        if base_data is not None:
            batch, s0 = base_data.update(batch, s0, k_base)
        ctx = {"fisher": state[1]["fisher"], "noise": jax.random.key_data(k_noise)}
        return {**batch, "refresh": ctx}, (s0, state[1])

    after = None
    if base_data is not None and base_data.after is not None:

        def after(batch, state, params, aux, key):
            return (base_data.after(batch, state[0], params, aux, key), state[1])

    def displacement(params, batch):
        ctx = batch["refresh"]
        d = unlearn_displacement(
            ce,
            params,
            batch,
            ctx["fisher"],
            jax.random.wrap_key_data(ctx["noise"]),
            delta=hp["refresh_delta"],
            noise=hp["refresh_noise"],
            fisher_coef=fisher_coef,
        )
        return jax.lax.stop_gradient(d)

    def loss_fn(params, batch, key):
        moved = jax.tree.map(jnp.add, params, displacement(params, batch))
        return method.loss_fn(moved, batch, key)

    def extra_args(params, batch, key):
        d = displacement(params, batch)
        out = {}
        if method.extra_args is not None:
            out = method.extra_args(jax.tree.map(jnp.add, params, d), batch, key)
        return {**out, "refresh_delta": d}

    def consolidate(state, task_batch, key):
        s0 = state.replace(data_state=state.data_state[0])
        if method.consolidate is not None:
            s0 = method.consolidate(s0, task_batch, key)
        fisher = task_fisher(model.apply, s0.params, task_batch)
        return s0.replace(data_state=(s0.data_state, {"fisher": fisher}))

    predict = None
    if method.predict is not None:
        predict = lambda p, ds, x: method.predict(p, ds[0], x)  # noqa: E731

    return method._replace(
        loss_fn=loss_fn,
        tx=add_displacement(method.tx),
        data=DataTransform(init, update, after),
        extra_args=extra_args,
        consolidate=consolidate,
        predict=predict,
    )


HPARAMS = {
    "refresh_delta": Hparam(1e-5, 0.0, None, help="unlearning step (relative to each tensor's norm)"),
    "refresh_noise": Hparam(1e-3, 0.0, None, help="noise of the unlearning step"),
}
PAPER = "Wang et al. 2024, A Unified and General Framework for Continual Learning (refresh learning)"


def with_refresh(spec: MethodSpec, name: str | None = None) -> MethodSpec:
    """A :class:`MethodSpec` of ``spec`` with refresh learning (not registered: pass it to
    :func:`jaxcl.methods.register` to use it by name)."""
    own = set(spec.options)

    def build(model, hp, params_like, **options):
        base_opts = {k: v for k, v in options.items() if k in own}
        base = spec.build(model, hp, params_like, **base_opts)
        if base.loss_fn is None or not base.trains:
            raise ValueError(f"refresh learning needs a method that trains; {spec.name!r} does not")
        return refreshed(base, model, hp, params_like, options["fisher_coef"])

    return dataclasses.replace(
        spec,
        name=name or f"{spec.name}_refresh",
        build=build,
        hparams={**spec.hparams, **HPARAMS},
        options={**spec.options, "fisher_coef": 1e-3},
        summary=f"{spec.summary}; with refresh learning (unlearn, then relearn, every step)",
        paper=f"{PAPER}; host: {spec.paper}",
        joins=None,  # a base only: refresh learning changes the loss and the optimizer
    )


SPEC_ER = register(with_refresh(er.SPEC))
SPEC_DERPP = register(with_refresh(der.SPEC_PP))
