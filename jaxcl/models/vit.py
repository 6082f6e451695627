"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 inputs, in flax NNX.

Patches of ``patch x patch`` pixels (4: 7x7 = 49 tokens), a learned position embedding, a class
token, ``depth`` pre-norm blocks (multi-head self-attention, GELU MLP), final LayerNorm; the
penultimate features are the normalised class token. No BatchNorm, so ``apply`` is the only mode.

``compute_dtype`` (:mod:`jaxcl.models.precision`): in bfloat16 every projection takes bfloat16
inputs and accumulates in float32, attention scores and softmax are float32, LayerNorm statistics
are float32 with bfloat16 outputs, the residual stream is bfloat16; features and logits float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import precision
from .base import PureModel, pure, to_float


def patchify(x_BxHxWxC: jax.Array, p: int) -> jax.Array:
    """Non-overlapping ``p x p`` patches in row-major order, each flattened: (B, HW/p^2, p*p*C)."""
    b, h, w, c = x_BxHxWxC.shape
    return (
        x_BxHxWxC.reshape(b, h // p, p, w // p, p, c)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(b, (h // p) * (w // p), p * p * c)
    )


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, mlp: int, compute_dtype: str = "float32", *, rngs: nnx.Rngs):
        kw, norm = precision.layer_kwargs(compute_dtype), precision.norm_kwargs(compute_dtype)
        self.compute_dtype = compute_dtype
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs, **norm)
        self.attn = nnx.MultiHeadAttention(
            heads, dim, decode=False, rngs=rngs, **precision.attention_kwargs(compute_dtype)
        )
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs, **norm)
        self.fc1 = nnx.Linear(dim, mlp, rngs=rngs, **kw)
        self.fc2 = nnx.Linear(mlp, dim, rngs=rngs, **kw)

    def __call__(self, h_BxTxD):
        dt = self.compute_dtype
        h_BxTxD = precision.act(h_BxTxD + self.attn(self.ln1(h_BxTxD)), dt)
        return precision.act(
            h_BxTxD + self.fc2(precision.act(jax.nn.gelu(self.fc1(self.ln2(h_BxTxD))), dt)), dt
        )


class ViT(nnx.Module):
    def __init__(
        self,
        input_shape,
        n_classes,
        patch=4,
        dim=64,
        depth=4,
        heads=4,
        mlp=128,
        compute_dtype="float32",
        *,
        rngs: nnx.Rngs,
    ):
        h, w, c = input_shape
        if h % patch or w % patch:
            raise ValueError(f"ViT: input {h}x{w} is not divisible by patch={patch}")
        self.patch = patch
        n_tok = (h // patch) * (w // patch)
        kw = precision.layer_kwargs(compute_dtype)
        self.compute_dtype = compute_dtype
        self.embed = nnx.Linear(patch * patch * c, dim, rngs=rngs, **kw)
        self.cls = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n_tok + 1, dim)))
        self.blocks = nnx.List([Block(dim, heads, mlp, compute_dtype, rngs=rngs) for _ in range(depth)])
        self.ln = nnx.LayerNorm(dim, rngs=rngs)  # float32 output: the features
        self.head = nnx.Linear(dim, n_classes, rngs=rngs, **kw)

    def features(self, x_BxHxWxC):
        h_BxTxD = self.embed(patchify(to_float(x_BxHxWxC), self.patch))
        b = h_BxTxD.shape[0]
        cls = jnp.broadcast_to(self.cls[...], (b, 1, h_BxTxD.shape[-1]))
        h_BxTxD = precision.act(jnp.concatenate([cls, h_BxTxD], axis=1) + self.pos[...], self.compute_dtype)
        for blk in self.blocks:
            h_BxTxD = blk(h_BxTxD)
        return self.ln(h_BxTxD[:, 0].astype(jnp.float32))

    def __call__(self, x_BxHxWxC):
        return self.head(self.features(x_BxHxWxC))


def vit(
    input_shape: tuple,
    n_classes: int,
    patch: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp: int = 128,
    *,
    compute_dtype: str = "float32",
) -> PureModel:
    return pure(
        lambda rngs: ViT(input_shape, n_classes, patch, dim, depth, heads, mlp, compute_dtype, rngs=rngs),
        input_shape,
        n_classes,
        f"vit-d{dim}-l{depth}{precision.name_suffix(compute_dtype)}",
    )
