"""NPO: Negative Preference Optimization (Zhang, Lin, Bai and Mei, "Negative Preference
Optimization: From Catastrophic Collapse to Effective Unlearning", 2024).

Loss on forget examples, with ``pi_ref`` the frozen original model:

    L = (2 / beta) * mean log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta)
      = (2 / beta) * mean softplus(beta * (log pi_theta(y|x) - log pi_ref(y|x))),   beta = 0.1.

The reference log-probabilities reach the loss through the batch: a teacher data transform
(:func:`jaxcl.data.context.teacher`) keeps the original parameters in the train state and adds
``batch['ref_logits']``; nothing is closed over. Bounded below by 0, so unlike GA it does not run
away; as beta -> 0 it becomes GA with adaptive weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ..data import context
from .common import UnlearnConfig, UnlearnData, run_steps
from .ga import forget_batch


def loss(apply_fn, beta: float = 0.1):
    def loss_fn(params, batch, key):
        del key
        logits = apply_fn(params, batch["x"])
        y = batch["y"]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], -1)[:, 0]
        ref = jax.lax.stop_gradient(batch["ref_logits"])
        logp_ref = jnp.take_along_axis(jax.nn.log_softmax(ref), y[:, None], -1)[:, 0]
        l = (2.0 / beta) * jax.nn.softplus(beta * (logp - logp_ref)).mean()
        return l, {"forget_logp": logp.mean(), "logits": logits}

    return loss_fn


def teacher_of(model, params):
    """The NPO reference as a data transform and its state set to ``params``."""
    t = context.teacher(model.apply, params)
    return t, context.set_teacher(None, params)


def run(model, params, data: UnlearnData, key, cfg: UnlearnConfig, *, tx=None, name="npo", extra_args=None):
    tx = optax.adam(cfg.lr_of(name)) if tx is None else tx
    t, t_state = teacher_of(model, params)
    out, _ = run_steps(
        loss(model.apply, cfg.npo_beta),
        tx,
        params,
        key,
        lambda k: forget_batch(data, k, cfg.batch),
        cfg.steps,
        data=t,
        data_state=t_state,
        extra_args=extra_args,
    )
    return out
