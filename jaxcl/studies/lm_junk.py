"""The junk-data runner (``study: lm-junk``): does continual pre-training on junk text make a
language model worse at what it could do, in proportion to the junk?

Paper: "LLMs Can Get Brain Rot!" (Xing et al., 2025): continual pre-training on junk web text
(short, engagement-style posts) against a control set at matched token counts causes declines
in reasoning and long-context abilities (Hedges' g > 0.3), with a dose-response over the junk
ratio (ARC-Challenge with chain of thought 74.9 -> 57.2 from 0 % to 100 % junk).

Protocol, at a scale a 2-core CPU can run:

1. **base**: a small Llama (``model.name``: a size of :data:`jaxcl.models.lm.SIZES` or ``scratch``; byte tokenizer)
   pre-trained from scratch on ``data.base_domains`` (long-form text, default two genres of the
   KJV bible) mixed with a ``base.task_fraction`` of procedural-task text (``data.tasks`` of
   :mod:`jaxcl.tasks`: lines such as ``add 3+4=7``), so that it gains skills a small model can
   have;
2. **continual pre-training** for ``junk.steps`` steps of the same batch size (so matched token
   counts) on a mixture in which each row comes from the junk domains (``data.junk``: headlines,
   Rotten Tomatoes snippets) with probability ``r`` and from the control domains
   (``data.control``: long-form convention speeches) otherwise, for every ``r`` in
   ``junk.ratios``; the ratios and the seeds are ``vmap`` axes of one program;
3. every ``junk.eval_every`` steps, inside the loop: exact-match accuracy on held-out task
   prompts (teacher-forced: every answer token must be the argmax; the reasoning probe) and the
   held-out NLL per token of every domain.

Reported per ratio (mean ± std over seeds): task accuracy after the junk phase and its change
from the base model, the held-out loss of the base domains (general ability) and of the junk and
control domains; and Hedges' g of the 100 %-junk (highest ratio) condition against 0 % for task
accuracy and base-domain loss, over seeds (:func:`jaxcl.metrics.hedges_g`). The stream, the
task probes and the mixture weights are :mod:`jaxcl.data.junk`.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, plots, results, tasks
from .. import metrics as M
from ..config import ConfigError
from ..data import junk as junk_data
from ..data import text
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..lmprogram import LMProgram
from ..loops import seeds_keys
from ..models import lm
from ..parallel import jit_seeds, shard_batch

DEFAULTS = {
    "model": lm.section("xs"),
    "data": {
        "base_domains": ("bible:law", "bible:gospels"),
        "control": ("convention:democrat", "convention:republican"),
        "junk": ("headlines", "rotten:fresh", "rotten:rotten"),
        "tasks": ("add", "rev", "sort", "count"),
        "digits": 1,
        "task_lines": 4000,  # training lines per task
        "n_probe": 64,  # held-out prompts per task
        "seq_len": 64,
        "n_eval": 16,
        "max_train": 4000,
    },
    "base": {"steps": 800, "batch_size": 16, "lr": 3e-3, "task_fraction": 0.3},
    "junk": {"ratios": (0.0, 0.2, 0.5, 0.8, 1.0), "steps": 300, "batch_size": 16, "eval_every": 50},
    "methods": ("finetune",),
    "seeds": 5,
    "seed": 0,
}

MESH_BATCHES = ("base.batch_size", "junk.batch_size")  # split over a mesh's data axis
COLUMNS = [
    ("task_acc", "task acc", "pct"),
    ("task_acc_delta", "Δ task acc", "pct"),
    ("base_loss", "base-domain loss", "float"),
    ("control_loss", "control loss", "float"),
    ("junk_loss", "junk loss", "float"),
]


def validate(cfg: dict) -> None:
    lm.check(cfg["model"], names=("scratch", *lm.SIZES), tokenizers=("byte",))
    config.check_each(cfg, "data.tasks", tasks.TASKS, "task")
    config.check_nonempty(cfg, ["data.base_domains", "data.control", "data.junk"])
    r = cfg["junk"]["ratios"]
    if not r or any(not 0.0 <= x <= 1.0 for x in r):
        raise ConfigError(f"junk.ratios={r!r}: give fractions in [0, 1]")
    config.check_positive(
        cfg,
        [
            "data.digits",
            "data.task_lines",
            "data.n_probe",
            "data.seq_len",
            "data.n_eval",
            "data.max_train",
            "base.steps",
            "base.batch_size",
            "base.lr",
            "junk.steps",
            "junk.batch_size",
            "junk.eval_every",
            "seeds",
        ],
    )
    config.check_multiple(cfg, "junk.steps", "junk.eval_every")


# -- the programs ---------------------------------------------------------------------------------


def programs(cfg, model, stream, probe, groups, mesh=None, *, one_steps=False):
    """``base(key) -> (state, eval)`` and ``junk(state, ratios) -> trace``, vmapped over seeds
    (``mesh``: seeds over its ``seeds`` axis, every drawn batch over its ``data`` axis): two
    :class:`jaxcl.lmprogram.LMProgram` of the registry's ``finetune`` whose data is the mixture's
    weights over the stream's domains. ``one_steps``: also one training step of each phase,
    ``(base_step(state), junk_step(state, r), base_init(key), junk_init(params, key))``, pure (the
    compile check's per-step programs)."""
    b, j, K = cfg["base"], cfg["junk"], stream.n_domains
    evaluate = lambda p, _: {
        "heldout": text.domain_losses(model.nll, p, stream),
        "task_acc": junk_data.task_accuracy(model.apply, p, probe),
    }
    mixture = lambda B: lambda w, k: shard_batch(text.draw_mixture(stream, w, k, B), mesh)
    pre = LMProgram(
        model._replace(lora=None),  # the base pre-training, from a random initialisation: every weight
        cfg,
        eval_every=b["steps"],
        hp={"lr": b["lr"]},
        opts={"warmup_cosine_steps": b["steps"]},
        draw=mixture(b["batch_size"]),
        evaluate=evaluate,
        mesh=mesh,  # a model axis: the train states sharded over it (FSDP)
    )
    cpt = LMProgram(
        model, cfg, eval_every=j["eval_every"], draw=mixture(j["batch_size"]), evaluate=evaluate, mesh=mesh
    )

    def base(key):
        w = junk_data.group_weights(
            groups, K, {"base": 1.0 - b["task_fraction"], "tasks": b["task_fraction"]}
        )
        state, trace = pre.call(pre.init(key, None, pre.hp), pre.hp, w, 1)
        return state.params, jax.tree.map(lambda a: a[-1], trace), state.nonfinite_step

    def junk(params, key, r):
        w = junk_data.group_weights(groups, K, {"junk": r, "control": 1.0 - r})
        state = cpt.start(params, key, cpt.hp)
        state, trace = cpt.call(state, cpt.hp, w, j["steps"] // j["eval_every"])
        return trace, state.nonfinite_step

    if one_steps:
        base_w = lambda: junk_data.group_weights(  # noqa: E731
            groups, K, {"base": 1.0 - b["task_fraction"], "tasks": b["task_fraction"]}
        )
        junk_w = lambda r: junk_data.group_weights(groups, K, {"junk": r, "control": 1.0 - r})  # noqa: E731
        return (
            lambda state: pre.one_step(state, pre.hp, base_w()),
            lambda state, r: cpt.one_step(state, cpt.hp, junk_w(r)),
            lambda key: pre.init(key, None, pre.hp),
            lambda params, key: cpt.start(params, key, cpt.hp),
        )
    if mesh is None:
        base_fn = jax.jit(jax.vmap(base))
        junk_fn = jax.jit(jax.vmap(jax.vmap(junk, in_axes=(None, None, 0)), in_axes=(0, 0, None)))
        return base_fn, junk_fn
    base_fn = jit_seeds(base, (0,), mesh)
    inner = jax.vmap(junk, in_axes=(None, None, 0))  # the ratios: not sharded
    return base_fn, jit_seeds(inner, (0, 0, None), mesh)


# -- running ------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Base pre-training, then every junk ratio x seed; with a mesh, seeds over its ``seeds`` axis,
    the sequences of every batch over its ``data`` axis."""
    mesh = run.mesh
    stream, probe, groups = junk_data.build(cfg)
    model = lm.load(cfg["model"], max_seq_len=cfg["data"]["seq_len"], tokenizer=text.tokenizer("byte"))[0]
    text.check_vocab(stream, model.cfg.vocab_size, "byte")
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    base_fn, junk_fn = programs(cfg, model, stream, probe, groups, mesh)
    ratios = jnp.asarray(cfg["junk"]["ratios"], jnp.float32)
    t0 = time.perf_counter()
    run.say(f"base pre-training: {cfg['base']['steps']} steps ({cfg['seeds']} seeds)...")
    params, base_eval, bad = base_fn(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))
    check_finite(bad, where="(base pre-training)")
    t_base = time.perf_counter() - t0
    run.say(
        f"junk phase: ratios {', '.join(f'{r:g}' for r in cfg['junk']['ratios'])} x {cfg['seeds']} seeds in one program..."
    )
    trace, bad = junk_fn(params, jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys), ratios)
    check_finite(bad, where="(junk phase)")
    t_junk = time.perf_counter() - t0 - t_base
    base_eval = jax.tree.map(np.asarray, base_eval)
    trace = jax.tree.map(np.asarray, trace)  # heldout: (S, R, E, K); task_acc: (S, R, E, n_tasks)
    acc = trace["task_acc"].mean(-1)  # S, R, E
    g_loss = lambda key: trace["heldout"][..., groups[key]].mean(-1)  # S, R, E
    base_acc = base_eval["task_acc"].mean(-1)  # S
    rows = {}
    for i, r in enumerate(cfg["junk"]["ratios"]):
        per = {
            "task_acc": acc[:, i, -1],
            "task_acc_delta": acc[:, i, -1] - base_acc,
            "base_loss": g_loss("base")[:, i, -1],
            "control_loss": g_loss("control")[:, i, -1],
            "junk_loss": g_loss("junk")[:, i, -1],
        }
        rows[f"junk {100 * r:.0f}%"] = results.row(
            per,
            ratio=r,
            task_acc_trace_mean=acc[:, i].mean(0).tolist(),
            per_task_acc_mean=trace["task_acc"][:, i, -1].mean(0).tolist(),
            base_loss_trace_mean=g_loss("base")[:, i].mean(0).tolist(),
        )
    hi, lo = int(np.argmax(cfg["junk"]["ratios"])), int(np.argmin(cfg["junk"]["ratios"]))
    effect = {
        "task_acc": M.hedges_g(acc[:, lo, -1], acc[:, hi, -1]),
        "base_loss": M.hedges_g(g_loss("base")[:, hi, -1], g_loss("base")[:, lo, -1]),
    }
    slope = (
        np.polyfit(np.asarray(cfg["junk"]["ratios"]), acc[:, :, -1].mean(0), 1)[0] if len(ratios) > 1 else 0.0
    )
    res = results.make(
        "lm-junk",
        cfg,
        rows,
        COLUMNS,
        first="condition",
        timing={"base": t_base, "junk": t_junk},
        extra={
            "hedges_g": effect,
            "task_acc_slope_per_ratio": float(slope),
            "base_task_acc_per_seed": base_acc.tolist(),
            "base_per_task_acc_mean": base_eval["task_acc"].mean(0).tolist(),
            "train_tokens": dict(zip(stream.names, stream.tokens)),
        },
    )
    d = cfg["data"]
    header = (
        f"\n{cfg['name']}: base model on {', '.join(d['base_domains'])} + tasks ({', '.join(d['tasks'])}; "
        f"task accuracy {base_acc.mean():.1%}), then {cfg['junk']['steps']} steps on junk "
        f"({', '.join(d['junk'])}) vs control ({', '.join(d['control'])}); {cfg['seeds']} seeds, "
        "mean ± std; losses in nats per token\n"
    )
    note = (
        f"\nHedges' g, {100 * cfg['junk']['ratios'][hi]:.0f}% vs {100 * cfg['junk']['ratios'][lo]:.0f}% junk "
        f"(positive: junk is worse): task accuracy {effect['task_acc']:.2f}, base-domain loss "
        f"{effect['base_loss']:.2f}; task accuracy per unit of junk ratio {slope:+.3f}"
    )
    plot = lambda res, out: _plot(cfg, acc, g_loss("base"), os.path.join(out, "dose_response.png"))
    return Report(res, header, (note,), (plot,))


def _plot(cfg, acc, base_loss, path):
    r = np.asarray(cfg["junk"]["ratios"])
    title = (
        f"{cfg['name']}: after {cfg['junk']['steps']} steps of continual pre-training (mean ± std over seeds)"
    )
    with plots.figure(path, (9, 3.5), 2, title=title) as axes:
        for ax, v, label in zip(axes, (acc, base_loss), ("task accuracy", "base-domain NLL (nats/token)")):
            m, s = v[:, :, -1].mean(0), v[:, :, -1].std(0)
            ax.errorbar(100 * r, m, yerr=s, marker="o", capsize=3)
            ax.set_xlabel("junk ratio (%)")
            ax.set_ylabel(label)
    return path


def compile_programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``) on the run's stream (small host text; a
    constant of these programs, as in the run): the base pre-training and the junk phase (every
    ratio x seed) and one training step of each, for every seed."""
    from .. import compile as C

    stream, probe, groups = junk_data.build(cfg)
    model = lm.load(cfg["model"], max_seq_len=cfg["data"]["seq_len"], tokenizer=text.tokenizer("byte"))[0]
    base_fn, junk_fn = programs(cfg, model, stream, probe, groups, mesh)
    base_step, junk_step, base_init, junk_init = programs(cfg, model, stream, probe, groups, one_steps=True)
    sp = C.seeds_spec(mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, sp)
    ratios = C.abstract(jnp.asarray(cfg["junk"]["ratios"], jnp.float32), mesh)
    s_base = C.abstract(jax.eval_shape(jax.vmap(base_init), keys), mesh, sp)
    params = s_base.params  # the base pre-training's result: the parameters' shapes
    s_junk = C.abstract(jax.eval_shape(jax.vmap(junk_init), params, keys), mesh, sp)
    r = C.abstract(jnp.float32(0), mesh)
    return [
        C.Program("base pre-training", base_fn, (keys,)),
        C.Program("base: one step", jit_seeds(base_step, (0,), mesh), (s_base,), steps=1, called=False),
        C.Program("junk phase (every ratio)", junk_fn, (params, keys, ratios)),
        C.Program(
            "junk: one step", jit_seeds(junk_step, (0, None), mesh), (s_junk, r), steps=1, called=False
        ),
    ]


STUDY = Study(
    "lm-junk",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="every junk ratio x seed already runs as one program: --set junk.ratios=0,0.5,1",
    methods=("finetune",),
    mesh_batches=MESH_BATCHES,
    programs=compile_programs,
)
run, sweep = STUDY.run, STUDY.sweep
