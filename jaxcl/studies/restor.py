"""The knowledge-recovery runner (``study: restor``): after unlearning a corruption, does the
model get its original knowledge back, or does it only forget the corruption?

Paper: "RESTOR: Knowledge Recovery in Machine Unlearning" (2024): an unlearning algorithm should
not only forget what the removed data taught but recover the model's knowledge state as if it
had never seen them; some algorithms only forget. Protocol (study 6 of issue 12):

1. **clean**: a small Llama trained from scratch (``lm-memory``'s model and tokenizer) on a text
   stream of ``data.domains`` mixed with the documents of ``data.n_facts`` fictional entities
   (:mod:`jaxcl.probes`), each repeated ``clean.repeats`` times;
2. **corrupted**: fine-tuned on the same documents with wrong values (a birth year, city and
   profession of never-seen entities), ``corrupt.repeats`` times each, mixed with stream windows;
3. **unlearned**: each method of ``methods`` (the registry's ``ga``, ``graddiff``, ``npo`` and
   their ``gu-`` versions) unlearns the wrong documents from the corrupted model (forget set:
   the wrong documents; retain set: stream windows), through :class:`jaxcl.loops.Phase` as in
   the TOFU runner.

Every model is scored on the facts' memorisation probes with the true values and with the wrong
ones (teacher-forced, :func:`jaxcl.probes.span_scores`): ``pref`` = log p(true) - log p(wrong) per
target token (> 0: the original fact is preferred), exact match of the true / wrong values, and
the held-out stream NLL (utility). **Recovery** = (pref after unlearning - pref corrupted) /
(pref clean - pref corrupted): 0 = no recovery, 1 = back to the clean model, <0 = worse.
The facts, the data and the scores are :mod:`jaxcl.data.restor`. Seeds are vmapped; results.json through :mod:`jaxcl.results`, ``recovery.png``.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from .. import config, plots, report, results
from ..config import ConfigError
from ..data import restor as restor_data
from ..data import text
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..loops import seeds_keys
from ..models import lm
from ..parallel import jit_seeds, place_seeds, seeds_map
from ..unlearn.lm import LMProblem, check_ranks, trainer, unlearner

METHODS = ("ga", "graddiff", "npo", "gu-ga", "gu-graddiff", "gu-npo")
CLEAN, CORRUPT, UNLEARN = 1, 2, 3  # key roles

DEFAULTS = {
    "model": lm.section(d_model=96, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256, tokenizer="smollm2"),
    "data": {"domains": ("bible:law",), "seq_len": 64, "n_facts": 16, "n_windows": 1600, "n_eval": 8},
    "clean": {"repeats": 24},
    "corrupt": {"repeats": 24, "n_windows": 384},
    # the clean and the corrupting fine-tuning (tofu.trainer's recipe: AdamW, warm-up + cosine)
    "train": {
        "epochs": 1.0,
        "batch_size": 16,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "clip_norm": 1.0,
        "eval_every": 0,
    },
    # unlearning: epochs over the wrong documents; eval_size rows in the traced forget / retain NLL
    "unlearn": {"epochs": 8.0, "batch_size": 8, "eval_every": 0, "eval_size": 32},
    "methods": METHODS,
    "seeds": 3,
    "seed": 0,
}

MESH_BATCHES = ("train.batch_size", "unlearn.batch_size")  # split over a mesh's data axis
COLUMNS = [
    ("pref", "log p(true) - log p(wrong)", "float"),
    ("recovery", "recovery", "float"),
    ("exact_true", "exact true", "pct"),
    ("exact_wrong", "exact wrong", "pct"),
    ("stream_nll", "stream NLL", "float"),
    ("time_s", "time (s)", "seconds"),
]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    config.check_each(
        cfg, "data.domains", set(text.domain_names()), "text domain", unknown=text.unknown_source
    )
    lm.check(cfg["model"], names=("scratch", *lm.SIZES))
    config.check_positive(
        cfg,
        ["data.seq_len", "data.n_facts", "data.n_windows", "data.n_eval", "clean.repeats"]
        + ["corrupt.repeats", "corrupt.n_windows", "train.epochs", "train.batch_size", "train.lr"]
        + ["unlearn.epochs", "unlearn.batch_size", "unlearn.eval_size", "seeds"],
    )
    if d["n_facts"] < 2:
        raise ConfigError("data.n_facts must be >= 2")
    check_ranks(cfg, cfg["methods"], d["n_facts"])


# -- running ---------------------------------------------------------------------------------------


def phases(cfg: dict, model, data, mesh=None) -> list:
    """The schedule, ``[(name, key role, Phase, hp, problem)]``: the clean fine-tuning (the stream
    and the true documents), the corrupting one (the wrong documents with stream windows), then
    every method's unlearning of the wrong documents (retain: stream windows); each phase starts
    from the previous training phase's parameters (the methods: from the corrupted model's)."""
    empty = {k: v[:1] for k, v in data["wrong"].items()}
    rows = restor_data.mix(data["clean"], cfg["clean"]["repeats"], data["windows"])
    # from a random initialisation every weight trains (model.lora: the later phases only)
    phase, hp = trainer(model._replace(lora=None), cfg, rows["tokens"].shape[0], mesh)
    problem = LMProblem(forget=empty, forget_alt=empty, retain=rows)
    out = [("clean", CLEAN, phase, hp, problem)]
    win = {k: v[: cfg["corrupt"]["n_windows"]] for k, v in data["windows"].items()}
    rows = restor_data.mix(data["wrong"], cfg["corrupt"]["repeats"], win)
    phase, hp = trainer(model, cfg, rows["tokens"].shape[0], mesh)
    out.append(("corrupted", CORRUPT, phase, hp, problem.replace(retain=rows)))
    problem = LMProblem(forget=data["wrong"], forget_alt=data["clean"], retain=data["windows"])
    for name in cfg["methods"]:
        phase, hp = unlearner(model, cfg, name, cfg["data"]["n_facts"], mesh)
        out.append((name, UNLEARN, phase, hp, problem))
    return out


def body(cfg: dict, run: Run) -> Report:
    """Clean -> corrupted -> every method; with a mesh, seeds over its ``seeds`` axis and every
    training batch over its ``data`` axis."""
    say, mesh = run.say, run.mesh
    t_start = time.perf_counter()
    tok = restor_data.tokenizer(cfg)
    T = cfg["data"]["seq_len"]
    model = lm.load(cfg["model"], max_seq_len=T + 8, tokenizer=tok)[0]
    data = restor_data.build(cfg, tok)
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    S = cfg["seeds"]
    score = jit_seeds(lambda p, d: restor_data.scores(model, p, d), (0, None), mesh)
    init = jax.vmap(model.init)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    timing, evaluated, traces = {}, {}, {}

    def phase_run(phase, hp, params, role, problem):
        fn = seeds_map(
            lambda p, k, prob: phase.run(p, jax.random.fold_in(k, role), prob, hp), (0, 0, None), mesh
        )
        o, c_s, t_s = report.timed_jit(fn, *place_seeds((params, keys, problem), (0, 0, None), mesh))
        check_finite(o["nonfinite_step"], where=f"(phase {role})")
        return o, c_s, t_s

    start = {CLEAN: init}  # the parameters each role starts from
    for name, role, phase, hp, problem in phases(cfg, model, data, mesh):
        o, c_s, t_s = phase_run(phase, hp, start[role], role, problem)
        evaluated[name] = jax.tree.map(np.asarray, score(o["params"], data))
        timing[name] = {"compile_s": c_s, "time_s": t_s, "steps": phase.phase.steps}
        pref = evaluated[name]["pref"].mean()
        if role == UNLEARN:
            traces[name] = {k: np.asarray(v).mean(0).tolist() for k, v in o["trace"].items()}
            say(f"  {name:12s} {phase.phase.steps} steps: pref {pref:.3f} ({t_s:.1f}s + {c_s:.1f}s)")
            continue
        start[role + 1] = o["params"]  # clean -> corrupted -> unlearning
        say(f"{name}: {phase.phase.steps} steps ({t_s:.1f}s + {c_s:.1f}s compile), pref {pref:.3f}")

    p_clean, p_corr = evaluated["clean"]["pref"], evaluated["corrupted"]["pref"]
    out_rows = {}
    for name, ev in evaluated.items():
        per = {k: np.asarray(v) for k, v in ev.items()}
        per["recovery"] = restor_data.recovery(per["pref"], p_clean, p_corr)
        per["time_s"] = [timing[name]["time_s"]]
        out_rows[name] = results.row(
            per, timing=timing[name], **({"trace": traces[name]} if name in traces else {})
        )
    timing["total_s"] = time.perf_counter() - t_start
    res = results.make(
        "restor",
        cfg,
        out_rows,
        COLUMNS,
        timing=timing,
        extra={"n_facts": cfg["data"]["n_facts"]},
        first="model",
    )
    header = (
        f"\n{cfg['name']}: {cfg['data']['n_facts']} facts, {S} seeds ({timing['total_s']:.1f}s); pref = log p(true) - "
        "log p(wrong) per target token on the memorisation probes; recovery = (pref - corrupted) / (clean - corrupted)\n"
    )
    return Report(res, header, plots=(lambda res, out: plot(res, os.path.join(out, "recovery.png")),))


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``), on the run's data (small host text) and
    abstract parameters: the scores, and for every phase of :func:`phases` the whole phase and one
    training step of every seed."""
    from .. import compile as C

    tok = restor_data.tokenizer(cfg)
    model = lm.load(cfg["model"], max_seq_len=cfg["data"]["seq_len"] + 8, tokenizer=tok)[0]
    data = restor_data.build(cfg, tok)
    sp = C.seeds_spec(mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, sp)
    params = C.abstract(jax.eval_shape(jax.vmap(model.init), keys), mesh, sp)
    score = jit_seeds(lambda p, d: restor_data.scores(model, p, d), (0, None), mesh)
    out = [C.Program("scores", score, (params, C.abstract(data, mesh)))]
    for name, role, phase, hp, problem in phases(cfg, model, data, mesh):
        out += C.phase_programs(name, phase, hp, role, params, keys, C.abstract(problem, mesh), mesh)
    return out


def plot(res: dict, path: str) -> str:
    """Preference for the true values (bars, mean ± std over seeds) per model."""
    names = list(res["rows"])
    m = [res["rows"][n]["summary"]["pref"]["mean"] for n in names]
    s = [res["rows"][n]["summary"]["pref"]["std"] for n in names]
    with plots.figure(path, (1.0 * len(names) + 2, 3.6), dpi=110) as (ax,):
        ax.bar(range(len(names)), m, yerr=s, capsize=3, color=["g", "r"] + ["C0"] * (len(names) - 2))
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("log p(true) - log p(wrong) per token")
        ax.set_title(f"{res['name']}: knowledge recovery")
    return path


STUDY = Study(
    "restor",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="its unlearning phases are short: compare settings with jaxcl run ... --set",
    methods=METHODS,
    mesh_batches=MESH_BATCHES,
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
