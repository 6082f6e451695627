"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_lm_scale.py.

A few continual pre-training steps of a tiny Llama (``engine.make_step`` on the library's LM loss,
``lax.scan``, windows of a token stream drawn inside the compiled loop) on one device and on a
mesh of 8 whose ``data`` axis shards the sequences: the losses and parameters agree, each device
holds 1/8 of the sequences, and the compiled program all-reduces the gradients. Prints one JSON
line of results.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import engine, losses, parallel
from jaxcl.models import llama
from jaxcl.models.lm import language_model as lm_model

assert jax.device_count() == 8, jax.devices()
cfg = llama.tiny()
model = lm_model(cfg)
B, T, STEPS = 16, 33, 4
stream = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, 4096), jnp.int32)
tx = optax.adamw(3e-3)
step = engine.make_step(losses.supervised_loss(model), tx)


def make_run(mesh):
    def draw(key):
        start = jax.random.randint(key, (B,), 0, stream.shape[0] - T)
        toks = jax.vmap(lambda s: jax.lax.dynamic_slice(stream, (s,), (T,)))(start)
        return parallel.shard_batch({"tokens": toks, "mask": jnp.ones((B, T), bool)}, mesh)

    def body(state, key):
        state, m = step(state, draw(key))
        return state, (m["loss"], m["grad_norm"])

    return jax.jit(lambda state, keys: jax.lax.scan(body, state, keys))


keys = jax.random.split(jax.random.key(1), STEPS)
state0 = engine.init_state(llama.init_params(cfg, 0), tx, 0)
s1, (l1, g1) = make_run(None)(state0, keys)

mesh = parallel.make_mesh(data=8)
run8 = make_run(mesh)
state8 = jax.device_put(state0, parallel.replicated(mesh))
s8, (l8, g8) = run8(state8, keys)
hlo = run8.lower(state8, keys).compile().as_text()


def drawn_tokens(key):  # the draw of the loop above, returned: how the mesh lays it out
    start = jax.random.randint(key, (B,), 0, stream.shape[0] - T)
    toks = jax.vmap(lambda s: jax.lax.dynamic_slice(stream, (s,), (T,)))(start)
    return parallel.shard_batch({"tokens": toks}, mesh)["tokens"]


shards = jax.jit(drawn_tokens)(keys[0]).addressable_shards
maxdiff = lambda a, b: max(
    float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
)
print(
    json.dumps(
        {
            "loss_1": [float(x) for x in l1],
            "loss_8": [float(x) for x in l8],
            "grad_norm_maxdiff": float(jnp.abs(g1 - g8).max()),
            "params_maxdiff": maxdiff(s1.params, s8.params),
            "opt_maxdiff": maxdiff(s1.opt_state, s8.opt_state),
            "moved": maxdiff(s1.params, state0.params),
            "param_devices": len(jax.tree.leaves(s8.params)[0].sharding.device_set),
            "shard_rows": sorted({s.data.shape[0] for s in shards}),
            "n_shards": len(shards),
            "all_reduce_in_hlo": "all-reduce" in hlo,
        }
    )
)
