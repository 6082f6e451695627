"""jaxcl.batching.over_seeds: vmap and the compiled loop give the same per-seed results, and the
automatic choice follows the model and the backend."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.batching import over_seeds, resolve_mode, uses_convolution
from jaxcl.models import cnn, mlp
from jaxcl.models.resnet import resnet18


def test_uses_convolution_and_auto_mode():
    conv_model, dense_model = cnn((28, 28, 1), 10, channels=(4, 8), hidden=16), mlp((28, 28, 1), 10)
    assert uses_convolution(conv_model) and uses_convolution(resnet18((28, 28, 1), 10, width=4))
    assert not uses_convolution(dense_model)
    want = "map" if jax.default_backend() == "cpu" else "vmap"
    assert resolve_mode("auto", conv_model) == want
    assert resolve_mode("auto", dense_model) == "vmap"
    assert resolve_mode("vmap", conv_model) == "vmap"
    with pytest.raises(ValueError, match="valid: auto, vmap, map"):
        resolve_mode("pmap", conv_model)
    with pytest.raises(ValueError, match="0 or None"):
        over_seeds(lambda a: a, (1,))


def test_map_and_vmap_agree_on_a_training_step_per_seed():
    model = cnn((28, 28, 1), 10, channels=(4, 8), hidden=16)
    x = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
    y = jnp.arange(16) % 10
    tx = optax.sgd(0.1)

    def run(key, x, scale):
        p = model.init(key)

        def body(p, i):
            g = jax.grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x * scale), y).mean()
            )(p)
            u, _ = tx.update(g, tx.init(p), p)
            return optax.apply_updates(p, u), None

        return jax.lax.scan(body, p, jnp.arange(3))[0]

    keys = jax.random.split(jax.random.key(1), 3)
    scales = jnp.array([1.0, 0.5, 2.0])
    out = {m: jax.jit(over_seeds(run, (0, None, 0), mode=m))(keys, x, scales) for m in ("vmap", "map")}
    for a, b in zip(jax.tree.leaves(out["vmap"]), jax.tree.leaves(out["map"])):
        assert a.shape[0] == 3
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # the seeds really differ (a shared-key bug would make every row equal)
    k = jax.tree.leaves(out["map"])[0]
    assert not np.allclose(k[0], k[1])


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerator_branches_forced_on_cpu(monkeypatch, backend):
    """The choices that switch on the backend, taken as on an accelerator (the CPU runs them): seeds
    of a convolutional model are vmapped, and convolutions use lax.conv, which gives the same values
    and gradients as the CPU's canonical form."""
    from jaxcl.models import conv

    conv_model = cnn((8, 8, 1), 10, channels=(4,), hidden=8)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert resolve_mode("auto", conv_model) == "vmap"
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    loss = lambda impl: lambda w: jnp.sum(conv.conv2d(x, w, 2, "SAME", impl=impl) ** 2)
    can_val, can_grad = jax.value_and_grad(loss("canonical"))(w)

    def not_on_an_accelerator(*a):
        raise AssertionError("auto took the CPU branch")

    monkeypatch.setattr(conv, "_conv2d_canonical", not_on_an_accelerator)
    auto_val, auto_grad = jax.value_and_grad(loss("auto"))(w)
    lax_val, lax_grad = jax.value_and_grad(loss("lax"))(w)
    np.testing.assert_array_equal(auto_val, lax_val)
    np.testing.assert_allclose(lax_val, can_val, rtol=1e-5)
    np.testing.assert_allclose(lax_grad, can_grad, rtol=1e-4, atol=1e-4)
