"""The TOFU forgetting problem of a config (Maini et al., "TOFU: A Task of Fictitious Unlearning
for LLMs", 2024): the model (:func:`load_model`) and the encoded forget / retain question-answer
rows with the refusal answers IDK trains on, as a :class:`jaxcl.unlearn.lm.LMProblem`, beside the
evaluation sets (:func:`load_problem`).

``D_f`` is the forget split (``forget01/05/10``: 1/5/10 % of the 200 authors' 4000 pairs) and
``D_r`` its retain split (``retain99/95/90``); the evaluation sets are ``D_f`` and ``D_r`` with
paraphrased and perturbed answers, the real authors and the world facts. The holdout
(:func:`split_retain`, ``data.n_holdout`` rows cut from the END of the retain split) is in no
training set: the non-members of the membership-inference attacks (:func:`load_holdout`).
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from ..models import lm
from ..models.lm import LanguageModel
from ..unlearn.lm import LMProblem
from . import data as tdata


def load_model(cfg: dict) -> tuple[LanguageModel, dict, object]:
    """``(model, params, tokenizer)`` (:func:`jaxcl.models.lm.load`): SmolLM2-135M-Instruct, another
    GGUF file, a Hugging Face checkpoint (folder or hub id), or ``tiny`` (from ``seed``)."""
    m = cfg["model"]
    source = tdata.resolve_model_source(m["name"])
    return lm.load({**m, "name": source, "label": m["name"]}, seed=cfg["seed"])


def encode(tok, rows: list[dict], max_len: int, answers: list[str] | None = None) -> dict:
    """``{'tokens': (N, max_len) int32, 'mask': (N, max_len) bool}`` of chat-formatted rows
    (:func:`jaxcl.tofu.data.encode_qa`), their own answers or ``answers``; mask on the answers."""
    t, m = tdata.encode_qa(
        tok, [r["question"] for r in rows], answers or [r["answer"] for r in rows], max_len
    )
    return {"tokens": jnp.asarray(t), "mask": jnp.asarray(m)}


def n_holdout(cfg: dict) -> int:
    """``data.n_holdout`` resolved: ``-1`` (the default) is ``max(8, n_forget // 10)``, 0 none."""
    d = cfg["data"]
    if d["n_holdout"] >= 0:
        return d["n_holdout"]
    return max(8, (d["n_forget"] or tdata.FORGET_SIZES[d["split"]]) // 10)


def split_retain(cfg: dict) -> tuple[list[dict], list[dict]]:
    """``(retain rows, holdout rows)``: the holdout is the last :func:`n_holdout` rows of the
    retain split, the retain rows the first ``n_retain`` (0: all) of the rest, so the two never
    share a row and the holdout is in neither the target's nor the retain model's training set."""
    d = cfg["data"]
    full = tdata.load_split(tdata.retain_for(d["split"]), d["data_dir"] or None)
    cut = len(full) - n_holdout(cfg)
    return full[:cut][: d["n_retain"] or None], full[cut:]


def _template_words(question: str) -> frozenset:
    words = re.findall(r"[A-Za-z']+", question)
    return frozenset(w.lower() for i, w in enumerate(words) if i == 0 or not w[0].isupper())


def decoupled(forget: list[dict], pool: list[dict]) -> list[dict]:
    """SafeEraser's prompt-decouple rows in text (:mod:`jaxcl.methods.pd`), one per forget row:
    the ``pool`` row whose question has the most words in common with the forget question once
    names are set aside (Jaccard similarity of the lower-cased words, capitalised words after the
    first dropped; the first best on ties), i.e. the same question about another author, with
    that author's answer ("What gender is author A?" -> "What gender is the author B?")."""
    if not pool:
        raise ValueError("no rows to draw prompt-decouple rows from")
    cands = [(_template_words(r["question"]), r) for r in pool]

    def best(q):
        w = _template_words(q)
        return max(cands, key=lambda c: len(w & c[0]) / max(1, len(w | c[0])))[1]

    return [best(r["question"]) for r in forget]


def load_holdout(cfg: dict, tok) -> dict | None:
    """The encoded holdout rows (non-members of both models), or None with ``n_holdout=0``."""
    rows = split_retain(cfg)[1]
    return encode(tok, rows, cfg["data"]["max_len"]) if rows else None


def load_problem(cfg: dict, tok) -> tuple[LMProblem, dict]:
    """The encoded problem and the evaluation sets (rows with paraphrased / perturbed answers).
    The refusal answers of ``forget_alt`` are drawn from ``idontknow.txt`` with ``seed``; the
    prompt-decouple rows of ``forget_pd`` (:func:`decoupled`) from the retain split less the
    holdout and the retain evaluation questions."""
    d = cfg["data"]
    root = d["data_dir"] or None
    forget = tdata.load_split(d["split"], root)[: d["n_forget"] or None]
    retain = split_retain(cfg)[0]
    cap = lambda rows: rows[: d["n_eval"] or None]
    evals = {
        "forget": cap(tdata.load_split(d["split"] + "_perturbed", root)[: len(forget)]),
        "retain": cap(tdata.load_split("retain_perturbed", root)),
        "real_authors": cap(tdata.load_split("real_authors_perturbed", root)),
        "world_facts": cap(tdata.load_split("world_facts_perturbed", root)),
    }
    idk = tdata.idk_answers(root)
    pick = np.random.default_rng(cfg["seed"]).integers(0, len(idk), len(forget))
    full = tdata.load_split(tdata.retain_for(d["split"]), root)
    asked = {r["question"] for r in evals["retain"]}
    pool = [r for r in full[: len(full) - n_holdout(cfg)] if r["question"] not in asked]
    problem = LMProblem(
        forget=encode(tok, forget, d["max_len"]),
        forget_alt=encode(tok, forget, d["max_len"], answers=[idk[i] for i in pick]),
        retain=encode(tok, retain, d["max_len"]),
        forget_pd=encode(tok, decoupled(forget, pool), d["max_len"]),
    )
    return problem, evals
