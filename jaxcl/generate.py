"""Batched generation with a KV cache: one prefill, then a `lax.scan` of single-token decode steps.

Greedy (`temperature=0`) or sampled (temperature, top-k, top-p). Prompts are left-padded to a
common length; each row keeps its own RoPE positions, and padded cache slots are masked out. The
whole loop is one jitted function, compiled once per (batch, prompt length, cache length,
sampling settings). After a row emits `eos_id` it emits `pad_id`.

    out_BxN = generate(cfg, params, [ids_a, ids_b], max_new_tokens=32)                 # greedy
    out_BxN = generate(cfg, params, prompts, max_new_tokens=32, temperature=0.7, top_p=0.9,
                       key=jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.models import llama as llama_lib
from jaxcl.models.llama import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off


def sample_logits(logits_BxV, key, s: Sampling):
    """One token per row from float32 logits under `Sampling` `s`."""
    if s.temperature <= 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth_Bx1 = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_Bx1, -jnp.inf, logits)
    if s.top_p < 1.0:
        sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_BxV, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before < s.top_p  # always keeps the top token
        thresh_Bx1 = jnp.min(jnp.where(keep, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < thresh_Bx1, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def pad_left(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 1):
    """Left-pad token lists to a common length (rounded up to `multiple`): (tokens, mask) int32/bool."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    P = -(-P // multiple) * multiple
    toks = np.full((len(prompts), P), pad_id, np.int32)
    mask = np.zeros((len(prompts), P), bool)
    for i, p in enumerate(prompts):
        toks[i, P - len(p) :] = p
        mask[i, P - len(p) :] = True
    return toks, mask


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "cache_len", "sampling", "eos_id", "pad_id")
)
def generate_ids(
    params,
    tokens_BxP,
    mask_BxP,
    key,
    prefix_BxIxD=None,
    *,
    cfg,
    max_new_tokens,
    cache_len,
    sampling,
    eos_id,
    pad_id,
):
    B, P = tokens_BxP.shape
    if prefix_BxIxD is not None:  # image tokens first (jaxcl.models.vlm), then the padded prompt
        mask_BxP = jnp.concatenate([jnp.ones(prefix_BxIxD.shape[:2], bool), mask_BxP], axis=1)
    positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0).astype(jnp.int32)
    cache = llama_lib.init_cache(cfg, B, cache_len)
    h_BxPxD, cache = llama_lib.forward(
        cfg,
        params,
        tokens_BxP,
        positions_BxT=positions_BxP,
        token_mask_BxT=mask_BxP,
        cache=cache,
        return_hidden=True,
        prefix_BxPxD=prefix_BxIxD,
    )
    logits_BxV = llama_lib.head(cfg, params, h_BxPxD[:, -1])
    key0, key = jax.random.split(key)
    tok_B = sample_logits(logits_BxV, key0, sampling)
    eos = -1 if eos_id is None else eos_id
    done_B = tok_B == eos
    pos_B = positions_BxP[:, -1] + 1

    def step(carry, i):
        cache, tok_B, pos_B, done_B = carry
        logits_Bx1xV, cache = llama_lib.forward(
            cfg, params, tok_B[:, None], positions_BxT=pos_B[:, None], cache=cache
        )
        new_B = sample_logits(logits_Bx1xV[:, 0], jax.random.fold_in(key, i), sampling)
        new_B = jnp.where(done_B, pad_id, new_B)
        return (cache, new_B, pos_B + 1, done_B | (new_B == eos)), new_B

    if max_new_tokens == 1:
        return tok_B[:, None]
    _, rest_NxB = jax.lax.scan(step, (cache, tok_B, pos_B, done_B), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([tok_B[:, None], rest_NxB.T], axis=1)


def generate(
    cfg: LlamaConfig,
    params,
    prompts,
    *,
    max_new_tokens: int,
    mask=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    key=None,
    eos_id: int | None = None,
    pad_id: int = 0,
    cache_len: int | None = None,
    pad_multiple: int = 8,
    prefix=None,
):
    """New tokens (B, max_new_tokens) int32 for `prompts` (list of token lists, or a left-padded
    (B, P) array with boolean `mask`). `cache_len` defaults to prompt length + max_new_tokens.
    `prefix`: (B, I, D) input embeddings before every prompt (a vision-language model's image
    tokens, :func:`jaxcl.models.vlm.generate`); they take I more cache slots."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if isinstance(prompts, (list, tuple)):
        tokens, mask = pad_left(prompts, pad_id, pad_multiple)
    else:
        tokens = np.asarray(prompts, np.int32)
        mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    P = tokens.shape[1] + (0 if prefix is None else prefix.shape[1])
    cache_len = cache_len or P + max_new_tokens
    if P > cache_len:
        raise ValueError(f"prompt of {P} tokens is longer than the KV cache ({cache_len} slots)")
    if P + max_new_tokens > cache_len:
        raise ValueError(
            f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the KV "
            f"cache ({cache_len} slots)"
        )
    if cache_len > cfg.max_seq_len:
        raise ValueError(f"cache of {cache_len} slots exceeds the model's max_seq_len {cfg.max_seq_len}")
    key = jax.random.key(0) if key is None else key
    return generate_ids(
        params,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        key,
        prefix,
        cfg=cfg,
        max_new_tokens=int(max_new_tokens),
        cache_len=int(cache_len),
        sampling=Sampling(float(temperature), int(top_k), float(top_p)),
        eos_id=None if eos_id is None else int(eos_id),
        pad_id=int(pad_id),
    )


def generate_text(
    cfg: LlamaConfig,
    params,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    chat: bool = True,
    **kw,
) -> list[str]:
    """Strings in, strings out; `chat=True` wraps each prompt as one user turn of the chat template."""
    if chat:
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
            for p in prompts
        ]
    ids = [tokenizer.encode(p) for p in prompts]
    out = np.asarray(
        generate(
            cfg,
            params,
            ids,
            max_new_tokens=max_new_tokens,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            **kw,
        )
    )
    texts = []
    for row in out:
        row = list(row)
        if tokenizer.eos_id is not None and tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(row).strip())
    return texts
