"""The L2 method: its penalty is lambda/2 ||theta - theta*||^2 against a numpy computation, and
it keeps the parameters closer to the end of the first task than fine-tuning does."""

import jax
import numpy as np

from jaxcl import config
from jaxcl.loops import Experiment
from jaxcl.methods import get_method
from jaxcl.models import mlp
from jaxcl.studies import cl

CFG = config.resolve(config.load("split-digits", tiny=True))


def test_l2_penalty_and_drift():
    stream = jax.device_put(cl.build_stream(CFG))
    model = mlp(stream.input_shape, 10, hidden=(32,))
    exp = Experiment(model, get_method("l2"), cl.loop_config(CFG))
    out = {}
    for lam in (0.0, 10.0):
        hp = exp.default_hparams(l2_lambda=lam)
        state = jax.jit(exp.init)(jax.random.key(0), stream, hp)
        state, _ = jax.jit(exp.train_task)(state, stream, hp, 0)
        anchor = jax.tree.map(np.asarray, state.data_state["anchor"])
        batch = exp._batch(stream, 1, jax.random.key(1), exp._method(hp), 8)
        batch["ewc"] = state.data_state
        loss, aux = exp._method(hp).loss_fn(state.params, batch, jax.random.key(2))
        assert float(aux["ewc_penalty"]) == 0.0  # at the anchor
        state, _ = jax.jit(exp.train_task)(state, stream, hp, 1)
        sq = sum(
            np.sum((np.asarray(p) - a) ** 2)
            for p, a in zip(jax.tree.leaves(state.params), jax.tree.leaves(anchor))
        )
        loss2, aux2 = exp._method(hp).loss_fn(
            state.params, {**batch, "ewc": {**state.data_state, "anchor": anchor}}, None
        )
        np.testing.assert_allclose(float(aux2["ewc_penalty"]), 0.5 * sq, rtol=1e-5)
        out[lam] = sq
    assert out[10.0] < 0.5 * out[0.0], out
