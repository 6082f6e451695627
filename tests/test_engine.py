"""The pure step: one step against a plain PyTorch reference, metrics, determinism, non-finite
handling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.engine import NonFiniteLossError, check_finite, init_state, make_step
from jaxcl.losses import classification_loss
from jaxcl.models import mlp


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(rng.integers(0, 256, (n, 8, 8, 1)), jnp.uint8),
        "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
    }


def test_sgd_step_matches_pytorch():
    torch = pytest.importorskip("torch")
    model = mlp((8, 8, 1), 10, hidden=(32,))
    params = model.init(jax.random.key(0))
    batch = _batch()
    step = make_step(classification_loss(model.apply), optax.sgd(0.1))
    state = init_state(params, optax.sgd(0.1), 0)
    new, m = jax.jit(step)(state, batch)

    # the same network and step in PyTorch
    W1 = torch.tensor(np.asarray(params["layers"][0]["kernel"]), requires_grad=True)
    b1 = torch.tensor(np.asarray(params["layers"][0]["bias"]), requires_grad=True)
    W2 = torch.tensor(np.asarray(params["head"]["kernel"]), requires_grad=True)
    b2 = torch.tensor(np.asarray(params["head"]["bias"]), requires_grad=True)
    x = torch.tensor(np.asarray(batch["x"]), dtype=torch.float32).reshape(16, -1) / 127.5 - 1
    logits = torch.relu(x @ W1 + b1) @ W2 + b2
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(np.asarray(batch["y"]), dtype=torch.long))
    loss.backward()
    np.testing.assert_allclose(float(m["loss"]), loss.item(), rtol=1e-5)
    gn = torch.sqrt(sum((p.grad**2).sum() for p in (W1, b1, W2, b2))).item()
    np.testing.assert_allclose(float(m["grad_norm"]), gn, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(new.params["head"]["kernel"]), (W2 - 0.1 * W2.grad).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    assert int(new.step) == 1
    for k in ("loss", "grad_norm", "param_norm", "finite", "train_acc"):
        assert k in m


def test_step_is_deterministic_and_key_dependent():
    model = mlp((8, 8, 1), 10, hidden=(16,))
    params = model.init(jax.random.key(0))

    def noisy_loss(p, b, key):  # uses the per-step key
        loss, aux = classification_loss(model.apply)(p, b, key)
        return loss + 1e-3 * jax.random.normal(key), aux

    tx = optax.sgd(0.1)
    step = jax.jit(make_step(noisy_loss, tx))
    s1, m1 = step(init_state(params, tx, 1), _batch())
    s1b, m1b = step(init_state(params, tx, 1), _batch())
    s2, m2 = step(init_state(params, tx, 2), _batch())
    assert float(m1["loss"]) == float(m1b["loss"])
    assert float(m1["loss"]) != float(m2["loss"])


def _nan_loss_fn(model):
    def loss_fn(p, b, key):
        loss, aux = classification_loss(model.apply)(p, b, key)
        return loss * jnp.where(b["poison"], jnp.nan, 1.0), aux

    return loss_fn


@pytest.mark.parametrize("skip", [False, True])
def test_nonfinite_is_recorded_and_optionally_skipped(skip):
    model = mlp((8, 8, 1), 10, hidden=(16,))
    params = model.init(jax.random.key(0))
    tx = optax.sgd(0.1)
    step = jax.jit(make_step(_nan_loss_fn(model), tx, skip_nonfinite=skip))
    s = init_state(params, tx, 0)
    for i in range(5):
        s, m = step(s, {**_batch(seed=i), "poison": jnp.asarray(i >= 3)})
    assert int(s.nonfinite_step) == 3
    finite_leaves = all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(s.params))
    assert finite_leaves == skip  # skipping keeps params finite; not skipping lets NaN in
    with pytest.raises(NonFiniteLossError, match="step 3"):
        check_finite(s.nonfinite_step)
    check_finite(jnp.asarray([-1, -1]))  # all finite: no error


def test_check_finite_names_the_run():
    with pytest.raises(NonFiniteLossError, match=r"step 7 \(run index \(1,\)"):
        check_finite(np.array([-1, 7, 9]))


def test_norms_off_drops_the_metrics_and_keeps_the_update():
    model = mlp((8, 8, 1), 10, hidden=(16,))
    params = model.init(jax.random.key(0))
    tx = optax.adamw(1e-2, weight_decay=1e-2)
    loss_fn = classification_loss(model.apply)

    def two_steps(**kw):
        step = make_step(loss_fn, tx, **kw)
        return jax.jit(lambda s, bs: jax.lax.scan(step, s, bs))(init_state(params, tx, 0), batches)

    batches = jax.tree.map(lambda *a: jnp.stack(a), _batch(seed=0), _batch(seed=1))
    s_on, m_on = two_steps()
    s_off, m_off = two_steps(norms=False)
    assert {"grad_norm", "param_norm"} <= set(m_on) and not {"grad_norm", "param_norm"} & set(m_off)
    assert set(m_on) - set(m_off) == {"grad_norm", "param_norm"}
    np.testing.assert_array_equal(np.asarray(m_on["loss"]), np.asarray(m_off["loss"]))
    for a, b in zip(
        jax.tree.leaves((s_on.params, s_on.opt_state)), jax.tree.leaves((s_off.params, s_off.opt_state))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical update
    # without the gradient norm a non-finite loss is still recorded (and skip_nonfinite still works)
    step = jax.jit(make_step(_nan_loss_fn(model), tx, norms=False, skip_nonfinite=True))
    s = init_state(params, tx, 0)
    for i in range(3):
        s, m = step(s, {**_batch(seed=i), "poison": jnp.asarray(i >= 1)})
    assert int(s.nonfinite_step) == 1 and "grad_norm" not in m
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(s.params))
