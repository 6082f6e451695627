"""Speed: the main-job continual-learning workload with ER, jaxcl vs plain PyTorch.

Workload (``CONFIGS['split-fashion-mnist']`` with method ``er`` and ``MAIN_LOOP``):
class-incremental Split-Fashion-MNIST (5 tasks of 2 classes), MLP 784-256-256-10, Adam lr 1e-3,
batch 64 drawn uniformly (with replacement) from the current task, ``steps_per_task`` steps per
task, a reservoir buffer of capacity 1000 with replay fraction 0.5 (the first 32 rows of every
batch are replaced by buffer samples once the buffer is non-empty; the incoming batch is then
written to the buffer), continual evaluation every ``eval_every`` steps on the first
``eval_per_task`` test examples of every task (seen and unseen), and the accuracy matrix row on
the full test sets at every task end (plus R0 before training).

* jaxcl: the library path, ``jax.jit(jax.vmap(Experiment.run))`` over a batch of seed keys
  (what :func:`jaxcl.loops.run_seeds` builds); one compiled program for the whole stream.
* torch-eager: the same protocol written the way a competent PyTorch user would: data as float
  tensors prepared once, ``nn.Sequential`` MLP, ``torch.optim.Adam(fused=True)`` (foreach when
  fused is unavailable), the reservoir buffer as preallocated tensors with vectorised writes,
  evaluation under ``torch.inference_mode`` in one forward pass over all tasks' eval subsets.
  Seeds run one after another.
* torch-compile (optional, ``--compile``): the same loop with the model's forward
  (train and eval) and the optimizer step under ``torch.compile``.

Timing follows ``/work/shared/BENCHMARKS.md``: the first call (compile + run) is reported
separately; the steady state is the median / min / max of ``--repeats`` timed calls that
interleave the sides; ratio = torch_time / jaxcl_time (> 1: jaxcl is faster). One JSON line
per (seeds, peer) row is appended to ``--out``.

    python benchmarks_speed/er_stream.py                       # full main-job size
    python benchmarks_speed/er_stream.py --tiny --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

N_TASKS = 5
HIDDEN = (256, 256)
BATCH = 64
LR = 1e-3
CAPACITY = 1000
REPLAY_FRACTION = 0.5


def flops_per_call(n_seeds, steps_per_task, eval_every, eval_per_task, test_n, input_dim=784, n_classes=10):
    """Matmul FLOPs of one call (every seed): 6 * P * B per training step (forward and backward),
    2 * P per evaluated example (the per-iteration evaluations on ``eval_per_task`` examples of
    every task, the full test sets at each task end and before training); P = weights of the MLP."""
    dims = (input_dim, *HIDDEN, n_classes)
    P = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    train = N_TASKS * steps_per_task * 6 * P * BATCH
    n_evals = N_TASKS * steps_per_task // eval_every
    evals = 2 * P * (n_evals * eval_per_task * N_TASKS + (N_TASKS + 1) * int(sum(test_n)))
    return n_seeds * (train + evals)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def build_stream(max_train_per_task=None, max_test_per_task=None):
    from jaxcl.data import loaders, streams

    data = loaders.fashion_mnist()
    return streams.split_classes(
        data, N_TASKS, seed=0, max_train_per_task=max_train_per_task, max_test_per_task=max_test_per_task
    )


# --------------------------------------------------------------------------------------------
# jaxcl side
# --------------------------------------------------------------------------------------------
class JaxclSide:
    name = "jaxcl"

    def __init__(self, stream, loop, n_seeds):
        import jax

        from jaxcl.loops import Experiment, seeds_keys
        from jaxcl.methods import get_method
        from jaxcl.models import make_model

        self.jax = jax
        model = make_model("mlp", stream.input_shape, stream.n_classes, hidden=HIDDEN)
        self.exp = Experiment(model, get_method("er"), loop, capacity=CAPACITY, optim="adam")
        self.exp.check(stream)
        self.hp = self.exp.default_hparams(lr=LR, replay_fraction=REPLAY_FRACTION)
        self.keys = seeds_keys(0, n_seeds)
        self.stream = jax.device_put(stream)
        # exactly what jaxcl.loops.run_seeds builds; built once here so that repeated calls
        # reuse the compiled program
        self.fn = jax.jit(jax.vmap(self.exp.run, in_axes=(0, None, None)))

    def __call__(self):
        out = self.fn(self.keys, self.stream, self.hp)
        self.jax.block_until_ready(out)
        return out

    @staticmethod
    def summary(out):
        return {
            "final_acc_mean": float(np.asarray(out["R"])[:, -1].mean()),
            "final_acc_per_seed": np.asarray(out["R"])[:, -1].mean(-1).round(4).tolist(),
        }


class JaxclSequentialSide(JaxclSide):
    """The same one-seed program (``jit(vmap(Experiment.run))`` over one key) called once per seed,
    one after another: what batching the seeds into one program is measured against."""

    name = "jaxcl-sequential"

    def __call__(self):
        outs = [self.fn(self.keys[i : i + 1], self.stream, self.hp) for i in range(len(self.keys))]
        self.jax.block_until_ready(outs)
        return self.jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *outs)


# --------------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------------
class TorchSide:
    """Plain PyTorch implementation of the same protocol, seeds one after another."""

    def __init__(self, stream, loop, n_seeds, *, compile_=False, device="cpu"):
        import torch
        from torch import nn

        self.torch, self.nn, self.dev = torch, nn, torch.device(device)
        self.loop, self.n_seeds, self.compile = loop, n_seeds, compile_
        self.name = "torch-compile" if compile_ else "torch-eager"
        f = lambda x: torch.from_numpy(np.asarray(x, np.float32).reshape(*x.shape[:2], -1) / 127.5 - 1.0).to(
            self.dev
        )
        self.train_x = f(stream.train_x).contiguous()  # T x N x 784 float32
        self.train_y = torch.from_numpy(np.asarray(stream.train_y, np.int64)).to(self.dev)
        self.train_n = [int(n) for n in stream.train_n]
        m = loop.eval_per_task
        test_x, test_y = f(stream.test_x), torch.from_numpy(np.asarray(stream.test_y, np.int64)).to(self.dev)
        self.test_n = [int(n) for n in stream.test_n]
        # eval subsets of every task, concatenated: one forward pass per evaluation
        self.eval_x = torch.cat([test_x[t, : min(m, n)] for t, n in enumerate(self.test_n)]).contiguous()
        self.eval_y = torch.cat([test_y[t, : min(m, n)] for t, n in enumerate(self.test_n)])
        self.eval_sizes = [min(m, n) for n in self.test_n]
        self.full_x = torch.cat([test_x[t, :n] for t, n in enumerate(self.test_n)]).contiguous()
        self.full_y = torch.cat([test_y[t, :n] for t, n in enumerate(self.test_n)])
        self.d_in = self.train_x.shape[-1]
        self.n_classes = int(stream.masks.shape[1])
        self._fused = None

    def _optimizer(self, params):
        torch = self.torch
        if self._fused is None:
            try:
                probe = [torch.zeros(2, requires_grad=True, device=self.dev)]
                torch.optim.Adam(probe, lr=LR, fused=True)
                self._fused = True
            except Exception:
                self._fused = False
        if self._fused:
            return torch.optim.Adam(params, lr=LR, fused=True)
        return torch.optim.Adam(params, lr=LR, foreach=True)

    @property
    def optimizer_kind(self):
        return "fused" if self._fused else "foreach"

    def _accuracy(self, model, x, y, sizes):
        logits = model(x)
        correct = (logits.argmax(-1) == y).float()
        return self.torch.stack([c.mean() for c in correct.split(sizes)])

    def run_seed(self, seed):
        torch, nn, loop = self.torch, self.nn, self.loop
        torch.manual_seed(seed)
        gen = torch.Generator(device=self.dev).manual_seed(10_000 + seed)
        dims = [self.d_in, *HIDDEN]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(dims[-1], self.n_classes)).to(self.dev)
        opt = self._optimizer(model.parameters())
        fwd, opt_step = model, opt.step
        if self.compile:
            fwd = torch.compile(model)
            opt_step = torch.compile(opt.step)
        loss_fn = nn.CrossEntropyLoss()

        buf_x = torch.zeros(CAPACITY, self.d_in, device=self.dev)
        buf_y = torch.zeros(CAPACITY, dtype=torch.int64, device=self.dev)
        seen = 0
        n_rep = int(round(REPLAY_FRACTION * BATCH))
        ar = torch.arange(BATCH, device=self.dev)

        with torch.inference_mode():
            R0 = self._accuracy(fwd, self.full_x, self.full_y, self.test_n)
        R, acc_trace, losses = [], [], []
        for t in range(N_TASKS):
            for s in range(loop.steps_per_task):
                idx = torch.randint(0, self.train_n[t], (BATCH,), generator=gen, device=self.dev)
                x, y = self.train_x[t, idx], self.train_y[t, idx]
                if seen > 0:  # replay: replace the first n_rep rows with buffer samples
                    j = torch.randint(0, min(seen, CAPACITY), (n_rep,), generator=gen, device=self.dev)
                    xb = torch.cat([buf_x[j], x[n_rep:]])
                    yb = torch.cat([buf_y[j], y[n_rep:]])
                else:
                    xb, yb = x, y
                # reservoir write of the incoming batch (drawn before, so no self-replay)
                i = seen + ar
                r = torch.randint(0, 2**31 - 1, (BATCH,), generator=gen, device=self.dev) % (i + 1)
                slot = torch.where(i < CAPACITY, i, r)
                keep = slot < CAPACITY
                buf_x[slot[keep]] = x[keep]
                buf_y[slot[keep]] = y[keep]
                seen += BATCH

                loss = loss_fn(fwd(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt_step()
                losses.append(loss.detach())
                if (s + 1) % loop.eval_every == 0:
                    with torch.inference_mode():
                        acc_trace.append(self._accuracy(fwd, self.eval_x, self.eval_y, self.eval_sizes))
            with torch.inference_mode():
                R.append(self._accuracy(fwd, self.full_x, self.full_y, self.test_n))
        return {"R0": R0, "R": torch.stack(R), "acc": torch.stack(acc_trace), "loss": torch.stack(losses)}

    def __call__(self):
        out = [self.run_seed(s) for s in range(self.n_seeds)]
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()
        return out

    @staticmethod
    def summary(outs):
        per_seed = [float(o["R"][-1].mean()) for o in outs]
        return {
            "final_acc_mean": float(np.mean(per_seed)),
            "final_acc_per_seed": [round(a, 4) for a in per_seed],
        }


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stats(ts):
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "times_s": [round(t, 4) for t in ts],
    }


def meta():
    import torch

    from jaxcl import report

    return {
        "versions": {**report.versions(), "torch": torch.__version__},
        "device": {
            **report.device_info(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
        },
        "git_commit": report.git_commit(),
    }


def run_row(stream, loop, n_seeds, repeats, peers, log, torch_device="cpu"):
    """Build every side, warm each up (first call timed separately), then time ``repeats``
    calls per side, interleaved, rotating the order each repeat."""
    sides = [JaxclSide(stream, loop, n_seeds)]
    for p in peers:
        if p == "jaxcl-sequential":
            sides.append(JaxclSequentialSide(stream, loop, n_seeds))
        else:
            sides.append(
                TorchSide(stream, loop, n_seeds, compile_=(p == "torch-compile"), device=torch_device)
            )
    first, summaries, failed = {}, {}, {}
    for side in sides:
        try:
            t, out = timed(side)
        except Exception as e:  # torch.compile may be unavailable; never the jaxcl side
            if side.name == "jaxcl":
                raise
            failed[side.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log(f"  {side.name}: skipped ({failed[side.name]})")
            continue
        first[side.name] = t
        summaries[side.name] = side.summary(out)
        log(
            f"  {n_seeds} seed(s) {side.name}: first call {t:.2f}s, "
            f"final ACC {summaries[side.name]['final_acc_mean']:.3f}"
        )
    sides = [s for s in sides if s.name not in failed]
    times = {s.name: [] for s in sides}
    load = [os.getloadavg()[0]]
    for r in range(repeats):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        for side in order:
            t, _ = timed(side)
            times[side.name].append(t)
        load.append(os.getloadavg()[0])
        log(
            f"  repeat {r + 1}/{repeats} (load {load[-1]:.1f}): "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
        )
    extra = {s.name: {"optimizer": s.optimizer_kind} for s in sides if isinstance(s, TorchSide)}
    extra["loadavg_1min"] = [round(v, 2) for v in load]
    return first, times, summaries, failed, extra


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps-per-task", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="rows (default: 1 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 3)")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-per-task", type=int, default=1000)
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row")
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="add a jaxcl-sequential row: the one-seed program once per seed, one after another "
        "(ratio = what batching the seeds into one program gains)",
    )
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch side")
    ap.add_argument(
        "--torch-device", choices=("cpu", "cuda"), default="cpu", help="where the PyTorch side runs"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: os.cpu_count())"
    )
    ap.add_argument(
        "--omp-active",
        action="store_true",
        help="leave OMP_WAIT_POLICY unset (default sets PASSIVE when unset)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="seconds-long run: 10 steps/task, eval every 5 on 50/task, 300 train and "
        "100 test examples per task, seeds 1 2 and 1 repeat unless given",
    )
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "er_stream_cpu.jsonl"),
    )
    ap.add_argument("--note", default="", help="free text stored in every JSON line")
    args = ap.parse_args(argv)

    # torch's OpenMP pool spin-waits by default; on a shared 2-core machine (other jobs running)
    # that makes eager PyTorch several times slower and erratic. PASSIVE keeps it stable and
    # costs nothing measurable unloaded. Only effective before torch is first imported.
    if not args.omp_active:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    from jaxcl.loops import LoopConfig

    max_train = max_test = None
    if args.tiny:
        args.steps_per_task, args.eval_every, args.eval_per_task = 10, 5, 50
        args.seeds, args.repeats = args.seeds or [1, 2], args.repeats or 1
        max_train, max_test = 300, 100
    args.seeds, args.repeats = args.seeds or [1, 16], args.repeats or 3
    loop = LoopConfig(
        steps_per_task=args.steps_per_task,
        batch_size=BATCH,
        eval_every=args.eval_every,
        eval_per_task=args.eval_per_task,
    )
    stream = build_stream(max_train, max_test)
    peers = [] if args.no_torch else ["torch-eager"]
    peers += (["torch-compile"] if args.compile else []) + (["jaxcl-sequential"] if args.sequential else [])
    info = meta()
    log = lambda s: print(s, flush=True)
    log(
        f"er_stream: split-fashion-mnist class-IL, {N_TASKS} tasks, mlp-784-256-256-10, adam lr {LR}, "
        f"batch {BATCH}, {args.steps_per_task} steps/task, ER reservoir {CAPACITY} @ "
        f"{REPLAY_FRACTION}, eval every {args.eval_every} steps on {args.eval_per_task}/task; "
        f"{info['device']['device_kind']}, {info['device']['cpu_count']} cpus, "
        f"torch threads {torch.get_num_threads()}"
    )

    rows = []
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for n in args.seeds:
        first, times, summ, failed, extra = run_row(
            stream, loop, n, args.repeats, peers, log, args.torch_device
        )
        jx = stats(times["jaxcl"])
        for peer in peers or [None]:  # no peer: one jaxcl-only line
            line = {
                "workload": "er_stream",
                "benchmark": "benchmarks_speed/er_stream.py",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sizes": {
                    "dataset": "fashion-mnist",
                    "scenario": "class-incremental",
                    "n_tasks": N_TASKS,
                    "model": "mlp-784-256-256-10",
                    "batch": BATCH,
                    "lr": LR,
                    "optimizer": "adam",
                    "steps_per_task": args.steps_per_task,
                    "eval_every": args.eval_every,
                    "eval_per_task": args.eval_per_task,
                    "buffer_capacity": CAPACITY,
                    "replay_fraction": REPLAY_FRACTION,
                    "train_per_task": [int(v) for v in stream.train_n],
                    "test_per_task": [int(v) for v in stream.test_n],
                    "seeds": n,
                    "repeats": args.repeats,
                    "tiny": args.tiny,
                },
                "jaxcl_impl": "jit(vmap(Experiment.run)) over seed keys",
                "flops": flops_per_call(
                    n,
                    args.steps_per_task,
                    args.eval_every,
                    min(args.eval_per_task, int(min(stream.test_n))),
                    stream.test_n,
                ),
                "peer": peer,
                "torch_device": args.torch_device if peer and peer.startswith("torch") else None,
                **info,
                "note": args.note,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                "loadavg_1min": extra["loadavg_1min"],
            }
            if peer is None:
                line.update(jaxcl={"first_call_s": first["jaxcl"], **jx, **summ["jaxcl"]})
            elif peer in failed:
                line.update(skipped=failed[peer], jaxcl={"first_call_s": first["jaxcl"], **jx})
            else:
                pt = stats(times[peer])
                line.update(
                    jaxcl={"first_call_s": first["jaxcl"], **jx, **summ["jaxcl"]},
                    **{
                        "sequential" if peer == "jaxcl-sequential" else "torch": {
                            "first_call_s": first[peer],
                            **pt,
                            **summ[peer],
                            **extra.get(peer, {}),
                        }
                    },
                    ratio=pt["median_s"] / jx["median_s"],
                    ratio_first_call=first[peer] / first["jaxcl"],
                    seed_steps_per_s={
                        "jaxcl": n * N_TASKS * args.steps_per_task / jx["median_s"],
                        peer: n * N_TASKS * args.steps_per_task / pt["median_s"],
                    },
                )
            rows.append(line)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(line) + "\n")

    hdr = ["seeds", "peer", "jaxcl first", "peer first", "jaxcl med [min-max]", "peer med [min-max]", "ratio"]
    table = []
    for l in rows:
        j = l["jaxcl"]
        if "skipped" in l or l["peer"] is None:
            table.append(
                [
                    l["sizes"]["seeds"],
                    l["peer"],
                    f"{j['first_call_s']:.2f}s",
                    "-",
                    f"{j['median_s']:.2f}s",
                    "skipped" if "skipped" in l else "-",
                    "-",
                ]
            )
            continue
        p = l.get("torch") or l["sequential"]
        table.append(
            [
                l["sizes"]["seeds"],
                l["peer"],
                f"{j['first_call_s']:.2f}s",
                f"{p['first_call_s']:.2f}s",
                f"{j['median_s']:.2f}s [{j['min_s']:.2f}-{j['max_s']:.2f}]",
                f"{p['median_s']:.2f}s [{p['min_s']:.2f}-{p['max_s']:.2f}]",
                f"{l['ratio']:.2f}x",
            ]
        )
    from jaxcl.report import table as fmt_table

    print()
    print(fmt_table([[str(c) for c in r] for r in table], hdr))
    print("ratio = peer median / jaxcl median (> 1: jaxcl faster)")
    if args.out:
        print(f"appended {len(rows)} JSON lines to {args.out}")
    return rows


if __name__ == "__main__":
    main()
