"""Speed: convolutional training loops on XLA:CPU, the two fixes side by side.

Workload: ``--steps`` Adam steps of ResNet-18 (28x28 variant, training mode, ``--width``) on
batches of ``--batch`` (64), inside one rolled ``lax.scan``, as every jaxcl training loop runs them.

* ``conv``: JAX's own convolution gradient (``JAXCL_CONV_IMPL=lax``) vs jaxcl's canonical
  backward convolutions (:mod:`jaxcl.models.conv`), one seed.
* ``seeds``: ``--seeds`` seeds under ``vmap`` (grouped convolutions) vs a compiled ``lax.map``
  (:mod:`jaxcl.batching`), both with the canonical convolution.

Each variant runs in its own subprocess (the convolution choice is made at trace time from the
environment), one thread, and reports seconds per training step per seed after compilation.

    python benchmarks_speed/conv_cpu.py            # width 16, 10 steps, 2 seeds, batches of 64
    python benchmarks_speed/conv_cpu.py --tiny     # width 4, 3 steps, batches of 8: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {  # name: (JAXCL_CONV_IMPL, seed batching, seeds from --seeds?)
    "conv-lax-1seed": ("lax", "vmap", False),
    "conv-canonical-1seed": ("canonical", "vmap", False),
    "seeds-vmap": ("canonical", "vmap", True),
    "seeds-map": ("canonical", "map", True),
}


def child(width: int, steps: int, seeds: int, mode: str, batch: int = 64) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcl.batching import over_seeds
    from jaxcl.models.resnet import resnet18

    model = resnet18((28, 28, 1), 10, width=width)
    x = jax.random.randint(jax.random.key(1), (batch * 8, 28, 28, 1), 0, 255).astype(jnp.uint8)
    y = jnp.arange(batch * 8) % 10
    tx = optax.adam(1e-3)

    def train(key):
        p = model.init(key)

        def body(carry, i):
            p, o = carry
            xb = jax.lax.dynamic_slice_in_dim(x, (i % 8) * batch, batch)
            yb = jax.lax.dynamic_slice_in_dim(y, (i % 8) * batch, batch)
            g = jax.grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply_train(p, xb), yb).mean()
            )(p)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None

        return jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps))[0][0]

    f = jax.jit(over_seeds(train, (0,), mode=mode))
    keys = jax.random.split(jax.random.key(0), seeds)
    jax.block_until_ready(f(keys))
    t = time.perf_counter()
    jax.block_until_ready(f(keys))
    return (time.perf_counter() - t) / steps / seeds


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="benchmarks_speed/results/conv_cpu.jsonl")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.tiny:  # JAX's own convolution gradient runs ~3 s a step at batch 64 even at width 4
        a.width, a.steps, a.batch = 4, 3, 8
    if a.child:
        _, mode, n = a.child.split(":")
        print(json.dumps({"s_per_step_per_seed": child(a.width, a.steps, int(n), mode, a.batch)}))
        return None
    rows = []
    for name, (impl, mode, many) in VARIANTS.items():
        n = a.seeds if many else 1
        env = dict(
            os.environ,
            JAXCL_CONV_IMPL=impl,
            XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        )
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                f"{impl}:{mode}:{n}",
                "--width",
                str(a.width),
                "--steps",
                str(a.steps),
                "--batch",
                str(a.batch),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "workload": "resnet18-train-scan",
                "variant": name,
                "conv": impl,
                "seed_batching": mode,
                "seeds": n,
                "width": a.width,
                "steps": a.steps,
                "batch": a.batch,
                **r,
            }
        )
        print(f"{name:22s} {r['s_per_step_per_seed'] * 1000:9.1f} ms/step/seed", flush=True)
    by = {r["variant"]: r["s_per_step_per_seed"] for r in rows}
    print(
        f"canonical conv speed-up in a scan: {by['conv-lax-1seed'] / by['conv-canonical-1seed']:.1f}x; "
        f"lax.map over vmap for {a.seeds} seeds: {by['seeds-vmap'] / by['seeds-map']:.1f}x"
    )
    if a.out:
        import jax

        with open(a.out, "a") as f:
            for r in rows:
                f.write(
                    json.dumps(
                        {
                            **r,
                            "jax": jax.__version__,
                            "threads": 1,
                            "commit": subprocess.run(
                                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
                            ).stdout.strip(),
                        }
                    )
                    + "\n"
                )
    return rows


if __name__ == "__main__":
    main()
