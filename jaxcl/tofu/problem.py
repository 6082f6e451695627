"""The TOFU forgetting problem of a config (Maini et al., "TOFU: A Task of Fictitious Unlearning
for LLMs", 2024): the model (:func:`load_model`) and the encoded forget / retain question-answer
rows with the refusal answers IDK trains on, as a :class:`jaxcl.unlearn.lm.LMProblem`, beside the
evaluation sets (:func:`load_problem`).

``D_f`` is the forget split (``forget01/05/10``: 1/5/10 % of the 200 authors' 4000 pairs) and
``D_r`` its retain split (``retain99/95/90``); the evaluation sets are ``D_f`` and ``D_r`` with
paraphrased and perturbed answers, the real authors and the world facts.
"""

from __future__ import annotations

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


def load_problem(cfg: dict, tok) -> tuple[LMProblem, dict]:
    """The encoded problem and the evaluation sets (rows with paraphrased / perturbed answers).
    The refusal answers of ``forget_alt`` are drawn from ``idontknow.txt`` with ``seed``."""
    d = cfg["data"]
    root = d["data_dir"] or None
    forget = tdata.load_split(d["split"], root)[: d["n_forget"] or None]
    retain = tdata.load_split(tdata.retain_for(d["split"]), root)[: d["n_retain"] or None]
    cap = lambda rows: rows[: d["n_eval"] or None]
    evals = {
        "forget": cap(tdata.load_split(d["split"] + "_perturbed", root)[: len(forget)]),
        "retain": cap(tdata.load_split("retain_perturbed", root)),
        "real_authors": cap(tdata.load_split("real_authors_perturbed", root)),
        "world_facts": cap(tdata.load_split("world_facts_perturbed", root)),
    }
    idk = tdata.idk_answers(root)
    pick = np.random.default_rng(cfg["seed"]).integers(0, len(idk), len(forget))
    problem = LMProblem(
        forget=encode(tok, forget, d["max_len"]),
        forget_alt=encode(tok, forget, d["max_len"], answers=[idk[i] for i in pick]),
        retain=encode(tok, retain, d["max_len"]),
    )
    return problem, evals
