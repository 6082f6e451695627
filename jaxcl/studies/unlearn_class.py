"""The class-unlearning runner (``study: unlearn-class``): train an original classifier on
Fashion-MNIST once, unlearn a class (or a sub-class, or a random 10%) from it with every method
of the config, and measure forgetting with metrics a head-only edit cannot fool
(:mod:`jaxcl.unlearn.eval`) against the retrained oracle.

Everything trains through the one loop (:class:`jaxcl.loops.Phase`, on
:class:`jaxcl.unlearn.common.UnlearnData`): the original is the registry's ``finetune`` on the
whole training set in training mode (BatchNorm: batch statistics; then recalibrated running
statistics), the oracle the same recipe from a fresh initialisation on the retain set, each
method its registry spec from the original in evaluation mode, and the relearning attack
``finetune`` on a forget slice. Seeds run in one program per method (``over_seeds``: ``vmap``,
or a compiled ``lax.map`` for convolutional models on the CPU).

With an output folder, the original, the oracle and each finished method are kept under
``<out>/cache`` (:class:`jaxcl.unlearn.store.RunStore`) and reused by the next run with the same
settings (``fresh=True`` ignores them); a method's cache entry is keyed by its own section, so
``--set ssd.alpha=5`` reruns SSD only. Rows: oracle, original, each method; results.json through
:mod:`jaxcl.results`, plus ``forget_vs_retain.png`` and ``relearn.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import report, results
from .. import sweep as sweep_mod
from ..batching import over_seeds, resolve_mode
from ..config import ConfigError, check_positive, method_settings
from ..engine import check_finite
from ..loops import Phase, PhaseConfig, as_hparams, seeds_keys
from ..losses import with_grad_norm
from ..methods import METHODS as REGISTRY
from ..methods import MethodSpec, get_method
from ..models import MODELS, from_config, model_config
from ..parallel import place_seeds, seeds_map
from ..unlearn import eval as ev
from ..unlearn import scenarios
from ..unlearn.common import recalibrate
from ..unlearn.store import RunStore, fingerprint
from .driver import Report, Run, Study

METHODS = (
    "finetune",
    "ga",
    "graddiff",
    "npo",
    "random_label",
    "ssd",
    "gu-ga",
    "gu-graddiff",
    "gu-npo",
    "iau",
)

DEFAULTS = {
    "data": {"forget_class": 3, "scenario": "full-class", "n_per_class": 500, "n_test": 1000},  # 0: all
    "model": model_config("resnet18", resnet18={"width": 16}, mlp={"hidden": (128, 64)}),
    # the recipe of the original and the oracle (the registry's finetune, training mode)
    "train": {"steps": 500, "lr": 1e-3, "batch_size": 64, "eval_every": 50},
    # unlearning phases (batch_size also for the relearning attack); eval_size: examples of the
    # forget and retain sets in the continual evaluation (NLL every eval_every steps)
    "unlearn": {"steps": 15, "batch_size": 64, "eval_every": 5, "eval_size": 400},
    "eval": {"eval_cap": 400, "relearn_steps": 10, "relearn_every": 5, "relearn_n": 64, "relearn_lr": 1e-4},
    "methods": METHODS,
    "seeds": 1,
    "seed": 0,
    "iau_reg_train": False,  # train IAU's own original with its gradient-norm regulariser
    "iau_reg": 0.005,
}

COLUMNS = [
    ("forget_acc", "forget", "float"),
    ("retain_acc", "retain", "float"),
    ("test_acc", "test", "float"),
    ("test_forget_acc", "test_f", "float"),
    ("gap", "gap", "float"),
    ("mia_forget", "MIA_f", "float"),
    ("mia_attack_auc", "MIA_auc", "float"),
    ("cka_orig", "CKA_orig", "float"),
    ("cka_oracle", "CKA_orc", "float"),
    ("probe_forget_acc", "probe_f", "float"),
    ("relearn_acc", "relearn", "float"),
    ("time_s", "time (s)", "seconds"),
]

N_CLASSES = 10  # Fashion-MNIST
MESH_BATCHES = ("train.batch_size", "unlearn.batch_size")  # split over a mesh's data axis
NEEDS_ALTERNATIVES = ("idk", "gu-idk")  # language-model methods (batch['forget_alt'])
METHODS_HERE = tuple(n for n, s in REGISTRY.items() if s.applies_to("unlearn"))
ORIGINAL, ORACLE, UNLEARN, RELEARN = 1, 2, 3, 4  # key roles: fold_in(seed key, role)


# -- configuration ---------------------------------------------------------------------------


def phase_config(section: dict, eval_size: int) -> PhaseConfig:
    """A :class:`PhaseConfig` from a ``train`` or ``unlearn`` section."""
    return PhaseConfig(
        section["steps"], section["batch_size"], section["eval_every"], section.get("eval_size", eval_size)
    )


def validate(cfg: dict) -> None:
    """Every value checked before any data is loaded or anything compiled."""
    check_positive(
        cfg,
        [f"train.{k}" for k in ("steps", "lr", "batch_size", "eval_every")]
        + [f"unlearn.{k}" for k in ("steps", "batch_size", "eval_every", "eval_size")]
        + [f"eval.{k}" for k in ("eval_cap", "relearn_steps", "relearn_every", "relearn_n", "relearn_lr")]
        + ["seeds"],
    )
    d = cfg["data"]
    if d["scenario"] not in scenarios.SCENARIOS:
        raise ConfigError(f"data.scenario={d['scenario']!r}; valid: {', '.join(scenarios.SCENARIOS)}")
    if not 0 <= d["forget_class"] < N_CLASSES:
        raise ConfigError(f"data.forget_class={d['forget_class']!r}; valid: 0 to {N_CLASSES - 1}")
    for k in ("n_per_class", "n_test"):
        if d[k] < 0:
            raise ConfigError(f"data.{k}={d[k]} must be >= 0 (0: every example)")
    if cfg["model"]["name"] not in MODELS:
        raise ConfigError(f"model.name={cfg['model']['name']!r}; valid: {', '.join(sorted(MODELS))}")
    for where in ("train", "unlearn"):
        try:
            phase_config(cfg[where], cfg["unlearn"]["eval_size"]).validate(where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    e = cfg["eval"]
    if e["relearn_steps"] % e["relearn_every"]:
        raise ConfigError(
            f"eval.relearn_steps={e['relearn_steps']} must be a multiple of eval.relearn_every={e['relearn_every']}"
        )
    if cfg["iau_reg"] < 0:
        raise ConfigError(f"iau_reg={cfg['iau_reg']!r} must be >= 0")
    check_methods(cfg, cfg["methods"])


def check_methods(cfg: dict, methods) -> None:
    """Methods that need what this problem lacks, and GU ranks the unlearning steps cannot fill."""
    for m in methods:
        if m in NEEDS_ALTERNATIVES:
            valid = [n for n in METHODS_HERE if n not in NEEDS_ALTERNATIVES]
            raise ConfigError(
                f"method {m!r} needs alternative answers for the forget set, which a classifier "
                f"problem has none of (use random_label); valid here: {', '.join(valid)}"
            )
        rank = method_settings(cfg, m)[1].get("rank", 0)
        if rank > cfg["unlearn"]["steps"]:
            raise ConfigError(
                f"{m}.rank={rank} is larger than the history of retain gradients (unlearn.steps="
                f"{cfg['unlearn']['steps']}): the basis could never fill; valid: 1 to {cfg['unlearn']['steps']}"
            )


# -- the pieces: problem, training recipes, unlearning phases, evaluation ----------------------


def load_problem(cfg: dict):
    """``(data, model)``: the forgetting problem on Fashion-MNIST and the config's model."""
    from ..data.loaders import fashion_mnist

    d = cfg["data"]
    ds = fashion_mnist()
    data = scenarios.make(
        ds, d["scenario"], d["forget_class"], n_per_class=d["n_per_class"] or None, n_test=d["n_test"] or None
    )
    return data, from_config(cfg["model"], data.x_train.shape[1:], ds.n_classes)


def role_keys(cfg: dict, role: int) -> jax.Array:
    """One key per seed for a role (original, oracle, unlearning, relearning)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, role))(seeds_keys(cfg["seed"], cfg["seeds"]))


def grad_norm_finetune(weight: float) -> MethodSpec:
    """``finetune`` with IAU's regulariser ``L + weight ||grad L||^2`` (not registered)."""
    fin = get_method("finetune")

    def build(model, hp, params_like, **options):
        m = fin.build(model, hp, params_like, **options)
        return m._replace(loss_fn=with_grad_norm(m.loss_fn, weight=weight))

    return dataclasses.replace(fin, name="finetune+grad-norm", build=build)


def trainer(model, cfg: dict, spec: MethodSpec | None = None, mesh=None):
    """Per seed ``(key, problem, hp) -> (params, nonfinite_step)``: a fresh initialisation
    trained by ``spec`` (``finetune``) with the ``train`` recipe on the problem's retain data, in
    training mode, then BatchNorm recalibration on that data. ``mesh``: batches over its ``data``
    axis."""
    view = model._replace(apply=model.apply_train) if hasattr(model, "apply_train") else model
    phase = Phase(
        view,
        spec or get_method("finetune"),
        phase_config(cfg["train"], cfg["unlearn"]["eval_size"]),
        mesh=mesh,
    )

    def fn(key, problem, hp):
        k_init, k_run = jax.random.split(key)
        out = phase.run(model.init(k_init), k_run, problem, hp)
        return recalibrate(model, out["params"], problem.x_retain[:4000]), out["nonfinite_step"]

    return fn


def unlearner(model, cfg: dict, name: str, mesh=None) -> tuple[Phase, dict]:
    """The unlearning :class:`Phase` of method ``name`` and its traced hyperparameters."""
    hp, opts = method_settings(cfg, name)
    spec = get_method(name, "unlearn")
    phase = Phase(model, spec, phase_config(cfg["unlearn"], cfg["unlearn"]["eval_size"]), mesh=mesh, **opts)
    return phase, as_hparams(spec, hp)


def evaluator(model, cfg: dict):
    """Per seed ``(params, key, data, params_orig, params_oracle) -> (metrics, relearn curve)``."""
    e = cfg["eval"]

    def fn(params, key, data, p_orig, p_oracle):
        m = ev.evaluate(model, params, data, p_orig, p_oracle, eval_cap=e["eval_cap"])
        diff = [jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_orig))]
        m["weight_change"] = jnp.sqrt(sum(diff))
        curve = ev.relearn(
            model,
            params,
            data,
            key,
            steps=e["relearn_steps"],
            every=e["relearn_every"],
            n=e["relearn_n"],
            lr=e["relearn_lr"],
            batch_size=cfg["unlearn"]["batch_size"],
            eval_cap=e["eval_cap"],
        )
        return m, curve

    return fn


@dataclasses.dataclass
class Context:
    """What every run and sweep of a config shares: the problem, the model, the cache, the
    original and the oracle (all seeds), and how they were obtained."""

    cfg: dict
    data: object
    model: object
    store: RunStore | None
    params: dict  # "original", "oracle" (and "iau_original" once trained)
    timing: dict
    say: object
    _evaluate: object = None
    mesh: object = None  # seeds over its seeds axis, training batches over its data axis

    def evaluate(self, params):
        """``(metrics, relearn curves)`` of ``params`` (all seeds; compiled once per run)."""
        axes = (0, 0, None, 0, 0)
        if self._evaluate is None:
            fn = seeds_map(evaluator(self.model, self.cfg), axes, self.mesh, model=self.model)
            self._evaluate = jax.jit(fn)
        k = role_keys(self.cfg, RELEARN)
        args = (params, k, self.data, self.params["original"], self.params["oracle"])
        return self._evaluate(*place_seeds(args, axes, self.mesh))

    def start(self, name: str):
        """The parameters method ``name`` unlearns from (IAU's own regularised original when
        ``iau_reg_train``)."""
        if name != "iau" or not self.cfg["iau_reg_train"]:
            return self.params["original"]
        if "iau_original" not in self.params:
            spec = grad_norm_finetune(self.cfg["iau_reg"])
            axes = (0, None, None)
            fn = seeds_map(trainer(self.model, self.cfg, spec, self.mesh), axes, self.mesh, model=self.model)
            hp = as_hparams(get_method("finetune"), {"lr": self.cfg["train"]["lr"]})
            problem = self.data.learning(self.data.x_train, self.data.y_train)
            args = place_seeds((role_keys(self.cfg, ORIGINAL), problem, hp), axes, self.mesh)
            (p, bad), c_s, t_s = report.timed_jit(fn, *args)
            check_finite(bad, where="(training IAU's regularised original)")
            self.params["iau_original"] = p
            self.timing["iau_original"] = {"compile_s": c_s, "time_s": t_s}
            self.say(f"  IAU's regularised original {t_s:.1f}s")
        return self.params["iau_original"]


def entry_key(cfg: dict, name: str) -> str:
    """A method's cache file name: its name and a hash of its own settings."""
    if name in ("oracle", "original"):
        return name
    settings = dict(cfg[name])
    if name == "iau":
        settings.update(iau_reg_train=cfg["iau_reg_train"], iau_reg=cfg["iau_reg"])
    return f"{name}-{fingerprint(settings)}"


def prepare(cfg: dict, out: str | None, *, fresh: bool = False, verbose: bool = True, mesh=None) -> Context:
    """Load the problem and train (or load from ``<out>/cache``) the original and the oracle."""
    say = (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)
    data, model = load_problem(cfg)
    d = cfg["data"]
    how = "vmapped" if resolve_mode("auto", model) == "vmap" else "in a compiled loop"
    if mesh is not None:
        how = f"vmapped on a mesh of {dict(mesh.shape)}"
    say(
        f"unlearn-class: {model.name}, scenario {d['scenario']}, class {d['forget_class']}, "
        f"{data.x_train.shape[0]} train ({data.x_forget.shape[0]} forget), {cfg['seeds']} seed(s) ({how})"
    )
    models_key = {
        "model": cfg["model"]["name"],
        "model_kw": cfg["model"].get(cfg["model"]["name"], {}),
        "data": d,
        "n_train": int(data.x_train.shape[0]),
        "n_forget": int(data.x_forget.shape[0]),
        "seeds": cfg["seeds"],
        "seed": cfg["seed"],
        "train": cfg["train"],
    }
    run_key = {"unlearn": cfg["unlearn"], "eval": cfg["eval"]}
    store = RunStore(out, models_key, run_key, fresh=fresh) if out else None
    k_orig, k_oracle = role_keys(cfg, ORIGINAL), role_keys(cfg, ORACLE)
    like = jax.eval_shape(jax.vmap(model.init), k_orig)  # trained params keep init's structure
    cached = store.load_models({"original": like, "oracle": like}) if store else None
    if cached is not None:
        params, meta = cached
        timing = {**meta["timing"], "loaded_from": store.models_dir}
        say(
            f"  original and oracle loaded from {store.models_dir} (trained in "
            f"{timing['original']['time_s']:.1f}s and {timing['oracle']['time_s']:.1f}s; --fresh retrains)"
        )
        return Context(cfg, data, model, store, dict(params), timing, say, mesh=mesh)
    axes = (0, None, None)
    fn = seeds_map(trainer(model, cfg, mesh=mesh), axes, mesh, model=model)
    hp = as_hparams(get_method("finetune"), {"lr": cfg["train"]["lr"]})
    params, timing = {}, {}
    for name, keys, problem in (
        ("original", k_orig, data.learning(data.x_train, data.y_train)),
        ("oracle", k_oracle, data.learning(data.x_retain, data.y_retain)),
    ):
        (params[name], bad), c_s, t_s = report.timed_jit(fn, *place_seeds((keys, problem, hp), axes, mesh))
        check_finite(bad, where=f"(training the {name})")
        timing[name] = {"compile_s": c_s, "time_s": t_s}
    where = ""
    if store:
        store.save_models(params, {"timing": timing})
        where = f" (saved to {store.models_dir})"
    say(f"  original {timing['original']['time_s']:.1f}s, oracle {timing['oracle']['time_s']:.1f}s{where}")
    return Context(cfg, data, model, store, params, timing, say, mesh=mesh)


def evaluated(ctx: Context, name: str, params, timing: dict, extra: dict | None = None) -> dict:
    """Evaluate ``params`` (all seeds), cache and return the entry of row ``name``."""
    m, curve = ctx.evaluate(params)
    entry = {
        "metrics": {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in m.items()},
        "relearn_curve": np.asarray(curve, np.float64).tolist(),
        "timing": timing,
        **(extra or {}),
    }
    if ctx.store:
        ctx.store.save_method(entry_key(ctx.cfg, name), entry)
    return entry


def unlearn(ctx: Context, name: str) -> dict:
    """Method ``name`` from the original (all seeds in one program), evaluated and cached."""
    phase, hp = unlearner(ctx.model, ctx.cfg, name, ctx.mesh)
    start = ctx.start(name)
    axes = (0, 0, None, None)
    fn = seeds_map(phase.run, axes, ctx.mesh, model=ctx.model)
    args = place_seeds((start, role_keys(ctx.cfg, UNLEARN), ctx.data, hp), axes, ctx.mesh)
    o, c_s, t_s = report.timed_jit(fn, *args)
    nonfinite = np.asarray(o["nonfinite_step"]).reshape(-1)
    if (nonfinite >= 0).any():
        ctx.say(f"  note: {name}: the loss became non-finite (first step per seed {nonfinite.tolist()})")
    trace = {k: np.asarray(v, np.float64).tolist() for k, v in o["trace"].items()}
    timing = {"compile_s": c_s, "time_s": t_s}
    return evaluated(ctx, name, o["params"], timing, {"trace": trace, "nonfinite_step": nonfinite.tolist()})


def _progress(ctx: Context, name: str, entry: dict, cached: bool) -> None:
    m = entry["metrics"]
    how = "(cached)" if cached else f"({entry['timing']['time_s']:.2f}s)"
    ctx.say(f"  {name:13s} forget {np.mean(m['forget_acc']):.3f} retain {np.mean(m['retain_acc']):.3f} {how}")


def per_seed_row(metrics: dict, oracle: dict, relearn_curve) -> dict:
    """The table's per-seed columns: the metrics, ``gap`` (the mean absolute gap to the oracle
    over forget / retain / test accuracy) and ``relearn_acc`` (forget accuracy after the attack)."""
    m = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
    gap = np.mean([np.abs(m[k] - np.asarray(oracle[k])) for k in ("forget_acc", "retain_acc", "test_acc")], 0)
    return {**m, "gap": gap, "relearn_acc": np.asarray(relearn_curve)[:, -1]}


# -- run -------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Oracle, original and every method of the config; with ``run.out``, the models and rows are
    cached under ``<out>/cache`` (a rerun reuses them; ``--fresh`` ignores them). With a mesh, seeds
    are sharded over its ``seeds`` axis and every training batch over its ``data`` axis."""
    ctx = prepare(cfg, run.out, fresh=run.fresh, verbose=run.verbose, mesh=run.mesh)
    entries = {}
    for name in ("oracle", "original", *cfg["methods"]):
        done = ctx.store.load_method(entry_key(cfg, name)) if ctx.store else None
        if done is None and name in ("oracle", "original"):
            done = evaluated(ctx, name, ctx.params[name], ctx.timing[name])
            _progress(ctx, name, done, cached=False)
        elif done is None:
            done = unlearn(ctx, name)
            _progress(ctx, name, done, cached=False)
        else:
            _progress(ctx, name, done, cached=True)
        entries[name] = done
    oracle = entries["oracle"]["metrics"]
    rows = {}
    for name, e in entries.items():
        per_seed = per_seed_row(e["metrics"], oracle, e["relearn_curve"])
        per_seed["time_s"] = [e["timing"].get("time_s", 0.0)]
        extra = {k: e[k] for k in ("trace", "nonfinite_step") if k in e}
        if name in cfg:
            extra["settings"] = cfg[name]
        rows[name] = results.row(per_seed, timing=e["timing"], **extra)
    e = cfg["eval"]
    res = results.make(
        "unlearn-class",
        cfg,
        rows,
        COLUMNS,
        timing={**{n: x["timing"] for n, x in entries.items()}, "models": ctx.timing},
        extra={
            "model": ctx.model.name,
            "n_train": int(ctx.data.x_train.shape[0]),
            "n_forget": int(ctx.data.x_forget.shape[0]),
            "seed_batching": resolve_mode("auto", ctx.model),
            "relearn_steps": list(range(0, e["relearn_steps"] + 1, e["relearn_every"])),
            "relearn_curve": {n: x["relearn_curve"] for n, x in entries.items()},
        },
    )
    return Report(
        res,
        header=f"\n{cfg['name']}: mean over {cfg['seeds']} seed(s) (± std when more than one)\n",
        plots=(plot,),
    )


def plot(res: dict, out_dir: str) -> list[str]:
    """``forget_vs_retain.png`` (every row's mean ± std) and ``relearn.png`` (the attack's curves);
    returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, x = res["rows"], res["extra"]
    colours = plt.get_cmap("tab20").colors  # 12+ rows: tab10 would repeat colours
    markers = "os^vD<>pXhP*"
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, r) in enumerate(rows.items()):
        f, rt = r["summary"]["forget_acc"], r["summary"]["retain_acc"]
        oracle = name == "oracle"
        ax.errorbar(
            f["mean"],
            rt["mean"],
            xerr=f["std"],
            yerr=rt["std"],
            fmt="*" if oracle else markers[i % len(markers)],
            ms=13 if oracle else 7,
            color="k" if oracle else colours[i % len(colours)],
            label=name,
            alpha=0.85,
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # methods cluster near the oracle
    ax.set_xlabel("forget accuracy (lower is more forgetting)")
    ax.set_ylabel("retain accuracy")
    ax.set_title(f"{x['model']}, {res['config']['data']['scenario']}")
    fig.tight_layout()
    paths = [os.path.join(out_dir, "forget_vs_retain.png"), os.path.join(out_dir, "relearn.png")]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (name, c) in enumerate(x["relearn_curve"].items()):
        style = (
            {"color": "k", "linestyle": "--"} if name == "oracle" else {"color": colours[i % len(colours)]}
        )
        ax.plot(x["relearn_steps"], np.asarray(c).mean(0), marker="o", ms=3, label=name, **style)
    ax.set_xlabel("relearning steps on the forget slice")
    ax.set_ylabel("forget accuracy (held-out forget examples)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# -- sweep -----------------------------------------------------------------------------------


def sweep_cells(cfg: dict, grid: dict, *, chunk: int | None, out: str | None, verbose: bool) -> dict:
    """Every cell of ``grid`` (``{"<method>.<hparam>": [values]}``, one method) x every seed,
    unlearning and evaluation, as one program (``over_seeds`` inside ``lax.map`` over cells,
    ``chunk`` cells at a time); the original and the oracle as in a run (cached in ``out``)."""
    method, names, cells = sweep_mod.cells_of(cfg, grid, "unlearn")
    check_methods(cfg, [method])
    return _sweep(cfg, method, names, cells, grid, chunk, out, verbose)


def _sweep(cfg, method, names, cells, grid, chunk, out, verbose) -> dict:
    ctx = prepare(cfg, out, verbose=verbose)
    model = ctx.model
    oracle = ctx.store.load_method("oracle") if ctx.store else None
    oracle = oracle or evaluated(ctx, "oracle", ctx.params["oracle"], ctx.timing["oracle"])
    phase, base = unlearner(model, cfg, method)
    hp_grid = sweep_mod.stack_cells(base, names, cells)
    evaluate = evaluator(model, cfg)

    def per_seed(params, k_unlearn, k_relearn, data, p_orig, p_oracle, hp):
        o = phase.run(params, k_unlearn, data, hp)
        m, curve = evaluate(o["params"], k_relearn, data, p_orig, p_oracle)
        return {**m, "relearn_curve": curve, "diverged": (o["nonfinite_step"] >= 0).astype(jnp.float32)}

    one_cell = over_seeds(per_seed, (0, 0, 0, None, 0, 0, None), model=model)
    shared = (
        ctx.start(method),
        role_keys(cfg, UNLEARN),
        role_keys(cfg, RELEARN),
        ctx.data,
        ctx.params["original"],
        ctx.params["oracle"],
    )
    run_cells, chunk, mem, compile_s = sweep_mod.compile_cells(
        one_cell, shared, hp_grid, len(cells), chunk, conv_cpu=resolve_mode("auto", model) == "map"
    )
    t1 = time.perf_counter()
    o = jax.device_get(jax.block_until_ready(run_cells(*shared, hp_grid)))
    run_s = time.perf_counter() - t1
    rows = {}
    for i, c in enumerate(cells):
        metrics = {k: v[i] for k, v in o.items() if k not in ("relearn_curve", "diverged")}
        row = per_seed_row(metrics, oracle["metrics"], o["relearn_curve"][i])
        row["diverged"] = [float(o["diverged"][i].sum())]
        rows[sweep_mod.cell_name(names, c)] = results.row(
            row, cell=dict(zip(names, c)), relearn_curve=np.asarray(o["relearn_curve"][i]).tolist()
        )
    cols = [c for c in COLUMNS if c[0] != "time_s"] + [("diverged", "diverged seeds", "float")]
    res = results.make(
        "sweep",
        cfg,
        rows,
        cols,
        first="cell",
        timing={"compile": compile_s, "run": run_s},
        extra={"method": method, "grid": grid, "chunk": chunk, "n_cells": len(cells), "memory": mem},
    )
    return sweep_mod.finish(res, names, grid, out, verbose, "gap", "gap to the oracle")


STUDY = Study(
    "unlearn-class",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    methods=METHODS_HERE,
    mesh_batches=MESH_BATCHES,
    no_resume="a rerun into the same --out reuses its cached models and rows; --fresh ignores them",
)
run, sweep = STUDY.run, STUDY.sweep
