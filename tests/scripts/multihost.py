"""One process of a 2-process run on localhost (tests/test_parallel.py starts two).

usage: multihost.py PORT PROCESS_ID NUM_PROCESSES  -> prints a JSON line with the results.
With NUM_PROCESSES=1 it runs the same study in a single process for comparison.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxcl.parallel import global_array, initialize_multihost, make_mesh

port, pid, nproc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if nproc > 1:
    initialize_multihost(f"127.0.0.1:{port}", nproc, pid, timeout_s=60)

from jaxcl import config  # noqa: E402
from jaxcl.loops import Experiment, LoopConfig  # noqa: E402
from jaxcl.methods import get_method  # noqa: E402
from jaxcl.models import make_model  # noqa: E402
from jaxcl.studies.cl import build_stream  # noqa: E402

stream = build_stream(config.resolve(config.load("split-digits", tiny=True)))
model = make_model("mlp", stream.input_shape, 10, hidden=(32,))
loop = LoopConfig(steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32)
mesh = make_mesh(data=jax.device_count())
exp = Experiment(model, get_method("er"), loop, mesh=mesh if nproc > 1 else None)
keys = jax.random.key_data(jax.random.split(jax.random.key(0), 2))
if nproc > 1:
    stream_g = global_array(stream, mesh)
    keys_g = global_array(keys, mesh)
    hp = global_array({k: np.asarray(v) for k, v in exp.default_hparams().items()}, mesh)
else:
    stream_g, keys_g, hp = jax.device_put(stream), jnp.asarray(keys), exp.default_hparams()
run = jax.jit(jax.vmap(lambda k, s, h: exp.run(jax.random.wrap_key_data(k), s, h), in_axes=(0, None, None)))
out = run(keys_g, stream_g, hp)
R = np.asarray(multihost_utils.process_allgather(out["R"], tiled=True)) if nproc > 1 else np.asarray(out["R"])
print(json.dumps({"pid": pid, "devices": jax.device_count(), "R": R.tolist()}))
sys.stdout.flush()
if nproc > 1:
    jax.distributed.shutdown()
