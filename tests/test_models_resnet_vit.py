"""ResNet-18 (28x28 variant, pure BatchNorm) and the small ViT."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.models import make_model
from jaxcl.models.resnet import resnet18
from jaxcl.models.vit import vit

X = jax.random.randint(jax.random.key(1), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
Y = jnp.arange(8) % 10


def test_resnet_shapes_modes_and_zero_gradient_on_batch_stats():
    m = resnet18((28, 28, 1), 10, width=4)
    p = m.init(jax.random.key(0))
    ev, tr, ft = jax.jit(lambda p: (m.apply(p, X), m.apply_train(p, X), m.features(p, X)))(p)
    assert ev.shape == (8, 10) and tr.shape == (8, 10) and ft.shape == (8, 32)
    assert not np.allclose(ev, tr)  # eval vs batch statistics
    g = jax.jit(jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(m.apply(q, X), Y).mean()))(
        p
    )
    assert float(jnp.abs(g["bn"]["mean"]).sum()) == 0 and float(jnp.abs(g["bn"]["var"]).sum()) == 0
    assert float(jnp.abs(g["bn"]["scale"]).sum()) > 0
    # Adam leaves the statistics alone
    tx = optax.adam(1e-2)
    u, _ = tx.update(g, tx.init(p), p)
    assert float(jnp.abs(u["bn"]["mean"]).sum()) == 0


def test_resnet_recalibration_makes_eval_equal_train_on_that_batch():
    m = resnet18((28, 28, 1), 10, width=4)
    p = m.init(jax.random.key(0))
    p2 = jax.jit(lambda p, x: m.recalibrate(p, x, chunk=8))(p, X)
    # the stem's running mean is the per-channel mean of the stem convolution's output on X
    x = X.astype(jnp.float32) / 127.5 - 1
    w = np.asarray(p["stem"]["kernel"])  # 3x3 x Ci x Co, padding 1
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    conv = sum(
        np.einsum("bhwc,co->bhwo", xp[:, i : i + h, j : j + wd], w[i, j]) for i in range(3) for j in range(3)
    )
    np.testing.assert_allclose(p2["bn"]["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(p2["bn"]["mean"], 0)
    # with the batch's own statistics, eval mode equals training mode on that batch
    np.testing.assert_allclose(m.apply(p2, X), m.apply_train(p, X), atol=2e-4)


def test_vit_and_vmap_init():
    m = vit((28, 28, 1), 10, dim=32, depth=2, heads=2, mlp=64)
    ps = jax.vmap(m.init)(jax.random.split(jax.random.key(0), 2))
    out = jax.jit(jax.vmap(m.apply, in_axes=(0, None)))(ps, X)
    assert out.shape == (2, 8, 10)
    assert not np.allclose(out[0], out[1])
    assert jax.eval_shape(m.features, jax.tree.map(lambda a: a[0], ps), X).shape == (8, 32)


def test_registered_in_models():
    assert make_model("resnet18", (28, 28, 1), 10, width=4).name == "resnet18-w4"
    assert make_model("vit", (28, 28, 1), 10, depth=1).name.startswith("vit")
