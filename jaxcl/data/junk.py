"""Junk-versus-control text mixtures and a procedural-task probe, after "LLMs Can Get Brain Rot!"
(Xing et al., 2025): continual pre-training on junk text (short, engagement-style posts) against
a control set at matched token counts, with a dose-response over the junk ratio.

:func:`build` packs one byte-level :class:`jaxcl.data.text.TextStream` of the groups ``base``
(``data.base_domains``: long-form text), ``tasks`` (documents of 20 lines of ``data.tasks`` of
:mod:`jaxcl.tasks`, such as ``add 3+4=7``), ``control`` and ``junk``, in that order, and the
held-out task probes. A training row is drawn from the domains with :func:`group_weights`: a
group with fraction ``f`` and ``n`` domains gives each domain weight ``f / n``; the junk phase
of ratio ``r`` is ``{'junk': r, 'control': 1 - r}``. The probe (:func:`task_accuracy`) is
teacher-forced exact match: a prompt counts when every answer token is the model's argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import tasks
from ..config import ConfigError
from . import text


def task_probe(tok, rows: list[tuple[str, str]], seq_len: int) -> dict:
    """``{'tokens', 'mask'}`` (n, T): ``prompt answer\\n`` right-padded, the answer tokens masked."""
    toks = np.full((len(rows), seq_len), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), seq_len), bool)
    for i, (prompt, answer) in enumerate(rows):
        p, a = tok.encode(prompt), tok.encode(answer)
        ids = p + a + tok.encode("\n")
        if len(ids) > seq_len:
            raise ConfigError(f"task line {prompt + answer!r} is longer than data.seq_len={seq_len}")
        toks[i, : len(ids)] = ids
        mask[i, len(p) : len(p) + len(a)] = True
    return {"tokens": toks, "mask": mask}


def build(cfg: dict) -> tuple[text.TextStream, dict, dict]:
    """``(stream, probe, groups)``: the text stream (base domains, the task text, control, junk:
    in that order), the task probes ``{'tokens', 'mask'}`` (n_tasks, n_probe, T) and the domain
    indices of each group."""
    d = cfg["data"]
    tok = text.tokenizer("byte")
    lines = []
    for name in d["tasks"]:
        lines += [
            p + a for p, a in tasks.generate(name, d["task_lines"], seed=cfg["seed"], digits=d["digits"])
        ]
    order = np.random.default_rng(cfg["seed"]).permutation(len(lines))
    docs = ["\n".join(lines[j] for j in order[i : i + 20]) for i in range(0, len(lines), 20)]
    names = (*d["base_domains"], "tasks", *d["control"], *d["junk"])
    stream = text.build_stream(
        names,
        tokenizer_name=tok,
        seq_len=d["seq_len"],
        n_eval=d["n_eval"],
        max_train=d["max_train"],
        seed=cfg["seed"],
        texts={"tasks": docs},
    )
    probes = [
        task_probe(
            tok, tasks.generate(n, d["n_probe"], seed=cfg["seed"] + 10_000, digits=d["digits"]), d["seq_len"]
        )
        for n in d["tasks"]
    ]
    probe = {k: jnp.asarray(np.stack([p[k] for p in probes])) for k in probes[0]}
    nb, nc, nj = len(d["base_domains"]), len(d["control"]), len(d["junk"])
    groups = {
        "base": np.arange(nb),
        "tasks": np.array([nb]),
        "control": nb + 1 + np.arange(nc),
        "junk": nb + 1 + nc + np.arange(nj),
    }
    return stream, probe, groups


def group_weights(groups: dict, n_domains: int, parts: dict) -> jax.Array:
    """(n_domains,) sampling weights: each group ``g`` of ``parts`` (``{g: fraction}``, fractions
    may be traced) split evenly over its domains."""
    w = jnp.zeros((n_domains,), jnp.float32)
    for g, frac in parts.items():
        idx = jnp.asarray(groups[g])
        w = w.at[idx].add(frac / len(groups[g]))
    return w


def task_accuracy(apply, params, probe) -> jax.Array:
    """(n_tasks,) teacher-forced exact match: every answer token is the model's argmax."""

    def one(tokens_NxT, mask_NxT):
        pred = apply(params, tokens_NxT[:, :-1]).argmax(-1)
        ok = (pred == tokens_NxT[:, 1:]) | ~mask_NxT[:, 1:]
        return ok.all(-1).mean()

    return jax.lax.map(lambda a: one(*a), (probe["tokens"], probe["mask"]))
