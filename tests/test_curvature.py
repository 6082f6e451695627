"""The loss-curvature edit (:mod:`jaxcl.methods.curvature`, :func:`jaxcl.edits.curvature_edit`):
the edit and the K-FAC factors against numpy on hand-made cases, the mass limits, the Llama's
tapped forward, and the lm-memory study's edit rows."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import edits
from jaxcl.edits import curvature_edit, curvature_mask
from jaxcl.methods import curvature as C
from jaxcl.models import llama, mlp


def _basis(rng, n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


def _numpy_edit(w_io, a, g, keep):
    """The paper's edit in numpy: W (out x in) = w_io.T, greedy top products up to keep * mass."""
    la, ua = np.linalg.eigh(a)
    lg, ug = np.linalg.eigh(g)
    W = w_io.T
    Cm = ug.T @ W @ ua  # (out, in)
    prod = np.clip(lg, 0, None)[:, None] * np.clip(la, 0, None)[None, :]
    order = np.argsort(-prod, axis=None)
    mask, cum = np.zeros(prod.size), 0.0
    for k in order:
        if cum >= keep * prod.sum():
            break
        mask[k], cum = 1.0, cum + prod.flat[k]
    return (ug @ (Cm * mask.reshape(prod.shape)) @ ua.T).T, int(mask.sum())


def test_edit_matches_numpy_and_mass_limits():
    rng = np.random.default_rng(0)
    d_in, d_out = 4, 3
    ua, ug = _basis(rng, d_in), _basis(rng, d_out)
    a = ua @ np.diag([4.0, 2.0, 1.0, 0.25]) @ ua.T
    g = ug @ np.diag([3.0, 1.0, 0.1]) @ ug.T
    w = rng.normal(size=(2, d_in, d_out))  # two stacked layers, the second with other factors
    ub = _basis(rng, d_in)  # distinct eigenvalues and products: the selection has no ties
    a2, g2 = ub @ np.diag([5.0, 1.5, 0.7, 0.13]) @ ub.T, np.diag([1.0, 5.3, 2.1])
    f = {
        "w": {
            "A": jnp.asarray(np.stack([a, a2]), jnp.float32),
            "G": jnp.asarray(np.stack([g, g2]), jnp.float32),
        }
    }
    W = {"w": jnp.asarray(w, jnp.float32)}
    for keep in (0.3, 0.6, 0.9):
        got = np.asarray(curvature_edit(W, f, keep=keep)["w"])
        for layer, (aa, gg) in enumerate(((a, g), (a2, g2))):
            want, kept = _numpy_edit(w[layer], aa, gg, keep)
            assert 0 < kept < d_in * d_out
            np.testing.assert_allclose(got[layer], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(curvature_edit(W, f, keep=1.0)["w"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(curvature_edit(W, f, keep=0.0)["w"], 0.0, atol=1e-6)
    # the control removes as many components, in random bases: another weight
    rand = np.asarray(curvature_edit(W, f, keep=0.6, random_key=jax.random.key(0))["w"])
    assert np.abs(rand - np.asarray(curvature_edit(W, f, keep=0.6)["w"])).max() > 1e-2
    m = curvature_mask(jnp.asarray([4.0, 2.0, 1.0, 0.25]), jnp.asarray([3.0, 1.0, 0.1]), 0.6)
    assert int(m.sum()) == _numpy_edit(w[0], a, g, 0.6)[1]  # selection by eigenvalues alone


def test_dense_factors_match_numpy():
    """A two-layer ReLU classifier: A = E[a a^T] over each layer's inputs, G = E[g g^T] over the
    gradients of the per-example loss w.r.t. its outputs (true labels), by hand in numpy."""
    model = mlp((3,), 2, hidden=(4,))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.integers(0, 2, 12)
    sub = {"x": jnp.asarray(x), "y": jnp.asarray(y, jnp.int32)}
    got = C.dense_factors(model, params, sub, jax.random.key(0), batch_size=4, labels="true")
    W1, b1 = (np.asarray(params["layers"][0][k], np.float64) for k in ("kernel", "bias"))
    W2, b2 = (np.asarray(params["head"][k], np.float64) for k in ("kernel", "bias"))
    z1 = x @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g2 = p - np.eye(2)[y]
    g1 = (g2 @ W2.T) * (z1 > 0)
    live = (np.abs(g1).sum(1) > 0).astype(float)  # examples whose g is 0 add nothing to A
    want = {
        ("layers", 0): (np.einsum("ni,nj,n->ij", x, x, live) / 12, g1.T @ g1 / 12),
        ("head",): (h.T @ h / 12, g2.T @ g2 / 12),
    }
    assert set(got) == set(want)
    for path, (A, G) in want.items():
        np.testing.assert_allclose(got[path]["A"], A, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[path]["G"], G, rtol=1e-4, atol=1e-7)


CFG = llama.tiny(vocab_size=24, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24, max_seq_len=16)


def test_llama_taps_and_factors():
    """Zero taps leave the forward unchanged; the tap gradients are the gradients w.r.t. each
    linear's output (sum_n a_n g_n^T is the weight gradient); the factors are their token means."""
    params = llama.init_params(CFG, 0)
    rng = np.random.default_rng(2)
    toks = jnp.asarray(rng.integers(0, 24, (2, 7)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 7)) < 0.8)
    m = np.asarray(mask[:, 1:], np.float64).reshape(-1)
    shapes = llama.layer_shapes(CFG)
    taps = {t: jnp.zeros((2, 12, shapes[t][1])) for t in llama.LINEARS}

    def loss(taps, params):
        h, ins = llama.tapped_hidden(CFG, params, toks[:, :-1], taps)
        lp = llama.target_logprobs(CFG, params, h, toks[:, 1:])
        return -(lp * mask[:, 1:]).sum() / mask[:, 1:].sum(), ins

    h, _ = llama.tapped_hidden(
        CFG, params, toks, {t: jnp.zeros((2, 14, shapes[t][1])) for t in llama.LINEARS}
    )
    np.testing.assert_allclose(h, llama.forward(CFG, params, toks, return_hidden=True), atol=1e-6)
    g, ins = jax.grad(loss, has_aux=True)(taps, params)
    gw = jax.grad(lambda p: loss(taps, p)[0])(params)["layers"]
    for t in llama.LINEARS:
        np.testing.assert_allclose(jnp.einsum("lni,lno->lio", ins[t], g[t]), gw[t], rtol=1e-4, atol=1e-6)
    got = C.llama_factors(
        CFG,
        params,
        {"tokens": toks, "mask": mask},
        jax.random.key(0),
        targets=C.MLP_TARGETS,
        batch_size=2,
        labels="true",
    )
    for t in C.MLP_TARGETS:
        a, gg = np.asarray(ins[t], np.float64), np.asarray(g[t], np.float64)
        np.testing.assert_allclose(
            got[t]["A"], np.einsum("lni,lnj,n->lij", a, a, m) / m.sum(), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            got[t]["G"], np.einsum("lno,lnp->lop", gg, gg) / m.sum(), rtol=1e-4, atol=1e-9
        )


def test_method_edits_only_its_targets_and_layers():
    from jaxcl.loops import as_hparams, build_method
    from jaxcl.methods import METHODS
    from jaxcl.models.lm import language_model

    model = language_model(CFG)
    params = llama.init_params(CFG, 0)
    toks = jnp.asarray(np.random.default_rng(3).integers(0, 24, (8, 7)), jnp.int32)
    data = types.SimpleNamespace(train_set={"tokens": toks, "mask": jnp.ones_like(toks, bool)})
    spec = METHODS["curvature"]
    _, opts = spec.split({"layers": (1,), "targets": ("w_up", "wo")})
    out = build_method(spec, model, as_hparams(spec), opts).edit(
        params, data, as_hparams(spec), jax.random.key(0)
    )
    for name, v in out["layers"].items():
        moved = np.abs(np.asarray(v) - np.asarray(params["layers"][name])).max(axis=tuple(range(1, v.ndim)))
        assert moved[0] == 0, name
        assert (moved[1] > 0) == (name in ("w_up", "wo")), name
    with pytest.raises(ValueError, match="curvature.targets"):
        build_method(spec, model, as_hparams(spec), {**opts, "targets": ("w_nope",)})


def test_lm_memory_edit_rows(tmp_path):
    """The study's edit rows (lm-recite --tiny): keeping all the curvature mass leaves every
    number unchanged (the never-seen rows included); an unknown edit is refused."""
    from jaxcl import config
    from jaxcl.studies import lm_memory as LM

    cfg = config.load("lm-recite", tiny=True)
    sets = ["train.checkpoint=false", "curvature.keep=1.0"]
    cfg = config.resolve(cfg, sets, study=LM.STUDY)
    rows = LM.STUDY.run(cfg, str(tmp_path), verbose=False)["rows"]
    names = ("curvature: memories x1", "curvature: memories x2", "curvature: memories novel")
    for name in names + ("curvature: held-out text",):
        s = rows[name]["per_seed"]
        np.testing.assert_allclose(s["nll_after"], s["nll_before"], rtol=1e-4)
        assert s.get("recite_after") == s.get("recite_before")
    with pytest.raises(config.ConfigError, match="edits"):
        LM.validate(config.resolve(cfg, ["edits=ssd"], study=LM.STUDY))


def test_random_bases_are_numpys_qr_of_the_same_gaussian_matrix():
    """The control's random bases: Q of the Gaussian matrix's QR with R's diagonal positive (Haar),
    against numpy's QR of the same matrix, built without LAPACK calls (see edits.haar_orthogonal)."""
    for n in (3, 17, 64):
        key = jax.random.key(n)
        q = np.asarray(jax.jit(edits.haar_orthogonal, static_argnums=1)(key, n))
        qq, r = np.linalg.qr(np.asarray(jax.random.normal(key, (n, n), jnp.float32), np.float64))
        np.testing.assert_allclose(q, qq * np.sign(np.diag(r)), atol=2e-5)
        np.testing.assert_allclose(q.T @ q, np.eye(n), atol=2e-5)
