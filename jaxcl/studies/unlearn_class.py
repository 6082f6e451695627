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
:mod:`jaxcl.results`, plus ``forget_vs_retain.png`` and ``relearn.png``. The pieces (the problem,
the original and the oracle, a method's phase, the evaluation, the cache) are
:mod:`jaxcl.unlearn.classifier`; this runner is their schedule and the rows.

U-LiRA (Hayes et al. 2024; :mod:`jaxcl.unlearn.ulira`) with 3 or more seeds: the seeds are the
shadow models (``S`` originals and ``S`` oracles, already one vmapped program each; each method's
``S`` unlearned models, one more). Per row, LiRA's statistic on the forget examples is fitted per
example over the other ``S - 1`` seeds' unlearned ("in") and oracle ("out") models, and the held-out
seed's unlearned model is told from its oracle: columns ``ulira_auc`` / ``ulira_acc`` (per held-out
seed), row extra ``ulira`` (pooled AUC / accuracy and per-example scores). The oracle row is the
null check (0.5); the original row is plain LiRA (original vs retrained).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, plots, report, results
from .. import sweep as sweep_mod
from ..batching import over_seeds, resolve_mode
from ..config import ConfigError, method_section, method_settings
from ..driver import Report, Run, Study
from ..methods import METHODS as REGISTRY
from ..models import check_section, model_config
from ..parallel import place_seeds, seeds_map
from ..unlearn import scenarios, ulira
from ..unlearn.classifier import (
    N_CLASSES,
    RELEARN,
    UNLEARN,
    Context,
    entry_key,
    evaluator,
    phase_config,
    prepare,
    role_keys,
    unlearner,
)

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
    # dataset: fashion-mnist (offline), or cifar10 ($JAXCL_DATA/cifar10 or the hub)
    "data": {
        "dataset": "fashion-mnist",
        "forget_class": 3,
        "scenario": "full-class",
        "n_per_class": 500,  # 0: all
        "n_test": 1000,  # 0: all
    },
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
    # also train IAU's own original with its gradient-norm regulariser (rows original-reg, iau-reg;
    # a sweep of iau unlearns from it)
    "iau_reg_train": False,
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
    ("ulira_auc", "ULiRA_auc", "float"),
    ("ulira_acc", "ULiRA_acc", "float"),
    ("time_s", "time (s)", "seconds"),
]

# rows added by iau_reg_train: IAU's regularised original and IAU unlearning from it
REG_ROWS = ("original-reg", "iau-reg")
DATASETS = ("fashion-mnist", "cifar10")
MESH_BATCHES = ("train.batch_size", "unlearn.batch_size")  # split over a mesh's data axis
NEEDS_ALTERNATIVES = ("idk", "gu-idk", "dpo", "gu-dpo")  # language-model methods (batch['forget_alt'])
METHODS_HERE = tuple(n for n, s in REGISTRY.items() if s.applies_to("unlearn"))


# -- configuration ---------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    """Every value checked before any data is loaded or anything compiled."""
    config.check_positive(
        cfg,
        [f"train.{k}" for k in ("steps", "lr", "batch_size", "eval_every")]
        + [f"unlearn.{k}" for k in ("steps", "batch_size", "eval_every", "eval_size")]
        + [f"eval.{k}" for k in ("eval_cap", "relearn_steps", "relearn_every", "relearn_n", "relearn_lr")]
        + ["seeds"],
    )
    config.check_choice(cfg, "data.scenario", scenarios.SCENARIOS)
    config.check_choice(cfg, "data.dataset", DATASETS)
    d = cfg["data"]
    if not 0 <= d["forget_class"] < N_CLASSES:
        raise ConfigError(f"data.forget_class={d['forget_class']!r}; valid: 0 to {N_CLASSES - 1}")
    config.check_nonnegative(cfg, ["data.n_per_class", "data.n_test"], "every example")
    check_section(cfg["model"])
    for where in ("train", "unlearn"):
        try:
            phase_config(cfg[where], cfg["unlearn"]["eval_size"]).validate(where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    config.check_multiple(cfg, "eval.relearn_steps", "eval.relearn_every")
    config.check_nonnegative(cfg, ["iau_reg"])
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
        if m in REGISTRY and REGISTRY[m].needs_lora and not cfg["model"].get("lora", {}).get("rank"):
            raise ConfigError(f"{m} trains LoRA adapters only and the model has none: set model.lora.rank=8")
        rank = method_settings(cfg, m)[1].get("rank", 0)
        if rank > cfg["unlearn"]["steps"]:
            raise ConfigError(
                f"{m}.rank={rank} is larger than the history of retain gradients (unlearn.steps="
                f"{cfg['unlearn']['steps']}): the basis could never fill; valid: 1 to {cfg['unlearn']['steps']}"
            )


# -- the rows ------------------------------------------------------------------------------


def unlearn(ctx: Context, name: str) -> dict:
    """Method ``name`` from the original (all seeds in one program), evaluated and cached; row
    ``iau-reg`` is IAU from its own regularised original (``iau_reg_train``)."""
    reg = name == REG_ROWS[1]
    phase, hp = unlearner(ctx.model, ctx.cfg, "iau" if reg else name, ctx.mesh)
    start = ctx.regularised_original() if reg else ctx.params["original"]
    axes = (0, 0, None, None)
    fn = seeds_map(phase.run, axes, ctx.mesh, model=ctx.model)
    args = place_seeds((start, role_keys(ctx.cfg, UNLEARN), ctx.data, hp), axes, ctx.mesh)
    o, c_s, t_s = report.timed_jit(fn, *args)
    nonfinite = np.asarray(o["nonfinite_step"]).reshape(-1)
    if (nonfinite >= 0).any():
        ctx.say(f"  note: {name}: the loss became non-finite (first step per seed {nonfinite.tolist()})")
    trace = {k: np.asarray(v, np.float64).tolist() for k, v in o["trace"].items()}
    timing = {"compile_s": c_s, "time_s": t_s}
    return ctx.evaluated(name, o["params"], timing, {"trace": trace, "nonfinite_step": nonfinite.tolist()})


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


def ulira_row(phi_in, phi_out) -> tuple[dict, dict]:
    """U-LiRA of one row against the oracles (:func:`jaxcl.unlearn.ulira.ulira`, leave one seed
    out): the per-seed columns (AUC and best-threshold accuracy of the held-out seed's unlearned
    model vs its oracle on the forget examples) and the row's extra entry (pooled AUC / accuracy,
    per-example scores ``(S, N)``)."""
    r = ulira.ulira(jnp.asarray(phi_in, jnp.float32), jnp.asarray(phi_out, jnp.float32))
    per_fold = jax.vmap(ulira.decide)(r["scores_pos"], r["scores_neg"])
    cols = {"ulira_auc": per_fold["auc"], "ulira_acc": per_fold["acc"]}
    extra = {
        "auc_pooled": float(r["auc"]),
        "acc_pooled": float(r["acc"]),
        "scores_unlearned": np.round(np.asarray(r["scores_pos"], np.float64), 4).tolist(),
        "scores_oracle": np.round(np.asarray(r["scores_neg"], np.float64), 4).tolist(),
    }
    return cols, extra


# -- run -------------------------------------------------------------------------------------


def row_names(cfg: dict) -> tuple[str, ...]:
    """The rows of a run: oracle, original, each method, and with ``iau_reg_train`` (and IAU among
    the methods) also IAU's regularised original and IAU from it (:data:`REG_ROWS`), so both IAU
    rows come from the same seeds' originals (paired)."""
    reg = REG_ROWS if cfg["iau_reg_train"] and "iau" in cfg["methods"] else ()
    return ("oracle", "original", *cfg["methods"], *reg)


def body(cfg: dict, run: Run) -> Report:
    """Oracle, original and every method of the config; with ``run.out``, the models and rows are
    cached under ``<out>/cache`` (a rerun reuses them; ``--fresh`` ignores them). With a mesh, seeds
    are sharded over its ``seeds`` axis and every training batch over its ``data`` axis."""
    ctx = prepare(cfg, run.out, fresh=run.fresh, verbose=run.verbose, mesh=run.mesh)
    entries = {}
    for name in row_names(cfg):
        done = ctx.store.load_method(entry_key(cfg, name)) if ctx.store else None
        if done is None and name in ("oracle", "original"):
            done = ctx.evaluated(name, ctx.params[name], ctx.timing[name])
            _progress(ctx, name, done, cached=False)
        elif done is None and name == REG_ROWS[0]:
            done = ctx.evaluated(name, ctx.regularised_original(), ctx.timing["iau_original"])
            _progress(ctx, name, done, cached=False)
        elif done is None:
            done = unlearn(ctx, name)
            _progress(ctx, name, done, cached=False)
        else:
            _progress(ctx, name, done, cached=True)
        entries[name] = done
    oracle = entries["oracle"]["metrics"]
    phi_oracle = entries["oracle"].get("ulira_phi")
    with_ulira = cfg["seeds"] >= 3 and phi_oracle is not None
    if not with_ulira:
        ctx.say("  U-LiRA: needs 3 or more seeds (its shadow models are the seeds); not computed")
    rows = {}
    for name, e in entries.items():
        per_seed = per_seed_row(e["metrics"], oracle, e["relearn_curve"])
        per_seed["time_s"] = [e["timing"].get("time_s", 0.0)]
        extra = {k: e[k] for k in ("trace", "nonfinite_step") if k in e}
        if with_ulira and "ulira_phi" in e:  # a cache from before U-LiRA has no statistic
            cols, extra["ulira"] = ulira_row(e["ulira_phi"], phi_oracle)
            per_seed.update(cols)
        else:  # not computed: NaN (shown as -), so every row has every column
            per_seed.update({k: [float("nan")] * cfg["seeds"] for k in ("ulira_auc", "ulira_acc")})
        if name in cfg or "+" in name:
            extra["settings"] = method_section(cfg, name)
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
    rows, x = res["rows"], res["extra"]
    colours = plots.plt.get_cmap("tab20").colors  # 12+ rows: tab10 would repeat colours
    markers = "os^vD<>pXhP*"
    paths = [os.path.join(out_dir, "forget_vs_retain.png"), os.path.join(out_dir, "relearn.png")]
    with plots.figure(paths[0], (7.5, 4.5)) as (ax,):
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
        ax.legend(
            fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5)
        )  # methods cluster near the oracle
        ax.set_xlabel("forget accuracy (lower is more forgetting)")
        ax.set_ylabel("retain accuracy")
        ax.set_title(f"{x['model']}, {res['config']['data']['scenario']}")
    with plots.figure(paths[1], (5.5, 4.5)) as (ax,):
        for i, (name, c) in enumerate(x["relearn_curve"].items()):
            style = (
                {"color": "k", "linestyle": "--"}
                if name == "oracle"
                else {"color": colours[i % len(colours)]}
            )
            ax.plot(x["relearn_steps"], np.asarray(c).mean(0), marker="o", ms=3, label=name, **style)
        ax.set_xlabel("relearning steps on the forget slice")
        ax.set_ylabel("forget accuracy (held-out forget examples)")
        ax.legend(fontsize=7)
    return paths


# -- sweep -----------------------------------------------------------------------------------


def sweep_cells(cfg: dict, method: str, run: Run) -> sweep_mod.SweepPlan:
    """Every cell of the grid (one method's traced hyperparameters) x every seed, unlearning and
    evaluation, as one program (``over_seeds`` inside ``lax.map`` over cells); the original and
    the oracle as in a run (cached in ``out``)."""
    check_methods(cfg, [method])
    ctx = prepare(cfg, run.out, verbose=run.verbose)
    model = ctx.model
    oracle = ctx.store.load_method("oracle") if ctx.store else None
    oracle = oracle or ctx.evaluated("oracle", ctx.params["oracle"], ctx.timing["oracle"])
    phase, base = unlearner(model, cfg, method)
    evaluate = evaluator(model, cfg)

    def per_seed(params, k_unlearn, k_relearn, data, p_orig, p_oracle, hp):
        o = phase.run(params, k_unlearn, data, hp)
        m, curve = evaluate(o["params"], k_relearn, data, p_orig, p_oracle)
        return {**m, "relearn_curve": curve, "diverged": (o["nonfinite_step"] >= 0).astype(jnp.float32)}

    def row(o):
        metrics = {k: v for k, v in o.items() if k not in ("relearn_curve", "diverged")}
        per = per_seed_row(metrics, oracle["metrics"], o["relearn_curve"])
        per["diverged"] = [float(o["diverged"].sum())]
        return per, {"relearn_curve": np.asarray(o["relearn_curve"]).tolist()}

    shared = (
        ctx.start(method),
        role_keys(cfg, UNLEARN),
        role_keys(cfg, RELEARN),
        ctx.data,
        ctx.params["original"],
        ctx.params["oracle"],
    )
    return sweep_mod.SweepPlan(
        over_seeds(per_seed, (0, 0, 0, None, 0, 0, None), model=model),
        shared,
        base,
        row,
        COLUMNS,
        "gap",
        "gap to the oracle",
        diverged="diverged seeds",
        conv_cpu=resolve_mode("auto", model) == "map",
    )


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): training the original and the oracle and
    every method's unlearning phase with its first step, all seeds in each, on the config's
    problem (zero images of the data set's shapes: no data needed). The evaluation is not
    declared."""
    import jax

    from ..compile import Program, abstract, placed, seeds_spec
    from ..loops import as_hparams, build_method
    from ..methods import get_method
    from ..unlearn.classifier import ORIGINAL, load_problem, trainer

    data, model = load_problem(cfg, shapes_only=True)
    keys = abstract(jax.eval_shape(lambda: role_keys(cfg, ORIGINAL)), mesh, seeds_spec(mesh))
    train = jax.jit(seeds_map(trainer(model, cfg, mesh=mesh), (0, None, None), mesh, model=model))
    hp = abstract(as_hparams(get_method("finetune"), {"lr": cfg["train"]["lr"]}), mesh)
    out = [
        Program(f"train the {role}", train, (keys, abstract(problem, mesh), hp))
        for role, problem in (
            ("original", data.learning(data.x_train, data.y_train)),
            ("oracle", data.learning(data.x_retain, data.y_retain)),
        )
    ]
    params = placed(
        jax.eval_shape(jax.vmap(model.init), jax.eval_shape(lambda: role_keys(cfg, ORIGINAL))),
        mesh,
        seeds=True,
    )
    problem = abstract(data, mesh)
    axes = (0, 0, None, None)
    for name in cfg["methods"]:
        phase, mhp = unlearner(model, cfg, name, mesh)
        first = lambda p, k, d, h, phase=phase: phase.one_step(phase.start(p, k, d, h), d, h)  # noqa: E731
        args = (params, keys, problem, abstract(mhp, mesh))
        run = jax.jit(seeds_map(phase.run, axes, mesh, model=model))
        out.append(Program(f"{name} ({phase.phase.steps} steps)", run, args))
        if build_method(phase.spec, model, mhp, phase.options).trains:  # an edit (SSD) has no steps
            step = jax.jit(seeds_map(first, axes, mesh, model=model))
            out.append(Program(f"{name}: one step", step, args, steps=1, called=False))
    return out


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
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
