"""Speed: the overhead of GU's projection on an unlearning step (target: <= 15% at rank 8).

Workload: one GradDiff-style unlearning step on ResNet-18 (28x28, eval mode, ``--width``): the
gradient of the forget loss (-CE on a forget batch) and of the retain loss (CE on a retain batch),
then Adam. The two jaxcl variants compute exactly the same gradients and differ only in the
transform in front of Adam:

* ``no-projection``: ``update = g_forget + g_retain`` (GradDiff),
* ``gu-rank-R``: ``project_out(rank=R, add_retain=True)`` (per-tensor basis of the last R retain
  gradients by modified Gram-Schmidt, projection, retain gradient added back).

Both run ``--steps`` steps inside one rolled ``lax.scan``, as the unlearning loops do (the
models' convolutions keep their gradients fast in a loop body on XLA:CPU, see
:mod:`jaxcl.models.conv`); time per step is reported. A PyTorch eager
GradDiff step (same model, fused Adam) is timed side by side as the peer.

    python benchmarks_speed/gu_overhead.py            # width 16, batch 64, rank 8
    python benchmarks_speed/gu_overhead.py --tiny
"""

from __future__ import annotations

import argparse

import numpy as np
from _unlearn_common import (
    common_args,
    fmnist_subset,
    interleave,
    meta,
    set_threads,
    synced,
    torch_float,
    torch_resnet18,
    write_jsonl,
)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, nargs="+", default=[8])
    ap.add_argument("--mode", default="per_tensor")
    ap.add_argument("--steps", type=int, default=10)
    common_args(ap, "gu_overhead_cpu.jsonl")
    a = ap.parse_args(argv)
    if a.tiny:
        a.width, a.batch, a.steps, a.repeats = 4, 16, 4, 1
    set_threads(a.threads)
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from jaxcl.engine import init_state, make_step
    from jaxcl.methods import ga
    from jaxcl.methods.unlearning import retain_grads_args
    from jaxcl.models.resnet import resnet18
    from jaxcl.transforms import project_out

    x, y, xf, yf = fmnist_subset(2048)
    model = resnet18((28, 28, 1), 10, width=a.width)
    params = model.init(jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in dict(x=x, y=y, xf=xf, yf=yf).items()}

    def sum_retain():
        def update(u, s, p=None, *, retain_grads, **kw):
            return jax.tree.map(lambda g, r: g + r, u, retain_grads), s

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    def build(proj):
        tx = optax.chain(proj, optax.adam(1e-4))
        loss = ga.forget_term(model, {}, None)[0]
        step = make_step(loss, tx, extra_args=retain_grads_args(model, {"retain_weight": 1.0}))

        @jax.jit
        def run(params, data, key):
            state = init_state(params, tx, key)

            def body(s, i):
                k1, k2 = jax.random.split(jax.random.fold_in(key, i))
                fi = jax.random.randint(k1, (a.batch,), 0, data["xf"].shape[0])
                ri = jax.random.randint(k2, (a.batch,), 0, data["x"].shape[0])
                return step(
                    s,
                    {
                        "x": data["x"][ri],
                        "y": data["y"][ri],
                        "forget": {"x": data["xf"][fi], "y": data["yf"][fi]},
                    },
                )

            s, m = jax.lax.scan(body, state, jnp.arange(a.steps))
            return s.params

        return run

    key = jax.random.key(1)
    sides = {}
    base = build(sum_retain())
    sides["no-projection"] = lambda: jax.block_until_ready(base(params, data, key))
    for r in a.rank:
        f = build(project_out(rank=r, mode=a.mode))
        sides[f"gu-rank-{r}"] = lambda f=f: jax.block_until_ready(f(params, data, key))

    dev = a.torch_device
    tm = torch_resnet18(a.width).eval().to(dev)
    opt = torch.optim.Adam(tm.parameters(), lr=1e-4)
    tx_, ty_ = torch_float(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)
    txf, tyf = torch_float(xf).to(dev), torch.from_numpy(yf.astype(np.int64)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def torch_graddiff():
        for _ in range(a.steps):
            fi = torch.randint(0, len(txf), (a.batch,), generator=gen, device=dev)
            ri = torch.randint(0, len(tx_), (a.batch,), generator=gen, device=dev)
            opt.zero_grad(set_to_none=True)
            ce = torch.nn.functional.cross_entropy
            loss = -ce(tm(txf[fi]), tyf[fi]) + ce(tm(tx_[ri]), ty_[ri])
            loss.backward()
            opt.step()

    if not a.no_torch:
        sides["torch-eager-graddiff"] = synced(torch_graddiff, dev)
    res = interleave(sides, a.repeats)
    m = dict(meta(), threads=a.threads, torch_device=None if a.no_torch else dev)
    base_t = res["no-projection"]["median_s"]
    rows = []
    print(f"{'side':22s} {'first_s':>9s} {'ms/step':>9s} {'vs no-proj':>10s}")
    for k, r in res.items():
        row = {
            "workload": "gu-overhead",
            "side": k,
            "model": f"resnet18-w{a.width}",
            "batch": a.batch,
            "steps": a.steps,
            "mode": a.mode,
            **m,
            **r,
            "ms_per_step": 1e3 * r["median_s"] / a.steps,
            "ratio_vs_no_projection": r["median_s"] / base_t,
        }
        rows.append(row)
        print(f"{k:22s} {r['first_s']:9.3f} {row['ms_per_step']:9.2f} {row['ratio_vs_no_projection']:10.3f}")
    write_jsonl(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
