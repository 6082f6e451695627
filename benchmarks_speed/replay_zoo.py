"""Speed: DER++, iCaRL and GDumb on the main-job stream, jaxcl vs plain PyTorch (the sibling of
``er_stream.py``, whose data, model, optimizer, evaluation protocol, timing and PyTorch
conventions it reuses).

Workload: class-incremental Split-Fashion-MNIST (5 tasks of 2 classes), MLP 784-256-256-10, Adam
lr 1e-3, batch 64 drawn uniformly from the current task, ``steps_per_task`` steps per task,
continual evaluation every ``eval_every`` steps on the first ``eval_per_task`` test examples of
every task, and the accuracy-matrix row on the full test sets at every task end. Memory of 1000
examples for every method. Per method, exactly the protocol of jaxcl's registry entry:

* ``derpp`` (Buzzega et al. 2020): a reservoir buffer of (x, y, logits at storage time); each step
  one forward pass over the batch and two independent memory draws of 32;
  ``CE + 0.1 * MSE(f(x'), z') + 0.5 * CE(f(x''), y'')``; the batch's pre-update logits written to
  the buffer after the loss.
* ``icarl`` (Rebuffi et al. 2017): 100 exemplars per class chosen by herding at each task end
  from 256 examples of the task, the batch plus 32 exemplars, sigmoid binary cross-entropy with
  the previous model's sigmoid outputs as targets of the old classes, nearest-mean-of-exemplars
  classification at every evaluation.
* ``gdumb`` (Prabhu et al. 2020): the greedy class-balanced memory, example by example; no
  training on the stream; at each task end a network trained from scratch on the memory
  (``--gdumb-retrain-steps`` Adam steps of batch 32) replaces the model.

jaxcl runs ``jax.jit(jax.vmap(Experiment.run))`` over the seed keys (what ``run_seeds`` builds);
PyTorch runs the seeds one after another (``er_stream.TorchSide`` conventions: float tensors
prepared once, ``nn.Sequential``, fused/foreach Adam, ``inference_mode`` evaluation in one forward
pass, vectorised buffer writes where the algorithm allows; GDumb's greedy sampler is a Python loop
over the rows, as its definition is sequential). Timing as ``er_stream.py``: first call reported
apart, then ``--repeats`` interleaved calls per side, ratio = torch median / jaxcl median
(> 1: jaxcl faster). One JSON line per (method, seeds).

    python benchmarks_speed/replay_zoo.py                              # CPU sizes
    python benchmarks_speed/replay_zoo.py --tiny --out /tmp/x.jsonl    # seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import er_stream  # noqa: E402  (same folder; data, timing, PyTorch conventions)
from er_stream import BATCH, HIDDEN, LR, N_TASKS, build_stream, meta, stats, timed  # noqa: E402

CAPACITY = 1000
MEMORY_BATCH = 32
DERPP_ALPHA, DERPP_BETA = 0.1, 0.5
CONSOLIDATE = 256  # examples of a task seen by iCaRL's herding (loop.consolidate_samples)
METHODS = ("derpp", "icarl", "gdumb")


class JaxclSide:
    name = "jaxcl"

    def __init__(self, method, stream, loop, n_seeds, retrain_steps):
        import jax

        from jaxcl.loops import Experiment, seeds_keys
        from jaxcl.methods import get_method
        from jaxcl.models import make_model

        self.jax = jax
        model = make_model("mlp", stream.input_shape, stream.n_classes, hidden=HIDDEN)
        opts = {"capacity": CAPACITY}
        if method == "gdumb":
            opts["retrain_steps"] = retrain_steps
        else:
            opts.update(optim="adam", memory_batch=MEMORY_BATCH)
        self.exp = Experiment(model, get_method(method), loop, **opts)
        self.exp.check(stream)
        self.hp = self.exp.default_hparams(lr=LR)
        self.keys = seeds_keys(0, n_seeds)
        self.stream = jax.device_put(stream)
        self.fn = jax.jit(jax.vmap(self.exp.run, in_axes=(0, None, None)))

    def __call__(self):
        out = self.fn(self.keys, self.stream, self.hp)
        self.jax.block_until_ready(out)
        return out

    summary = staticmethod(er_stream.JaxclSide.summary)


class TorchSide(er_stream.TorchSide):
    """Plain PyTorch DER++ / iCaRL / GDumb on er_stream's prepared tensors, seeds in sequence."""

    def __init__(self, method, stream, loop, n_seeds, retrain_steps):
        super().__init__(stream, loop, n_seeds)
        self.method, self.retrain_steps = method, retrain_steps
        self.name = "torch-eager"

    def _mlp(self):
        nn = self.nn
        dims = [self.d_in, *HIDDEN]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(dims[-1], self.n_classes))

    def _draw(self, t, gen):
        idx = self.torch.randint(0, self.train_n[t], (BATCH,), generator=gen)
        return self.train_x[t, idx], self.train_y[t, idx]

    def _reservoir_slots(self, seen, n, gen):
        torch = self.torch
        i = seen + torch.arange(n)
        r = torch.randint(0, 2**31 - 1, (n,), generator=gen) % (i + 1)
        slot = torch.where(i < CAPACITY, i, r)
        return slot, slot < CAPACITY

    def run_seed(self, seed):
        torch = self.torch
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(10_000 + seed)
        return getattr(self, f"_run_{self.method}")(gen)

    def _loop(self, gen, train_step, predict, end_task):
        """The shared stream: ``train_step(t, x, y)``, evaluation via ``predict(x) -> logits``,
        ``end_task(t)`` before each task's accuracy-matrix row."""
        torch, loop = self.torch, self.loop

        def acc(x, y, sizes):
            correct = (predict(x).argmax(-1) == y).float()
            return torch.stack([c.mean() for c in correct.split(sizes)])

        with torch.inference_mode():
            R0 = acc(self.full_x, self.full_y, self.test_n)
        R, trace = [], []
        for t in range(N_TASKS):
            for s in range(loop.steps_per_task):
                x, y = self._draw(t, gen)
                train_step(t, x, y)
                if (s + 1) % loop.eval_every == 0:
                    with torch.inference_mode():
                        trace.append(acc(self.eval_x, self.eval_y, self.eval_sizes))
            end_task(t)
            with torch.inference_mode():
                R.append(acc(self.full_x, self.full_y, self.test_n))
        return {"R0": R0, "R": torch.stack(R), "acc": torch.stack(trace)}

    # ---------------------------------------------------------------------------- DER++
    def _run_derpp(self, gen):
        torch, F = self.torch, self.torch.nn.functional
        model = self._mlp()
        opt = self._optimizer(model.parameters())
        buf_x = torch.zeros(CAPACITY, self.d_in)
        buf_y = torch.zeros(CAPACITY, dtype=torch.int64)
        buf_z = torch.zeros(CAPACITY, self.n_classes)
        st = {"seen": 0}

        def train_step(t, x, y):
            seen = st["seen"]
            if seen > 0:
                j = torch.randint(0, min(seen, CAPACITY), (2 * MEMORY_BATCH,), generator=gen)
                j1, j2 = j[:MEMORY_BATCH], j[MEMORY_BATCH:]
                out = model(torch.cat([x, buf_x[j1], buf_x[j2]]))
                cur = out[:BATCH]
                loss = (
                    F.cross_entropy(cur, y)
                    + DERPP_ALPHA * F.mse_loss(out[BATCH : BATCH + MEMORY_BATCH], buf_z[j1])
                    + DERPP_BETA * F.cross_entropy(out[BATCH + MEMORY_BATCH :], buf_y[j2])
                )
            else:
                cur = model(x)
                loss = F.cross_entropy(cur, y)
            slot, keep = self._reservoir_slots(seen, BATCH, gen)
            buf_x[slot[keep]], buf_y[slot[keep]] = x[keep], y[keep]
            buf_z[slot[keep]] = cur.detach()[keep]
            st["seen"] = seen + BATCH
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return self._loop(gen, train_step, model, lambda t: None)

    # ---------------------------------------------------------------------------- iCaRL
    def _run_icarl(self, gen):
        torch, F = self.torch, self.torch.nn.functional
        C, m = self.n_classes, CAPACITY // self.n_classes
        model = self._mlp()
        features = model[:-1]
        opt = self._optimizer(model.parameters())
        ex_x = torch.zeros(C, m, self.d_in)
        valid = torch.zeros(C, m, dtype=torch.bool)
        st = {"teacher": None}

        def train_step(t, x, y):
            if valid.any():
                idx = torch.multinomial(
                    valid.reshape(-1).float(), MEMORY_BATCH, replacement=True, generator=gen
                )
                xs, ys = torch.cat([x, ex_x.reshape(C * m, -1)[idx]]), torch.cat([y, idx // m])
            else:
                xs, ys = x, y
            logits = model(xs)
            target = F.one_hot(ys, C).float()
            if st["teacher"] is not None:
                with torch.no_grad():
                    ref = torch.sigmoid(st["teacher"](xs))
                present = torch.zeros(C, dtype=torch.bool)
                present[y] = True
                old = valid.any(1) & ~present
                target[:, old] = ref[:, old]
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def end_task(t):
            idx = torch.randint(0, self.train_n[t], (CONSOLIDATE,), generator=gen)
            x, y = self.train_x[t, idx], self.train_y[t, idx]
            with torch.no_grad():
                f = F.normalize(features(x), dim=-1)
                for c in y.unique().tolist():
                    rows = (y == c).nonzero()[:, 0]
                    fc = f[rows]
                    mu = fc.mean(0)
                    acc = torch.zeros_like(mu)
                    used = torch.zeros(len(rows), dtype=torch.bool)
                    k_max = min(m, len(rows))
                    for k in range(k_max):  # herding: the example closest to the running mean
                        d = (mu[None] - (acc[None] + fc) / (k + 1)).norm(dim=-1)
                        d[used] = float("inf")
                        i = int(d.argmin())
                        used[i] = True
                        acc += fc[i]
                        ex_x[c, k] = x[rows[i]]
                    valid[c] = torch.arange(m) < k_max
            st["teacher"] = copy.deepcopy(model).requires_grad_(False)

        def predict(x):  # nearest mean of exemplars
            f_ex = F.normalize(features(ex_x.reshape(C * m, -1)), dim=-1).reshape(C, m, -1)
            v = valid[..., None].float()
            mu = F.normalize((f_ex * v).sum(1) / v.sum(1).clamp(min=1), dim=-1)
            d = torch.cdist(F.normalize(features(x), dim=-1), mu) ** 2
            return torch.where(valid.any(1)[None], -d, torch.tensor(float("-inf")))

        return self._loop(gen, train_step, predict, end_task)

    # ---------------------------------------------------------------------------- GDumb
    def _run_gdumb(self, gen):
        torch, F = self.torch, self.torch.nn.functional
        C = self.n_classes
        buf_x = torch.zeros(CAPACITY, self.d_in)
        buf_y = torch.zeros(CAPACITY, dtype=torch.int64)
        counts = [0] * C
        st = {"filled": 0, "model": self._mlp()}

        def train_step(t, x, y):  # the greedy class-balanced sampler, row by row
            for i, c in enumerate(y.tolist()):
                filled = st["filled"]
                seen = sum(1 for k in range(C) if counts[k] > 0 or k == c)
                if filled < CAPACITY:
                    slot = filled
                    st["filled"] = filled + 1
                elif counts[c] * seen < CAPACITY:
                    largest = max(range(C), key=counts.__getitem__)
                    cand = (buf_y == largest).nonzero()[:, 0]
                    slot = int(cand[torch.randint(0, len(cand), (1,), generator=gen)])
                    counts[largest] -= 1
                else:
                    continue
                buf_x[slot], buf_y[slot] = x[i], c
                counts[c] += 1

        def end_task(t):  # a fresh network trained on the memory alone
            model = self._mlp()
            opt = self._optimizer(model.parameters())
            n = max(st["filled"], 1)
            for _ in range(self.retrain_steps):
                j = torch.randint(0, n, (MEMORY_BATCH,), generator=gen)
                loss = F.cross_entropy(model(buf_x[j]), buf_y[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            st["model"] = model

        return self._loop(gen, train_step, lambda x: st["model"](x), end_task)

    @staticmethod
    def summary(outs):
        return er_stream.TorchSide.summary(outs)


def run_row(method, stream, loop, n_seeds, repeats, retrain_steps, log, torch_side=True):
    sides = [JaxclSide(method, stream, loop, n_seeds, retrain_steps)]
    if torch_side:
        sides.append(TorchSide(method, stream, loop, n_seeds, retrain_steps))
    first, summaries = {}, {}
    for side in sides:
        t, out = timed(side)
        first[side.name], summaries[side.name] = t, side.summary(out)
        log(
            f"  {method} {n_seeds} seed(s) {side.name}: first call {t:.2f}s, "
            f"final ACC {summaries[side.name]['final_acc_mean']:.3f}"
        )
    times = {s.name: [] for s in sides}
    load = [os.getloadavg()[0]]
    for r in range(repeats):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            t, _ = timed(side)
            times[side.name].append(t)
        load.append(os.getloadavg()[0])
        log(
            f"  repeat {r + 1}/{repeats} (load {load[-1]:.1f}): "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
        )
    return (
        first,
        times,
        summaries,
        [round(v, 2) for v in load],
        sides[-1].optimizer_kind if torch_side else None,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--steps-per-task", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="rows (default: 1 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 2)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-per-task", type=int, default=200)
    ap.add_argument("--gdumb-retrain-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--tiny", action="store_true", help="seconds per method: 10 steps/task, small data, 1 seed, 1 repeat"
    )
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "replay_zoo_cpu.jsonl"),
    )
    ap.add_argument("--note", default="")
    ap.add_argument(
        "--no-torch", action="store_true", help="leave out the PyTorch side (it runs on the CPU only)"
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see er_stream.py
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from jaxcl.loops import LoopConfig

    max_train = max_test = None
    if args.tiny:
        args.steps_per_task, args.eval_every, args.eval_per_task = 10, 5, 50
        args.seeds, args.repeats = args.seeds or [1], args.repeats or 1
        args.gdumb_retrain_steps = min(args.gdumb_retrain_steps, 20)
        max_train, max_test = 300, 100
    args.seeds, args.repeats = args.seeds or [1, 16], args.repeats or 2
    loop = LoopConfig(
        steps_per_task=args.steps_per_task,
        batch_size=BATCH,
        eval_every=args.eval_every,
        eval_per_task=args.eval_per_task,
        consolidate_samples=CONSOLIDATE,
    )
    stream = build_stream(max_train, max_test)
    info = meta()
    log = lambda s: print(s, flush=True)
    log(
        f"replay_zoo: split-fashion-mnist class-IL, {N_TASKS} tasks, mlp-784-256-256-10, adam lr {LR}, "
        f"batch {BATCH}, {args.steps_per_task} steps/task, memory {CAPACITY}, eval every {args.eval_every} "
        f"on {args.eval_per_task}/task; torch threads {torch.get_num_threads()}"
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []
    for method in args.methods:
        for n in args.seeds:
            first, times, summ, load, opt_kind = run_row(
                method, stream, loop, n, args.repeats, args.gdumb_retrain_steps, log, not args.no_torch
            )
            jx = stats(times["jaxcl"])
            line = {
                "workload": "replay_zoo",
                "benchmark": "benchmarks_speed/replay_zoo.py",
                "method": method,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sizes": {
                    "dataset": "fashion-mnist",
                    "scenario": "class-incremental",
                    "n_tasks": N_TASKS,
                    "model": "mlp-784-256-256-10",
                    "batch": BATCH,
                    "memory_batch": MEMORY_BATCH,
                    "capacity": CAPACITY,
                    "steps_per_task": args.steps_per_task,
                    "eval_every": args.eval_every,
                    "eval_per_task": args.eval_per_task,
                    "gdumb_retrain_steps": args.gdumb_retrain_steps,
                    "seeds": n,
                    "repeats": args.repeats,
                    "tiny": args.tiny,
                },
                "jaxcl_impl": "jit(vmap(Experiment.run)) over seed keys",
                "peer": None if args.no_torch else "torch-eager",
                **info,
                "note": args.note,
                "loadavg_1min": load,
                "jaxcl": {"first_call_s": first["jaxcl"], **jx, **summ["jaxcl"]},
            }
            if not args.no_torch:
                pt = stats(times["torch-eager"])
                line["torch"] = {"first_call_s": first["torch-eager"], **pt, **summ["torch-eager"]}
                line.update(ratio=pt["median_s"] / jx["median_s"])
                line["torch"]["optimizer"] = opt_kind
            rows.append(line)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(line) + "\n")
    from jaxcl.report import table as fmt_table

    hdr = [
        "method",
        "seeds",
        "jaxcl first",
        "torch first",
        "jaxcl med [min-max]",
        "torch med [min-max]",
        "ratio",
    ]
    body = [
        [
            r["method"],
            str(r["sizes"]["seeds"]),
            f"{r['jaxcl']['first_call_s']:.2f}s",
            f"{r['torch']['first_call_s']:.2f}s" if "torch" in r else "-",
            f"{r['jaxcl']['median_s']:.2f}s [{r['jaxcl']['min_s']:.2f}-{r['jaxcl']['max_s']:.2f}]",
            f"{r['torch']['median_s']:.2f}s [{r['torch']['min_s']:.2f}-{r['torch']['max_s']:.2f}]"
            if "torch" in r
            else "-",
            f"{r['ratio']:.2f}x" if "torch" in r else "-",
        ]
        for r in rows
    ]
    print()
    print(fmt_table(body, hdr))
    print("ratio = torch median / jaxcl median (> 1: jaxcl faster)")
    if args.out:
        print(f"appended {len(rows)} JSON lines to {args.out}")
    return rows


if __name__ == "__main__":
    main()
