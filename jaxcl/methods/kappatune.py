"""KappaTune: fine-tune only the tensors with the smallest condition number (Ludwig, "The Condition
Number as a Scale-Invariant Proxy for Information Encoding in Neural Units", 2025).

For a weight matrix ``W`` (a kernel with more than one axis is read as ``prod(in axes) x out``)
with singular values ``s_1 >= ... >= s_r``, the condition number is

    kappa(W) = s_1 / s_r.

A high condition number marks a unit that has learned to amplify some directions and compress
others (a specialised encoding); adapting the *least* anisotropic tensors leaves that knowledge in
place. KappaTune ranks the weight matrices by ``kappa`` and updates only the
``ceil(kappa_fraction * n_matrices)`` with the smallest; every other parameter, including the
one-axis tensors (biases), which have no condition number, is frozen:

    theta_i <- theta_i - eta * m_i * update_i,   m_i = [i among the selected matrices].

Attached to fine-tuning in a stream: the first task trains everything (the "pre-training"); at
every task end the selection is recomputed from the current weights for the next task (a state
change of the optimizer: ``(inner state, mask)``). The mask multiplies both the gradient (so the
inner optimizer's moments of frozen tensors stay 0) and the update.

On a language model (the Llama of :mod:`jaxcl.models.llama`, whose ``layers`` are stored stacked
on a leading layer axis) each layer's slice of a stacked tensor is its own matrix: every layer's
``wq``, ``wk``, ..., ``w_down`` and the embedding are ranked together, and the mask of a stacked
tensor is per layer (``(L, 1, 1)``); the stacked norm scales (one vector per layer) are frozen.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..losses import supervised_loss
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


class KappaState(NamedTuple):
    inner: Any
    mask: Any  # a tree of float32 scalars: 1 = the tensor is adapted


def condition_number(w) -> jax.Array:
    """``s_max / s_min`` of ``w`` as a ``prod(leading axes) x last axis`` matrix."""
    m = w.reshape(-1, w.shape[-1]).astype(jnp.float32)
    s = jnp.linalg.svd(m, compute_uv=False)
    return s[0] / jnp.maximum(s[-1], jnp.finfo(jnp.float32).tiny)


def _leads(params, stacked: bool) -> list[int]:
    """Per leaf (flattening order) the number of leading unit axes: 1 under ``params['layers']``
    of a stacked model (one matrix per layer), else 0."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    top = lambda path: getattr(path[0], "key", None) if path else None  # noqa: E731
    return [int(stacked and top(path) == "layers") for path, _ in paths]


def ones_mask(params, stacked: bool = False):
    """The all-ones mask: a scalar per tensor, ``(L, 1, ...)`` per stacked layer tensor."""
    leaves, tdef = jax.tree.flatten(params)
    shapes = [_unit_shape(a, d) for a, d in zip(leaves, _leads(params, stacked))]
    return jax.tree.unflatten(tdef, [jnp.ones(sh, jnp.float32) for sh in shapes])


def _unit_shape(a, lead: int) -> tuple:
    """A mask's shape: ``()`` for a tensor, ``(L, 1, ...)`` for a stacked one."""
    return a.shape[:lead] + (1,) * (a.ndim - lead) if lead else ()


def kappa_selection(params, fraction, stacked: bool = False):
    """1 for the ``ceil(fraction * n)`` matrices with the smallest condition number (``fraction``
    may be traced), 0 for every other tensor; returns ``(mask, kappas)`` (``inf`` for tensors
    that are not matrices). ``stacked``: the tensors under ``params['layers']`` hold one matrix
    per layer (leading axis), ranked one by one, their mask and kappas shaped ``(L, 1, ...)`` and
    ``(L,)``."""
    leaves, tdef = jax.tree.flatten(params)
    leads = _leads(params, stacked)
    is_mat = [a.ndim - d >= 2 for a, d in zip(leaves, leads)]
    kappas = [
        (jax.vmap(condition_number)(a) if d else condition_number(a)) if m else jnp.full(a.shape[:d], jnp.inf)
        for a, d, m in zip(leaves, leads, is_mat)
    ]
    units = [jnp.reshape(kp, (-1,)) for kp, m in zip(kappas, is_mat) if m]
    if not units:
        raise ValueError("KappaTune: the model has no weight matrices to rank")
    ranked = jnp.sort(jnp.concatenate(units))
    n = ranked.shape[0]
    k = jnp.clip(jnp.ceil(fraction * n - 1e-6), 1, n).astype(jnp.int32)
    kth = ranked[k - 1]
    mask = [
        jnp.where(m, (kp <= kth).astype(jnp.float32), 0.0).reshape(_unit_shape(a, d))
        for a, kp, d, m in zip(leaves, kappas, leads, is_mat)
    ]
    return jax.tree.unflatten(tdef, mask), jax.tree.unflatten(tdef, kappas)


def masked(
    inner: optax.GradientTransformation, stacked: bool = False
) -> optax.GradientTransformationExtraArgs:
    """``inner`` applied to the masked gradient, its update masked again; the mask (all ones at
    first, :func:`ones_mask`) is part of the state."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return KappaState(inner.init(params), ones_mask(params, stacked))

    def update(updates, state, params=None, **extra):
        g = jax.tree.map(lambda u, m: u * m, updates, state.mask)
        u, s = inner.update(g, state.inner, params, **extra)
        return jax.tree.map(lambda a, m: a * m, u, state.mask), KappaState(s, state.mask)

    return optax.GradientTransformationExtraArgs(init, update)


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    stacked = hasattr(model, "nll")  # a language model: the Llama's layers are stacked

    def consolidate(state, task_batch, key):
        del task_batch, key
        mask, _ = kappa_selection(state.params, hp["kappa_fraction"], stacked)
        return state.replace(opt_state=state.opt_state._replace(mask=mask))

    tx = masked(optimizer_from(opt, hp["lr"]), stacked)
    return Method(supervised_loss(model), tx, consolidate=consolidate)


SPEC = register(
    MethodSpec(
        "kappatune",
        build,
        {
            "lr": LR(1e-3),
            "kappa_fraction": Hparam(
                0.5,
                0.0,
                1.0,
                low_open=True,
                help="share of the weight matrices adapted (smallest kappa first)",
            ),
        },
        dict(OPTIMIZER_OPTIONS),
        "KappaTune: fine-tune only the weight matrices with the smallest condition number",
        paper="Ludwig 2025, The Condition Number as a Scale-Invariant Proxy for Information Encoding in "
        "Neural Units (KappaTune)",
        choices={"optim": OPTIMIZERS},
    )
)
