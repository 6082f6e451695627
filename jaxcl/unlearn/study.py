"""The ``unlearn-class`` study: train an original classifier once, run every unlearning method
from it (over seeds: ``vmap``, or a compiled ``lax.map`` for convolutional models on the CPU; one
compiled program per method), and measure
forgetting with metrics a head-only edit cannot fool (see :mod:`jaxcl.unlearn.eval`).

``jaxcl run unlearn-class [--method ssd --method gu-npo ...] [--forget-class 3]
[--scenario full-class|sub-class|random] [--seeds N] [--tiny]``

Default size (2-core CPU, about 4 minutes): ResNet-18 at width 16 (channels 16-32-64-128,
0.7M parameters; ``--model`` and the ``SIZES`` table change it) on 500 training examples per
class (5000) and 1000 test examples, 500 Adam steps of batch 64 (6.4 epochs) for the original
and the oracle, 15 unlearning steps per method. ``--tiny``: an MLP 784-128-64-10 on 100 examples
per class, in well under a minute. Prints one table and writes ``results.json``,
``forget_vs_retain.png`` and ``relearn.png`` to ``--out``; the original, the oracle and each
finished method are kept under ``<out>/cache`` and reused by the next run (:mod:`.store`;
``--fresh`` ignores them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..batching import over_seeds
from ..studies import Study, register_study
from . import eval as ev
from . import finetune, ga, graddiff, gu, iau, npo, oracle, random_label, scenarios, ssd
from .common import UnlearnConfig, train_classifier
from .store import RunStore

METHODS = {
    "original": lambda model, p, d, k, cfg: p,
    "finetune": finetune.run,
    "ga": ga.run,
    "graddiff": graddiff.run,
    "npo": npo.run,
    "random_label": random_label.run,
    "ssd": ssd.run,
    "gu-ga": lambda *a: gu.run(*a, base="ga"),
    "gu-graddiff": lambda *a: gu.run(*a, base="graddiff"),
    "gu-npo": lambda *a: gu.run(*a, base="npo"),
    "iau": iau.run,
}

# unlearning learning rates for the ResNet default (the MLP ones in UnlearnConfig destroy the
# retain accuracy of the ResNet for NPO and GradDiff); IAU keeps the reference 1e-3.
RESNET_LR = (
    ("finetune", 1e-3),
    ("ga", 2e-5),
    ("graddiff", 1e-5),
    ("npo", 2e-5),
    ("random_label", 1e-4),
    ("gu-ga", 2e-5),
    ("gu-graddiff", 5e-5),
    ("gu-npo", 2e-5),
)

SIZES = {
    "tiny": dict(
        model="mlp",
        model_kw=dict(hidden=(128, 64)),
        n_per_class=100,
        n_test=500,
        cfg=UnlearnConfig(
            train_steps=150, steps=15, eval_cap=300, relearn_steps=10, relearn_every=5, relearn_n=32
        ),
    ),
    "default": dict(
        model="resnet18",
        model_kw=dict(width=16),
        n_per_class=500,
        n_test=1000,
        cfg=UnlearnConfig(
            train_steps=500, steps=15, eval_cap=400, relearn_steps=10, relearn_every=5, lr=RESNET_LR
        ),
    ),
}

COLUMNS = [
    "forget_acc",
    "retain_acc",
    "test_acc",
    "test_forget_acc",
    "gap",
    "mia_forget",
    "mia_attack_auc",
    "cka_orig",
    "cka_oracle",
    "probe_forget_acc",
    "relearn_acc",
    "time_s",
]


def add_args(p):
    p.add_argument("--forget-class", type=int, default=3, help="class to forget (default 3: dress)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="retrain the original and oracle and rerun every method, ignoring <out>/cache",
    )
    p.add_argument("--scenario", default="full-class", choices=scenarios.SCENARIOS)
    p.add_argument("--model", default=None, help="resnet18 (default), vit, cnn, mlp")
    p.add_argument("--ssd-alpha", type=float, default=None, help="SSD alpha (10; 5 for vit)")
    p.add_argument("--ssd-lambda", type=float, default=1.0)
    p.add_argument(
        "--ssd-per-example",
        action="store_true",
        help="SSD importance as the per-example empirical Fisher (vmap) instead of "
        "squared minibatch gradients",
    )
    p.add_argument(
        "--ssd-exclude", nargs="*", default=(), help="parameter path fragments SSD leaves alone (e.g. head)"
    )
    p.add_argument("--gu-rank", type=int, default=8)
    p.add_argument("--gu-mode", default="per_tensor", choices=gu.MODES)
    p.add_argument("--gu-preconditioned", action="store_true")
    p.add_argument(
        "--iau-reg-train",
        action="store_true",
        help="train IAU's own original with the gradient-norm regulariser",
    )


def _build_model(name, kw):
    from ..models import cnn, mlp
    from ..models.resnet import resnet18
    from ..models.vit import vit

    builders = {"resnet18": resnet18, "vit": vit, "cnn": cnn, "mlp": mlp}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(builders)}")
    return builders[name]((28, 28, 1), 10, **kw)


def _config(args, size):
    cfg = size["cfg"]
    model = getattr(args, "model", None) or size["model"]
    alpha = getattr(args, "ssd_alpha", None)
    if alpha is None:
        alpha = 5.0 if model == "vit" else 10.0
    cfg = dataclasses.replace(
        cfg,
        ssd_alpha=alpha,
        ssd_lambda=getattr(args, "ssd_lambda", 1.0),
        ssd_per_example=getattr(args, "ssd_per_example", False),
        ssd_exclude=tuple(getattr(args, "ssd_exclude", ()) or ()),
        gu_rank=getattr(args, "gu_rank", 8),
        gu_mode=getattr(args, "gu_mode", "per_tensor"),
        gu_preconditioned=getattr(args, "gu_preconditioned", False),
    )
    return model, cfg.validate()


def _timed(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, t1 - t0, time.perf_counter() - t1


def run(args) -> dict:
    methods = [m for arg in (getattr(args, "method", None) or METHODS) for m in arg.split(",") if m]
    bad = [m for m in methods if m not in METHODS and m != "oracle"]
    if bad:
        raise ValueError(f"unknown unlearning method(s) {bad}; valid: oracle, {', '.join(METHODS)}")
    methods = [m for m in methods if m != "oracle"]
    n_seeds = int(getattr(args, "seeds", None) or 1)
    if n_seeds <= 0:
        raise ValueError("--seeds must be positive")
    size = SIZES["tiny" if getattr(args, "tiny", False) else "default"]
    model_name, cfg = _config(args, size)
    out_dir = getattr(args, "out", None) or os.path.join("runs", "unlearn-class")
    from ..data.loaders import fashion_mnist

    data = scenarios.make(
        fashion_mnist(),
        getattr(args, "scenario", "full-class"),
        getattr(args, "forget_class", 3),
        n_per_class=size["n_per_class"],
        n_test=size["n_test"],
    )
    model = _build_model(model_name, size["model_kw"] if model_name == size["model"] else {})
    # seeds: vmap, or a compiled lax.map for convolutional models on the CPU (jaxcl.batching)
    seeds = lambda fn, in_axes: over_seeds(fn, in_axes, model=model)
    keys = jax.random.split(jax.random.key(0), n_seeds)
    k_orig = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    k_meth = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)

    def train_orig(k, d, reg=False):
        ki, kt = jax.random.split(k)
        wrap = (lambda l: iau.with_grad_norm(l, weight=cfg.iau_reg)) if reg else None
        return train_classifier(model, model.init(ki), kt, d.x_train, d.y_train, cfg, loss_wrap=wrap)[0]

    print(
        f"unlearn-class: {model.name}, scenario {getattr(args, 'scenario', 'full-class')}, "
        f"class {getattr(args, 'forget_class', 3)}, {data.x_train.shape[0]} train "
        f"({data.x_forget.shape[0]} forget), {n_seeds} seed(s)",
        flush=True,
    )
    scenario, forget_class = getattr(args, "scenario", "full-class"), getattr(args, "forget_class", 3)
    models_key = {
        "model": model.name,
        "model_kw": size["model_kw"] if model_name == size["model"] else {},
        "scenario": scenario,
        "forget_class": forget_class,
        "n_per_class": size["n_per_class"],
        "n_test": size["n_test"],
        "n_train": int(data.x_train.shape[0]),
        "n_forget": int(data.x_forget.shape[0]),
        "seeds": n_seeds,
        "train": [cfg.train_steps, cfg.train_lr, cfg.batch],
    }
    store = RunStore(
        out_dir,
        models_key,
        {"config": dataclasses.asdict(cfg), "iau_reg_train": bool(getattr(args, "iau_reg_train", False))},
        fresh=bool(getattr(args, "fresh", False)),
    )
    train_oracle = seeds(lambda p, k, d: oracle.run(model, p, d, k, cfg), (0, 0, None))
    like = jax.eval_shape(jax.vmap(model.init), k_orig)  # trained params keep init's structure
    cached = store.load_models({"original": like, "oracle": like})
    if cached is not None:
        (models, meta) = cached
        p_orig, p_oracle = models["original"], models["oracle"]
        timing = {**meta["timing"], "loaded_from": store.models_dir}
        print(
            f"  original and oracle loaded from {store.models_dir} (trained in "
            f"{timing['original_train']['time_s']:.1f}s and {timing['oracle']['time_s']:.1f}s; "
            f"--fresh retrains)",
            flush=True,
        )
    else:
        p_orig, c_s, t_s = _timed(seeds(train_orig, (0, None)), k_orig, data)
        timing = {"original_train": {"compile_s": c_s, "time_s": t_s}}
        p_oracle, c_s, t_s = _timed(train_oracle, p_orig, k_meth, data)
        timing["oracle"] = {"compile_s": c_s, "time_s": t_s}
        store.save_models({"original": p_orig, "oracle": p_oracle}, {"timing": timing})
        print(
            f"  original {timing['original_train']['time_s']:.1f}s, oracle {t_s:.1f}s "
            f"(saved to {store.models_dir})",
            flush=True,
        )
    p_iau_orig = None
    if "iau" in methods and getattr(args, "iau_reg_train", False):
        p_iau_orig, c_s, t_s = _timed(seeds(lambda k, d: train_orig(k, d, True), (0, None)), k_orig, data)
        timing["iau_reg_original"] = {"compile_s": c_s, "time_s": t_s}

    eval_fn = jax.jit(seeds(lambda p, d, po, pr: ev.evaluate(model, p, d, po, pr, cfg), (0, None, 0, 0)))
    relearn_fn = jax.jit(seeds(lambda p, d, k: ev.relearn(model, p, d, k, cfg), (0, None, 0)))
    results = {}
    for name in ["oracle"] + methods:
        done = store.load_method(name)
        if done is not None:
            results[name] = done
            timing[name] = done["timing"]
            print(
                f"  {name:13s} forget {np.mean(done['metrics']['forget_acc']):.3f} retain "
                f"{np.mean(done['metrics']['retain_acc']):.3f} (cached)",
                flush=True,
            )
            continue
        if name == "oracle":
            params = p_oracle
        else:
            start = p_iau_orig if (name == "iau" and p_iau_orig is not None) else p_orig
            fn = seeds(lambda p, k, d, _n=name: METHODS[_n](model, p, d, k, cfg), (0, 0, None))
            params, c_s, t_s = _timed(fn, start, k_meth, data)
            timing[name] = {"compile_s": c_s, "time_s": t_s}
        m = jax.device_get(eval_fn(params, data, p_orig, p_oracle))
        curve = np.asarray(relearn_fn(params, data, k_meth))
        moved = float(
            np.mean(
                [
                    np.sqrt(
                        sum(
                            float(jnp.sum(jnp.square(a - b)))
                            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_orig))
                        )
                    )
                ]
            )
        )
        results[name] = {
            "metrics": {k: np.asarray(v).tolist() for k, v in m.items()},
            "relearn_curve": curve.tolist(),
            "weight_change": moved,
            "timing": timing[name],
        }
        store.save_method(name, results[name])
        print(
            f"  {name:13s} forget {np.mean(m['forget_acc']):.3f} retain "
            f"{np.mean(m['retain_acc']):.3f} ({timing[name]['time_s']:.2f}s)",
            flush=True,
        )
    table = summarise(results)
    print(format_table(table, n_seeds))
    os.makedirs(out_dir, exist_ok=True)
    payload = {
        "study": "unlearn-class",
        "model": model.name,
        "scenario": getattr(args, "scenario", "full-class"),
        "forget_class": getattr(args, "forget_class", 3),
        "seeds": n_seeds,
        "tiny": bool(getattr(args, "tiny", False)),
        "config": dataclasses.asdict(cfg),
        "n_train": int(data.x_train.shape[0]),
        "n_forget": int(data.x_forget.shape[0]),
        "timing": timing,
        "table": table,
        "results": results,
        "relearn_steps": list(range(0, cfg.relearn_steps + 1, cfg.relearn_every)),
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot(payload, out_dir)
    return payload


def summarise(results: dict) -> dict:
    """Per method: mean and std over seeds of each column; ``gap`` is the mean absolute gap to
    the oracle over forget/retain/test accuracy; ``relearn_acc`` the forget accuracy after the
    attack."""
    orc = results["oracle"]["metrics"]
    table = {}
    for name, r in results.items():
        m = {k: np.asarray(v, float) for k, v in r["metrics"].items()}
        gap = np.mean(
            [np.abs(m[k] - np.asarray(orc[k])) for k in ("forget_acc", "retain_acc", "test_acc")], 0
        )
        cols = dict(
            m,
            gap=gap,
            relearn_acc=np.asarray(r["relearn_curve"])[:, -1],
            time_s=np.asarray([r["timing"]["time_s"]]),
        )
        table[name] = {k: [float(np.mean(cols[k])), float(np.std(cols[k]))] for k in COLUMNS}
    return table


def format_table(table: dict, n_seeds: int) -> str:
    short = {
        "forget_acc": "forget",
        "retain_acc": "retain",
        "test_acc": "test",
        "test_forget_acc": "test_f",
        "gap": "gap",
        "mia_forget": "MIA_f",
        "mia_attack_auc": "MIA_auc",
        "cka_orig": "CKA_orig",
        "cka_oracle": "CKA_orc",
        "probe_forget_acc": "probe_f",
        "relearn_acc": "relearn",
        "time_s": "time_s",
    }
    head = f"{'method':13s}" + "".join(f"{short[c]:>9s}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, row in table.items():
        cells = []
        for c in COLUMNS:
            mu, sd = row[c]
            cells.append(f"{mu:9.2f}" if c == "time_s" else f"{mu:9.3f}")
        lines.append(f"{name:13s}" + "".join(cells))
    if n_seeds > 1:
        lines.append(f"(means over {n_seeds} seeds; std in results.json)")
    return "\n".join(lines)


def plot(payload: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = payload["table"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab20").colors  # 12+ methods: tab10 would repeat colours
    markers = "os^vD<>pXhP*"
    for i, (name, row) in enumerate(table.items()):
        ax.errorbar(
            row["forget_acc"][0],
            row["retain_acc"][0],
            xerr=row["forget_acc"][1],
            yerr=row["retain_acc"][1],
            fmt="*" if name == "oracle" else markers[i % len(markers)],
            ms=13 if name == "oracle" else 7,
            color="k" if name == "oracle" else colours[i % len(colours)],
            label=name,
            alpha=0.85,
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # methods cluster near the oracle
    ax.set_xlabel("forget accuracy (lower is more forgetting)")
    ax.set_ylabel("retain accuracy")
    ax.set_title(f"{payload['model']}, {payload['scenario']}")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "forget_vs_retain.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    steps = payload["relearn_steps"]
    colours = plt.get_cmap("tab20").colors  # 12+ methods: tab10 would repeat colours
    for i, (name, r) in enumerate(payload["results"].items()):
        c = np.asarray(r["relearn_curve"])
        ax.plot(
            steps,
            c.mean(0),
            "k--" if name == "oracle" else "-",
            marker="o",
            ms=3,
            label=name,
            **({} if name == "oracle" else {"color": colours[i % len(colours)]}),
        )
    ax.set_xlabel("relearning steps on the forget slice")
    ax.set_ylabel("forget accuracy (held-out forget examples)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "relearn.png"), dpi=120)
    plt.close(fig)


register_study(
    Study(
        name="unlearn-class",
        summary="unlearning on Fashion-MNIST (ResNet-18): SSD, GU, IAU and baselines vs the retrained "
        "oracle; accuracy, MIA, CKA, linear probe, relearning attack",
        run=run,
        add_args=add_args,
        methods=("oracle",) + tuple(METHODS),
    )
)
