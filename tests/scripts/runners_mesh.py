"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_runners_mesh.py.

The unlearn-class and lm runners at small sizes, and mm-cit's VLM (its ER row's compiled calls),
once without a mesh and once on a mesh of 2 seeds x 4 data devices: the per-seed results of both and their differences (per value, and in
examples for accuracies), what exchanging the two seeds would change (the difference a seed
mix-up on the mesh would show), whether the mesh was really used (the
compiled unlearning program all-reduces gradients over the data axis and its outputs span the 8
devices; the lm runner's train state is sharded over ``seeds`` on all 8 devices), and the errors
for seeds and a batch size that do not divide the mesh. Prints one JSON line.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import config, parallel, report
from jaxcl.loops import seeds_keys
from jaxcl.studies import lm, mm_cit, unlearn_class

assert jax.device_count() == 8, jax.devices()
MESH = parallel.make_mesh(data=4, seeds=2)
seen = {"hlo_all_reduce": [], "out_devices": [], "lm_state_devices": [], "lm_state_spec": []}

# -- spies on the two runners' compiled calls (only the mesh runs are recorded) ------------------
_timed_jit = report.timed_jit


def timed_jit(fn, *args):
    leaves = jax.tree.leaves(args)
    if not any(getattr(a, "sharding", None) is not None and len(a.sharding.device_set) == 8 for a in leaves):
        return _timed_jit(fn, *args)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seen["hlo_all_reduce"].append("all-reduce" in compiled.as_text())
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seen["out_devices"].append(max(len(x.sharding.device_set) for x in jax.tree.leaves(out)))
    return out, t1 - t0, time.perf_counter() - t1


report.timed_jit = timed_jit
_jit_seeds = lm.jit_seeds


def jit_seeds(fn, in_axes, mesh=None, **kw):
    f = _jit_seeds(fn, in_axes, mesh, **kw)
    if mesh is None:
        return f

    def spied(*args):
        out = f(*args)
        leaf = jax.tree.leaves(out[0].params if isinstance(out, tuple) else out.params)[0]
        seen["lm_state_devices"].append(len(leaf.sharding.device_set))
        seen["lm_state_spec"].append(str(leaf.sharding.spec))
        return out

    return spied


lm.jit_seeds = jit_seeds


def per_seed(res):
    return {r: {k: v for k, v in row["per_seed"].items() if k != "time_s"} for r, row in res["rows"].items()}


def absdiff(x, y) -> float:
    """The largest |x - y|; a value that is NaN on both sides (not computed, e.g. U-LiRA below 3
    seeds) agrees, NaN on one side only is an infinite difference."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
    return float(np.max(np.where(np.isnan(d), np.inf, d)))


def diffs(a, b):
    return {f"{r}.{k}": absdiff(a[r][k], b[r][k]) for r in a for k in a[r]}


def maxdiff(a, b):
    return max(diffs(a, b).values())


def seeds_swapped(res, n_seeds=2):
    """The per-seed values with the seeds exchanged (each value list is seed-major)."""
    return {
        r: {k: np.asarray(v).reshape(n_seeds, -1)[::-1].reshape(-1) for k, v in d.items()}
        for r, d in res.items()
    }


def denominator(values, most=2000):
    """The smallest n with every value a whole multiple of 1/n (an accuracy over n examples)."""
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return next((n for n in range(1, most) if np.allclose(v * n, np.round(v * n), atol=1e-6 * n)), None)


uc = config.resolve(
    config.load("unlearn-class", tiny=True),
    [
        "methods=ga",
        "seeds=2",
        "train.steps=20",
        "train.eval_every=10",
        "unlearn.steps=10",
        "eval.relearn_steps=5",
        "eval.eval_cap=200",
        "data.n_per_class=50",
    ],
    study=unlearn_class.STUDY,
)
lc = config.resolve(config.load("lm-cpt", tiny=True), ["rows=er+rewarm", "seeds=2"], study=lm.STUDY)
lc["train"]["checkpoint"] = False
out = {}
for name, runner, cfg in (("unlearn_class", unlearn_class, uc), ("lm", lm, lc)):
    t0 = time.perf_counter()
    one = per_seed(runner.run(cfg, None, verbose=False))
    t1 = time.perf_counter()
    many = per_seed(runner.run(cfg, None, verbose=False, mesh=MESH))
    out[name] = {
        "maxdiff": maxdiff(one, many),
        "diffs": diffs(one, many),
        "n_values": sum(len(v) for r in one.values() for v in r.values()),
        "seconds": [t1 - t0, time.perf_counter() - t1],
        # what a seed mix-up on the mesh would change: the comparison with one device can see it
        "seed_swap": maxdiff(one, seeds_swapped(one)),
        # the largest value (always > 0.1: not a check; tests/test_runners_mesh.py still reads it)
        # differences in examples of the accuracy-like values (over n examples: multiples of 1/n)
        "examples": {
            f"{r}.{k}": round(absdiff(one[r][k], many[r][k]) * n, 3)
            for r in one
            for k in one[r]
            if (n := denominator(one[r][k] + many[r][k])) and k.endswith(("_acc", "gap", "mia_forget"))
        },
    }
    if name == "unlearn_class":  # a weight that moved: the runs did something
        out[name]["ga_forget_acc"] = [one["ga"]["forget_acc"], many["ga"]["forget_acc"]]
# the VLM (mm-cit's ER row: replay of images and tokens) for its three tasks on one device and
# on the mesh: the trained weights, the training loss per evaluation and the knowledge accuracies
mc = config.resolve(config.load("mm-cit", tiny=True), ["methods=er", "seeds=2"], study=mm_cit.STUDY)
train, ev = mm_cit.build_tasks(mc)
vlm_model = mm_cit.model_of(mc, train["image"].shape[2:])


def vlm_run(mesh):
    c = mm_cit.calls(mm_cit.make_program(mc, vlm_model, "er", mesh), mc)
    at = lambda t: {"train": train, "eval": ev, "t": jnp.int32(t)}  # noqa: E731
    state, losses = c["init"](seeds_keys(0, 2), None, at(0)), []
    for t in range(train["tokens"].shape[0]):
        state, tr = c["task"](state, at(t))
        losses.append(np.asarray(tr["loss"]))
    leaves = jax.tree.leaves(state.params)
    know = np.asarray(c["evaluate"](state, at(t))[1])
    return [np.asarray(x) for x in leaves], np.stack(losses, 1), know, len(leaves[0].sharding.device_set)


p1, l1, k1, _ = vlm_run(None)
p8, l8, k8, devices = vlm_run(MESH)
out["vlm"] = {
    "param_maxdiff": max(float(np.abs(a - b).max()) for a, b in zip(p1, p8, strict=True)),
    "loss_maxdiff": float(np.abs(l1 - l8).max()),
    "n_losses": int(l1.size),
    "know": [k1.tolist(), k8.tolist()],
    "seed_swap": max(float(np.abs(a[0] - a[1]).max()) for a in p1),
    "state_devices": devices,
}
errors = {}
for key, runner, cfg in (
    ("seeds", unlearn_class, {**uc, "seeds": 3}),
    ("batch", lm, {**lc, "train": {**lc["train"], "batch_size": 6}}),
):
    try:
        runner.run(cfg, None, verbose=False, mesh=MESH)
        errors[key] = None
    except config.ConfigError as e:
        errors[key] = str(e)
print(json.dumps({**out, **seen, "errors": errors}))
