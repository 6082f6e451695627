"""Speed: SSD end to end (importance on the forget set, importance on the training set, the
dampening edit) in jaxcl vs a plain PyTorch implementation of the same definition.

Workload: ResNet-18 (28x28 variant, eval mode) at ``--width``, ``--n-train`` Fashion-MNIST
training examples (the forget set is class 3 among them), minibatches of ``--batch``, alpha 10,
lambda 1. Random initial weights (the cost does not depend on them).

* jaxcl: ``jax.jit`` of ``ssd.importance`` twice (``lax.scan`` over minibatches) and
  ``ssd.dampen``; data passed as arguments.
* torch-eager: ``model.eval()``, a loop over minibatches with ``loss.backward()`` and
  ``torch._foreach_addcmul_`` accumulation of squared gradients, the edit under ``no_grad``.

ratio = torch median / jaxcl median (> 1: jaxcl faster). Target: >= 1.3 on a GPU, >= 1 on CPU.

    python benchmarks_speed/ssd.py                  # width 16, 1024 examples (CPU default)
    python benchmarks_speed/ssd.py --width 64 --n-train 10000   # the paper's width (GPU)
    python benchmarks_speed/ssd.py --tiny
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
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    common_args(ap, "ssd_cpu.jsonl")
    a = ap.parse_args(argv)
    if a.tiny:
        a.width, a.n_train, a.batch, a.repeats = 4, 256, 32, 1
    set_threads(a.threads)
    import jax
    import jax.numpy as jnp
    import torch

    from jaxcl.edits import ssd_dampen
    from jaxcl.losses import minibatch_importance
    from jaxcl.models.resnet import resnet18

    x, y, xf, yf = fmnist_subset(a.n_train)
    model = resnet18((28, 28, 1), 10, width=a.width)
    params = model.init(jax.random.key(0))
    dx, dy, dxf, dyf = map(jnp.asarray, (x, y, xf, yf))

    @jax.jit
    def jax_ssd(params, x, y, xf, yf):
        i_f = minibatch_importance(model, params, {"x": xf, "y": yf}, batch_size=a.batch)
        i_d = minibatch_importance(model, params, {"x": x, "y": y}, batch_size=a.batch)
        return ssd_dampen(params, i_f, i_d, alpha=10.0, lam=1.0)

    dev = a.torch_device
    tm = torch_resnet18(a.width).eval().to(dev)
    tx, ty = torch_float(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)
    txf, tyf = torch_float(xf).to(dev), torch.from_numpy(yf.astype(np.int64)).to(dev)
    plist = [p for p in tm.parameters()]

    def importance(xs, ys):
        imp = [torch.zeros_like(p) for p in plist]
        nb = len(xs) // a.batch if len(xs) >= a.batch else 1
        b = min(a.batch, len(xs))
        for i in range(nb):
            tm.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(tm(xs[i * b : (i + 1) * b]), ys[i * b : (i + 1) * b])
            loss.backward()
            grads = [p.grad for p in plist]
            torch._foreach_addcmul_(imp, grads, grads)
        torch._foreach_div_(imp, nb)
        return imp

    def torch_ssd():
        i_f, i_d = importance(txf, tyf), importance(tx, ty)
        with torch.no_grad():
            for p, f, d in zip(plist, i_f, i_d):
                sel = f > 10.0 * d
                beta = torch.clamp(d / torch.where(sel, f, torch.ones_like(f)), max=1.0)
                p.copy_(torch.where(sel, p * beta, p))

    sides = {"jaxcl": lambda: jax.block_until_ready(jax_ssd(params, dx, dy, dxf, dyf))}
    if not a.no_torch:
        sides["torch-eager"] = synced(torch_ssd, dev)
    res = interleave(sides, a.repeats)
    m = dict(meta(), threads=a.threads, torch_device=None if a.no_torch else dev)
    peer_t = res["torch-eager"]["median_s"] if "torch-eager" in res else None
    rows = []
    for k, r in res.items():
        rows.append(
            {
                "workload": "ssd-end-to-end",
                "side": k,
                "model": f"resnet18-w{a.width}",
                "n_train": a.n_train,
                "n_forget": int(len(xf)),
                "batch": a.batch,
                **m,
                **r,
                "ratio_torch_over_jaxcl": peer_t and peer_t / res["jaxcl"]["median_s"],
            }
        )
    print(f"{'side':12s} {'first_s':>9s} {'median_s':>9s}")
    for k, r in res.items():
        print(f"{k:12s} {r['first_s']:9.3f} {r['median_s']:9.3f}")
    if peer_t:
        print(f"ratio torch/jaxcl = {rows[0]['ratio_torch_over_jaxcl']:.2f}")
    write_jsonl(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
