"""jaxcl.models.conv: the canonical-gradient convolution against PyTorch and JAX's own rule, and
its reason to exist (gradients inside a compiled loop as fast as outside, on XLA:CPU)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcl.models.conv import Conv, conv2d

CASES = [  # (H, W, Cin, Cout, K, stride, padding)
    (9, 9, 3, 5, 3, 1, 1),
    (9, 8, 3, 5, 3, 2, 1),  # odd / even sizes: the stride leaves a remainder on one axis
    (7, 7, 4, 6, 1, 2, 0),  # 1x1 projection, stride 2
    (10, 10, 2, 3, 5, 3, ((2, 1), (0, 2))),  # asymmetric padding, stride 3
    (8, 8, 2, 3, 3, 2, "SAME"),
    (8, 8, 2, 3, 3, 1, "VALID"),
]


def _data(h, w, ci, co, k, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((2, h, w, ci)).astype(np.float32),
        rng.standard_normal((k, k, ci, co)).astype(np.float32),
    )


def _loss(impl, stride, padding):
    def f(x, w):
        y = conv2d(x, w, stride, padding, impl=impl)
        return (y**3).sum() + y.sum()

    return f


@pytest.mark.parametrize("case", CASES)
def test_canonical_gradient_matches_torch(case):
    torch = pytest.importorskip("torch")
    h, w, ci, co, k, stride, padding = case
    x, kern = _data(h, w, ci, co, k)
    y = conv2d(jnp.asarray(x), jnp.asarray(kern), stride, padding, impl="canonical")
    gx, gw = jax.grad(_loss("canonical", stride, padding), argnums=(0, 1))(x, kern)

    from jaxcl.models.conv import conv_padding

    (pt, pb), (pl, pr) = conv_padding(padding, (k, k), (stride, stride), (h, w))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(kern.transpose(3, 2, 0, 1), requires_grad=True)
    ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (pl, pr, pt, pb)), tw, stride=stride)
    ((ty**3).sum() + ty.sum()).backward()
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("case", CASES)
def test_canonical_gradient_matches_jax_rule(case):
    h, w, ci, co, k, stride, padding = case
    x, kern = _data(h, w, ci, co, k, seed=1)
    ours = jax.grad(_loss("canonical", stride, padding), argnums=(0, 1))(x, kern)
    ref = jax.grad(_loss("lax", stride, padding), argnums=(0, 1))(x, kern)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


def test_conv_module_is_nnx_conv_with_the_same_parameters():
    for kw in (dict(kernel_size=(3, 3), padding=1, use_bias=False, strides=2), dict(kernel_size=(3, 3))):
        ref, ours = nnx.Conv(4, 8, rngs=nnx.Rngs(0), **kw), Conv(4, 8, rngs=nnx.Rngs(0), **kw)
        assert (
            nnx.to_pure_dict(nnx.state(ref, nnx.Param)).keys()
            == nnx.to_pure_dict(nnx.state(ours, nnx.Param)).keys()
        )
        np.testing.assert_array_equal(ref.kernel[...], ours.kernel[...])
        x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4))
        np.testing.assert_allclose(ref(x), ours(x), rtol=1e-5, atol=1e-5)


def test_bad_input_is_a_clear_error():
    x = jnp.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="channels"):
        conv2d(x, jnp.zeros((3, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        conv2d(x[0], jnp.zeros((3, 3, 3, 5)))
    with pytest.raises(ValueError, match="impl"):
        conv2d(x, jnp.zeros((3, 3, 3, 5)), impl="fast")
    with pytest.raises(ValueError, match="dilation"):
        Conv(3, 4, (3, 3), kernel_dilation=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="padding"):
        Conv(3, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(0))


def test_gradient_in_a_loop_equals_and_is_as_fast_as_outside():
    """The failure this module fixes: XLA:CPU runs JAX's backward convolutions 30-80x slower
    inside a loop body. Inside a rolled ``lax.scan`` the canonical version must give the same
    gradients as outside and stay within a few times the unrolled cost."""
    xs = jax.random.normal(jax.random.key(0), (4, 32, 14, 14, 32))
    kern = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1

    def total(impl, unroll):
        g = lambda xb: jax.grad(lambda w: (conv2d(xb, w, 1, 1, impl=impl) ** 2).sum())(kern)
        return jax.jit(
            lambda xs: jax.lax.scan(lambda c, xb: (c + g(xb), None), jnp.zeros_like(kern), xs, unroll=unroll)[
                0
            ]
        )

    rolled, unrolled = total("canonical", 1), total("canonical", True)
    np.testing.assert_allclose(rolled(xs), unrolled(xs), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(rolled(xs), total("lax", True)(xs), rtol=1e-4, atol=1e-3)
    if jax.default_backend() != "cpu":
        return

    def best(f, n=5):
        jax.block_until_ready(f(xs))
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            jax.block_until_ready(f(xs))
            ts.append(time.perf_counter() - t)
        return min(ts)

    assert best(rolled) < 4 * best(unrolled)


def test_second_order_gradients_match_jax_rule():
    """IAU's regulariser differentiates a gradient norm: the custom backward pass must itself be
    differentiable, with the same result as JAX's rule."""
    x, kern = _data(9, 8, 3, 4, 3, seed=2)

    def gn(impl):
        def f(x, w):
            g = jax.grad(lambda w: (jnp.tanh(conv2d(x, w, 2, 1, impl=impl)) ** 2).sum())(w)
            return (g**2).sum()

        return jax.grad(f, argnums=(0, 1))(x, kern)

    for a, b in zip(gn("canonical"), gn("lax")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3)
