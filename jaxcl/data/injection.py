"""Items injected into a language model's training stream: the bank of injected rows, the probe
sets that read them out, and the schedule of their exposures.

Papers: Chang et al., "How Do Large Language Models Acquire Factual Knowledge During
Pretraining?" (2024), "Recognition, recall, and retention of few-shot memories in large language
models" (2025) and "The Memorization Problem: Can We Trust LLMs' Economic Forecasts?" (2025).
The items are :mod:`jaxcl.probes`' (deterministic in ``seed``), grouped into conditions (:class:`Condition`):

* ``facts``: ``facts.per_condition`` fictional entities per exposure count of
  ``facts.exposures``, plus as many never injected (the control); probed by memorisation,
  paraphrase and composition (:data:`FACT_PROBES`), each paired with a never-seen value in the
  same context (:func:`jaxcl.probes.counterfactual`);
* ``fewshot``: sequences of ``fewshot.length`` tokens (``random`` syllables or text of a domain,
  ``fewshot.source``) per exposure count, plus ``fewshot.n_novel`` never seen;
* ``numeric``: numbers and entity names, half injected ``numeric.exposures`` times, half unseen.

Every exposure is one batch row at a fixed step (:func:`with_injection`). Exposure ``r`` of ``n``
of a condition is wanted at step

    s_r = inject.last_step - inject.spacing * (n - 1 - r),    r = 0 .. n - 1,

and a step holds at most ``inject.per_step`` injected rows: a full step (or one already holding
the item) moves the exposure one step earlier (:func:`schedule`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .. import probes
from ..config import ConfigError
from ..parallel import shard_batch
from . import text, vocab

FACT_PROBES = ("memorization", "paraphrase", "composition")


def exposure_counts(cfg: dict) -> list[int]:
    """Every exposure count of the items ``cfg`` injects (and 1)."""
    out = [1]
    if cfg["facts"]["per_condition"]:
        out += list(cfg["facts"]["exposures"])
    if cfg["fewshot"]["per_condition"]:
        out += list(cfg["fewshot"]["exposures"])
    if cfg["numeric"]["per_kind"]:
        out.append(cfg["numeric"]["exposures"])
    return out


def check_config(cfg: dict) -> None:
    """A ConfigError naming the key when the ``inject``, ``facts``, ``fewshot`` or ``numeric``
    section cannot be built (with ``data.seq_len``, ``data.domains``, ``train.steps``,
    ``train.batch_size`` and ``train.eval_every``: the schedule must start after the first
    evaluation, the baseline of every gain, and end inside the run)."""
    d, t, inj = cfg["data"], cfg["train"], cfg["inject"]
    f, fs, nm = cfg["facts"], cfg["fewshot"], cfg["numeric"]
    valid = set(text.domain_names())
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
    first = inj["last_step"] - inj["spacing"] * (max(exposure_counts(cfg)) - 1)
    if first < t["eval_every"]:
        raise ConfigError(
            f"the injection schedule starts at step {first}, before the first evaluation (after step "
            f"{t['eval_every'] - 1}, the baseline of every gain): {max(exposure_counts(cfg))} exposures "
            f"{inj['spacing']} steps apart cannot end at inject.last_step={inj['last_step']}; raise "
            "inject.last_step or lower inject.spacing"
        )


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


def memory_texts(cfg, tok, n: int) -> list[list[int]]:
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
        # spare never-seen entities: the control's counterfactual source when no other control
        # entity differs from it (facts.per_condition=1), so no item is paired with itself
        taken = {e.name for e in ents} | {e.city for e in ents}
        spare = probes.entities(2, seed + 0x5EED, taken=taken)
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
                        for c in control[i:] + control[:i] + spare
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
            if n == 1:  # a spare never-seen item, so the unseen one is not paired with itself
                make = probes.numeric_items if kind == "numbers" else probes.entity_items
                spare = make(1, seed + 0x5EED, **({"digits": nm["digits"]} if kind == "numbers" else {}))
                alts = unseen + spare
            else:
                alts = unseen + unseen[1:] + unseen[:1]
            probe_sets[f"{key}_cf"] = [probes.counterfactual(a, b) for a, b in zip(items, alts)]
            seen = [add_bank(s) for s in items[:n]]
            conds.append(Condition(f"{kind} seen", "numeric", nm["exposures"], seen, {key: list(range(n))}))
            conds.append(Condition(f"{kind} unseen", "numeric", 0, [], {key: list(range(n, 2 * n))}))
    fewshot = None
    if fs["per_condition"]:
        n, G = fs["per_condition"], len(fs["exposures"])
        seqs = memory_texts(cfg, tok, n * G + fs["n_novel"])
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


def split_spans(traces: dict, offsets: dict) -> dict:
    """``spans_logp`` / ``spans_exact`` (all span probes) split into ``<set>_logp`` / ``<set>_exact``."""
    out = {k: v for k, v in traces.items() if not k.startswith("spans_")}
    for key, (a, b) in offsets.items():
        for m in ("logp", "exact"):
            out[f"{key}_{m}"] = traces[f"spans_{m}"][..., a:b]
    return out


def with_injection(step, bank: dict, table, mesh=None):
    """``step`` on the drawn batch with the injected rows of the state's step in its first rows:
    row ``j`` is ``bank[table[state.step, j]]`` (the drawn row where -1; ``table`` (steps, J) of
    :func:`schedule`), for ``tokens`` and ``mask``; ``mesh``: the batch sharded over its data axis."""
    J = table.shape[1]

    def injected(state, batch):
        idx = table[jnp.minimum(state.step, table.shape[0] - 1)]
        use = (idx >= 0)[:, None]
        rows = jnp.maximum(idx, 0)
        new = {
            k: batch[k].at[:J].set(jnp.where(use, bank[k][rows], batch[k][:J])) for k in ("tokens", "mask")
        }
        return step(state, shard_batch(new, mesh))

    return injected


def auc_groups(conds: list[Condition]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Static ``(rows, labels)`` of every few-shot exposure group's recognition AUC, by group: the
    group's sequences (label True) and the novel ones (False)."""
    fs = [c for c in conds if c.kind == "fewshot"]
    novel = [i for c in fs if c.group < 0 for i in c.probe_rows["fewshot"]]
    return [
        (
            np.asarray(c.probe_rows["fewshot"] + novel),
            np.asarray([True] * len(c.probe_rows["fewshot"]) + [False] * len(novel)),
        )
        for c in sorted((c for c in fs if c.group >= 0), key=lambda c: c.group)
    ]
