"""MUSE's criteria for a language model, computed inside the compiled loop, and the offline data
of the MUSE-style study (``study: muse``).

Paper: Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language Models" (2024).
With ``f`` a model, ``D_f`` the forget set, ``D_r`` the retain set and ``D_h`` a holdout set from
the forget set's distribution that no model trained on:

- C1 no verbatim memorisation: ``VerbMem(f, D_f) = mean_x ROUGE-L F1(f(x[:l]), x[l:])``, the
  greedy continuation of each forget text's first ``l`` tokens against its true continuation;
- C2 no knowledge memorisation: ``KnowMem(f, D_f) = mean_(q, a) ROUGE-L F1(f(q), a)`` over
  question/answer pairs about ``D_f``;
- C3 no privacy leakage: ``PrivLeak = (AUC(f_unl) - AUC(f_retrain)) / AUC(f_retrain)`` of the
  Min-K% Prob attack telling ``D_f`` from ``D_h`` (:func:`jaxcl.unlearn.attacks.privleak`, MUSE's
  code's sign: near 0 is good, negative is under-unlearning);
- C4 utility preservation: ``KnowMem(f, D_r)``;
- C5 scalability and C6 sustainability: the same criteria as the forget set grows and over
  sequential requests (the study's schedule).

**What differs here** (no LLM to write questions, no hub): ROUGE-L is on token ids
(:func:`rouge_l_f1`, ``2 LCS / (|candidate| + |reference|)``), not on words; the knowledge
questions are cloze questions generated from the facts stated in the forget documents (fictional
entities of :mod:`jaxcl.probes`: "<name> lives in" -> " <city>"), and an answer is read at the
true answer's length (MUSE cuts at a blank line). Every criterion except PrivLeak's normalisation
by the retrained model (a per-seed division on the host) is computed in :func:`criteria`, a pure
function the unlearning loop calls every ``eval_every`` steps (:class:`MusePhase`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .. import probes
from ..config import ConfigError
from ..data import restor as restor_data
from ..data import text, vocab
from ..generate import pad_left
from ..loops import Phase
from .attacks import min_k_score
from .eval import auc
from .lm import LMProblem

MIN_K = 0.4  # Min-K% Prob's k in MUSE's PrivLeak (the attacks module's default)


# -- ROUGE-L on token ids (pure) --------------------------------------------------------------------


def lcs_length(a_NxL, b_NxM) -> jax.Array:
    """(N,) the length of the longest common subsequence of each row pair (int32). Row ``i`` of
    the dynamic programme is ``dp_i[j] = max_{k <= j} max(dp_{i-1}[k], dp_{i-1}[k-1] + [a_i = b_k])``
    (``dp`` is non-decreasing in ``j``, so the usual left neighbour is a running maximum)."""

    def one(a_L, b_M):
        def row(prev_M1, a_i):
            c_M = jnp.maximum(prev_M1[1:], prev_M1[:-1] + (a_i == b_M).astype(jnp.int32))
            return jnp.concatenate([jnp.zeros((1,), jnp.int32), jax.lax.cummax(c_M)]), None

        last, _ = jax.lax.scan(row, jnp.zeros((b_M.shape[0] + 1,), jnp.int32), a_L)
        return last[-1]

    return jax.vmap(one)(a_NxL, b_NxM)


def rouge_l_f1(cand_NxL, ref_NxM, cand_mask_NxL=None, ref_mask_NxM=None) -> jax.Array:
    """(N,) ROUGE-L F1 of token sequences, ``2 LCS / (|cand| + |ref|)`` (precision ``LCS/|cand|``,
    recall ``LCS/|ref|``); masked-out tokens are not part of a sequence; 0 when both are empty."""
    cm = jnp.ones(cand_NxL.shape, bool) if cand_mask_NxL is None else cand_mask_NxL
    rm = jnp.ones(ref_NxM.shape, bool) if ref_mask_NxM is None else ref_mask_NxM
    a = jnp.where(cm, cand_NxL, -1)  # a masked token never matches
    b = jnp.where(rm, ref_NxM, -2)
    n = cm.sum(-1) + rm.sum(-1)
    return jnp.where(n > 0, 2.0 * lcs_length(a, b) / jnp.maximum(n, 1), 0.0)


# -- the criteria (pure: the continual evaluation of the unlearning loop) ----------------------------


def _greedy(model, params, cue_NxP, cue_mask_NxP, n_new: int, pad: int):
    return probes.greedy_recall(
        model.cfg, params, cue_NxP, jnp.zeros((cue_NxP.shape[0], n_new), jnp.int32), cue_mask_NxP, pad
    )["generated"]


def knowmem(model, params, qa: dict, pad: int) -> jax.Array:
    """(N,) ROUGE-L F1 of each greedy answer (read at its true answer's length) against the answer."""
    gen = _greedy(model, params, qa["cue"], qa["cue_mask"], qa["answer"].shape[1], pad)
    m = qa["answer_mask"]
    return rouge_l_f1(gen, qa["answer"], m, m)


def verbmem(model, params, rows_NxT, prefix_len: int, pad: int) -> jax.Array:
    """(N,) ROUGE-L F1 of the greedy continuation of each row's first ``prefix_len`` tokens
    against the rest of the row."""
    cue, ref = rows_NxT[:, :prefix_len], rows_NxT[:, prefix_len:]
    gen = _greedy(model, params, cue, jnp.ones(cue.shape, bool), ref.shape[1], pad)
    return rouge_l_f1(gen, ref)


def mia_auc(model, params, members_NxT, nonmembers_MxT, k: float = MIN_K) -> jax.Array:
    """The Min-K% Prob attack's AUC of members (``D_f``) against non-members (``D_h``), as
    :func:`jaxcl.unlearn.attacks.mia` (1: told apart, 0.5: not)."""
    score = lambda t: min_k_score(model.apply(params, t), t, jnp.ones(t.shape, bool), k)
    return auc(score(nonmembers_MxT), score(members_NxT))


def criteria(model, params, probe: dict, prefix_len: int, pad: int) -> dict:
    """Every MUSE criterion of ``params`` on ``probe`` (:func:`build`'s ``probe``): ``verbmem_f``
    (C1, on ``verb_eval``), ``knowmem_f`` (C2), ``mia_auc`` (C3's AUC, every forget window against
    the holdout), ``knowmem_r`` (C4), each a scalar."""
    return {
        "verbmem_f": verbmem(model, params, probe["verb_eval"], prefix_len, pad).mean(),
        "knowmem_f": knowmem(model, params, probe["qa_forget"], pad).mean(),
        "knowmem_r": knowmem(model, params, probe["qa_retain"], pad).mean(),
        "mia_auc": mia_auc(model, params, probe["verb"], probe["holdout"]),
    }


@struct.dataclass
class MuseProblem(LMProblem):
    """An :class:`LMProblem` that carries the criteria's evaluation sets (``probe``)."""

    probe: dict | None = None


class MusePhase(Phase):
    """A :class:`jaxcl.loops.Phase` whose continual evaluation is :func:`criteria` (and the forget /
    retain NLL): every MUSE criterion every ``eval_every`` steps, inside the compiled loop."""

    def __init__(self, *args, prefix_len: int, pad: int, **kw):
        super().__init__(*args, **kw)
        self.prefix_len, self.pad = prefix_len, pad

    def evaluate(self, params, problem, model=None):
        model = model or self.model
        return {
            **super().evaluate(params, problem, model),
            **criteria(model, params, problem.probe, self.prefix_len, self.pad),
        }


# -- data ------------------------------------------------------------------------------------------


def facts(cfg: dict) -> tuple[list, list]:
    """``(forget entities, retain entities)``: ``data.n_facts`` each (:func:`jaxcl.probes.entities`)."""
    n = cfg["data"]["n_facts"]
    ents = probes.entities(2 * n, cfg["seed"])
    return ents[:n], ents[n:]


def tokenizer(cfg: dict):
    """The byte tokenizer (``model.tokenizer: byte``), or SmolLM2's restricted to the run's ids."""
    from .. import hf

    if cfg["model"]["tokenizer"] == "byte":
        return hf.ByteTokenizer()

    def record(rec):
        for e in sum(facts(cfg), []):
            probes.encode_segments(rec, e.document())
        for name in cfg["data"]["corpora"]:
            text.encode_docs(rec, text.documents(name))

    return vocab.compact(text.tokenizer("smollm2"), record)


def qa_rows(tok, ents, pad: int) -> dict:
    """Cloze questions about ``ents``: each fact's document up to the value (left-padded,
    ``cue`` / ``cue_mask``) and the value (right-padded, ``answer`` / ``answer_mask``)."""
    cues, answers = [], []
    for e in ents:
        for segs in e.memorization():
            ids, target = probes.encode_segments(tok, segs)
            cut = target.index(True)
            cues.append(ids[:cut])
            answers.append(ids[cut:])
    cue, cue_mask = pad_left(cues, pad)
    L = max(map(len, answers))
    ans = np.full((len(answers), L), pad, np.int32)
    ans_mask = np.zeros((len(answers), L), bool)
    for i, a in enumerate(answers):
        ans[i, : len(a)], ans_mask[i, : len(a)] = a, True
    return {"cue": cue, "cue_mask": cue_mask, "answer": ans, "answer_mask": ans_mask}


@dataclasses.dataclass
class Data:
    forget_windows: np.ndarray  # (n_forget, T) the forget corpus's windows to unlearn
    forget_docs: dict  # {'tokens', 'mask'} (n_facts, T): the forget facts' documents
    retain: dict  # every retain row: the forget corpus's other windows, the other corpus, retain facts
    retain_docs: dict  # the retain facts' documents (n_facts, T)
    probe: dict  # the criteria's sets: verb, verb_eval, holdout (windows), qa_forget, qa_retain
    n_requests: int  # the forget set's folds (data.requests)
    pad: int  # the tokenizer's padding id


def windows(cfg: dict, tok) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(forget windows, the forget corpus's retain windows, the other corpus's windows, the
    forget corpus's held-out windows)``: ``data.n_forget`` (one contiguous stretch),
    ``data.n_retain``, ``data.n_other``, ``data.n_holdout`` (unique, from held-out documents); each a :class:`ConfigError` naming the key when the corpus is too short."""
    d = cfg["data"]
    a, b = d["corpora"]
    need = {a: d["n_forget"] + d["n_retain"], b: d["n_other"]}
    stream = text.build_stream([a, b], tokenizer_name=tok, seq_len=d["seq_len"], n_eval=1, seed=cfg["seed"])
    counts = np.asarray(stream.n_train)
    for k, name in enumerate((a, b)):
        if counts[k] < need[name]:
            keys = "data.n_forget + data.n_retain" if k == 0 else "data.n_other"
            raise ConfigError(
                f"{keys}={need[name]} windows, but {name} has {int(counts[k])} of data.seq_len={d['seq_len']} "
                "tokens: lower them or the sequence length"
            )
    rng = np.random.default_rng(cfg["seed"])
    train_a = np.asarray(stream.train[0, : counts[0]])
    train_b = np.asarray(stream.train[1, : counts[1]])
    held = held_out(cfg, tok)
    if len(held) < d["n_holdout"]:
        raise ConfigError(
            f"data.n_holdout={d['n_holdout']}, but {a}'s held-out documents (every tenth) give {len(held)} windows: lower it or choose a larger corpus"
        )
    # forget windows: one contiguous stretch of the corpus (a few chapters), the rest retain
    start = int(rng.integers(0, counts[0] - d["n_forget"] + 1))
    forget = train_a[start : start + d["n_forget"]]
    rest = np.concatenate([train_a[:start], train_a[start + d["n_forget"] :]])
    retain_a = rest[np.sort(rng.choice(len(rest), d["n_retain"], replace=False))]
    other = train_b[np.sort(rng.choice(len(train_b), d["n_other"], replace=False))]
    return forget, retain_a, other, held[: d["n_holdout"]]


def held_out(cfg: dict, tok) -> np.ndarray:
    """The forget corpus's held-out windows: those of the documents :func:`jaxcl.data.text.build_stream`
    holds out (every tenth), never trained on; none for a corpus of fewer than two documents."""
    d = cfg["data"]
    docs = [x for x in text.documents(d["corpora"][0]) if x and x.strip()]
    if len(docs) < 2:  # its one document would be both trained on and held out
        return np.zeros((0, d["seq_len"]), np.int32)
    held = text.split_held_out(docs, 10)[1]
    return text.pack(text.encode_docs(tok, held), d["seq_len"])


def build(cfg: dict, tok) -> Data:
    """The study's rows and evaluation sets (host arrays)."""
    d = cfg["data"]
    T, pad = d["seq_len"], vocab.pad_id(tok)
    forget_w, retain_a, other, holdout = windows(cfg, tok)
    ent_f, ent_r = facts(cfg)
    docs_f = restor_data.document_rows(tok, [e.document() for e in ent_f], T, pad)
    docs_r = restor_data.document_rows(tok, [e.document() for e in ent_r], T, pad)
    full = lambda w: {"tokens": w, "mask": np.ones(w.shape, bool)}  # noqa: E731
    retain = jax.tree.map(lambda *x: np.concatenate(x), full(retain_a), full(other), docs_r)
    n = len(forget_w)
    probe = {
        "verb": forget_w,
        # VerbMem's rows: unlearn.eval_size forget windows spread evenly over the folds
        "verb_eval": forget_w[
            np.unique(np.linspace(0, n - 1, min(cfg["unlearn"]["eval_size"], n)).astype(int))
        ],
        "holdout": holdout,
        "qa_forget": qa_rows(tok, ent_f, pad),
        "qa_retain": qa_rows(tok, ent_r, pad),
    }
    return Data(forget_w, docs_f, retain, docs_r, probe, d["requests"], pad)


def forget_rows(data: Data, folds) -> dict:
    """The forget rows of the given folds (request indices): the folds' windows and facts' documents
    (``data.requests`` equal folds of each, in order)."""
    n_req = data.n_requests
    w = np.array_split(data.forget_windows, n_req)
    docs = [np.array_split(data.forget_docs[k], n_req) for k in ("tokens", "mask")]
    tok = np.concatenate([w[i] for i in folds] + [docs[0][i] for i in folds])
    mask = np.concatenate([np.ones(w[i].shape, bool) for i in folds] + [docs[1][i] for i in folds])
    return {"tokens": tok, "mask": mask}


def repeat(rows: dict, reps: int) -> dict:
    """Every row ``reps`` times (a fact document seen as often as the windows' epochs need)."""
    return {k: np.tile(v, (reps,) + (1,) * (v.ndim - 1)) for k, v in rows.items()}
