"""RMU (Li et al. 2024, WMDP): its loss against numpy on hand-made hidden states, the Llama's
``hidden_at`` against the forward pass and a layer-by-layer recomputation, and a behaviour test on
a tiny scratch Llama (forget activations turn towards ``c * u``, retain activations stay with the
frozen model's, only the selected layers' parameters move)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.engine import init_state, make_step
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.methods.rmu import rmu_distance, steering_direction, update_mask
from jaxcl.models import llama
from jaxcl.models.lm import language_model

CFG = llama.tiny(vocab_size=32, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=16)
LM = language_model(CFG, "tiny")
PARAMS = LM.init(jax.random.key(0))


def test_distance_matches_numpy():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, 7)).astype(np.float32)
    ref = rng.normal(size=(3, 5, 7)).astype(np.float32)
    m = (rng.random((3, 5)) < 0.6).astype(np.float32)
    u = rng.random(7)
    u = u / np.linalg.norm(u)
    c = 4.0
    want_f = sum(((h[b, t] - c * u) ** 2).mean() for b in range(3) for t in range(5) if m[b, t]) / m.sum()
    want_r = sum(((h[b, t] - ref[b, t]) ** 2).mean() for b in range(3) for t in range(5) if m[b, t]) / m.sum()
    np.testing.assert_allclose(
        rmu_distance(jnp.asarray(h), c * jnp.asarray(u), jnp.asarray(m)), want_f, rtol=1e-5
    )
    np.testing.assert_allclose(
        rmu_distance(jnp.asarray(h), jnp.asarray(ref), jnp.asarray(m)), want_r, rtol=1e-5
    )
    assert float(rmu_distance(jnp.asarray(h), jnp.asarray(h), jnp.asarray(m))) == 0.0


def test_direction_is_a_positive_unit_vector_fixed_by_its_seed():
    u = np.asarray(steering_direction(0, 64))
    np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-6)
    assert (u >= 0).all()
    np.testing.assert_array_equal(u, steering_direction(0, 64))
    assert not np.allclose(u, steering_direction(1, 64))


# -- hidden_at --------------------------------------------------------------------------------


def np_rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def np_layer(cfg, x, lp):
    """One decoder layer in numpy (RoPE rotate-halves, GQA, causal softmax, SwiGLU)."""
    B, T, D = x.shape
    H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.hd
    h = np_rms(x, lp["attn_norm"], cfg.norm_eps)
    q, k, v = (
        (h @ lp["wq"]).reshape(B, T, H, hd),
        (h @ lp["wk"]).reshape(B, T, K, hd),
        (h @ lp["wv"]).reshape(B, T, K, hd),
    )
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv
    cos, sin = (
        np.cos(np.concatenate([ang, ang], -1))[None, :, None],
        np.sin(np.concatenate([ang, ang], -1))[None, :, None],
    )
    rot = lambda a: np.concatenate([-a[..., hd // 2 :], a[..., : hd // 2]], -1)  # noqa: E731
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, v).reshape(B, T, H * hd)
    x = x + o @ lp["wo"]
    h = np_rms(x, lp["mlp_norm"], cfg.norm_eps)
    g = h @ lp["w_gate"]
    return x + (g / (1 + np.exp(-g)) * (h @ lp["w_up"])) @ lp["w_down"]


TOKENS = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 9)))


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_hidden_at_matches_a_numpy_layer_by_layer_recomputation(layer):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), PARAMS)
    x = p["embed"][np.asarray(TOKENS)]
    for i in range(layer + 1):
        x = np_layer(CFG, x, {k: v[i] for k, v in p["layers"].items()})
    got = llama.hidden_at(CFG, PARAMS, TOKENS, layer)
    np.testing.assert_allclose(got, x, rtol=2e-4, atol=2e-5)


def test_hidden_at_the_last_layer_is_forwards_hidden_state_before_the_final_norm():
    h = llama.hidden_at(CFG, PARAMS, TOKENS, CFG.n_layers - 1)
    post = llama.forward(CFG, PARAMS, TOKENS, return_hidden=True)  # forward returns it after the norm
    np.testing.assert_allclose(
        llama.rms_norm(h, PARAMS["final_norm"], CFG.norm_eps), post, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(h, post, atol=1e-3)  # the norm is not the identity here
    with pytest.raises(ValueError, match="out of range"):
        llama.hidden_at(CFG, PARAMS, TOKENS, CFG.n_layers)


# -- behaviour on a tiny scratch Llama ---------------------------------------------------------


def rows(seed, lo, hi, n=4, T=10):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(lo, hi, (n, T)).astype(np.int32)
    mask = np.zeros((n, T), bool)
    mask[:, T // 2 :] = True  # the answer half
    return {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask)}


def cosine(h_BxTxD, u_D, m_BxT):
    c = (h_BxTxD @ u_D) / jnp.linalg.norm(h_BxTxD, axis=-1)
    return float((c * m_BxT).sum() / m_BxT.sum())


def test_rmu_steers_forget_activations_and_keeps_retain_ones_touching_only_the_selected_layers():
    spec = METHODS["rmu"]
    layer = 1  # layers 0..1's w_down train with update_span 2; layer 2 and everything else frozen
    hp = as_hparams(spec, {"lr": 1e-2, "steering_coeff": 4.0, "alpha": 100.0})
    _, opts = spec.split({"layer": layer, "update_span": 2})
    method = build_method(spec, LM, hp, opts)
    retain, forget = rows(1, 0, 16), rows(2, 16, 32)  # two vocabularies: two topics
    batch = {**retain, "forget": forget}
    state = init_state(PARAMS, method.tx, jax.random.key(0), method.data, batch)
    state = method.consolidate(state, batch, jax.random.key(0))
    step = jax.jit(make_step(method.loss_fn, method.tx, method.data))
    for _ in range(60):
        state, metrics = step(state, batch)
    p1 = state.params
    u = steering_direction(opts["direction_seed"], CFG.d_model)
    m_f = forget["mask"].astype(jnp.float32)
    h0_f, h1_f = (llama.hidden_at(CFG, p, forget["tokens"], layer) for p in (PARAMS, p1))
    cos0, cos1 = cosine(h0_f, u, m_f), cosine(h1_f, u, m_f)
    assert cos1 > cos0 + 0.5, (cos0, cos1)  # measured -0.049 -> 0.897
    print(f"cosine to u on the forget answers: {cos0:.3f} -> {cos1:.3f}")
    target = hp["steering_coeff"] * u
    d0, d1 = float(rmu_distance(h0_f, target, m_f)), float(rmu_distance(h1_f, target, m_f))
    print(f"forget distance to c * u: {d0:.3f} -> {d1:.3f}")
    assert d1 < 0.92 * d0, (d0, d1)  # measured 1.003 -> 0.876 (the direction first, the norm slowly)
    # retain activations stay close to the frozen model's (relative to how far the forget ones moved)
    m_r = retain["mask"].astype(jnp.float32)
    h0_r, h1_r = (llama.hidden_at(CFG, p, retain["tokens"], layer) for p in (PARAMS, p1))
    moved_f = float(rmu_distance(h1_f, h0_f, m_f))
    assert float(rmu_distance(h1_r, h0_r, m_r)) < 0.05 * moved_f
    # only layers 0..1's w_down changed
    for k, v0 in PARAMS["layers"].items():
        d = np.abs(np.asarray(p1["layers"][k]) - np.asarray(v0)).reshape(CFG.n_layers, -1).max(-1)
        if k == "w_down":
            assert (d[:2] > 0).all() and d[2] == 0, (k, d)
        else:
            assert (d == 0).all(), (k, d)
    for k in ("embed", "final_norm"):
        np.testing.assert_array_equal(p1[k], PARAMS[k])


def test_update_mask_selects_layers_and_tensors():
    like = jax.eval_shape(lambda: PARAMS)
    m = update_mask(LM, like, 2, 3, ("w_down", "w_up"))
    np.testing.assert_array_equal(np.asarray(m["layers"]["w_down"]).ravel(), [1, 1, 1])
    m = update_mask(LM, like, 7, 1, ("w_down",))  # clipped to the last layer
    np.testing.assert_array_equal(np.asarray(m["layers"]["w_down"]).ravel(), [0, 0, 1])
    assert float(m["layers"]["wq"]) == 0 and float(m["embed"]) == 0
    with pytest.raises(ValueError, match="no layer parameter"):
        update_mask(LM, like, 1, 1, ("mlp",))
