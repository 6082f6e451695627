"""Speed: U-LiRA's shadow models per minute, S seeds in one program vs one after another (issue 21).

U-LiRA (:mod:`jaxcl.unlearn.ulira`) needs many shadow models: in ``unlearn-class`` the run's
seeds are the shadows, and the S originals (and the S oracles, the same program on the retain
set) are each trained as one program over the seeds. This script times that program against the
obvious alternative, in one process, on the same workload:

* ``jaxcl-vmapped``: the study's own per-seed trainer (:func:`jaxcl.unlearn.classifier.trainer`:
  a fresh initialisation, the registry's ``finetune`` through :class:`jaxcl.loops.Phase` with the
  config's ``train`` recipe, BatchNorm recalibration) over S seeds as one compiled program
  (:func:`jaxcl.batching.over_seeds`, which the study's ``seeds_map`` is without a mesh: ``vmap``,
  or a compiled ``lax.map`` for a convolutional model on the CPU; ``--seed-batching`` forces
  either). Keys: the study's (``role_keys(cfg, ORIGINAL)``); data: ``load_problem(cfg)``.
* ``jaxcl-sequential``: the same trainer jitted for one seed, called S times one after another
  (seed i's key; results blocked on after the S calls), so the same models and the same steps.
* ``torch-sequential`` (the MLP only): the same MLP recipe in plain PyTorch eager, S models one
  after another (``nn.Sequential``, Adam lr 1e-3 fused where available, batches of 64 drawn with
  replacement from the training set). The Phase's continual evaluation is not timed on any side:
  the trainer drops its trace and XLA removes that dead code from the compiled program (the MLP's HLO
  has the step's 8 matmuls only), so the peer evaluates nothing either. Its own initialisation
  and random batches: its models are not compared with jaxcl's.

Sizes. Default: the ``unlearn-class --tiny`` problem (Fashion-MNIST, 100 examples per class =
1000 training examples, MLP 784-128-64-10, 150 Adam steps of 64) with S = 16. ``--model resnet``:
the study's default recipe (ResNet-18 width 16, 5000 examples, 500 steps of 64) at S = 4; heavy
on the 2-core CPU (every model is the study's full original, whose training time the header of
``experiments/unlearn_class.py`` gives, times S per call, times two sides and the repeats; the
seeds there run in a compiled ``lax.map``, on an accelerator under ``vmap``): for a GPU. No
PyTorch side for the ResNet. ``--tiny``: S = 4, 20 steps, one repeat (seconds).

Per side: the first call (compilation included) apart, then ``--repeats`` interleaved calls
(``llm_step.bench``), median / min / max seconds per call (a call trains all S models),
``models_per_minute = S / median * 60``, and ``ratio`` = this side's median / jaxcl-vmapped's
(> 1: the one program is faster; the jaxcl-sequential row's ``ratio`` is the issue's figure).
Same models: the vmapped program's seed-i parameters against the sequential call for seed i
(``check``: max abs difference of the parameters, of the final training loss and of the test
accuracy, each seed; ``same_models`` when every seed's loss is within ``--tol``, 1e-4, and its
accuracy within one test example); the script exits 1 when they are not. On the CPU the MLP's
were bitwise equal at the tiny size. ``flops`` per call: 3 x the forward FLOPs of one batch (XLA's
``cost_analysis`` of ``model.apply``; the whole program's would count its step loop's body once)
x steps x S, Adam and the draws not counted, beside the CPU matmul peaks measured in the same run.

    python benchmarks_speed/shadow_models.py                       # MLP, S = 16, 150 steps
    python benchmarks_speed/shadow_models.py --model resnet        # ResNet-18, S = 4 (a GPU)
    python benchmarks_speed/shadow_models.py --tiny --out /tmp/shadow.jsonl
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm_step import append_rows, bench, cpu_matmul_peaks, meta

WORKLOAD = "shadow_models"
FLOPS_COUNTED = "3 x the forward of one batch (XLA cost_analysis of model.apply) x steps x S"
MODELS = {"mlp": ("unlearn-class", True, 16), "resnet": ("unlearn-class", False, 4)}  # config, tiny, S


def study_config(model: str, seeds: int, steps: int | None) -> dict:
    """The ``unlearn-class`` config of ``model`` (``mlp``: its ``--tiny`` size; ``resnet``: the
    default) with ``seeds`` seeds and, given ``steps``, that many training steps (``eval_every``
    lowered to a divisor of them, as the Phase requires)."""
    from jaxcl import config

    name, tiny, _ = MODELS[model]
    cfg = config.load(name, tiny=tiny)
    sets = [f"seeds={seeds}"]
    if steps:
        sets += [f"train.steps={steps}", f"train.eval_every={math.gcd(steps, cfg['train']['eval_every'])}"]
    return config.resolve(cfg, sets)


class JaxSide:
    """A timed side: ``fn(*args)`` per call (``seq``: one call per seed key), blocked on; the
    last call's output is kept in ``out``."""

    def __init__(self, name, fn, keys, problem, hp, seq=False):
        self.name, self.fn, self.keys, self.problem, self.hp, self.seq = name, fn, keys, problem, hp, seq
        self.out = None

    def __call__(self):
        import jax

        if self.seq:
            out = [self.fn(k, self.problem, self.hp) for k in self.keys]
        else:
            out = self.fn(self.keys, self.problem, self.hp)
        self.out = jax.block_until_ready(out)

    def models(self):
        """Seed i's ``(params, nonfinite_step)`` for every seed."""
        import jax

        if self.seq:
            return list(self.out)
        params, bad = self.out
        return [(jax.tree.map(lambda a, i=i: a[i], params), bad[i]) for i in range(len(bad))]


class TorchSide:
    """S MLPs of the recipe trained one after another in PyTorch eager."""

    name = "torch-sequential"

    def __init__(self, x, y, hidden, n_classes, seeds, steps, batch, lr, device):
        import torch

        self.torch, self.dev = torch, device
        self.x = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 127.5 - 1.0).to(device)
        self.y = torch.from_numpy(np.asarray(y, np.int64)).to(device)
        self.dims = [self.x.shape[1], *hidden, n_classes]
        self.seeds, self.steps, self.batch, self.lr = seeds, steps, batch, lr
        self.fused = self._fused_ok()
        self.models = []

    def _fused_ok(self):
        try:
            p = [self.torch.zeros(2, requires_grad=True, device=self.dev)]
            self.torch.optim.Adam(p, lr=self.lr, fused=True)
            return True
        except Exception:
            return False

    def _mlp(self):
        nn = self.torch.nn
        layers = []
        for a, b in zip(self.dims[:-2], self.dims[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(self.dims[-2], self.dims[-1])).to(self.dev)

    def __call__(self):
        torch = self.torch
        ce = torch.nn.functional.cross_entropy
        n = self.x.shape[0]
        models = []
        for i in range(self.seeds):
            torch.manual_seed(i)
            m = self._mlp()
            kw = {"fused": True} if self.fused else {"foreach": True}
            opt = torch.optim.Adam(m.parameters(), lr=self.lr, **kw)
            gen = torch.Generator(device=self.dev).manual_seed(i)
            for _ in range(self.steps):
                idx = torch.randint(0, n, (self.batch,), generator=gen, device=self.dev)
                opt.zero_grad(set_to_none=True)
                ce(m(self.x[idx]), self.y[idx]).backward()
                opt.step()
            models.append(m)
        if self.dev == "cuda":
            torch.cuda.synchronize()
        self.models = models


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--seeds", type=int, default=None, help="S (default 16 for the MLP, 4 for the ResNet)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed-batching", choices=("auto", "vmap", "map"), default="auto")
    p.add_argument("--tol", type=float, default=1e-4, help="same models: final training losses within")
    p.add_argument("--no-torch", action="store_true", help="jaxcl sides only")
    p.add_argument("--torch-device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tiny", action="store_true", help="S = 4, 20 steps, one repeat: seconds")
    p.add_argument("--note", default=None, help="a note stored in every row (the load, what changed)")
    p.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "shadow_models_cpu.jsonl"
        ),
    )
    a = p.parse_args(argv)
    if a.tiny:
        a.seeds, a.steps, a.repeats = a.seeds or 4, a.steps or 20, 1
    S = a.seeds or MODELS[a.model][2]

    import jax
    import jax.numpy as jnp

    from jaxcl.batching import over_seeds, resolve_mode
    from jaxcl.engine import check_finite
    from jaxcl.loops import as_hparams
    from jaxcl.methods import get_method
    from jaxcl.unlearn.classifier import ORIGINAL, load_problem, role_keys, trainer
    from jaxcl.unlearn.eval import batched

    cfg = study_config(a.model, S, a.steps)
    tr = cfg["train"]
    data, model = load_problem(cfg)
    problem = jax.device_put(data.learning(data.x_train, data.y_train))  # the original's problem
    hp = jax.device_put(as_hparams(get_method("finetune"), {"lr": tr["lr"]}))
    keys = role_keys(cfg, ORIGINAL)
    fn = trainer(model, cfg)
    mode = resolve_mode(a.seed_batching, model)
    one = jax.jit(fn)
    sides = [
        JaxSide(
            "jaxcl-vmapped",
            jax.jit(over_seeds(fn, (0, None, None), mode=mode, model=model)),
            keys,
            problem,
            hp,
        ),
        JaxSide("jaxcl-sequential", one, [keys[i] for i in range(S)], problem, hp, seq=True),
    ]
    use_torch = not a.no_torch and a.model == "mlp"
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
    if use_torch:
        sides.append(
            TorchSide(
                np.asarray(data.x_train),
                np.asarray(data.y_train),
                cfg["model"]["mlp"]["hidden"],
                model.n_classes,
                S,
                tr["steps"],
                tr["batch_size"],
                tr["lr"],
                a.torch_device,
            )
        )
    try:
        info = meta()  # with torch's version and threads
    except ImportError:  # no PyTorch here: jaxcl sides only
        from jaxcl import report

        info = {
            "versions": report.versions(),
            "device": report.device_info(),
            "git_commit": report.git_commit(),
        }
    on_cpu = jax.default_backend() == "cpu"
    peaks = None
    if on_cpu:
        shapes = [(64, 784, 128)] if a.tiny else [(1024, 1024, 1024), (2048, 2048, 2048), (64, 784, 128)]
        peaks = cpu_matmul_peaks(shapes)
    log = lambda s: print(s, flush=True)
    log(
        f"[shadow_models] {info['device'].get('device_kind')}: {model.name}, {data.x_train.shape[0]} train, "
        f"S = {S}, {tr['steps']} steps of {tr['batch_size']} per model, seeds {mode}"
        + ("" if use_torch else " (no PyTorch side)")
    )

    load = [os.getloadavg()[0]]
    first, st = bench(sides, a.repeats, log)
    load.append(os.getloadavg()[0])

    # untimed: same models (vmapped seed i == sequential seed i), each side's quality, FLOPs
    @jax.jit
    def quality(params):
        logits = batched(model.apply, params, problem.x_train)
        lp = jax.nn.log_softmax(logits)
        loss = -jnp.mean(jnp.take_along_axis(lp, problem.y_train[:, None], 1))
        acc = jnp.mean(batched(model.apply, params, problem.x_test).argmax(-1) == problem.y_test)
        return loss, acc

    by_side = {s.name: s for s in sides}
    q = {}
    for name in ("jaxcl-vmapped", "jaxcl-sequential"):
        ms = by_side[name].models()
        check_finite(np.stack([np.asarray(b) for _, b in ms]), where=f"({name})")
        q[name] = np.array([[float(v) for v in quality(p)] for p, _ in ms])
    pdiff = max(
        float(jnp.max(jnp.abs(u - v)))
        for (pv, _), (ps, _) in zip(by_side["jaxcl-vmapped"].models(), by_side["jaxcl-sequential"].models())
        for u, v in zip(jax.tree.leaves(pv), jax.tree.leaves(ps))
    )
    dq = np.abs(q["jaxcl-vmapped"] - q["jaxcl-sequential"]).max(0)
    acc_tol = 1.0 / int(data.x_test.shape[0])  # one test example (float32 accuracies: a relative slack)
    check = {
        "max_abs_diff_params": pdiff,
        "max_abs_diff_train_loss": float(dq[0]),
        "max_abs_diff_test_acc": float(dq[1]),
        "tol_train_loss": a.tol,
        "tol_test_acc": acc_tol,
        "same_models": bool(dq[0] <= a.tol and dq[1] <= acc_tol * (1 + 1e-4)),
    }
    if use_torch:
        import torch

        ts = by_side["torch-sequential"]
        tx = torch.from_numpy(np.asarray(data.x_test).reshape(len(data.x_test), -1).astype(np.float32))
        tx = (tx / 127.5 - 1.0).to(ts.dev)
        ty = torch.from_numpy(np.asarray(data.y_test, np.int64)).to(ts.dev)
        with torch.no_grad():
            q["torch-sequential"] = np.array(
                [
                    [
                        float(torch.nn.functional.cross_entropy(m(ts.x), ts.y)),
                        float((m(tx).argmax(-1) == ty).float().mean()),
                    ]
                    for m in ts.models
                ]
            )
    # XLA counts a loop's body once, so the whole program's cost_analysis undercounts: the
    # forward of one batch (no loop) x 3 (forward + backward) x steps x S instead
    xb = problem.x_train[: tr["batch_size"]]
    cost = jax.jit(model.apply).lower(model.init(keys[0]), xb).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = 3 * float(cost["flops"]) * tr["steps"] * S if cost and cost.get("flops") else None

    base = st["jaxcl-vmapped"]["median_s"]
    rows = []
    for s in sides:
        med = st[s.name]["median_s"]
        jaxcl = s.name.startswith("jaxcl")
        row = dict(
            workload=WORKLOAD,
            side=s.name,
            model=model.name,
            study="unlearn-class",
            role="original",
            n_train=int(data.x_train.shape[0]),
            seeds=S,
            steps=tr["steps"],
            batch=tr["batch_size"],
            lr=tr["lr"],
            seed_batching=mode if s.name == "jaxcl-vmapped" else "sequential",
            first_call_s=first[s.name],
            **st[s.name],
            seconds_per_model=med / S,
            models_per_minute=S / med * 60,
            ratio=med / base,  # this side's time / jaxcl-vmapped's: > 1, the one program is faster
            train_loss_mean=float(q[s.name][:, 0].mean()),
            test_acc_mean=float(q[s.name][:, 1].mean()),
            check=check if jaxcl else None,
            flops=flops if jaxcl else None,
            flops_counted=FLOPS_COUNTED if jaxcl else None,
            model_gflops_per_s=flops / med / 1e9 if jaxcl and flops else None,
            cpu_matmul_peak_gflops=peaks,
            torch_device=a.torch_device if not jaxcl else None,
            torch_adam="fused" if not jaxcl and s.fused else ("foreach" if not jaxcl else None),
            loadavg_1min=[round(v, 2) for v in load],
            **info,
        )
        if a.note:
            row["note"] = a.note
        rows.append(row)

    log(
        f"{'side':18s} {'first s':>8s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'models/min':>10s} "
        f"{'ratio':>6s} {'loss':>7s} {'test acc':>8s}"
    )
    for r in rows:
        log(
            f"{r['side']:18s} {r['first_call_s']:8.2f} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} "
            f"{r['models_per_minute']:10.1f} {r['ratio']:6.2f} {r['train_loss_mean']:7.4f} {r['test_acc_mean']:8.3f}"
        )
    log(
        f"same models (vmapped seed i vs sequential seed i): params {pdiff:.2e}, train loss "
        f"{check['max_abs_diff_train_loss']:.2e} (tol {a.tol:g}), test acc "
        f"{check['max_abs_diff_test_acc']:.2e} (tol {acc_tol:.4f}, one example): "
        f"{'yes' if check['same_models'] else 'NO'}"
    )
    if peaks:
        log(f"CPU matmul peak in this run: float32 {peaks['float32']} GFLOP/s")
    log(f"1-minute load average: {load}")
    append_rows(a.out, rows, log)
    if not check["same_models"]:
        print("shadow_models: the vmapped and the sequential models differ beyond --tol", file=sys.stderr)
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
