"""A small CNN in flax NNX: two 3x3 conv + 2x2 max-pool blocks and a linear head;
``compute_dtype`` as in :mod:`jaxcl.models.precision`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from . import precision
from .base import PureModel, pure, to_float
from .conv import Conv


class SmallCNN(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        hw: tuple,
        n_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        chans, kw = [in_channels, *channels], precision.layer_kwargs(compute_dtype)
        self.compute_dtype = compute_dtype
        ckw = precision.layer_kwargs(compute_dtype, conv=True)
        self.convs = nnx.List([Conv(a, b, (3, 3), rngs=rngs, **ckw) for a, b in zip(chans[:-1], chans[1:])])
        h, w = hw
        for _ in channels:
            h, w = h // 2, w // 2
        self.fc = nnx.Linear(h * w * chans[-1], hidden, rngs=rngs, **kw)
        self.head = nnx.Linear(hidden, n_classes, rngs=rngs, **kw)

    def features(self, x_BxHxWxC):
        h = to_float(x_BxHxWxC)
        for conv in self.convs:
            h = nnx.max_pool(precision.act(jax.nn.relu(conv(h)), self.compute_dtype), (2, 2), strides=(2, 2))
        return jax.nn.relu(self.fc(h.reshape(h.shape[0], -1))).astype(jnp.float32)

    def __call__(self, x_BxHxWxC):
        return self.head(self.features(x_BxHxWxC))


def cnn(
    input_shape: tuple,
    n_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    *,
    compute_dtype: str = "float32",
) -> PureModel:
    h, w, c = input_shape
    return pure(
        lambda rngs: SmallCNN(c, (h, w), n_classes, channels, hidden, compute_dtype, rngs=rngs),
        input_shape,
        n_classes,
        f"cnn{precision.name_suffix(compute_dtype)}",
    )
