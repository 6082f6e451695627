"""Multi-layer perceptron in flax NNX (the MLP of most CL benchmarks, e.g. 784-256-256-10);
``compute_dtype`` as in :mod:`jaxcl.models.precision`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import precision
from .base import PureModel, pure, to_float


class MLP(nnx.Module):
    def __init__(
        self,
        d_in: int,
        hidden: Sequence[int],
        n_classes: int,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        dims, kw = [d_in, *hidden], precision.layer_kwargs(compute_dtype)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, **kw) for a, b in zip(dims[:-1], dims[1:])])
        self.head = nnx.Linear(dims[-1], n_classes, rngs=rngs, **kw)
        self.compute_dtype = compute_dtype

    def features(self, x_BxHxWxC):
        h_BxD = to_float(x_BxHxWxC).reshape(x_BxHxWxC.shape[0], -1)
        for layer in self.layers:
            h_BxD = precision.act(jax.nn.relu(layer(h_BxD)), self.compute_dtype)
        return h_BxD.astype(jnp.float32)

    def __call__(self, x_BxHxWxC):
        return self.head(self.features(x_BxHxWxC))


def mlp(
    input_shape: tuple, n_classes: int, hidden: Sequence[int] = (256, 256), *, compute_dtype: str = "float32"
) -> PureModel:
    d_in = int(np.prod(input_shape))
    return pure(
        lambda rngs: MLP(d_in, hidden, n_classes, compute_dtype, rngs=rngs),
        input_shape,
        n_classes,
        f"mlp-{'-'.join(map(str, hidden))}{precision.name_suffix(compute_dtype)}",
    )
