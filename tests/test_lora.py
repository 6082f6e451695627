"""LoRA as a params split: only adapters train, any optax transform, merge == unmerged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.models import llama, lora


def _setup():
    cfg = llama.tiny(vocab_size=50, n_layers=2)
    base = llama.init_params(cfg, seed=0)
    spec = lora.LoraSpec(targets=lora.LLAMA_ATTN + ("layers/w_up",), rank=4, alpha=8)
    return cfg, base, spec


def test_init_merge_is_identity_and_unmerged_form_matches():
    cfg, base, spec = _setup()
    ad = lora.init(spec, base, jax.random.key(0))
    assert set(ad) == {"layers/wq", "layers/wk", "layers/wv", "layers/wo", "layers/w_up"}
    assert ad["layers/wq"]["a"].shape == (2, 64, 4) and ad["layers/wq"]["b"].shape == (2, 4, 64)
    merged = lora.merge(spec, base, ad)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base)):
        np.testing.assert_array_equal(a, b)
    # with non-zero B, a merged linear equals the unmerged x @ W + scale * (x @ A) @ B
    ad = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), ad)
    x = jax.random.normal(jax.random.key(2), (3, 64))
    w, a, b = base["layers"]["wq"][1], ad["layers/wq"]["a"][1], ad["layers/wq"]["b"][1]
    merged = lora.merge(spec, base, ad)
    np.testing.assert_allclose(x @ merged["layers"]["wq"][1], x @ w + spec.scale * (x @ a) @ b, atol=1e-5)
    with pytest.raises(ValueError, match="not found"):
        lora.init(lora.LoraSpec(targets=("layers/nope",)), base, jax.random.key(0))


@pytest.mark.parametrize(
    "tx", [optax.adam(1e-2), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))]
)
def test_only_adapters_train_and_merge_matches(tx):
    cfg, base, spec = _setup()
    adapters = lora.init(spec, base, jax.random.key(0))
    apply = llama.make_apply(cfg)
    tokens = jax.random.randint(jax.random.key(3), (4, 12), 0, cfg.vocab_size)

    def full_loss(params, batch, key):
        lp = jax.nn.log_softmax(apply(params, batch[:, :-1]))
        return -jnp.take_along_axis(lp, batch[:, 1:, None], -1).mean(), {}

    @jax.jit
    def train(adapters, opt_state, base, batch):
        loss_fn = lora.wrap_loss(spec, full_loss, base)

        def step(carry, _):
            adapters, opt_state = carry
            (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(adapters, batch, None)
            upd, opt_state = tx.update(g, opt_state, adapters)
            return (optax.apply_updates(adapters, upd), opt_state), loss

        return jax.lax.scan(step, (adapters, opt_state), None, length=20)

    base_copy = jax.tree.map(jnp.copy, base)
    (new, _), losses = train(adapters, tx.init(adapters), base, tokens)
    assert losses[-1] < losses[0]
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_copy)):  # base untouched
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(new["layers/wq"]["b"]).max()) > 0  # adapters moved
    merged = lora.merge(spec, base, new)
    np.testing.assert_allclose(
        apply(merged, tokens), lora.wrap_apply(spec, apply)(new, base, tokens), atol=1e-5
    )
    # untargeted weights are identical after merge; targeted ones moved
    np.testing.assert_array_equal(merged["layers"]["w_down"], base["layers"]["w_down"])
    assert not np.allclose(merged["layers"]["wq"], base["layers"]["wq"])
    assert lora.count(new) < llama.param_count(base)
