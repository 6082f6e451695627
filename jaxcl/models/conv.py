"""2-D convolution whose gradient stays fast inside compiled loops on XLA:CPU.

Why this exists. XLA:CPU runs a convolution through its fast Eigen kernel only when the
convolution has the canonical dimension numbers ``NHWC x HWIO -> NHWC``; a compiler pass
rewrites other convolutions into that form with explicit transposes, but it only visits the
entry computation of a program. The backward convolutions JAX emits for a forward
``NHWC/HWIO`` convolution are not canonical (the weight gradient contracts over the batch, the
input gradient swaps the kernel's input and output features), so inside the body of a
``lax.scan`` / ``while`` loop, which is where every jaxcl training loop runs, they fall through
to a naive loop nest: measured here (ResNet-18 shapes, batch 64, one thread) 30-80x slower than
the same gradient outside a loop (jax-ml/jax#12868).

``conv2d`` has a custom VJP that writes both backward convolutions in canonical form itself:

* input gradient  ``dx = conv(dilate_s(dy), flip_HW(w)^T_IO)``: the transposed convolution, with
  the output gradient dilated by the stride and padded by ``K - 1 - pad`` (plus the remainder of
  the forward window arithmetic on the high side), the kernel flipped and its feature axes swapped;
* weight gradient ``dw[kh, kw, ci, co] = sum_{n,i,j} x_pad[n, s*i+kh, s*j+kw, ci] dy[n, i, j, co]``:
  a convolution of ``x`` laid out as ``(Ci, H, W, N)`` ("batch" Ci, "features" N) with ``dy`` laid
  out as ``(Ho, Wo, N, Co)`` as the kernel, dilated by the stride.

Both are the same arithmetic as JAX's own transpose rules (the gradients agree to the last bit in
the tests), only expressed so that the CPU backend needs no canonicalisation. On other backends
``conv2d`` is the plain ``lax.conv_general_dilated`` (cuDNN and the TPU compiler handle any
layout). :class:`Conv` is ``nnx.Conv`` (same parameters, names and initialisation) calling it.

Mixed precision (``preferred_element_type=float32`` with bfloat16 inputs and kernel): the forward
accumulates in float32; the backward casts the output gradient to the inputs' dtype, accumulates
both gradients in float32 and returns them in the dtypes of ``x`` and ``w``. Without it (float32)
every cast is the identity and the program is the one it always was.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, stride, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1), preferred=None):
    return jax.lax.conv_general_dilated(
        x,
        w,
        stride,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=_DN,
        preferred_element_type=preferred,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d_canonical(x_NxHxWxCi, w_KHxKWxCixCo, stride, padding, preferred=None):
    return _conv(x_NxHxWxCi, w_KHxKWxCixCo, stride, padding, preferred=preferred)


def _fwd(x, w, stride, padding, preferred):
    return _conv(x, w, stride, padding, preferred=preferred), (x, w)


def _bwd(stride, padding, preferred, res, dy_NxHoxWoxCo):
    x, w = res
    dy_NxHoxWoxCo = dy_NxHoxWoxCo.astype(x.dtype)
    pads_dx, pads_dw = [], []
    for size, k, s, (lo, hi) in zip(x.shape[1:3], w.shape[:2], stride, padding):
        rem = (size + lo + hi - k) % s  # rows of the padded input no forward window reached
        pads_dx.append((k - 1 - lo, k - 1 - hi + rem))
        pads_dw.append((lo, hi - rem))
    w_flip = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # KH, KW, Co, Ci
    dx = _conv(dy_NxHoxWoxCo, w_flip, (1, 1), pads_dx, lhs_dilation=stride, preferred=preferred)
    x_CixHxWxN = x.transpose(3, 1, 2, 0)
    dy_HoxWoxNxCo = dy_NxHoxWoxCo.transpose(1, 2, 0, 3)
    dw_CixKHxKWxCo = _conv(
        x_CixHxWxN, dy_HoxWoxNxCo, (1, 1), pads_dw, rhs_dilation=stride, preferred=preferred
    )
    return dx.astype(x.dtype), dw_CixKHxKWxCo.transpose(1, 2, 0, 3).astype(w.dtype)


_conv2d_canonical.defvjp(_fwd, _bwd)


def conv_padding(padding, kernel_hw: tuple, stride: tuple, in_hw: tuple) -> tuple:
    """``padding`` (int, ``'SAME'``, ``'VALID'`` or pairs) as ``((lo, hi), (lo, hi))``."""
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(in_hw, kernel_hw, stride, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = []
    for p in padding:
        pads.append((p, p) if isinstance(p, int) else tuple(p))
    if len(pads) != 2:
        raise ValueError(f"conv2d: padding needs one entry per spatial axis (2), got {padding!r}")
    return tuple(pads)


def conv2d(x_NxHxWxCi, w_KHxKWxCixCo, stride=1, padding="SAME", *, impl: str = "auto", preferred=None):
    """``NHWC x HWIO -> NHWC`` convolution. ``impl``: ``'auto'`` (the canonical-gradient version
    on the CPU backend, ``lax`` elsewhere; the environment variable ``JAXCL_CONV_IMPL`` overrides
    it, e.g. to time both), ``'canonical'`` or ``'lax'``. ``preferred``: the accumulation and
    output dtype (``jnp.float32`` for bfloat16 inputs; None: the inputs' dtype)."""
    if x_NxHxWxCi.ndim != 4 or w_KHxKWxCixCo.ndim != 4:
        raise ValueError(
            f"conv2d expects x (N, H, W, C) and w (KH, KW, Cin, Cout), got shapes "
            f"{x_NxHxWxCi.shape} and {w_KHxKWxCixCo.shape}"
        )
    if x_NxHxWxCi.shape[-1] != w_KHxKWxCixCo.shape[2]:
        raise ValueError(
            f"conv2d: input has {x_NxHxWxCi.shape[-1]} channels but the kernel "
            f"expects {w_KHxKWxCixCo.shape[2]}"
        )
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = conv_padding(padding, w_KHxKWxCixCo.shape[:2], stride, x_NxHxWxCi.shape[1:3])
    if impl == "auto":
        impl = os.environ.get("JAXCL_CONV_IMPL", "auto")
    if impl == "auto":
        impl = "canonical" if jax.default_backend() == "cpu" else "lax"
    if impl == "canonical":
        return _conv2d_canonical(x_NxHxWxCi, w_KHxKWxCixCo, stride, pads, preferred)
    if impl == "lax":
        return _conv(x_NxHxWxCi, w_KHxKWxCixCo, stride, pads, preferred=preferred)
    raise ValueError(f"conv2d: unknown impl {impl!r}; use 'auto', 'canonical' or 'lax'")


class Conv(nnx.Conv):
    """``nnx.Conv`` (2-D, no dilation or groups) computed by :func:`conv2d`: identical parameters,
    parameter names and initialisation, fast gradients inside loops on the CPU. ``dtype`` None /
    float32, or bfloat16 with ``preferred_element_type=jnp.float32`` (float32 accumulation and
    output; :func:`jaxcl.models.precision.layer_kwargs`)."""

    def __init__(self, in_features: int, out_features: int, kernel_size, **kwargs):
        super().__init__(in_features, out_features, kernel_size, **kwargs)
        ks = self.kernel_size
        if (
            len(tuple(ks)) != 2
            or self.feature_group_count != 1
            or any(d not in (None, 1, (1, 1)) for d in (self.input_dilation, self.kernel_dilation))
        ):
            raise ValueError(
                "jaxcl Conv supports 2-D kernels without dilation or feature groups; "
                "use flax.nnx.Conv for those"
            )
        pad = self.padding
        if (
            (isinstance(pad, str) and pad.upper() not in ("SAME", "VALID", "SAME_LOWER"))
            or getattr(self, "mask", None) is not None
            or self.dtype not in (None, jnp.float32, jnp.bfloat16)
        ):
            raise ValueError(
                f"jaxcl Conv supports SAME/VALID/explicit padding, no mask and float32 or bfloat16 "
                f"compute (got padding={pad!r}, dtype={self.dtype!r}); use flax.nnx.Conv for the rest"
            )

    def __call__(self, x_NxHxWxCi):
        s = self.strides
        stride = (s, s) if isinstance(s, int) else tuple(s or (1, 1))
        w = self.kernel[...]
        if self.dtype is not None and jnp.dtype(self.dtype) != w.dtype:  # mixed precision
            x_NxHxWxCi, w = x_NxHxWxCi.astype(self.dtype), w.astype(self.dtype)
        y = conv2d(x_NxHxWxCi, w, stride, self.padding, preferred=self.preferred_element_type)
        if self.bias is not None:
            y = y + self.bias[...]
        return y
