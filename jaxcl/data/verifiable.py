"""Data of verifiable tasks for post-training a language model (the rft-continual study): the
tasks of :mod:`jaxcl.tasks` encoded as SFT rows and RL prompts (stacked, task axis first), a
general-ability corpus (the KJV bible or the Zen of Python; every 10th line held out) in windows,
the in-loop batch draws, and the evaluator (greedy accuracy on held-out prompts of every task,
held-out corpus NLL per token) that runs inside the compiled loop."""

from __future__ import annotations

import codecs

import jax
import jax.numpy as jnp
import numpy as np

from .. import grpo, tasks
from ..generate import Sampling, generate_ids
from . import text


def corpus_text(name: str) -> tuple[str, str]:
    """``(train, held_out)`` text: every 10th verse (line) is held out."""
    if name == "zen":
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
            import this
        lines = codecs.decode(this.s, "rot13").splitlines()[2:]
    else:
        lines = [verse for _, _, verse in text.bible_verses()]
    lines = [x.strip() for x in lines if x.strip()]
    train = "\n".join(x for i, x in enumerate(lines) if i % 10)
    held = "\n".join(x for i, x in enumerate(lines) if i % 10 == 0)
    return train, held


def corpus_chunks(tok, text: str, n: int, T: int, seed: int) -> dict:
    """``n`` random windows of ``T`` tokens, every token scored after the first."""
    ids = np.asarray(tok.encode(text), np.int32)
    if len(ids) <= T:
        ids = np.tile(ids, T // max(len(ids), 1) + 2)
    starts = np.random.default_rng(seed).integers(0, len(ids) - T, n)
    toks = np.stack([ids[s : s + T] for s in starts])
    loss = np.ones_like(toks, bool)
    loss[:, 0] = False
    return {"tokens": toks, "valid": np.ones_like(toks, bool), "loss_mask": loss}


def build(d: dict, tok, seed: int, chat: bool = False) -> dict:
    """Stacked arrays (task axis first) of every task of the data section ``d`` (``tasks``, then
    ``base_tasks``; ``n_train`` SFT rows and RL prompts, ``n_eval`` held-out prompts each, in
    ``prompt_len`` + ``answer_len`` tokens, ``chat``: in the tokenizer's chat template) and the
    chunks of the ``corpus`` (training) and of its held-out verses (``corpus_eval`` of them)."""
    names = tuple(d["tasks"]) + tuple(d["base_tasks"])
    P, C = d["prompt_len"], d["answer_len"]
    sft, rl, ev = [], [], []
    for name in names:
        train = tasks.generate(name, d["n_train"], seed=seed, digits=d["digits"])
        held = tasks.generate(name, d["n_eval"], seed=seed + 10_000, digits=d["digits"])
        sft.append(tasks.encode_sft(tok, train, prompt_len=P, completion_len=C, chat=chat))
        rl.append(tasks.encode_prompts(tok, train, prompt_len=P, answer_width=C, chat=chat))
        ev.append(tasks.encode_prompts(tok, held, prompt_len=P, answer_width=C, chat=chat))
    stack = lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    train_text, held_text = corpus_text(d["corpus"])
    n_corpus = max(d["n_train"] * len(names), 1024)
    return {
        "sft": stack(sft),
        "rl": stack(rl),
        "eval": stack(ev),
        "corpus": corpus_chunks(tok, train_text, n_corpus, P + C, seed),
        "corpus_eval": corpus_chunks(tok, held_text, d["corpus_eval"], P + C, seed + 1),
    }


def evaluator(model, env: grpo.Env, answer_len: int):
    """``evaluate(params, data) -> {'acc': (K,), 'corpus_nll'}``: greedy accuracy on the held-out prompts
    of every task and the held-out corpus NLL per token (in the compiled loop)."""
    lc = model.cfg

    def acc_of_task(params, ev):
        P = ev["prompt"].shape[1]
        comp = generate_ids(
            params,
            ev["prompt"],
            ev["prompt_valid"],
            jax.random.key(0),
            cfg=lc,
            max_new_tokens=answer_len,
            cache_len=P + answer_len,
            sampling=Sampling(),
            eos_id=env.eos_id,
            pad_id=env.pad_id,
        )
        _, before = grpo.end_mask(comp, env.eos_id)
        return env.reward(comp, before, ev).mean()

    def evaluate(params, data):
        acc = jax.lax.map(lambda ev: acc_of_task(params, ev), data["eval"])
        s, n = model.nll(params, data["corpus_eval"])
        return {"acc": acc, "corpus_nll": s.sum() / jnp.maximum(n.sum(), 1.0)}

    return evaluate


def sft_draw(data, t, seen: bool, key, batch_size: int, corpus_fraction=0.0, n_tasks=None):
    """SFT rows of task ``t`` (``seen``: of a task drawn in ``0..t``; ``n_tasks``: of any task),
    and a ``corpus_fraction`` of corpus rows."""
    k_task, k_idx, k_c, k_mix = jax.random.split(key, 4)
    sft = data["sft"]
    K, N = sft["tokens"].shape[:2]
    if n_tasks is not None:
        lo, hi = 0, n_tasks
    else:
        lo, hi = jnp.where(seen, 0, t), t + 1
    t_B = jax.random.randint(k_task, (batch_size,), lo, hi)
    i_B = jax.random.randint(k_idx, (batch_size,), 0, N)
    batch = {k: v[t_B, i_B] for k, v in sft.items()}
    if corpus_fraction:
        c = data["corpus"]
        j_B = jax.random.randint(k_c, (batch_size,), 0, c["tokens"].shape[0])
        use = jax.random.uniform(k_mix, (batch_size,)) < corpus_fraction
        batch = {k: jnp.where(use[:, None], c[k][j_B], batch[k]) for k in batch}
    return batch


def rl_draw(data, t, key, n: int):
    rl = data["rl"]
    i_B = jax.random.randint(key, (n,), 0, rl["prompt"].shape[1])
    return {k: v[t, i_B] for k, v in rl.items()}
