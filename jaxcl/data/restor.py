"""RESTOR's data and scores ("RESTOR: Knowledge Recovery in Machine Unlearning", 2024): the
documents of fictional entities with their true values and with wrong ones, stream windows, and
the memorisation probes that tell the two apart.

Entities are :func:`jaxcl.probes.entities`; the wrong version of entity ``i`` keeps its name and
takes the birth year, city and profession of a never-seen entity whose year and profession both
differ (:func:`facts`). A clean model learns the true documents; a corrupted one is then
fine-tuned on the wrong ones; an unlearning method forgets the wrong documents, and
:func:`scores` measures whether the true values came back:

    pref = mean over probe target tokens of log p(true value) - log p(wrong value)

(teacher-forced on the same contexts, :func:`jaxcl.probes.span_scores`; > 0: the true fact is
preferred), exact match of the true / wrong values and the held-out stream NLL (utility).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import probes
from ..config import ConfigError
from . import text, vocab


@dataclasses.dataclass
class Data:
    clean: dict  # {'tokens', 'mask'} (n_facts, T): the true documents
    wrong: dict  # the documents with wrong values
    windows: dict  # stream windows (n_windows, T)
    probes_true: dict  # memorisation probes with the true values
    probes_wrong: dict  # the same probes with the wrong values
    held_out: jax.Array  # (M, T) held-out stream windows


def document_rows(tok, items, T: int, pad: int) -> dict:
    """``{'tokens': (n, T) int32, 'mask': (n, T) bool}``: each document (segments) right-padded
    with ``pad``, the mask on its tokens; a document longer than ``T`` is a :class:`ConfigError`."""
    toks = np.full((len(items), T), pad, np.int32)
    mask = np.zeros((len(items), T), bool)
    for r, segs in enumerate(items):
        ids = probes.encode_segments(tok, segs)[0]
        if len(ids) > T:
            raise ConfigError(
                f"a fact document has {len(ids)} tokens, more than data.seq_len={T}; raise data.seq_len"
            )
        toks[r, : len(ids)], mask[r, : len(ids)] = ids, True
    return {"tokens": toks, "mask": mask}


def facts(cfg: dict) -> tuple[list, list]:
    """The ``data.n_facts`` entities and, for each, one with its wrong values (never-seen
    entities' values)."""
    n = cfg["data"]["n_facts"]
    ents = probes.entities(2 * n, cfg["seed"])
    true, alt = ents[:n], ents[n:]
    wrong = []
    for i, e in enumerate(true):
        o = next((a for a in alt[i:] + alt[:i] if a.year != e.year and a.profession != e.profession), alt[i])
        wrong.append(dataclasses.replace(e, year=o.year, city=o.city, profession=o.profession))
    return true, wrong


def tokenizer(cfg: dict):
    """The byte tokenizer (``model.tokenizer: byte``), or SmolLM2's restricted to the ids of the
    facts' documents and the text domains (:func:`jaxcl.data.vocab.compact`)."""
    from .. import hf

    if cfg["model"]["tokenizer"] == "byte":
        return hf.ByteTokenizer()

    def record(rec):
        true, wrong = facts(cfg)
        for e in true + wrong:
            probes.encode_segments(rec, e.document())
        for name in cfg["data"]["domains"]:
            text.encode_docs(rec, text.documents(name))

    return vocab.compact(text.tokenizer("smollm2"), record)


def build(cfg: dict, tok) -> dict:
    """:class:`Data` of the config as a dict of device arrays: the true and wrong documents,
    ``data.n_windows`` training windows of ``data.domains`` and ``data.n_eval`` held-out ones
    per domain, the true and wrong probes (one length for both)."""
    d = cfg["data"]
    T = d["seq_len"]
    pad = vocab.pad_id(tok)
    true, wrong = facts(cfg)
    stream = text.build_stream(
        list(d["domains"]),
        tokenizer_name=tok,
        seq_len=T,
        n_eval=d["n_eval"],
        max_train=d["n_windows"],
        seed=cfg["seed"],
    )
    counts = np.asarray(stream.n_train)
    win = np.concatenate([np.asarray(stream.train[k, : counts[k]]) for k in range(len(counts))])[
        : d["n_windows"]
    ]
    mem_true = [p for e in true for p in e.memorization()]
    # the same contexts as the true probes, the wrong values as targets
    mem_wrong = [
        probes.counterfactual(a, b) for a, b in zip(mem_true, [p for e in wrong for p in e.memorization()])
    ]
    both = probes.encode_probes(tok, mem_true + mem_wrong, pad)  # one length for both
    n = len(mem_true)
    pt, pw = ({k: v[sl] for k, v in both.items()} for sl in (slice(0, n), slice(n, None)))
    data = Data(
        clean=document_rows(tok, [e.document() for e in true], T, pad),
        wrong=document_rows(tok, [e.document() for e in wrong], T, pad),
        windows={"tokens": win, "mask": np.ones_like(win, bool)},
        probes_true={"tokens": pt["tokens"], "target": pt["target"]},
        probes_wrong={"tokens": pw["tokens"], "target": pw["target"]},
        held_out=np.asarray(stream.eval).reshape(-1, T),
    )
    return jax.tree.map(jnp.asarray, dataclasses.asdict(data))


def mix(docs: dict, reps: int, windows: dict) -> dict:
    """Rows of ``docs`` repeated ``reps`` times, then ``windows`` (``{'tokens', 'mask'}`` each)."""
    return {k: jnp.concatenate([jnp.tile(docs[k], (reps, 1)), windows[k]]) for k in docs}


def scores(model, params, data: dict) -> dict:
    """The facts' preference for the true values, exact matches and the held-out stream NLL."""
    t = probes.span_scores(model.apply, params, data["probes_true"])
    w = probes.span_scores(model.apply, params, data["probes_wrong"])
    nll = probes.sequence_nll(model.apply, params, data["held_out"])
    return {
        "pref": (t["logp_tok"] - w["logp_tok"]).mean(),
        "exact_true": t["exact"].mean(),
        "exact_wrong": w["exact"].mean(),
        "stream_nll": nll.mean(),
    }


def recovery(pref, pref_clean, pref_corrupted):
    """``(pref - pref_corrupted) / (pref_clean - pref_corrupted)``: 0 = no recovery, 1 = back to
    the clean model, < 0 = worse; NaN where clean and corrupted do not differ (by 1e-9)."""
    gap = pref_clean - pref_corrupted
    return (pref - pref_corrupted) / np.where(np.abs(gap) > 1e-9, gap, np.nan)
