"""Mixed precision for the classifier models: ``compute_dtype`` ``float32`` (the default) or
``bfloat16``.

With ``bfloat16`` the parameters stay float32 (so do the optimizer state and every accumulation
in the optimizer); inside the forward the matmul and convolution inputs (activations and the
kernels, cast from their float32 masters) are bfloat16 and the products are accumulated in
float32 (``preferred_element_type=float32``); hidden activations are stored in bfloat16 between
layers; normalisation statistics (BatchNorm, LayerNorm), softmax and the logits are float32, so
every loss is computed in float32. On TPUs and recent GPUs this is the native format; the CPU
runs it too (AVX-512 BF16 where the processor has it).

With ``float32`` every helper here is the identity and every layer gets the arguments it had
before this module existed, so float32 runs give bit-identical numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")


def check_dtype(compute_dtype: str, key: str = "model.compute_dtype") -> None:
    """A :class:`jaxcl.config.ConfigError` (one line) for a dtype that is not in :data:`DTYPES`."""
    from ..config import ConfigError

    if compute_dtype not in DTYPES:
        raise ConfigError(f"{key}={compute_dtype!r}; valid: {', '.join(DTYPES)}")


def is_mixed(compute_dtype: str) -> bool:
    check_dtype(compute_dtype)
    return compute_dtype != "float32"


def layer_kwargs(compute_dtype: str, *, conv: bool = False) -> dict:
    """Keyword arguments for ``nnx.Linear`` (or, ``conv``, :class:`jaxcl.models.conv.Conv`):
    none in float32; bfloat16 inputs and kernels with float32 accumulation otherwise
    (``param_dtype`` stays float32, so initialisation is unchanged)."""
    if not is_mixed(compute_dtype):
        return {}
    kw = {"dtype": jnp.dtype(compute_dtype), "preferred_element_type": jnp.float32}
    return kw if conv else {**kw, "dot_general": dot_general_f32acc}


def norm_kwargs(compute_dtype: str) -> dict:
    """Keyword arguments for ``nnx.LayerNorm``: statistics in float32, output in the compute dtype."""
    return {"dtype": jnp.dtype(compute_dtype)} if is_mixed(compute_dtype) else {}


def act(x, compute_dtype: str):
    """A hidden activation stored in the compute dtype (the identity in float32)."""
    return x.astype(compute_dtype) if is_mixed(compute_dtype) else x


_BMM = (((2,), (1,)), ((0,), (0,)))  # (G, N, K) x (G, K, M) -> (G, N, M)


@jax.custom_vjp
def bmm_f32acc(a_GxNxK, b_GxKxM):
    """Batched matmul of bfloat16 inputs accumulated in float32 (a float32 result) whose backward
    matmuls take bfloat16 inputs too (the output gradient rounded to the inputs' dtype) and
    accumulate in float32; JAX's own transpose would upcast them to float32 matmuls."""
    return jax.lax.dot_general(a_GxNxK, b_GxKxM, _BMM, preferred_element_type=jnp.float32)


def _bmm_fwd(a, b):
    return bmm_f32acc(a, b), (a, b)


def _bmm_bwd(res, dy_GxNxM):
    a, b = res
    dy = dy_GxNxM.astype(a.dtype)
    da = jax.lax.dot_general(dy, b.transpose(0, 2, 1), _BMM, preferred_element_type=jnp.float32)
    db = jax.lax.dot_general(a.transpose(0, 2, 1), dy, _BMM, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


bmm_f32acc.defvjp(_bmm_fwd, _bmm_bwd)


def dot_general_f32acc(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """``lax.dot_general`` for a layer's matmul in mixed precision: bfloat16 inputs, float32
    accumulation, the result in ``preferred_element_type`` (default: the inputs' dtype). A
    dense contraction (the trailing axes of ``lhs`` with the leading axes of ``rhs``, no batch
    axes: ``nnx.Linear``, the attention projections) runs through a matmul whose backward also
    takes bfloat16 inputs (the output gradient rounded to bfloat16) and accumulates in float32;
    other contractions are ``lax.dot_general`` with float32 accumulation."""
    (lc, rc), (lb, rb) = dimension_numbers
    k = len(lc)
    out_dtype = preferred_element_type or lhs.dtype
    dense = (
        not lb
        and not rb
        and tuple(lc) == tuple(range(lhs.ndim - k, lhs.ndim))
        and tuple(rc) == tuple(range(k))
        and precision is None
        and not any(v is not None for v in kw.values())
    )
    if not dense:
        out = jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32, **kw
        )
        return out.astype(out_dtype)
    batch_shape, out_shape = lhs.shape[: lhs.ndim - k], rhs.shape[k:]
    x_NxK = lhs.reshape(-1, math.prod(lhs.shape[lhs.ndim - k :]))
    y_NxM = bmm_f32acc(x_NxK[None], rhs.reshape(x_NxK.shape[1], -1)[None])[0]
    return y_NxM.reshape(batch_shape + out_shape).astype(out_dtype)


def attention_f32(query_BxTxHxE, key_BxSxHxE, value_BxSxHxE, *args, dtype=None, **kwargs):
    """Scaled dot-product attention with bfloat16 inputs: scores accumulated and soft-maxed in
    float32, weights cast back to the inputs' dtype, weighted values accumulated in float32
    (both matmuls by :func:`bmm_f32acc`). Masks, biases and dropout are not supported (the ViT
    uses none)."""
    if args or any(kwargs.get(k) is not None for k in ("bias", "mask")) or kwargs.get("dropout_rate", 0.0):
        raise ValueError("attention_f32 supports no mask, bias or dropout")
    dt = query_BxTxHxE.dtype
    (b, t, h, e), s = query_BxTxHxE.shape, key_BxSxHxE.shape[1]
    q_GxTxE = query_BxTxHxE.transpose(0, 2, 1, 3).reshape(b * h, t, e)
    k_GxExS = key_BxSxHxE.transpose(0, 2, 3, 1).reshape(b * h, e, s)
    v_GxSxE = value_BxSxHxE.transpose(0, 2, 1, 3).reshape(b * h, s, e)
    w_GxTxS = jax.nn.softmax(bmm_f32acc(q_GxTxE, k_GxExS) * e**-0.5, axis=-1).astype(dt)
    out_GxTxE = bmm_f32acc(w_GxTxS, v_GxSxE)
    return out_GxTxE.reshape(b, h, t, e).transpose(0, 2, 1, 3).astype(dt)


def attention_kwargs(compute_dtype: str) -> dict:
    """Keyword arguments for ``nnx.MultiHeadAttention``: bfloat16 projections accumulated in
    float32 and :func:`attention_f32`; none in float32."""
    if not is_mixed(compute_dtype):
        return {}
    return {
        "dtype": jnp.dtype(compute_dtype),
        "qkv_dot_general": dot_general_f32acc,
        "out_dot_general": dot_general_f32acc,
        "attention_fn": attention_f32,
    }


def name_suffix(compute_dtype: str) -> str:
    """``-bf16`` appended to a model's name in bfloat16 (float32 names are unchanged)."""
    return "-bf16" if is_mixed(compute_dtype) else ""
