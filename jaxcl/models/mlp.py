"""Multi-layer perceptron in flax NNX (the MLP of most CL benchmarks, e.g. 784-256-256-10)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from .base import PureModel, pure, to_float


class MLP(nnx.Module):
    def __init__(self, d_in: int, hidden: Sequence[int], n_classes: int, *, rngs: nnx.Rngs):
        dims = [d_in, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.head = nnx.Linear(dims[-1], n_classes, rngs=rngs)

    def features(self, x_BxHxWxC):
        h_BxD = to_float(x_BxHxWxC).reshape(x_BxHxWxC.shape[0], -1)
        for layer in self.layers:
            h_BxD = jax.nn.relu(layer(h_BxD))
        return h_BxD

    def __call__(self, x_BxHxWxC):
        return self.head(self.features(x_BxHxWxC))


def mlp(input_shape: tuple, n_classes: int, hidden: Sequence[int] = (256, 256)) -> PureModel:
    d_in = int(np.prod(input_shape))
    return pure(
        lambda rngs: MLP(d_in, hidden, n_classes, rngs=rngs),
        input_shape,
        n_classes,
        f"mlp-{'-'.join(map(str, hidden))}",
    )
