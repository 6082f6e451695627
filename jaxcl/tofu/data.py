"""TOFU data (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024).

Splits are JSON Lines files (the layout of `jaxcl/datasets/tofu/`, see its README; MIT licence).
The folder is, in this order: the `root=` argument, `$JAXCL_TOFU_DIR`, the copy shipped inside
the package (`jaxcl/datasets/tofu/`), and only when none of these exists, the hub dataset
`locuslab/TOFU` through `jaxcl.hf`. A `root=` or `$JAXCL_TOFU_DIR` without the files is an error,
never a silent fall back to another copy.

Question/answer pairs are chat formatted with the model's template (one user turn, generation
prompt, then the answer and the end-of-turn token); the loss mask covers the answer tokens only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets", "tofu")
FILES = (
    "forget01.jsonl",
    "forget05.jsonl",
    "forget10.jsonl",
    "retain90.jsonl",
    "forget01_perturbed.jsonl",
    "forget05_perturbed.jsonl",
    "forget10_perturbed.jsonl",
    "retain_perturbed.jsonl",
    "real_authors_perturbed.jsonl",
    "world_facts_perturbed.jsonl",
    "idontknow.txt",
)
FORGET_SIZES = {"forget01": 40, "forget05": 200, "forget10": 400}
TOTAL_QA = 4000  # question-answer pairs of the 200 fictitious authors; retainXX holds the rest


def _contents(d: str) -> str:
    if not os.path.exists(d):
        return "it does not exist"
    if not os.path.isdir(d):
        return "it is a file, not a folder"
    names = sorted(os.listdir(d))
    if not names:
        return "it is empty"
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} entries)" if len(names) > 20 else "")
    return f"it holds: {shown}"


def _checked(d: str, source: str) -> str:
    """`d` as an absolute path when it holds `forget10.jsonl`; else FileNotFoundError."""
    if not os.path.isfile(os.path.join(d, "forget10.jsonl")):
        raise FileNotFoundError(
            f"TOFU folder {d!r} (from {source}) has no forget10.jsonl; {_contents(d)}. Expected the "
            f"JSON Lines files {', '.join(FILES)} (the layout of {PACKAGE_DIR}, see its README). "
            f"Point {source} at such a folder, or leave it unset to use the copy shipped with jaxcl."
        )
    return os.path.abspath(d)


def data_dir(root: str | None = None) -> str | None:
    """The local TOFU folder: `root`, else `$JAXCL_TOFU_DIR`, else the package's copy.

    Returns None only when none is given and the package's copy is missing (then the splits come
    from the hub). Raises FileNotFoundError when `root` or `$JAXCL_TOFU_DIR` is set but holds no
    `forget10.jsonl`, naming the folder, what it holds and the files expected.
    """
    if root:
        return _checked(root, "root=")
    env = os.environ.get("JAXCL_TOFU_DIR")
    if env:
        return _checked(env, "$JAXCL_TOFU_DIR")
    if os.path.isfile(os.path.join(PACKAGE_DIR, "forget10.jsonl")):
        return PACKAGE_DIR
    return None


def _read(name: str, root: str | None) -> list[dict]:
    d = data_dir(root)
    if d is not None:
        path = os.path.join(d, name + ".jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"TOFU split {name!r}: no {name}.jsonl in {d}; {_contents(d)}. Valid splits: "
                f"{', '.join(sorted({f[: -len('.jsonl')] for f in FILES if f.endswith('.jsonl')}))}, "
                f"and retain95, retain99, full (derived from retain90 and forget10)"
            )
        rows = []
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise ValueError(f"{path}, line {i}: not JSON ({e}); restore the file") from e
        return rows
    from jaxcl import hf  # no local copy at all (a stripped install): the hub

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
    """The refusal sentences of `idontknow.txt` (targets of "I don't know" unlearning)."""
    d = data_dir(root)
    if d is None:
        raise FileNotFoundError(
            f"idontknow.txt needs a local TOFU folder and the package's copy {PACKAGE_DIR} is missing; "
            f"reinstall jaxcl or set JAXCL_TOFU_DIR to a folder holding {', '.join(FILES)}"
        )
    path = os.path.join(d, "idontknow.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no idontknow.txt in TOFU folder {d}; {_contents(d)}")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


NAMED_MODELS = ("tiny", "smollm2-135m")
MODEL_FORMS = (
    "'tiny' (random model, byte tokenizer), 'smollm2-135m' (SmolLM2-135M-Instruct GGUF), "
    "an existing .gguf file, an existing Hugging Face checkpoint folder (with config.json), "
    "or a hub id 'owner/name' (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_model_source(model: str) -> str:
    """Check a `--model` value before anything is loaded or compiled, and return it resolved.

    Returns `model` itself for 'tiny', 'smollm2-135m' and a hub id `owner/name`, and the absolute
    path for an existing `.gguf` file or checkpoint folder. Raises FileNotFoundError for a
    path-like value that does not exist (`/x.gguf`, `./x`, `~/x`, `a/b/c`, anything ending in
    `.gguf` that is not a file) or a folder without `config.json`, and ValueError for any other
    value; both name the value and list the valid forms.
    """
    if model in NAMED_MODELS:
        return model
    path = os.path.expanduser(model)
    if model.lower().endswith(".gguf"):
        if os.path.isfile(path):
            return os.path.abspath(path)
        raise FileNotFoundError(f"model {model!r}: no such GGUF file. Valid --model values: {MODEL_FORMS}")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"model {model!r}: the folder has no config.json, so it is not a Hugging Face "
                f"checkpoint; {_contents(path)}. Valid --model values: {MODEL_FORMS}"
            )
        return os.path.abspath(path)
    if os.path.exists(path):
        raise ValueError(
            f"model {model!r} is a file but not a .gguf file. Valid --model values: {MODEL_FORMS}"
        )
    if _HUB_ID.fullmatch(model):
        return model
    if model.startswith(("/", ".", "~")) or os.sep in model:
        raise FileNotFoundError(
            f"model {model!r}: no such file or folder. Valid --model values: {MODEL_FORMS}"
        )
    raise ValueError(f"unknown model {model!r}. Valid --model values: {MODEL_FORMS}")


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
