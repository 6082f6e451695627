"""TOFU data (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024).

Splits are read from a local folder of JSON Lines (the layout of `../shared/data/tofu/`, see its
README) when one exists, else from the hub dataset `locuslab/TOFU` through `jaxcl.hf`. The folder
is found from `root=`, `$JAXCL_TOFU_DIR`, or the shared data folder next to the repository.

Question/answer pairs are chat formatted with the model's template (one user turn, generation
prompt, then the answer and the end-of-turn token); the loss mask covers the answer tokens only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = (os.path.join(_HERE, "..", "..", "..", "shared", "data", "tofu"), "/work/shared/data/tofu")
FORGET_SIZES = {"forget01": 40, "forget05": 200, "forget10": 400}


def data_dir(root: str | None = None) -> str | None:
    for d in (root, os.environ.get("JAXCL_TOFU_DIR"), *CANDIDATES):
        if d and os.path.exists(os.path.join(d, "forget10.jsonl")):
            return os.path.abspath(d)
    if root:
        raise FileNotFoundError(f"no TOFU jsonl files (forget10.jsonl, ...) in {root}")
    return None


def _read(name: str, root: str | None) -> list[dict]:
    d = data_dir(root)
    if d is not None:
        path = os.path.join(d, name + ".jsonl")
        if os.path.exists(path):
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
    from jaxcl import hf  # users with internet: the hub copy

    return hf.load_hub_dataset("locuslab/TOFU", name)


def load_split(name: str, root: str | None = None) -> list[dict]:
    """A TOFU split as a list of dicts. Also derives `retainXX` and `full` from the local files.

    forget01 c forget05 c forget10 (prefixes); retain90 + forget10 = full;
    retain95 = retain90 + forget10[200:]; retain99 = retain90 + forget10[40:].
    """
    if name in ("retain95", "retain99", "full") and (data_dir(root) is not None):
        retain90, forget10 = _read("retain90", root), _read("forget10", root)
        cut = {"retain95": 200, "retain99": 40, "full": 0}[name]
        return retain90 + forget10[cut:]
    return _read(name, root)


def retain_for(forget: str) -> str:
    return {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}[forget]


def idk_answers(root: str | None = None) -> list[str]:
    d = data_dir(root)
    if d is None:
        raise FileNotFoundError("idontknow.txt needs the local TOFU folder (set JAXCL_TOFU_DIR)")
    with open(os.path.join(d, "idontknow.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def encode_qa(tokenizer, questions: Sequence[str], answers: Sequence[str], max_len: int):
    """Chat-formatted (question, answer) pairs: tokens (N, T) int32 right-padded, answer mask (N, T).

    The mask is True on the answer tokens and the closing end-of-turn token (the positions whose
    prediction is trained/scored). Sequences longer than `max_len` are cut at the end.
    """
    toks = np.full((len(questions), max_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(questions), max_len), bool)
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    for i, (q, a) in enumerate(zip(questions, answers)):
        prompt = tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        )
        ans = tokenizer.encode(a) + eos
        seq = (prompt + ans)[:max_len]
        toks[i, : len(seq)] = seq
        mask[i, len(prompt) : len(seq)] = True
    return toks, mask


def encode_prompts(tokenizer, questions: Sequence[str]) -> list[list[int]]:
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        )
        for q in questions
    ]
