"""ResNet-18 (He et al., 2016) adapted to 28x28 inputs, in flax NNX, with BatchNorm kept pure.

Adaptation: 3x3 stride-1 stem and no max-pool (the CIFAR variant), four stages of two basic
blocks with strides 1, 2, 2, 2 (28 -> 28 -> 14 -> 7 -> 4), global average pooling, linear head.
``width`` scales the channels (64 in the paper; smaller widths for the 2-core CPU studies).

BatchNorm, purely. The running mean and variance are ordinary leaves of the parameter dict
(``.../mean`` and ``.../var``) read through ``stop_gradient``, so their gradient is exactly zero:
optimizers leave them alone (Adam's update of a zero gradient is zero), SSD never selects them
(0 > alpha * 0 is false) and GU's bases ignore them. The model has three modes:

* ``apply(params, x)``: evaluation mode (running statistics). Every unlearning method, SSD's
  importance and every metric use this mode, as SSD prescribes.
* ``apply_train(params, x)``: training mode (statistics of the batch), used to train the original
  model and the retrained oracle.
* ``recalibrate(params, x_NxHxWxC, chunk)``: sets the running statistics to the mean over chunks of
  the batch statistics of the given data ("precise BN", Wu and Johnson 2021), once after
  training. There is no EMA inside the training step, so the step stays ``(params) -> params``.

``compute_dtype`` (:mod:`jaxcl.models.precision`): in bfloat16 the convolutions and the head take
bfloat16 inputs and accumulate in float32; BatchNorm (statistics, running statistics and its
output) is float32; activations are stored in bfloat16 after each ReLU; features and logits are
float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import precision
from .base import PureModel, to_float
from .conv import Conv

MODE_EVAL, MODE_TRAIN, MODE_CALIB = 0, 1, 2


class BatchNorm(nnx.Module):
    def __init__(self, c: int, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((c,)))
        self.bias = nnx.Param(jnp.zeros((c,)))
        self.mean = nnx.Param(jnp.zeros((c,)))
        self.var = nnx.Param(jnp.ones((c,)))
        self.eps = eps

    def __call__(self, x, mode: int):
        if mode == MODE_EVAL:
            mean = jax.lax.stop_gradient(self.mean[...])
            var = jax.lax.stop_gradient(self.var[...])
        else:
            mean = x.mean((0, 1, 2))
            var = x.var((0, 1, 2))
            if mode == MODE_CALIB:
                self.mean[...] = jax.lax.stop_gradient(mean)
                self.var[...] = jax.lax.stop_gradient(var)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, compute_dtype: str = "float32", *, rngs: nnx.Rngs):
        kw = dict(use_bias=False, rngs=rngs, **precision.layer_kwargs(compute_dtype, conv=True))
        self.compute_dtype = compute_dtype
        self.conv1 = Conv(cin, cout, (3, 3), strides=stride, padding=1, **kw)
        self.bn1 = BatchNorm(cout)
        self.conv2 = Conv(cout, cout, (3, 3), padding=1, **kw)
        self.bn2 = BatchNorm(cout)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.proj = Conv(cin, cout, (1, 1), strides=stride, **kw)
            self.bn_proj = BatchNorm(cout)

    def __call__(self, x, mode):
        act = lambda h: precision.act(jax.nn.relu(h), self.compute_dtype)
        h = act(self.bn1(self.conv1(x), mode))
        h = self.bn2(self.conv2(h), mode)
        short = x if not self.has_proj else self.bn_proj(self.proj(x), mode)
        return act(h + short)


class ResNet18(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        width: int = 64,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        self.compute_dtype = compute_dtype
        self.stem = Conv(
            in_channels,
            width,
            (3, 3),
            padding=1,
            use_bias=False,
            rngs=rngs,
            **precision.layer_kwargs(compute_dtype, conv=True),
        )
        self.bn = BatchNorm(width)
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [
                BasicBlock(cin, cout, stride, compute_dtype, rngs=rngs),
                BasicBlock(cout, cout, 1, compute_dtype, rngs=rngs),
            ]
            cin = cout
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, n_classes, rngs=rngs, **precision.layer_kwargs(compute_dtype))

    def features(self, x_BxHxWxC, mode: int = MODE_EVAL):
        h = precision.act(jax.nn.relu(self.bn(self.stem(to_float(x_BxHxWxC)), mode)), self.compute_dtype)
        for block in self.blocks:
            h = block(h, mode)
        return h.astype(jnp.float32).mean((1, 2))  # features_BxF

    def __call__(self, x_BxHxWxC, mode: int = MODE_EVAL):
        return self.head(self.features(x_BxHxWxC, mode))


class BNPureModel(PureModel):
    """A :class:`PureModel` with BatchNorm: adds ``apply_train`` and ``recalibrate``."""


def resnet18(
    input_shape: tuple, n_classes: int, width: int = 64, *, compute_dtype: str = "float32"
) -> PureModel:
    h, w, c = input_shape
    build = lambda rngs: ResNet18(c, n_classes, width, compute_dtype, rngs=rngs)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param)

    def init(key):
        return nnx.to_pure_dict(nnx.split(build(nnx.Rngs(params=key)), nnx.Param)[1])

    def apply(params, x):
        return nnx.merge(graphdef, params)(x, MODE_EVAL)

    def apply_train(params, x):
        return nnx.merge(graphdef, params)(x, MODE_TRAIN)

    def features(params, x):
        return nnx.merge(graphdef, params).features(x, MODE_EVAL)

    def batch_stats(params, x):
        m = nnx.merge(graphdef, params, copy=True)
        m(x, MODE_CALIB)
        return nnx.to_pure_dict(nnx.split(m, nnx.Param)[1])

    def recalibrate(params, x_NxHxWxC, chunk: int = 500):
        n = x_NxHxWxC.shape[0]
        chunk = min(chunk, n)
        xs = x_NxHxWxC[: n - n % chunk].reshape((n // chunk, chunk) + x_NxHxWxC.shape[1:])
        stats = jax.lax.map(lambda xb: batch_stats(params, xb), xs)
        mean = jax.tree.map(lambda s: s.mean(0), stats)
        is_stat = lambda path: path[-1].key in ("mean", "var") if hasattr(path[-1], "key") else False
        return jax.tree_util.tree_map_with_path(lambda path, p, s: s if is_stat(path) else p, params, mean)

    model = BNPureModel(
        init,
        apply,
        features,
        tuple(input_shape),
        n_classes,
        f"resnet18-w{width}{precision.name_suffix(compute_dtype)}",
    )
    model.apply_train = apply_train
    model.recalibrate = recalibrate
    return model
