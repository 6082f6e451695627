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

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")


def check_dtype(compute_dtype: str, key: str = "model.compute_dtype") -> None:
    """A :class:`jaxcl.config.ConfigError` (one line) for a dtype that is not in :data:`DTYPES`."""
    from ..config import ConfigError

    if compute_dtype not in DTYPES:
        raise ConfigError(f"{key}={compute_dtype!r} is not valid; valid: {', '.join(DTYPES)}")


def is_mixed(compute_dtype: str) -> bool:
    check_dtype(compute_dtype)
    return compute_dtype != "float32"


def layer_kwargs(compute_dtype: str) -> dict:
    """Keyword arguments for ``nnx.Linear`` / :class:`jaxcl.models.conv.Conv`: none in float32;
    bfloat16 inputs and kernels with float32 accumulation otherwise (``param_dtype`` stays
    float32, so initialisation is unchanged)."""
    if not is_mixed(compute_dtype):
        return {}
    return {"dtype": jnp.dtype(compute_dtype), "preferred_element_type": jnp.float32}


def norm_kwargs(compute_dtype: str) -> dict:
    """Keyword arguments for ``nnx.LayerNorm``: statistics in float32, output in the compute dtype."""
    return {"dtype": jnp.dtype(compute_dtype)} if is_mixed(compute_dtype) else {}


def act(x, compute_dtype: str):
    """A hidden activation stored in the compute dtype (the identity in float32)."""
    return x.astype(compute_dtype) if is_mixed(compute_dtype) else x


def dot_general_f32acc(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """``lax.dot_general`` accumulating in float32 and returning the inputs' dtype (for layers
    that take a ``dot_general`` but no ``preferred_element_type``, e.g. attention projections)."""
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32, **kw
    )
    return out.astype(preferred_element_type or lhs.dtype)


def attention_f32(query_BxTxHxE, key_BxSxHxE, value_BxSxHxE, *args, dtype=None, **kwargs):
    """Scaled dot-product attention with bfloat16 inputs: scores accumulated and soft-maxed in
    float32, weights cast back to the inputs' dtype, weighted values accumulated in float32.
    Masks, biases and dropout are not supported (the ViT uses none)."""
    if args or any(kwargs.get(k) is not None for k in ("bias", "mask")) or kwargs.get("dropout_rate", 0.0):
        raise ValueError("attention_f32 supports no mask, bias or dropout")
    dt = query_BxTxHxE.dtype
    scale = query_BxTxHxE.shape[-1] ** -0.5
    s_BxHxTxS = jnp.einsum("bthe,bshe->bhts", query_BxTxHxE, key_BxSxHxE, preferred_element_type=jnp.float32)
    w_BxHxTxS = jax.nn.softmax(s_BxHxTxS * scale, axis=-1).astype(dt)
    out = jnp.einsum("bhts,bshe->bthe", w_BxHxTxS, value_BxSxHxE, preferred_element_type=jnp.float32)
    return out.astype(dt)


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
