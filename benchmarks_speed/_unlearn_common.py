"""Shared helpers of the unlearning speed benchmarks (ssd.py, gu_overhead.py): the PyTorch
ResNet-18 twin of :mod:`jaxcl.models.resnet`, data, timing and JSON-lines output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np


def set_threads(n: int) -> None:
    """Pin both libraries to ``n`` CPU threads (call before the first jax import; 0: defaults)."""
    if n <= 0:
        return
    if n == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    import torch

    torch.set_num_threads(n)


def torch_resnet18(width: int, n_classes: int = 10):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            h = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(h)) + self.short(x))

    layers = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, s in enumerate((1, 2, 2, 2)):
        cout = width * 2**i
        layers += [Block(cin, cout, s), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)


def fmnist_subset(n_train: int, forget_class: int = 3, seed: int = 0):
    from jaxcl.data.loaders import fashion_mnist

    ds = fashion_mnist()
    idx = np.random.default_rng(seed).permutation(len(ds.y_train))[:n_train]
    x, y = ds.x_train[idx], ds.y_train[idx]
    return x, y, x[y == forget_class], y[y == forget_class]


def torch_float(x):
    import torch

    return torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).contiguous()


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleave(sides: dict, repeats: int) -> dict:
    """First call of each side (compile + run) timed apart, then ``repeats`` interleaved calls."""
    first = {k: timed(f, 1)[0] for k, f in sides.items()}
    times = {k: [] for k in sides}
    for _ in range(repeats):
        for k, f in sides.items():
            times[k] += timed(f, 1)
    return {
        k: {"first_s": first[k], "median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
        for k, v in times.items()
    }


def meta() -> dict:
    import jax
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except Exception:
        commit = ""
    return {
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.machine(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "commit": commit,
    }


def write_jsonl(path, rows):
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    for r in rows:
        print(json.dumps(r))


def common_args(ap, out_name: str) -> None:
    """The options every unlearning benchmark shares."""
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for both sides (default 1: on the shared, oversubscribed "
        "2-core machine torch's spinning OpenMP threads otherwise run ~10-100x "
        "slower; 0 = each library's default)",
    )
    ap.add_argument("--out", default=f"benchmarks_speed/results/{out_name}")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch side")
    ap.add_argument(
        "--torch-device", choices=("cpu", "cuda"), default="cpu", help="where the PyTorch side runs"
    )


def synced(fn, device: str):
    """``fn`` followed by ``torch.cuda.synchronize()`` when the PyTorch side runs on CUDA."""
    if device != "cuda":
        return fn
    import torch

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call
