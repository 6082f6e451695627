"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_grpo.py (or by hand).

Three GRPO iterations (rollout, rewards, KL, 2 inner updates) of a tiny byte-level Llama on one
device and with the prompts and rollouts sharded over a data axis of 8 devices: prints one JSON
line with the largest parameter difference and the per-iteration rewards of both.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import grpo, tasks
from jaxcl.engine import init_state
from jaxcl.hf import ByteTokenizer
from jaxcl.loops import as_hparams, build_method, run_chunks
from jaxcl.methods import get_method
from jaxcl.models import llama
from jaxcl.models.lm import language_model
from jaxcl.parallel import make_mesh

assert jax.device_count() == 8, jax.devices()
tok = ByteTokenizer()
cfg = llama.tiny(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=32)
model = language_model(cfg, "tiny", padded=True)
spec = get_method("grpo")
hp = as_hparams(spec, {"lr": 1e-2})
_, opts = spec.split({"group_size": 4, "max_new_tokens": 4, "mu": 2})
method = build_method(spec, model, hp, opts)
env = grpo.Env(lambda c, m, r: (c < 128).mean(-1).astype(jnp.float32), tok.eos_id, tok.pad_id)  # dense
pairs = tasks.generate("add", 8, digits=1)
prompts = {
    k: jnp.asarray(v) for k, v in tasks.encode_prompts(tok, pairs, prompt_len=12, answer_width=4).items()
}
params = model.init(jax.random.key(0))
ex = grpo.example_batch(prompts, group_size=4, max_new_tokens=4, pad_id=tok.pad_id)


def run(mesh):
    state = init_state(params, method.tx, jax.random.key(1), method.data, ex)
    state = method.consolidate(state, ex, None)
    it = grpo.make_iteration(method, env, mesh=mesh)
    f = jax.jit(lambda s: run_chunks(it, s, lambda k: prompts, lambda p: {}, 3, 1))
    return f(state)


s1, m1 = run(None)
s8, m8 = run(make_mesh(data=8))
diff = max(
    float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params))
)
moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(params)))
print(
    json.dumps(
        {
            "params_maxdiff": diff,
            "moved": moved,
            "reward_1": np.asarray(m1["reward"]).tolist(),
            "reward_8": np.asarray(m8["reward"]).tolist(),
        }
    )
)
