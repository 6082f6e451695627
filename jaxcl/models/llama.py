"""Llama-architecture decoder in flax NNX (Touvron et al., "LLaMA", 2023; SmolLM2, Allal et al., 2025).

RMSNorm, rotary position embeddings (HF "rotate halves" layout), grouped-query attention through
`jax.nn.dot_product_attention` (a GPU uses its fused kernel), SwiGLU MLP, tied or untied output
embedding, optional q/k/v bias (Qwen2). The layers are stored stacked (leading axis = layer) and
run with `lax.scan`, so compile time does not grow with depth, `jax.checkpoint` per layer is one
flag, and the KV cache is one array per K/V.

Pure use (what training code should do)::

    model = Llama(smollm2_135m(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)       # once
    params = nnx.to_pure_dict(state)                     # plain nested dict of arrays
    apply = make_apply(model.cfg)                       # apply(params, tokens_BxT) -> logits_BxTxV
    loss = jax.jit(jax.grad(lambda p: apply(p, tokens_BxT).mean()))(params)

`apply` accepts the `nnx.State` from `nnx.split` as well as the pure dict. Parameters stay in
their storage dtype (fp32 master weights); with `compute_dtype="bfloat16"` they are cast inside
the forward, norms/softmax/logits stay fp32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from . import lora

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    attn_bias: bool = False  # Qwen2-style q/k/v bias
    compute_dtype: str = "float32"  # "bfloat16": bf16 matmuls on fp32 master weights
    remat: bool = False  # jax.checkpoint around each layer
    init_std: float = 0.02

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def replace(self, **kw) -> LlamaConfig:
        return dataclasses.replace(self, **kw)


def smollm2_135m(**kw) -> LlamaConfig:
    """SmolLM2-135M(-Instruct): 30 layers, d 576, 9 heads / 3 KV heads, FFN 1536, vocab 49152."""
    base = dict(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        rope_theta=100000.0,
        norm_eps=1e-5,
        max_seq_len=8192,
        tie_embeddings=True,
    )
    return LlamaConfig(**{**base, **kw})


def smollm2_360m(**kw) -> LlamaConfig:
    """SmolLM2-360M(-Instruct): 32 layers, d 960, 15 heads / 5 KV heads, FFN 2560, vocab 49152."""
    return smollm2_135m(
        **{"d_model": 960, "n_layers": 32, "n_heads": 15, "n_kv_heads": 5, "d_ff": 2560, **kw}
    )


def llama32_1b(**kw) -> LlamaConfig:
    """Llama-3.2-1B's shape: 16 layers, d 2048, 32 heads / 8 KV heads (head dim 64), FFN 8192,
    vocab 128256, RoPE theta 5e5, tied embeddings (1.24B parameters). Its long-context RoPE
    scaling is not modelled: the shape is exact, positions beyond 8k are not."""
    base = dict(
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        rope_theta=500000.0,
        norm_eps=1e-5,
        max_seq_len=8192,
        tie_embeddings=True,
    )
    return LlamaConfig(**{**base, **kw})


def tiny(**kw) -> LlamaConfig:
    """A 2-layer model for tests (GQA 4/2 heads, head dim 16); vocab fits the byte tokenizer."""
    base = dict(
        vocab_size=272,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=128,
        rope_theta=10000.0,
        norm_eps=1e-5,
        max_seq_len=1024,
        tie_embeddings=True,
    )
    return LlamaConfig(**{**base, **kw})


# names of the linear layers inside `params["layers"]`, (in, out) per layer
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def layer_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    D, F, hd = cfg.d_model, cfg.d_ff, cfg.hd
    s = dict(
        attn_norm=(D,),
        wq=(D, cfg.n_heads * hd),
        wk=(D, cfg.n_kv_heads * hd),
        wv=(D, cfg.n_kv_heads * hd),
        wo=(cfg.n_heads * hd, D),
        mlp_norm=(D,),
        w_gate=(D, F),
        w_up=(D, F),
        w_down=(F, D),
    )
    if cfg.attn_bias:
        s.update(bq=(cfg.n_heads * hd,), bk=(cfg.n_kv_heads * hd,), bv=(cfg.n_kv_heads * hd,))
    return s


class Layers(nnx.Module):
    """All decoder layers, each parameter stacked on a leading layer axis."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.init_std)
        for name, shape in layer_shapes(cfg).items():
            full = (cfg.n_layers, *shape)
            if name.endswith("norm"):
                value = jnp.ones(full, jnp.float32)
            elif name.startswith("b"):
                value = jnp.zeros(full, jnp.float32)
            else:
                value = init(rngs.params(), full, jnp.float32)
            setattr(self, name, nnx.Param(value))


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(cfg.init_std)
        self.embed = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.d_model), jnp.float32))
        self.layers = Layers(cfg, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((cfg.d_model,), jnp.float32))
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(init(rngs.params(), (cfg.d_model, cfg.vocab_size), jnp.float32))

    def __call__(self, tokens_BxT, **kw):
        return forward(self.cfg, nnx.to_pure_dict(nnx.state(self, nnx.Param)), tokens_BxT, **kw)

    def params(self) -> Params:
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))


def init_params(cfg: LlamaConfig, seed: int = 0) -> Params:
    """Random parameters as a pure dict (same structure as `Llama(...).params()`)."""
    return Llama(cfg, rngs=nnx.Rngs(seed)).params()


def load_params(model: Llama, params: Params) -> Llama:
    """Write a pure param dict back into an NNX model (in place) and return it."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def pure_dict(params) -> Params:
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    return params


def param_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(pure_dict(params)))


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x_BxTxD, w_D, eps):
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x * w_D.astype(jnp.float32)).astype(x_BxTxD.dtype)


def rope_tables(positions_BxT, hd, theta):
    inv = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang_BxTxH2 = positions_BxT.astype(jnp.float32)[..., None] * inv
    ang_BxTxHD = jnp.concatenate([ang_BxTxH2, ang_BxTxH2], axis=-1)
    return jnp.cos(ang_BxTxHD)[:, :, None, :], jnp.sin(ang_BxTxHD)[:, :, None, :]


def apply_rope(x_BxTxNxH, cos, sin):
    x = x_BxTxNxH.astype(jnp.float32)
    h = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return (x * cos + rot * sin).astype(x_BxTxNxH.dtype)


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
    """KV cache: k/v (L, B, S, K, hd), `valid` (B, S) key mask, `index` = next free slot."""
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.hd)
    return dict(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
    )


def _block(cfg, dt, x_BxTxD, lp, cos, sin, kv, mask_Bx1xTxS, tap=None):
    """One decoder layer: ``(x, new_kv)``; with ``tap`` (no cache) ``tap[name]`` (B*T, out) is
    added to the output of each linear ``name`` it holds and the second output is the inputs of
    those linears (``{name: (B*T, in)}``: K-FAC's statistics, :mod:`jaxcl.methods.curvature`)."""
    B, T, D = x_BxTxD.shape
    H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.hd
    lp = jax.tree.map(lambda a: a.astype(dt), lp)
    seen = {}

    def mm(a_NxI, name):
        y_NxO = lora.matmul(a_NxI, lp[name])  # a weight, or a LoRA adapter's unmerged LowRank
        if tap is not None and name in tap:
            seen[name] = a_NxI
            y_NxO = y_NxO + tap[name].astype(y_NxO.dtype)
        return y_NxO

    # the matmuls see 2-D (tokens, features) activations: autodiff of a dot over a 3-D (B, T, D)
    # operand makes XLA:CPU copy activations transposed for the weight gradients (the same
    # numbers; the LM step ~5-10% faster on CPU, benchmarks_speed/README.md, llm_step)
    x_NxD = x_BxTxD.reshape(B * T, D)
    h = rms_norm(x_NxD, lp["attn_norm"], cfg.norm_eps)
    q, k, v = mm(h, "wq"), mm(h, "wk"), mm(h, "wv")
    if cfg.attn_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    q_BxTxHxE = apply_rope(q.reshape(B, T, H, hd), cos, sin)
    k_BxTxKxE = apply_rope(k.reshape(B, T, K, hd), cos, sin)
    v_BxTxKxE = v.reshape(B, T, K, hd)
    if kv is None:  # training / scoring: plain causal attention
        o = jax.nn.dot_product_attention(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, is_causal=True)
        new_kv = None
    else:  # cached: write the new keys at `index`, attend over the whole cache
        k_BxSxKxE, v_BxSxKxE, index = kv
        k_BxSxKxE = jax.lax.dynamic_update_slice(
            k_BxSxKxE, k_BxTxKxE.astype(k_BxSxKxE.dtype), (0, index, 0, 0)
        )
        v_BxSxKxE = jax.lax.dynamic_update_slice(
            v_BxSxKxE, v_BxTxKxE.astype(v_BxSxKxE.dtype), (0, index, 0, 0)
        )
        o = jax.nn.dot_product_attention(
            q_BxTxHxE, k_BxSxKxE.astype(dt), v_BxSxKxE.astype(dt), mask=mask_Bx1xTxS
        )
        new_kv = (k_BxSxKxE, v_BxSxKxE)
    x_NxD = x_NxD + mm(o.reshape(B * T, H * hd), "wo")
    h = rms_norm(x_NxD, lp["mlp_norm"], cfg.norm_eps)
    x_NxD = x_NxD + mm(jax.nn.silu(mm(h, "w_gate")) * mm(h, "w_up"), "w_down")
    return x_NxD.reshape(B, T, D), (seen if tap is not None else new_kv)


def _run_layers(cfg, dt, x_BxTxD, layers, cos, sin):
    """The (stacked) decoder layers ``layers`` in order under ``lax.scan``, no cache."""

    def body(x, lp):
        return _block(cfg, dt, x, lp, cos, sin, None, None)[0], None

    if cfg.remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, x_BxTxD, layers)[0]


def embed_tokens(cfg: LlamaConfig, params, tokens_BxT):
    """``(dt, x_BxTxD, cos, sin)``: the compute dtype, the token embeddings in it and the RoPE
    tables of positions ``0 .. T-1`` (no cache, no prefix): the start of :func:`tapped_hidden`
    and :func:`hidden_at`, as :func:`forward` starts without a cache."""
    dt = jnp.dtype(cfg.compute_dtype)
    B, T = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_tables(positions_BxT, cfg.hd, cfg.rope_theta)
    return dt, jnp.take(params["embed"], tokens_BxT, axis=0).astype(dt), cos, sin


def tapped_hidden(cfg: LlamaConfig, params, tokens_BxT, taps: dict):
    """``(h_BxTxD, inputs)``: the final-norm hidden states of :func:`forward` (no cache) with
    ``taps[name]`` (L, B*T, out), stacked per layer, added to the output of every linear ``name``
    of :data:`LINEARS` it holds, and ``inputs[name]`` (L, B*T, in) the inputs of those linears.
    With zero taps the forward is :func:`forward`'s; the gradient of a loss with respect to the
    taps is the gradient with respect to each linear's output (hook-free K-FAC statistics)."""
    params = pure_dict(params)
    dt, x_BxTxD, cos, sin = embed_tokens(cfg, params, tokens_BxT)

    def body(x, xs):
        lp, tap = xs
        return _block(cfg, dt, x, lp, cos, sin, None, None, tap)

    if cfg.remat:
        body = jax.checkpoint(body)
    x_BxTxD, inputs = jax.lax.scan(body, x_BxTxD, (params["layers"], taps))
    return rms_norm(x_BxTxD, params["final_norm"], cfg.norm_eps), inputs


def hidden_at(cfg: LlamaConfig, params, tokens_BxT, layer: int):
    """The residual stream after decoder layer ``layer`` (0-based, static): (B, T, D) in the
    compute dtype, before any final norm; what a forward hook on Hugging Face's
    ``model.layers[layer]`` returns (RMU's activations, Li et al. 2024). Only the first
    ``layer + 1`` layers run (their stacked parameters sliced), with :func:`forward`'s code, so
    ``rms_norm(hidden_at(cfg, p, x, n_layers - 1), p['final_norm'])`` is
    ``forward(cfg, p, x, return_hidden=True)``."""
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer={layer} is out of range; valid: 0 .. {cfg.n_layers - 1}")
    params = pure_dict(params)
    dt, x_BxTxD, cos, sin = embed_tokens(cfg, params, tokens_BxT)
    layers = jax.tree.map(lambda a: a[: layer + 1], params["layers"])
    return _run_layers(cfg, dt, x_BxTxD, layers, cos, sin)


def forward(
    cfg: LlamaConfig,
    params,
    tokens_BxT,
    *,
    positions_BxT=None,
    token_mask_BxT=None,
    cache: dict | None = None,
    return_hidden: bool = False,
    prefix_BxPxD=None,
):
    """Logits (float32) for `tokens_BxT`; with `cache`, returns `(logits_BxTxV, new_cache)`.

    With a cache, the T new tokens go to slots [index, index+T); `token_mask_BxT` marks real
    tokens (False for left padding) and `positions_BxT` are their RoPE positions.
    `prefix_BxPxD`: P input embeddings placed before the tokens' (a vision-language model's image
    tokens, :mod:`jaxcl.models.vlm`); they are attended to (and cached) like tokens, the outputs
    cover the T tokens only, and a given `positions_BxT` / `token_mask_BxT` covers all P + T.
    """
    params = pure_dict(params)
    dt = jnp.dtype(cfg.compute_dtype)
    x_BxTxD = jnp.take(params["embed"], tokens_BxT, axis=0).astype(dt)
    P = 0 if prefix_BxPxD is None else prefix_BxPxD.shape[1]
    if P:
        x_BxTxD = jnp.concatenate([prefix_BxPxD.astype(dt), x_BxTxD], axis=1)
    B, T = x_BxTxD.shape[:2]
    if positions_BxT is None:
        start = 0 if cache is None else cache["index"]
        positions_BxT = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_tables(positions_BxT, cfg.hd, cfg.rope_theta)
    layers = params["layers"]

    if cache is None:
        x_BxTxD = _run_layers(cfg, dt, x_BxTxD, layers, cos, sin)
        new_cache = None
    else:
        index, S = cache["index"], cache["k"].shape[2]
        if token_mask_BxT is None:
            token_mask_BxT = jnp.ones((B, T), bool)
        valid_BxS = jax.lax.dynamic_update_slice(cache["valid"], token_mask_BxT, (0, index))
        slot_S = jnp.arange(S)
        causal_TxS = slot_S[None, :] <= (index + jnp.arange(T))[:, None]
        mask_Bx1xTxS = (valid_BxS[:, None, :] & causal_TxS[None])[:, None]

        def body(carry, lp):
            x, k_all, v_all, l = carry
            kv = (k_all[l], v_all[l], index)
            x, (k_l, v_l) = _block(cfg, dt, x, lp, cos, sin, kv, mask_Bx1xTxS)
            k_all = jax.lax.dynamic_update_index_in_dim(k_all, k_l, l, 0)
            v_all = jax.lax.dynamic_update_index_in_dim(v_all, v_l, l, 0)
            return (x, k_all, v_all, l + 1), None

        (x_BxTxD, k_all, v_all, _), _ = jax.lax.scan(
            body, (x_BxTxD, cache["k"], cache["v"], jnp.zeros((), jnp.int32)), layers
        )
        new_cache = dict(k=k_all, v=v_all, valid=valid_BxS, index=index + T)

    x_BxTxD = rms_norm(x_BxTxD[:, P:], params["final_norm"], cfg.norm_eps)
    out = x_BxTxD if return_hidden else head(cfg, params, x_BxTxD)
    return out if cache is None else (out, new_cache)


def head(cfg: LlamaConfig, params, h_BxTxD):
    """Output projection of final-norm hidden states: float32 logits (tied or untied)."""
    params = pure_dict(params)
    w_DxV = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return jnp.einsum(
        "...d,dv->...v", h_BxTxD, w_DxV.astype(h_BxTxD.dtype), preferred_element_type=jnp.float32
    )


def make_apply(cfg: LlamaConfig):
    """`apply(params, tokens_BxT) -> logits_BxTxV`, pure: use inside jit/grad/vmap."""
    return functools.partial(forward, cfg)


# ----------------------------------------------------------------------------- losses


def _head_logits(h_NxD, w, vd: bool):
    """float32 logits of hidden states ``h`` against the output matrix (``(V, D)`` when ``vd``)."""
    spec = "...d,vd->...v" if vd else "...d,dv->...v"
    return jnp.einsum(spec, h_NxD, w.astype(h_NxD.dtype), preferred_element_type=jnp.float32)


def target_logprobs(cfg: LlamaConfig, params, h_BxTxD, targets_BxT):
    """log p(target) under the output head, from final-norm hidden states: (B, T), float32.

    Equals ``take_along_axis(log_softmax(head(cfg, params, h)), targets)``, computed as
    ``x_target - logsumexp(x)`` with the target's logit ``x_target`` a dot of ``h`` with the
    target's row of the output matrix: autodiff then scatters into D-wide rows instead of
    materialising a (tokens, V) one-hot cotangent, and logsumexp's backward is one softmax pass
    (the log_softmax + gather form costs a third of the step at SmolLM2's 49k vocabulary on CPU;
    a custom VJP doing the same by hand was 5-9 % slower than this; see benchmarks_speed/README.md,
    llm_step). The matmuls take 2-D (tokens, D) activations (no transposed copies for the
    gradient's dots). Both autodiff modes work.
    """
    params = pure_dict(params)
    vd = cfg.tie_embeddings  # tied: the (V, D) embedding; untied: a (D, V) head
    w = params["embed"] if vd else params["lm_head"]
    lead, D = h_BxTxD.shape[:-1], h_BxTxD.shape[-1]
    h_NxD, t_N = h_BxTxD.reshape(-1, D), targets_BxT.reshape(-1)
    logits_NxV = _head_logits(h_NxD, w, vd)
    rows_NxD = (w[t_N] if vd else jnp.take(w, t_N, axis=1).T).astype(h_NxD.dtype)
    x_t_N = jnp.einsum("nd,nd->n", h_NxD, rows_NxD, preferred_element_type=jnp.float32)
    return (x_t_N - jax.nn.logsumexp(logits_NxV, axis=-1)).reshape(lead)


def token_logprobs(cfg: LlamaConfig, params, tokens_BxT):
    """log p(tokens[t+1] | tokens[:t+1]) for t < T-1, shape (B, T-1), float32."""
    h_BxTxD = forward(cfg, params, tokens_BxT[:, :-1], return_hidden=True)
    return target_logprobs(cfg, params, h_BxTxD, tokens_BxT[:, 1:])


def masked_nll(cfg: LlamaConfig, params, tokens_BxT, loss_mask_BxT):
    """Per-sequence (sum NLL, count) over positions where `loss_mask_BxT[:, 1:]` is set."""
    lp_BxT1 = token_logprobs(cfg, params, tokens_BxT)
    m = loss_mask_BxT[:, 1:].astype(jnp.float32)
    return -(lp_BxT1 * m).sum(-1), m.sum(-1)
