"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_parallel.py.

Checks that the plain step (fine-tune), replay (ER, buffer identical on every device), EWC and
the projection transform (A-GEM) give the same results on 1 and 8 devices, and that the
shard_map Fisher equals the single-device one. Prints one JSON line of results.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import config
from jaxcl.loops import Experiment, LoopConfig, run_seeds, seeds_keys
from jaxcl.losses import classification_loss, empirical_fisher
from jaxcl.methods import get_method
from jaxcl.models import make_model
from jaxcl.parallel import make_mesh, sharded_empirical_fisher
from jaxcl.studies.cl import build_stream

assert jax.device_count() == 8, jax.devices()
stream = build_stream(config.resolve(config.load("split-digits", tiny=True)))
model = make_model("mlp", stream.input_shape, 10, hidden=(32,))
loop = LoopConfig(steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32)
out = {"methods": {}}
maxdiff = lambda a, b: max(
    float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
)
for m in ["finetune", "er", "ewc", "agem"]:
    single = Experiment(model, get_method(m), loop)
    ref = run_seeds(single, jax.device_put(stream), single.default_hparams(), seeds_keys(0, 2))
    row = {}
    for seeds_axis, data_axis in [(1, 8), (2, 4)]:
        mesh = make_mesh(data=data_axis, seeds=seeds_axis)
        exp = Experiment(model, get_method(m), loop, mesh=mesh)
        got = run_seeds(exp, stream, exp.default_hparams(), seeds_keys(0, 2))
        row[f"{seeds_axis}x{data_axis}"] = {
            "params": maxdiff(ref["final_params"], got["final_params"]),
            "R": float(jnp.abs(ref["R"] - got["R"]).max()),
        }
    out["methods"][m] = row

# the replay buffer after a task on 8 devices: one array, the same on every device
mesh = make_mesh(data=8)
exp = Experiment(model, get_method("er"), loop, mesh=mesh)
hp = exp.default_hparams()
state = jax.jit(exp.init)(jax.random.key(0), stream, hp)
state, _ = jax.jit(exp.train_task)(state, stream, hp, 0)
buf = state.data_state["buffer"]["x"]
shards = [np.asarray(s.data) for s in buf.addressable_shards]
out["buffer_devices"] = len(shards)
out["buffer_identical"] = all(np.array_equal(shards[0], s) for s in shards)
out["buffer_seen"] = int(state.data_state["seen"])
single = Experiment(model, get_method("er"), loop)
s1 = jax.jit(single.init)(jax.random.key(0), stream, hp)
s1, _ = jax.jit(single.train_task)(s1, stream, hp, 0)
out["buffer_equals_single_device"] = bool(np.array_equal(np.asarray(s1.data_state["buffer"]["x"]), shards[0]))

# the compiled program really is data parallel: gradients are all-reduced across devices
lowered = jax.jit(exp.train_task).lower(state, stream, hp, 0).compile().as_text()
out["all_reduce_in_hlo"] = "all-reduce" in lowered

# shard_map Fisher = single-device Fisher
params = model.init(jax.random.key(1))
batch = {"x": jnp.asarray(stream.train_x[0, :64]), "y": jnp.asarray(stream.train_y[0, :64])}
base = classification_loss(model.apply)
f1 = empirical_fisher(base, params, batch, None)
f8 = sharded_empirical_fisher(base, params, batch, None, mesh)
out["fisher_diff"] = maxdiff(f1, f8)
out["fisher_scale"] = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(f1))

# unlearning phases (GU's projection, SSD's edit) take the same mesh: 1 vs 8 devices, same params
from jaxcl.loops import Phase, PhaseConfig, as_hparams  # noqa: E402
from jaxcl.unlearn.common import UnlearnData  # noqa: E402

x, y = jnp.asarray(stream.train_x[0, :256]), jnp.asarray(stream.train_y[0, :256])
f = y == y[0]
problem = UnlearnData(x, y, x[~f], y[~f], x[f], y[f], x[:32], y[:32], x[f][:8], y[f][:8])
params = model.init(jax.random.key(2))
out["unlearn"] = {}
for m in ("gu-graddiff", "ssd", "npo"):
    spec = get_method(m)
    opts = {"rank": 2} if m.startswith("gu-") else {}
    cfg_u = PhaseConfig(steps=4, batch_size=16, eval_every=2, eval_size=32)
    hp_u = as_hparams(spec)
    ref_u = jax.jit(Phase(model, spec, cfg_u, **opts).run)(params, jax.random.key(3), problem, hp_u)["params"]
    got_u = jax.jit(Phase(model, spec, cfg_u, mesh=make_mesh(data=8), **opts).run)(
        params, jax.random.key(3), problem, hp_u
    )["params"]
    out["unlearn"][m] = {"diff": maxdiff(ref_u, got_u), "moved": maxdiff(ref_u, params)}
gu_tx_state = jax.eval_shape(
    lambda p: (
        get_method("gu-ga")
        .build(model, as_hparams(get_method("gu-ga")), p, **{**get_method("gu-ga").options, "rank": 2})
        .tx.init(p)
    ),
    params,
)
n_params = sum(a.size for a in jax.tree.leaves(params))
out["gu_state_floats_per_param"] = sum(a.size for a in jax.tree.leaves(gu_tx_state)) / n_params

# bad input: a mesh that does not divide the batch or the seeds
msgs = []
try:
    Experiment(model, get_method("er"), LoopConfig(batch_size=12, steps_per_task=10, eval_every=5), mesh=mesh)
except ValueError as e:
    msgs.append(str(e))
try:
    exp2 = Experiment(model, get_method("er"), loop, mesh=make_mesh(data=2, seeds=4))
    run_seeds(exp2, stream, exp2.default_hparams(), seeds_keys(0, 3))
except ValueError as e:
    msgs.append(str(e))
out["errors"] = msgs
print(json.dumps(out))
sys.stdout.flush()
