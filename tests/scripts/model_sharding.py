"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_model_sharding.py.

The train state sharded FSDP-style over a ``model`` mesh axis gives one device's numbers: the main
job's loop (an MLP on Split Digits; fine-tuning, ER and EWC: the replay buffer and the anchor and
Fisher are sharded too), a ViT on the same stream, and the lm-cpt runner's Llama (ER) on
meshes with model=2, 4 and 8. For each mesh: the largest difference to one device, the
placement of the final parameters (their ``PartitionSpec``s and how many of their elements one
device holds) and whether the compiled program all-gathers. Prints one JSON line.
"""

import json
import sys
import time

import jax
import numpy as np

from jaxcl import config, parallel
from jaxcl.loops import Experiment, LoopConfig, run_seeds, seeds_keys
from jaxcl.methods import get_method
from jaxcl.models import make_model
from jaxcl.studies import lm
from jaxcl.studies.cl import build_stream

assert jax.device_count() == 8, jax.devices()


def maxdiff(a, b) -> float:
    """The largest absolute difference of two trees, on the host: in numpy, not in a jitted
    subtract / abs / max per leaf, shape and sharding (over a hundred tiny compilations)."""
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def placement(params) -> dict:
    """How the arrays lie: specs, and the share of all elements one device holds."""
    leaves = jax.tree.leaves(params)
    total = sum(a.size for a in leaves)
    held = sum(a.addressable_shards[0].data.size for a in leaves)
    return {
        "specs": sorted({str(a.sharding.spec) for a in leaves}),
        "device_share": held / total,
        "devices": max(len(a.sharding.device_set) for a in leaves),
    }


stream = build_stream(config.resolve(config.load("split-digits", tiny=True)))
loop = LoopConfig(steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32)
models = {
    "mlp": make_model("mlp", stream.input_shape, 10, hidden=(256, 128)),
    "vit": make_model("vit", stream.input_shape, 10, patch=4, dim=64, depth=2, heads=4, mlp=128),
}
# (model, method, meshes): "2x4x1" etc. are seeds x data x model; a data-only mesh (model=1) is the
# data-parallel baseline: its differences to one device are the all-reduce's rounding alone
CASES = (
    ("mlp", "er", ("1x8x1", "1x1x8", "2x1x4")),
    ("mlp", "ewc", ("2x2x2",)),
    ("vit", "er", ("1x8x1", "1x1x8")),
)
out = {"classifier": {}, "seconds": {}}
t0 = time.perf_counter()
for mname, method, meshes in CASES:
    model = models[mname]
    single = Experiment(model, get_method(method), loop)
    keys = seeds_keys(0, 2)
    ref = run_seeds(single, jax.device_put(stream), single.default_hparams(), keys)
    row = {}
    for name in meshes:
        s, d, m = (int(v) for v in name.split("x"))
        mesh = parallel.make_mesh(seeds=s, data=d, model=m)
        exp = Experiment(model, get_method(method), loop, mesh=mesh)
        got = run_seeds(exp, stream, exp.default_hparams(), keys)
        row[name] = {
            "params": maxdiff(ref["final_params"], got["final_params"]),
            "R": maxdiff(ref["R"], got["R"]),
            **placement(got["final_params"]),
        }
    swap = jax.tree.map(lambda a: np.asarray(a)[::-1], ref["final_params"])
    out["classifier"][f"{mname}/{method}"] = {"rows": row, "seed_swap": maxdiff(ref["final_params"], swap)}
out["seconds"]["classifier"] = time.perf_counter() - t0

# the compiled task program of a model-sharded mesh all-gathers the weights (FSDP), and its
# state lives sharded: each device's share of the ER state's arguments
mesh = parallel.make_mesh(model=8, data=1)
exp = Experiment(models["mlp"], get_method("er"), loop, mesh=mesh)
hp = exp.default_hparams()
state = jax.jit(exp.init)(jax.random.key(0), stream, hp)
state = jax.device_put(state, parallel.state_sharding(state, mesh))
compiled = jax.jit(exp.train_task).lower(state, stream, hp, 0).compile()  # run as compiled: once
out["all_gather_in_hlo"] = "all-gather" in compiled.as_text()
new, _ = compiled(state, stream, hp, 0)
out["er_state"] = {
    "opt": placement(new.opt_state),
    "buffer": placement(new.data_state["buffer"]),
}

# the lm-cpt runner's Llama (ER with a buffer of token rows), seeds=2 on model-sharded meshes
lc = config.resolve(config.load("lm-cpt", tiny=True), ["rows=er+rewarm", "seeds=2"], study=lm.STUDY)
lc["train"]["checkpoint"] = False
states = []
_jit_seeds = lm.jit_seeds


def jit_seeds(fn, in_axes, mesh=None, **kw):
    f = _jit_seeds(fn, in_axes, mesh, **kw)
    if mesh is None:
        return f

    def spied(*args):
        res = f(*args)
        states.append(placement(res[0].params if isinstance(res, tuple) else res.params))
        return res

    return spied


lm.jit_seeds = jit_seeds


def per_seed(res):
    return {r: {k: v for k, v in row["per_seed"].items() if k != "time_s"} for r, row in res["rows"].items()}


t0 = time.perf_counter()
one = per_seed(lm.run(lc, None, verbose=False))
out["lm"] = {}
for name in ("2x4x1", "2x1x4", "2x2x2"):
    s, d, m = (int(v) for v in name.split("x"))
    states.clear()
    many = per_seed(lm.run(lc, None, verbose=False, mesh=parallel.make_mesh(seeds=s, data=d, model=m)))
    out["lm"][name] = {
        "maxdiff": max(
            float(np.nanmax(np.abs(np.asarray(one[r][k]) - np.asarray(many[r][k]))))
            for r in one
            for k in one[r]
        ),
        "n_values": sum(np.asarray(v).size for r in one.values() for v in r.values()),
        "states": states[:],
    }
out["seconds"]["lm"] = time.perf_counter() - t0
print(json.dumps(out))
sys.stdout.flush()
