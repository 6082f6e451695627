"""Procedural verifiable tasks for reinforcement fine-tuning, with exact answer checking in JAX.

Every task generates ``(prompt, answer)`` string pairs from a seed (offline, unlimited, no
tokenizer involved) and its answers are canonical strings, so a completion is correct exactly
when its decoded bytes up to the end-of-sequence token equal the answer's bytes. The check runs
on bytes inside the compiled program: :func:`token_bytes` builds a ``(vocab, K)`` table of each
token's bytes once on the host (any tokenizer: byte-level or BPE), and :func:`exact_reward`
detokenizes the completion with it (gather + scatter) and compares. Reward is 1.0 for an exact
answer, else 0.0; ``partial`` adds credit for the correctly placed answer bytes (a denser signal
for tiny models).

Tasks (``digits`` = operand size):

==========  ==========================  ===========
name        prompt                      answer
==========  ==========================  ===========
add         ``add 47+85=``              ``132``
sub         ``sub 85-47=``              ``38``
mul         ``mul 47*8=``               ``376``
rev         ``rev 4785=``               ``5874``
sort        ``sort 4785=``              ``4578``
count       ``count 7 in 47757=``       ``3``
lineq       ``solve 3x+5=26 x=``        ``7``
chain       ``chain 1+0+1=``            ``1,2,=2``
==========  ==========================  ===========

``chain`` is a running sum (mod 10) of 0/1 terms with its reasoning written out: ``digits``
additions, each running sum followed by ``,`` (one reasoning step), then ``=`` and the final
answer. Its difficulty is the number of steps (``digits``); the Auto-CEI study
(:mod:`jaxcl.auto_cei`) reads the steps and the answer after ``=`` from a completion.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np


def _num(rng, digits, n):
    return rng.integers(0, 10**digits, n)


def _digits_str(rng, digits, n):
    return ["".join(map(str, rng.integers(0, 10, digits))) for _ in range(n)]


def _add(rng, n, d):
    a, b = _num(rng, d, n), _num(rng, d, n)
    return [(f"add {x}+{y}=", str(x + y)) for x, y in zip(a, b)]


def _sub(rng, n, d):
    a, b = _num(rng, d, n), _num(rng, d, n)
    a, b = np.maximum(a, b), np.minimum(a, b)
    return [(f"sub {x}-{y}=", str(x - y)) for x, y in zip(a, b)]


def _mul(rng, n, d):
    a, b = _num(rng, d, n), rng.integers(0, 10, n)
    return [(f"mul {x}*{y}=", str(x * y)) for x, y in zip(a, b)]


def _rev(rng, n, d):
    return [(f"rev {s}=", s[::-1]) for s in _digits_str(rng, d + 2, n)]


def _sort(rng, n, d):
    return [(f"sort {s}=", "".join(sorted(s))) for s in _digits_str(rng, d + 2, n)]


def _count(rng, n, d):
    out = []
    for s, c in zip(_digits_str(rng, d + 3, n), rng.integers(0, 10, n)):
        out.append((f"count {c} in {s}=", str(s.count(str(c)))))
    return out


def _lineq(rng, n, d):
    a, x, b = rng.integers(1, 10, n), _num(rng, max(d - 1, 1), n), _num(rng, d, n)
    return [(f"solve {p}x+{q}={p * r + q} x=", str(r)) for p, r, q in zip(a, x, b)]


def _chain(rng, n, d):
    out = []
    for terms in rng.integers(0, 2, (n, d + 1)):
        sums = np.cumsum(terms)[1:] % 10
        trace = "".join(f"{v}," for v in sums) + f"={sums[-1]}"
        out.append((f"chain {'+'.join(map(str, terms))}=", trace))
    return out


TASKS: dict[str, Callable] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "rev": _rev,
    "sort": _sort,
    "count": _count,
    "lineq": _lineq,
    "chain": _chain,
}


def check_task(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return name


def generate(name: str, n: int, *, seed: int = 0, digits: int = 2) -> list[tuple[str, str]]:
    """``n`` ``(prompt, answer)`` pairs of task ``name`` (deterministic in ``seed``)."""
    check_task(name)
    if digits < 1:
        raise ValueError(f"digits={digits} must be >= 1")
    rng = np.random.default_rng([seed, sorted(TASKS).index(name), digits])
    return TASKS[name](rng, n, digits)


def check_answer(completion: str, answer: str) -> bool:
    """The host-side reference of :func:`exact_reward`: the completion up to the end is the answer."""
    return completion == answer


# -- bytes of tokens, and the reward in JAX -----------------------------------------------------


def token_bytes(tokenizer, max_bytes: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(table_VxK int32, length_V int32)``: the UTF-8 bytes of every token (special tokens: none).

    Byte-level tokenizers (:class:`jaxcl.hf.ByteTokenizer`) map id ``i < 256`` to byte ``i``; any
    other tokenizer is asked to decode each id alone (once, on the host)."""
    V = tokenizer.vocab_size
    table = np.zeros((V, max_bytes), np.int32)
    length = np.zeros((V,), np.int32)
    specials = set(getattr(tokenizer, "special_ids", {}).values())
    byte_level = type(tokenizer).__name__ == "ByteTokenizer"
    for i in range(V):
        if i in specials:
            continue
        if byte_level:
            b = bytes([i]) if i < 256 else b""
        else:
            b = tokenizer.decode([i]).encode("utf-8")[:max_bytes]
        table[i, : len(b)] = list(b)
        length[i] = len(b)
    return table, length


def encode_answers(answers: list[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Answers as ``(bytes_NxA int32 padded with -1, length_N)``."""
    out = np.full((len(answers), width), -1, np.int32)
    lens = np.zeros((len(answers),), np.int32)
    for i, a in enumerate(answers):
        b = a.encode("utf-8")
        if len(b) > width:
            raise ValueError(f"answer {a!r} has {len(b)} bytes, more than answer_width={width}")
        out[i, : len(b)] = list(b)
        lens[i] = len(b)
    return out, lens


def detokenize(tokens_BxN, mask_BxN, table_VxK, length_V, width: int):
    """The bytes of the masked-in tokens of each row, packed left: ``(bytes_BxW (-1 padded), n_B)``.
    Bytes beyond ``width`` are dropped (but counted in ``n_B``)."""
    B, N = tokens_BxN.shape
    K = table_VxK.shape[1]
    b_BxNxK = jnp.asarray(table_VxK)[tokens_BxN]
    len_BxN = jnp.asarray(length_V)[tokens_BxN] * mask_BxN.astype(jnp.int32)
    start_BxN = jnp.cumsum(len_BxN, axis=1) - len_BxN
    pos_BxNxK = start_BxN[..., None] + jnp.arange(K)
    ok = (jnp.arange(K) < len_BxN[..., None]) & (pos_BxNxK < width)
    pos_BxNxK = jnp.where(ok, pos_BxNxK, width)  # a dump column, dropped below
    rows = jnp.broadcast_to(jnp.arange(B)[:, None, None], pos_BxNxK.shape)
    out = jnp.full((B, width + 1), -1, jnp.int32).at[rows, pos_BxNxK].set(b_BxNxK)
    return out[:, :width], len_BxN.sum(1)


def exact_reward(
    tokens_BxN, mask_BxN, answer_BxA, answer_len_B, table_VxK, length_V, *, partial: bool = False
):
    """1.0 where the completion's bytes (the masked-in tokens, end token excluded) equal the
    answer's bytes exactly, else 0.0; with ``partial``, wrong answers get
    ``0.5 * (correct bytes at their place) / max(len(answer), len(completion))``."""
    A = answer_BxA.shape[1]
    got_BxA, n_B = detokenize(tokens_BxN, mask_BxN, table_VxK, length_V, A)
    in_ans = jnp.arange(A) < answer_len_B[:, None]
    same = (got_BxA == answer_BxA) & in_ans
    exact = (n_B == answer_len_B) & (same.sum(1) == answer_len_B)
    r = exact.astype(jnp.float32)
    if partial:
        frac = same.sum(1) / jnp.maximum(jnp.maximum(n_B, answer_len_B), 1)
        r = jnp.where(exact, 1.0, 0.5 * frac)
    return r


# -- prompts as arrays, and the environment of a rollout ----------------------------------------


def encode_prompts(
    tokenizer,
    pairs: list[tuple[str, str]],
    *,
    prompt_len: int,
    answer_width: int,
    chat: bool = False,
) -> dict[str, np.ndarray]:
    """Prompts left-padded to ``prompt_len`` tokens and answers as bytes: ``{'prompt' (N, P) int32,
    'prompt_valid' (N, P) bool, 'answer' (N, A) int32, 'answer_len' (N,) int32}``. With ``chat``
    each prompt is one user turn of the tokenizer's chat template (instruction-tuned models)."""
    pad = tokenizer.pad_id
    toks = np.full((len(pairs), prompt_len), pad, np.int32)
    valid = np.zeros((len(pairs), prompt_len), bool)
    for i, (q, _) in enumerate(pairs):
        if chat:
            q = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        ids = tokenizer.encode(q)
        if len(ids) > prompt_len:
            raise ValueError(
                f"prompt {q!r} has {len(ids)} tokens, more than prompt_len={prompt_len}; "
                "raise prompt_len (and keep prompt_len + max_new_tokens within the model's context)"
            )
        toks[i, prompt_len - len(ids) :] = ids
        valid[i, prompt_len - len(ids) :] = True
    ans, lens = encode_answers([a for _, a in pairs], answer_width)
    return {"prompt": toks, "prompt_valid": valid, "answer": ans, "answer_len": lens}


def encode_sft(
    tokenizer, pairs: list[tuple[str, str]], *, prompt_len: int, completion_len: int, chat: bool = False
) -> dict[str, np.ndarray]:
    """Prompt + answer + end token as one left-padded sequence for supervised fine-tuning:
    ``{'tokens' (N, P + C), 'valid', 'loss_mask'}`` (the loss on the answer and the end token)."""
    p = encode_prompts(
        tokenizer, pairs, prompt_len=prompt_len, answer_width=max(1, completion_len), chat=chat
    )
    N = len(pairs)
    comp = np.full((N, completion_len), tokenizer.pad_id, np.int32)
    cmask = np.zeros((N, completion_len), bool)
    for i, (_, a) in enumerate(pairs):
        ids = tokenizer.encode(a) + [tokenizer.eos_id]
        if len(ids) > completion_len:
            raise ValueError(
                f"answer {a!r} needs {len(ids)} tokens, more than completion_len={completion_len}"
            )
        comp[i, : len(ids)] = ids
        cmask[i, : len(ids)] = True
    return {
        "tokens": np.concatenate([p["prompt"], comp], 1),
        "valid": np.concatenate([p["prompt_valid"], cmask], 1),
        "loss_mask": np.concatenate([np.zeros_like(p["prompt_valid"]), cmask], 1),
    }


def env(tokenizer, *, partial: bool = False, max_bytes: int = 16):
    """The :class:`jaxcl.grpo.Env` of these tasks: :func:`exact_reward` against ``answer`` /
    ``answer_len`` of the prompt rows, with the tokenizer's bytes table."""
    from .grpo import Env

    table, length = token_bytes(tokenizer, max_bytes)

    def reward(comp_BxN, mask_BxN, rows):
        return exact_reward(
            comp_BxN, mask_BxN, rows["answer"], rows["answer_len"], table, length, partial=partial
        )

    return Env(reward, int(tokenizer.eos_id), int(tokenizer.pad_id))
