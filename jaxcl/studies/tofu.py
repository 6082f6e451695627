"""The TOFU runner (``study: tofu``): unlearn fictitious authors from a fine-tuned language model
with every unlearning method of the registry, and score it with TOFU's metrics.

Benchmark: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs" (2024); recipe and
metric definitions as open-unlearning (Dorna et al., "OpenUnlearning", 2025). With ``D_f`` the
forget split (1/5/10 % of the 200 authors' 4000 question/answer pairs) and ``D_r`` the rest:

1. target: the model fine-tuned on ``D_f + D_r`` (AdamW, weight decay 0.01, gradient clipping at
   norm 1, linear warm-up over the first tenth then a cosine to lr/10; 5 epochs, lr 1e-5,
   batch 32); retain model (the reference "never saw D_f"): the same recipe on ``D_r`` only;
2. each method of ``methods`` unlearns ``D_f`` from the target (10 epochs of ``D_f``, batch 32;
   every batch carries ``D_r`` rows at the top level, ``D_f`` rows in ``'forget'`` and the same
   questions with refusal answers in ``'forget_alt'``, for IDK);
3. every model is scored by :class:`jaxcl.tofu.eval.Evaluator`: answer probability, truth
   ratio and ROUGE-L recall of greedy answers on the forget / retain / real-authors /
   world-facts sets, forget quality ``FQ = p-value of KS(TR_model(D_f), TR_retain(D_f))`` and
   model utility ``MU = harmonic mean of the nine (prob, TR, ROUGE) values on retain, real
   authors and world facts``; the refusal rates of the greedy answers
   (:func:`jaxcl.tofu.metrics.is_refusal`: TOFU's refusal sentences or a refusal phrase): on the
   forget set (``forget_refusal``) and on the three harmless sets pooled (``sarr``, SafeEraser's
   safe answer refusal rate, Chen et al. 2025: over-forgetting as refusals, lower is better);
4. membership inference (:mod:`jaxcl.unlearn.attacks`, open-unlearning's signs) of every model,
   the forget rows (members of the target) against the holdout: ``data.n_holdout`` QA rows cut
   from the END of the retain split before ``n_retain`` is applied (default ``-1``:
   ``max(8, n_forget // 10)``; 0: no holdout and no MIA columns), trained on by neither the
   target nor the retain model. Columns ``mia_loss``, ``mia_zlib``, ``mia_min_k``,
   ``mia_min_k_plus_plus`` (AUC, 1: the forget rows look like members, 0.5: indistinguishable;
   Min-K% with k = 0.4) and ``privleak`` (MUSE's PrivLeak in %, of the Min-K% AUC against the
   retain model's: 0 for the retain model, negative: under-unlearned). GradNorm (a per-example
   gradient) and Reference are not run here: :func:`jaxcl.unlearn.attacks.mia` has them. The
   holdout rows of a retain split come from its last authors; on the full split the last of them
   has other questions in training (TOFU has 20 per author), so the holdout is unseen by row,
   not always by author.

Everything trains through the one loop: :class:`jaxcl.loops.Phase` (one jitted program per
phase) with the registry's ``finetune`` for the target and the retain model and each method's
own spec for unlearning (:mod:`jaxcl.unlearn.lm`), on the :class:`~jaxcl.unlearn.lm.LMProblem` of
:func:`jaxcl.tofu.problem.load_problem`. Steps of a phase are
``max(1, round(epochs * n / batch_size))``. Rows: ``retain (reference)``, ``target (before
unlearning)``, then each method; results.json through :mod:`jaxcl.results`, and ``fq_vs_mu.png``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, plots, report, results
from .. import sweep as sweep_mod
from ..config import ConfigError, method_section
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..models import llama, lm
from ..parallel import place_seeds
from ..tofu import data as tdata
from ..tofu.eval import EVAL_SETS, Evaluator, scores
from ..tofu.problem import load_holdout, load_model, load_problem, n_holdout
from ..unlearn import attacks
from ..unlearn.eval import auc
from ..unlearn.lm import LMProblem, check_ranks, trainer, unlearner

METHODS = ("ga", "graddiff", "npo", "idk", "gu-ga", "gu-graddiff", "gu-npo", "gu-idk")
# the methods it can run: the default ones and the newer open-unlearning baselines with their GU
# variants (dpo on TOFU's refusal alternatives is IdkDPO)
NEWER = ("simnpo", "wga", "satimp", "undial", "dpo")
# RMU (activation steering; no GU variant: its retain term is not the retain NLL); SSD and IAU (edits:
# the same phase, no training steps; their importances and gradients on the LM rows)
CHOICES = METHODS + NEWER + tuple(f"gu-{m}" for m in NEWER) + ("rmu", "ssd", "iau")
SPLITS = tuple(tdata.FORGET_SIZES)
MESH_BATCHES = ("train.batch_size", "unlearn.batch_size")  # split over a mesh's data axis

DEFAULTS = {
    # name: smollm2-135m | tiny | a .gguf file | a Hugging Face checkpoint folder | a hub id
    "model": lm.section("smollm2-135m", tokenizer="smollm2", compute_dtype="bfloat16"),
    # n_forget / n_retain / n_eval: 0 = the whole split / set; data_dir "": the package's copy
    # n_holdout: non-member rows cut from the end of the retain split, trained on by no model;
    # -1 = max(8, n_forget // 10), 0 = none (no MIA columns)
    "data": {
        "split": "forget01",
        "n_forget": 0,
        "n_retain": 0,
        "n_holdout": -1,
        "n_eval": 0,
        "max_len": 192,
        "data_dir": "",
    },
    # the target and the retain model (the registry's finetune); eval_every 0: once at the end
    "train": {
        "epochs": 5.0,
        "batch_size": 32,
        "lr": 1e-5,
        "weight_decay": 0.01,
        "clip_norm": 1.0,
        "eval_every": 0,
    },
    # unlearning phases; eval_size: rows of D_f and D_r in the NLL traced every eval_every steps
    "unlearn": {"epochs": 10.0, "batch_size": 32, "eval_every": 0, "eval_size": 32},
    "eval": {"batch_size": 64, "max_new_tokens": 128, "prompt_len": 96},
    "methods": METHODS,
    "seeds": 1,
    "seed": 0,
}

COLUMNS = [
    ("forget_quality", "FQ", "sci"),
    ("model_utility", "MU", "float"),
    ("forget_prob", "F.prob", "float"),
    ("forget_rouge", "F.rouge", "float"),
    ("forget_truth_ratio", "F.TR", "float"),
    ("retain_prob", "R.prob", "float"),
    ("retain_rouge", "R.rouge", "float"),
    ("real_authors_rouge", "RA.rouge", "float"),
    ("world_facts_rouge", "WF.rouge", "float"),
    # refusal rates of the greedy answers (jaxcl.tofu.metrics.is_refusal): on the forget set, and
    # SARR on the harmless sets (SafeEraser's over-forgetting measure, lower is better)
    ("forget_refusal", "F.refusal", "pct"),
    ("sarr", "SARR", "pct"),
    ("time_s", "time (s)", "seconds"),
]
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")  # cheap: one forward pass per row
MIA_COLUMNS = [
    ("mia_loss", "MIA loss", "float"),
    ("mia_zlib", "MIA zlib", "float"),
    ("mia_min_k", "MIA min-k", "float"),
    ("mia_min_k_plus_plus", "MIA min-k++", "float"),
    ("privleak", "PrivLeak", "float"),
]
REFERENCE, TARGET = "retain (reference)", "target (before unlearning)"
TRAIN_TARGET, TRAIN_RETAIN, UNLEARN = 1, 2, 3  # key roles: fold_in(key(seed), role)


# -- configuration -----------------------------------------------------------------------------


def n_forget(cfg: dict) -> int:
    """The number of forget questions the config asks for (known before the data are read)."""
    d = cfg["data"]
    return d["n_forget"] or tdata.FORGET_SIZES[d["split"]]


def validate(cfg: dict) -> None:
    """Every value checked before the model or the data are loaded and before any compilation."""
    config.check_positive(
        cfg,
        [f"train.{k}" for k in ("epochs", "batch_size", "lr")]
        + [f"unlearn.{k}" for k in ("epochs", "batch_size", "eval_size")]
        + [f"eval.{k}" for k in ("batch_size", "max_new_tokens", "prompt_len")]
        + ["data.max_len", "seeds"],
    )
    if cfg["seeds"] != 1:
        raise ConfigError(
            f"seeds={cfg['seeds']}: the TOFU runner runs one seed; valid: 1 (use --set seed=N for another)"
        )
    config.check_nonnegative(
        cfg, ["train.weight_decay", "train.clip_norm", "train.eval_every", "unlearn.eval_every"]
    )
    config.check_choice(cfg, "data.split", SPLITS)
    d = cfg["data"]
    if not 0 <= d["n_forget"] <= tdata.FORGET_SIZES[d["split"]]:
        raise ConfigError(
            f"data.n_forget={d['n_forget']!r}; valid: 0 (the whole split) to "
            f"{tdata.FORGET_SIZES[d['split']]} for {d['split']}"
        )
    config.check_nonnegative(cfg, ["data.n_retain", "data.n_eval"], "every row")
    n_rs = tdata.TOTAL_QA - tdata.FORGET_SIZES[d["split"]]
    if not isinstance(d["n_holdout"], int) or d["n_holdout"] < -1:
        raise ConfigError(
            f"data.n_holdout={d['n_holdout']!r}; valid: -1 (max(8, n_forget // 10)), 0 (no holdout) or "
            "a positive number of rows"
        )
    if n_holdout(cfg) + d["n_retain"] > n_rs or n_holdout(cfg) >= n_rs:
        raise ConfigError(
            f"data.n_holdout={n_holdout(cfg)} with data.n_retain={d['n_retain']}: together more than the "
            f"{n_rs} rows of {tdata.retain_for(d['split'])}"
        )
    lm.check(cfg["model"])
    if cfg["model"]["name"] == "scratch" or cfg["model"]["name"] in lm.SIZES:
        raise ConfigError(
            f"model.name={cfg['model']['name']!r}: TOFU fine-tunes a given model; set model.name=tiny, "
            "smollm2-135m, a .gguf file or a Hugging Face checkpoint"
        )
    try:
        tdata.resolve_model_source(cfg["model"]["name"])
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.name: {e}") from None
    if d["data_dir"]:
        try:
            tdata.data_dir(d["data_dir"])
        except FileNotFoundError as e:
            raise ConfigError(f"data.data_dir: {e}") from None
    check_methods(cfg, cfg["methods"])


def check_methods(cfg: dict, methods) -> None:
    """GU ranks that the unlearning steps could never fill."""
    check_ranks(cfg, methods, n_forget(cfg))


# -- running -----------------------------------------------------------------------------------


class MIA:
    """The cheap membership-inference attacks (:data:`MIA_ATTACKS`) of a model's parameters: the
    forget rows (members) against the holdout rows, scored in one jitted forward program over
    both (one compilation for every model of the run)."""

    def __init__(self, model, forget: dict, holdout: dict, tok, *, k: float = 0.4, chunk: int = 16):
        self.n_f = forget["tokens"].shape[0]
        rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), forget, holdout)
        self.rows = attacks.with_zlib(rows, tok)

        def fn(params, rows):
            def one(sub):
                t, m = sub["tokens"], sub["mask"]
                logits = model.apply(params, t)
                loss = attacks.loss_score(logits, t, m)
                return {
                    "loss": loss,
                    "zlib": loss / sub["zlib_len"],
                    "min_k": attacks.min_k_score(logits, t, m, k),
                    "min_k_plus_plus": attacks.min_k_plus_plus_score(logits, t, m, k),
                }

            return attacks.map_rows(one, rows, chunk)

        self.fn = jax.jit(fn)

    def __call__(self, params) -> dict:
        """``{'mia_<attack>': AUC}`` (1: the forget rows look like members)."""
        s = self.fn(params, self.rows)
        return {f"mia_{a}": float(auc(s[a][self.n_f :], s[a][: self.n_f])) for a in MIA_ATTACKS}


def prepare(cfg: dict, say, mesh=None) -> tuple:
    """``(model, problem, evaluator, params, timing, mia)``: load the model and the data, fine-tune
    the target and the retain model (``params['target']``, ``params['retain']``); ``mia`` the
    :class:`MIA` of the holdout (None with ``data.n_holdout=0``)."""
    t0 = time.perf_counter()
    model, params0, tok = load_model(cfg)
    problem, evals = load_problem(cfg, tok)
    holdout = load_holdout(cfg, tok)
    n_f, n_r = problem.forget["tokens"].shape[0], problem.retain["tokens"].shape[0]
    n_h = 0 if holdout is None else holdout["tokens"].shape[0]
    say(
        f"tofu: {cfg['model']['name']} ({llama.param_count(params0) / 1e6:.1f}M parameters), "
        f"{cfg['data']['split']}: {n_f} forget / {n_r} retain / {n_h} holdout QA, evaluation on "
        f"{', '.join(f'{len(v)} {k}' for k, v in evals.items())} ({time.perf_counter() - t0:.1f}s)"
    )
    key = jax.random.key(cfg["seed"])
    params, timing = {}, {}
    for name, role, rows in (
        ("target", TRAIN_TARGET, problem.train_set),
        ("retain", TRAIN_RETAIN, problem.retain_set),
    ):
        phase, hp = trainer(model, cfg, rows["tokens"].shape[0], mesh)
        fn = lambda p, k, prob, phase=phase, hp=hp: phase.run(p, k, prob, hp)  # noqa: E731
        args = (params0, jax.random.fold_in(key, role), problem.learning(**rows))
        o, c_s, t_s = report.timed_jit(fn, *place_seeds(args, (None, None, None), mesh))
        check_finite(o["nonfinite_step"], where=f"(fine-tuning the {name} model)")
        params[name] = o["params"]
        nll = np.asarray(o["trace"]["nll"])
        timing[name] = {"compile_s": c_s, "time_s": t_s, "steps": phase.phase.steps}
        say(
            f"  {name} model: {phase.phase.steps} steps, mean training NLL {nll[0]:.3f} (first "
            f"{phase.phase.eval_every} steps) -> {nll[-1]:.3f} (last {phase.phase.eval_every}) "
            f"({t_s:.1f}s + {c_s:.1f}s compile)"
        )
    mia = None if holdout is None else MIA(model, problem.forget, holdout, tok)
    idk = tdata.idk_answers(cfg["data"]["data_dir"] or None)
    return model, problem, Evaluator.from_config(cfg, model.cfg, tok, evals, idk), params, timing, mia


def body(cfg: dict, run: Run) -> Report:
    """Target, retain model and every method of the config. With a mesh (one seed, so its seeds
    axis must be 1): the rows of every fine-tuning and unlearning batch over its ``data`` axis,
    the parameters replicated."""
    t_start = time.perf_counter()
    model, problem, ev, params, models_timing, mia = prepare(cfg, run.say, run.mesh)
    evaluated, timing, traces, nonfinite, mias, changed = {}, {}, {}, {}, {}, {}
    for name, which, fn in ((REFERENCE, "retain", ev.reference), (TARGET, "target", ev.evaluate)):
        t0 = time.perf_counter()
        evaluated[name] = fn(params[which])
        if mia is not None:
            mias[name] = mia(params[which])
        timing[name] = {**models_timing[which], "eval_s": time.perf_counter() - t0}  # time_s: fine-tuning
    n_f = problem.forget["tokens"].shape[0]
    key = jax.random.fold_in(jax.random.key(cfg["seed"]), UNLEARN)  # every method: the same batches
    for name in cfg["methods"]:
        phase, hp = unlearner(model, cfg, name, n_f, run.mesh)
        args = place_seeds((params["target"], key, problem, hp), (None,) * 4, run.mesh)
        o, c_s, t_s = report.timed_jit(phase.run, *args)
        nonfinite[name] = int(o["nonfinite_step"])
        changed[name] = float(o["edit_changed"])
        if nonfinite[name] >= 0:
            run.say(f"  note: {name}: the loss became non-finite at step {nonfinite[name]}")
        traces[name] = {k: np.asarray(v, np.float64).tolist() for k, v in o["trace"].items()}
        t0 = time.perf_counter()
        evaluated[name] = res = ev.evaluate(o["params"])
        if mia is not None:
            mias[name] = mia(o["params"])
        timing[name] = {"compile_s": c_s, "time_s": t_s, "eval_s": time.perf_counter() - t0}
        # an edit-only method (SSD, IAU) has no training steps and no trace
        f = traces[name].get("forget_nll")
        trains = bool(traces[name])
        run.say(
            f"  {name:12s} "
            + (f"{phase.phase.steps} steps" if trains else "an edit")
            + (f" changing {100 * changed[name]:.2f} % of the weights" if changed[name] >= 0 else "")
            + (f", forget NLL -> {f[-1]:.3f}" if f else "")
            + f": FQ {res['forget_quality']:.2e}, MU {res['model_utility']:.3f}, F.prob {res['forget']['prob']:.3f} "
            f"({t_s:.1f}s + {c_s:.1f}s compile, eval {timing[name]['eval_s']:.1f}s)"
        )
    rows = {}
    for name, res in evaluated.items():
        per_seed = {**scores(res), "time_s": timing[name].get("time_s", 0.0)}
        if mia is not None:
            leak = attacks.privleak(mias[name]["mia_min_k"], mias[REFERENCE]["mia_min_k"])
            per_seed.update(mias[name], privleak=float(leak))
        extra = (
            {
                "settings": method_section(cfg, name),
                "nonfinite_step": nonfinite[name],
                **({"edit_changed": changed[name]} if changed[name] >= 0 else {}),
            }
            if name in nonfinite
            else {}
        )
        rows[name] = results.row(per_seed, timing=timing[name], **extra)
    timing["total_s"] = time.perf_counter() - t_start
    res = results.make(
        "tofu",
        cfg,
        rows,
        COLUMNS + (MIA_COLUMNS if mia is not None else []),
        timing=timing,
        extra={
            "model": cfg["model"]["name"],
            "n_forget": n_f,
            "n_retain": int(problem.retain["tokens"].shape[0]),
            "n_holdout": n_holdout(cfg),
            "n_eval": {k: len(v) for k, v in ev.sets.items()},
            "generations": {n: {s: r[s]["generations"] for s in EVAL_SETS} for n, r in evaluated.items()},
            "truth_ratios": {n: {s: r[s]["truth_ratios"] for s in EVAL_SETS} for n, r in evaluated.items()},
            "trace": traces,
        },
    )
    header = f"\n{cfg['name']}: {cfg['data']['split']}, {cfg['model']['name']} ({timing['total_s']:.1f}s)\n"
    return Report(res, header, plots=(lambda res, out: plot(res, os.path.join(out, "fq_vs_mu.png")),))


def plot(res: dict, path: str) -> str:
    """Forget quality (log scale) against model utility, one point per row."""
    with plots.figure(path, (6, 4.5)) as (ax,):
        for name, r in res["rows"].items():
            mu, fq = r["summary"]["model_utility"]["mean"], max(r["summary"]["forget_quality"]["mean"], 1e-30)
            marker = "*" if name in (REFERENCE, TARGET) else ("o" if name.startswith("gu-") else "x")
            ax.scatter(mu, fq, marker=marker, s=60)
            ax.annotate(name, (mu, fq), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("model utility")
        ax.set_ylabel("forget quality (KS p-value)")
        c = res["config"]
        ax.set_title(f"TOFU {c['data']['split']}, {c['model']['name']}")
    return path


# -- sweep -------------------------------------------------------------------------------------


def sweep_cells(cfg: dict, method: str, run: Run) -> sweep_mod.SweepPlan:
    """Every cell of the grid (one method's traced hyperparameters) unlearned from the same target
    as one program (``lax.map`` over cells of ``Phase.run``), then each cell evaluated; the target
    and the retain model as in a run."""
    check_methods(cfg, [method])
    model, problem, ev, params, models_timing, _ = prepare(cfg, run.say)
    ev.reference(params["retain"])  # the truth ratios forget quality compares with
    phase, base = unlearner(model, cfg, method, problem.forget["tokens"].shape[0])

    def one_cell(p, k, prob, hp):
        o = phase.run(p, k, prob, hp)
        return {"params": o["params"], "diverged": (o["nonfinite_step"] >= 0).astype(jnp.float32)}

    def row(o):  # o on the device: its params are evaluated
        return {**scores(ev.evaluate(o["params"])), "diverged": float(o["diverged"])}, {}

    shared = (params["target"], jax.random.fold_in(jax.random.key(cfg["seed"]), UNLEARN), problem)
    return sweep_mod.SweepPlan(
        one_cell,
        shared,
        base,
        row,
        COLUMNS,
        "forget_quality",
        "forget quality",
        host=False,
        timing={"models": models_timing},
    )


def first_step(phase):
    """``(params, key, problem, hp) -> (state, metrics)``: the phase's start (the state, the
    method's consolidation) and its first step, one program: a step's memory."""
    return lambda p, k, pr, hp: phase.one_step(phase.start(p, k, pr, hp), pr, hp)


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): fine-tuning the target and the retain
    model (TOFU's recipe) and every method's unlearning, each as its whole phase and its first
    step, on problems of the split's shapes and the model's shapes (no weights or data loaded).
    The evaluation (generation, ROUGE, truth ratios) is not declared."""
    from ..compile import Program, abstract, placed

    model, params, _ = lm.load(cfg["model"], shapes_only=True)
    d = cfg["data"]
    n_f = d["n_forget"] or tdata.FORGET_SIZES[d["split"]]
    n_r = d["n_retain"] or tdata.TOTAL_QA - tdata.FORGET_SIZES[d["split"]] - n_holdout(cfg)
    rows = lambda n: {  # noqa: E731
        "tokens": jax.ShapeDtypeStruct((n, d["max_len"]), jnp.int32),
        "mask": jax.ShapeDtypeStruct((n, d["max_len"]), jnp.bool_),
    }
    problem = LMProblem(forget=rows(n_f), forget_alt=rows(n_f), retain=rows(n_r))
    key = abstract(jax.eval_shape(lambda: jax.random.key(0)), mesh)
    p = placed(params, mesh)  # over the mesh's model axis where it has one (FSDP)
    out = []
    for name, n in (("target", n_f + n_r), ("retain", n_r)):
        phase, hp = trainer(model, cfg, n, mesh)
        prob = abstract(problem.learning(**rows(n)), mesh)
        run = jax.jit(lambda p, k, pr, phase=phase, hp=hp: phase.run(p, k, pr, hp))
        step = jax.jit(lambda p, k, pr, phase=phase, hp=hp: first_step(phase)(p, k, pr, hp))
        out += [
            Program(f"fine-tune the {name} model ({phase.phase.steps} steps)", run, (p, key, prob)),
            Program(f"fine-tune the {name} model: one step", step, (p, key, prob), steps=1, called=False),
        ]
    prob = abstract(problem, mesh)
    for name in cfg["methods"]:
        phase, hp = unlearner(model, cfg, name, n_f, mesh)
        hp = abstract(hp, mesh)
        out += [
            Program(f"{name} ({phase.phase.steps} steps)", jax.jit(phase.run), (p, key, prob, hp)),
            Program(
                f"{name}: one step", jax.jit(first_step(phase)), (p, key, prob, hp), steps=1, called=False
            ),
        ]
    return out


STUDY = Study(
    "tofu",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    methods=CHOICES,
    mesh_batches=MESH_BATCHES,
    no_resume="nothing is cached between runs; run it again",
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
