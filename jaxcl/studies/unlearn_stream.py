"""Continual forgetting (``study: unlearn-stream``): a stream of forgetting requests, each one
class, served one after another by the same method from the model the previous request left
(Zhao et al., "Continual Forgetting for Pre-trained Vision Models", CVPR 2024: GS-LoRA; the
T-PAMI 2026 GS-LoRA++).

With ``c_1, ..., c_T`` the requested classes (``data.requests``) and ``theta_0`` the original
(the registry's ``finetune`` on every class, :func:`jaxcl.unlearn.classifier.trainer`), request
``t`` unlearns ``D_f^t`` (class ``c_t``'s training examples) from ``theta_{t-1}`` with the method's
unlearning phase (:func:`jaxcl.unlearn.classifier.unlearner`); its retain data ``D_r^t`` holds the
classes not requested so far (earlier requests' classes are gone from the training data, as in the
paper's protocol). With ``model.lora`` each request trains fresh adapters over the merged weights
of the previous one (GS-LoRA's one LoRA set per task, merged afterwards). The oracle of request
``t`` is the original's recipe from scratch on ``D_r^t``.

After every request the per-class test accuracy of every seed is recorded, ``(T + 1, K)`` per row
(index 0: the original). The columns, after the last request (the paper's metrics):

    Acc_f  = mean test accuracy over the requested classes c_1..c_T     (forget_acc; lower = forgotten)
    Acc_o  = the same over c_1..c_{T-1}, requests served before the last (old_forget_acc: does
             earlier forgetting hold?)
    Acc_r  = mean test accuracy over the classes never requested          (retain_acc)
    Drop_f = Acc_f(theta_0) - Acc_f,  H = 2 Acc_r Drop_f / (Acc_r + Drop_f)   (h_mean, GS-LoRA's H-Mean)
    gap    = (|Acc_f - Acc_f*| + |Acc_r - Acc_r*|) / 2 against the last request's oracle

Seeds run in one program per request and method (``seeds_map``); ``extra.class_acc`` holds every
row's per-seed matrices, ``extra.h_mean_curve`` every row's H-Mean after each request, and
``stream.png`` plots retained and forgotten accuracy over the requests.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, plots, report, results
from ..config import ConfigError
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..loops import as_hparams
from ..methods import METHODS as REGISTRY
from ..methods import get_method
from ..models import check_section, from_config, model_config
from ..parallel import place_seeds, seeds_map
from ..unlearn import eval as ev
from ..unlearn import scenarios
from ..unlearn.classifier import (
    N_CLASSES,
    ORACLE,
    ORIGINAL,
    UNLEARN,
    phase_config,
    role_keys,
    trainer,
    unlearner,
)
from .unlearn_class import check_methods

METHODS = ("finetune", "gu-npo", "gs_lora", "gs_lora_pp")

DEFAULTS = {
    # requests: the class forgotten at each request, in order
    "data": {"dataset": "fashion-mnist", "requests": (3, 5, 7), "n_per_class": 500, "n_test": 1000},
    "model": model_config("vit", lora={"rank": 8, "alpha": 8.0, "targets": ()}),
    "train": {"steps": 500, "lr": 1e-3, "batch_size": 64, "eval_every": 50},
    "unlearn": {"steps": 60, "batch_size": 64, "eval_every": 20, "eval_size": 400},
    "methods": METHODS,
    "oracle": True,  # retrain from scratch after every request (the reference of the gap column)
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("forget_acc", "Acc_f", "float"),
    ("old_forget_acc", "Acc_f old", "float"),
    ("retain_acc", "Acc_r", "float"),
    ("h_mean", "H-Mean", "float"),
    ("gap", "gap", "float"),
    ("time_s", "time (s)", "seconds"),
]


def validate(cfg: dict) -> None:
    """Every value checked before any data is loaded or anything compiled."""
    config.check_positive(
        cfg,
        [f"train.{k}" for k in ("steps", "lr", "batch_size", "eval_every")]
        + [f"unlearn.{k}" for k in ("steps", "batch_size", "eval_every", "eval_size")]
        + ["seeds"],
    )
    config.check_choice(cfg, "data.dataset", ("fashion-mnist", "cifar10"))
    req = cfg["data"]["requests"]
    if isinstance(req, int):
        req = cfg["data"]["requests"] = (req,)
    req = tuple(req)
    bad = [c for c in req if not isinstance(c, int) or not 0 <= c < N_CLASSES]
    if not req or bad or len(set(req)) != len(req):
        raise ConfigError(
            f"data.requests={list(req)!r}: distinct class indices 0 to {N_CLASSES - 1}, one per request "
            f"(e.g. --set data.requests=3,5,7)"
        )
    if len(req) >= N_CLASSES:
        raise ConfigError(
            f"data.requests: {len(req)} requests leave no class to retain; at most {N_CLASSES - 1}"
        )
    config.check_nonnegative(cfg, ["data.n_per_class", "data.n_test"], "every example")
    check_section(cfg["model"])
    for where in ("train", "unlearn"):
        try:
            phase_config(cfg[where], cfg["unlearn"]["eval_size"]).validate(where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    unknown = [m for m in cfg["methods"] if m not in REGISTRY or not REGISTRY[m].applies_to("unlearn")]
    if unknown:
        raise ConfigError(f"methods: {', '.join(unknown)} cannot unlearn; valid: {', '.join(METHODS_HERE)}")
    check_methods(cfg, cfg["methods"])


METHODS_HERE = tuple(n for n, s in REGISTRY.items() if s.applies_to("unlearn"))


def class_accuracy(model, n_classes: int):
    """Per seed ``(params, x, y) -> (K,)``: the test accuracy of each class."""

    def fn(params, x, y):
        hit = (jnp.argmax(ev.batched(model.apply, params, x), -1) == y).astype(jnp.float32)
        onehot = jax.nn.one_hot(y, n_classes, dtype=jnp.float32)
        return (hit @ onehot) / jnp.maximum(onehot.sum(0), 1.0)

    return fn


def stream_metrics(acc_StK, acc0_SK, requests, oracle_SK=None) -> dict:
    """The columns from per-seed class accuracies after the last request ``acc_StK[:, -1]`` (and
    the original's ``acc0_SK``); see the module docstring. Also ``h_mean_curve`` ``(S, T)``."""
    acc_StK = np.asarray(acc_StK, np.float64)
    acc0 = np.asarray(acc0_SK, np.float64)
    K, req = acc_StK.shape[-1], list(requests)

    def after(acc_SK, gone):  # (Acc_f, Acc_r, H) once the classes ``gone`` were requested
        f = acc_SK[:, gone].mean(-1)
        r = acc_SK[:, [c for c in range(K) if c not in gone]].mean(-1)
        drop = acc0[:, gone].mean(-1) - f
        return f, r, np.where(r + drop > 0, 2 * r * drop / np.where(r + drop > 0, r + drop, 1.0), 0.0)

    last = acc_StK[:, -1]
    f, r, h = after(last, req)
    out = {
        "forget_acc": f,
        "old_forget_acc": last[:, req[:-1]].mean(-1) if len(req) > 1 else np.full(len(f), np.nan),
        "retain_acc": r,
        "h_mean": h,
        "h_mean_curve": np.stack([after(acc_StK[:, t], req[:t])[2] for t in range(1, len(req) + 1)], 1),
    }
    if oracle_SK is not None:
        o = np.asarray(oracle_SK, np.float64)
        o_f, o_r, _ = after(o, req)
        out["gap"] = (np.abs(f - o_f) + np.abs(r - o_r)) / 2
    return out


def body(cfg: dict, run: Run) -> Report:
    """The original, then every method over the requests (and the oracle after each)."""
    from ..data import loaders

    d, mesh = cfg["data"], run.mesh
    req = tuple(d["requests"])
    ds = loaders.load(d["dataset"])
    problems, (x_test, y_test) = scenarios.stream(
        ds, req, n_per_class=d["n_per_class"] or None, n_test=d["n_test"] or None
    )
    model = from_config(cfg["model"], problems[0].x_train.shape[1:], ds.n_classes)
    run.say(
        f"unlearn-stream: {model.name}, requests {list(req)} (one class each), "
        f"{problems[0].x_train.shape[0]} train, {cfg['seeds']} seed(s)"
    )
    acc_fn = jax.jit(seeds_map(class_accuracy(model, ds.n_classes), (0, None, None), mesh, model=model))

    def accuracy(params):
        return np.asarray(acc_fn(*place_seeds((params, x_test, y_test), (0, None, None), mesh)))

    train = seeds_map(trainer(model, cfg, mesh=mesh), (0, None, None), mesh, model=model)
    hp_train = as_hparams(get_method("finetune"), {"lr": cfg["train"]["lr"]})

    def retrain(keys, problem, what):
        (p, bad), _, t_s = report.timed_jit(
            train, *place_seeds((keys, problem, hp_train), (0, None, None), mesh)
        )
        check_finite(bad, where=f"(training the {what})")
        return p, t_s

    full = problems[0].learning(problems[0].x_train, problems[0].y_train)
    original, t_orig = retrain(role_keys(cfg, ORIGINAL), full, "original")
    acc0 = accuracy(original)
    run.say(f"  original {t_orig:.1f}s: test accuracy {acc0.mean():.3f}")
    curves, times = {}, {}
    if cfg["oracle"]:
        accs, t_all = [acc0], 0.0
        for t, problem in enumerate(problems, 1):
            keys = jax.vmap(lambda k, t=t: jax.random.fold_in(k, t))(role_keys(cfg, ORACLE))
            p, t_s = retrain(
                keys, problem.learning(problem.x_retain, problem.y_retain), f"oracle of request {t}"
            )
            accs.append(accuracy(p))
            t_all += t_s
        curves["oracle"], times["oracle"] = np.stack(accs, 1), t_all
        run.say(f"  oracle       retrained after each request ({t_all:.1f}s)")
    for name in cfg["methods"]:
        phase, hp = unlearner(model, cfg, name, mesh)
        fn = seeds_map(phase.run, (0, 0, None, None), mesh, model=model)
        params, accs, t_all = original, [acc0], 0.0
        for t, problem in enumerate(problems, 1):
            keys = jax.vmap(lambda k, t=t: jax.random.fold_in(k, t))(role_keys(cfg, UNLEARN))
            o, _, t_s = report.timed_jit(
                fn, *place_seeds((params, keys, problem, hp), (0, 0, None, None), mesh)
            )
            bad = np.asarray(o["nonfinite_step"]).reshape(-1)
            if (bad >= 0).any():
                run.say(
                    f"  note: {name}, request {t}: the loss became non-finite (first step per seed {bad.tolist()})"
                )
            params = o["params"]
            accs.append(accuracy(params))
            t_all += t_s
        curves[name], times[name] = np.stack(accs, 1), t_all
        m = stream_metrics(curves[name], acc0, req)
        run.say(
            f"  {name:12s} Acc_f {m['forget_acc'].mean():.3f} Acc_r {m['retain_acc'].mean():.3f} "
            f"H {m['h_mean'].mean():.3f} ({t_all:.1f}s)"
        )
    oracle_last = curves["oracle"][:, -1] if "oracle" in curves else None
    rows, h_curves = {}, {}
    for name, c in {"original": np.stack([acc0] * (len(req) + 1), 1), **curves}.items():
        m = stream_metrics(c, acc0, req, oracle_last)
        h_curves[name] = m.pop("h_mean_curve").mean(0).tolist()
        per_seed = {**m, "time_s": [times.get(name, t_orig)]}
        if "gap" not in per_seed:
            per_seed["gap"] = np.full(cfg["seeds"], np.nan)
        rows[name] = results.row(per_seed)
    res = results.make(
        "unlearn-stream",
        cfg,
        rows,
        COLUMNS,
        timing={"original_s": t_orig, **{n: {"time_s": s} for n, s in times.items()}},
        extra={
            "model": model.name,
            "requests": list(req),
            "class_acc": {
                n: np.round(c, 4).tolist() for n, c in {"original": acc0[:, None], **curves}.items()
            },
            "h_mean_curve": h_curves,
        },
    )
    return Report(
        res,
        header=f"\n{cfg['name']}: after {len(req)} requests, mean over {cfg['seeds']} seed(s) (± std when more than one)\n",
        plots=(plot,),
    )


def plot(res: dict, out_dir: str) -> list[str]:
    """``stream.png``: every row's retained (solid) and forgotten (dashed) test accuracy after each
    request (request 0: the original)."""
    x = res["extra"]
    req = x["requests"]
    path = os.path.join(out_dir, "stream.png")
    colours = plots.plt.get_cmap("tab10").colors
    with plots.figure(path, (7.5, 4.5)) as (ax,):
        for i, (name, c) in enumerate(x["class_acc"].items()):
            if name == "original":
                continue
            c = np.asarray(c).mean(0)  # (T + 1, K)
            K = c.shape[-1]
            steps = np.arange(len(req) + 1)
            f = [c[t, req[:t]].mean() if t else c[0, req].mean() for t in steps]
            r = [c[t, [k for k in range(K) if k not in req[:t]]].mean() for t in steps]
            style = {"color": "k" if name == "oracle" else colours[i % len(colours)]}
            ax.plot(steps, r, marker="o", label=f"{name} retained", **style)
            ax.plot(steps, f, marker="x", linestyle="--", label=f"{name} forgotten", **style)
        ax.set_xticks(range(len(req) + 1), ["original"] + [f"-{c}" for c in req])
        ax.set_xlabel("forgetting request (class removed)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return [path]


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): training the original (every seed), and
    each method's unlearning phase of the first request with its first step, on the config's
    problem (zero images of the data set's shapes: no data needed). The later requests' phases are
    the same programs on one class fewer; the oracles are the original's program on less data."""
    from ..compile import Program, abstract, placed, seeds_spec
    from ..data import loaders
    from ..loops import build_method

    d = cfg["data"]
    ds = loaders.placeholder(d["dataset"])
    problems, _ = scenarios.stream(
        ds, d["requests"], n_per_class=d["n_per_class"] or None, n_test=d["n_test"] or None
    )
    model = from_config(cfg["model"], problems[0].x_train.shape[1:], ds.n_classes)
    keys = abstract(jax.eval_shape(lambda: role_keys(cfg, ORIGINAL)), mesh, seeds_spec(mesh))
    train = jax.jit(seeds_map(trainer(model, cfg, mesh=mesh), (0, None, None), mesh, model=model))
    hp = abstract(as_hparams(get_method("finetune"), {"lr": cfg["train"]["lr"]}), mesh)
    full = problems[0].learning(problems[0].x_train, problems[0].y_train)
    out = [Program("train the original", train, (keys, abstract(full, mesh), hp))]
    params = placed(
        jax.eval_shape(jax.vmap(model.init), jax.eval_shape(lambda: role_keys(cfg, ORIGINAL))),
        mesh,
        seeds=True,
    )
    problem, axes = abstract(problems[0], mesh), (0, 0, None, None)
    for name in cfg["methods"]:
        phase, mhp = unlearner(model, cfg, name, mesh)
        first = lambda p, k, d, h, phase=phase: phase.one_step(phase.start(p, k, d, h), d, h)  # noqa: E731
        args = (params, keys, problem, abstract(mhp, mesh))
        out.append(
            Program(
                f"{name}, request 1 ({phase.phase.steps} steps)",
                jax.jit(seeds_map(phase.run, axes, mesh, model=model)),
                args,
            )
        )
        like = jax.eval_shape(model.init, jax.random.key(0))
        if build_method(phase.spec, phase.bound(like), mhp, phase.options).trains:
            step = jax.jit(seeds_map(first, axes, mesh, model=model))
            out.append(Program(f"{name}: one step", step, args, steps=1, called=False))
    return out


STUDY = Study(
    "unlearn-stream",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=METHODS_HERE,
    mesh_batches=("train.batch_size", "unlearn.batch_size"),
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
