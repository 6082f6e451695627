"""SSD's pieces (:mod:`jaxcl.methods.ssd`): the importance
(:func:`jaxcl.losses.minibatch_importance`) against an independent PyTorch reference written from
the paper's definition (Foster et al. 2023, reference code's loop: per minibatch, mean
cross-entropy, backward, add grad**2; divide by the number of minibatches), and the edit
(:func:`jaxcl.edits.ssd_dampen`: select I_Df > alpha * I_D; multiply by min(lambda * I_D / I_Df,
1)) against numpy. Tolerance: float32, rtol 1e-4 on importances, 1e-6 on params.
"""

import jax
import numpy as np
import pytest

from jaxcl import config
from jaxcl.edits import ssd_dampen
from jaxcl.loops import as_hparams
from jaxcl.losses import minibatch_importance
from jaxcl.methods import get_method
from jaxcl.models import mlp

torch = pytest.importorskip("torch")


def _problem():
    model = mlp((4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 4, 4, 1)).astype(np.uint8)
    y = rng.integers(0, 3, 48).astype(np.int32)
    return model, params, x, y


def _torch_importance(params, x, y, batch, per_example=False):
    t = {
        k: torch.tensor(np.asarray(v), requires_grad=True)
        for k, v in {
            "w0": params["layers"][0]["kernel"],
            "b0": params["layers"][0]["bias"],
            "w1": params["head"]["kernel"],
            "b1": params["head"]["bias"],
        }.items()
    }
    xf = torch.tensor(x.reshape(len(x), -1).astype(np.float32) / 127.5 - 1.0)
    yt = torch.tensor(y, dtype=torch.long)
    imp = {k: torch.zeros_like(v) for k, v in t.items()}
    size = 1 if per_example else batch
    n_b = 0
    for i in range(0, len(x) - len(x) % size, size):
        for v in t.values():
            v.grad = None
        h = torch.relu(xf[i : i + size] @ t["w0"] + t["b0"])
        loss = torch.nn.functional.cross_entropy(h @ t["w1"] + t["b1"], yt[i : i + size])
        loss.backward()
        for k, v in t.items():
            imp[k] += v.grad.detach() ** 2
        n_b += 1
    return {k: (v / n_b).numpy() for k, v in imp.items()}


def _flat(tree):
    return {
        "w0": tree["layers"][0]["kernel"],
        "b0": tree["layers"][0]["bias"],
        "w1": tree["head"]["kernel"],
        "b1": tree["head"]["bias"],
    }


@pytest.mark.parametrize("per_example", [False, True])
def test_importance_matches_pytorch(per_example):
    model, params, x, y = _problem()
    ours = jax.jit(
        lambda p, sub: minibatch_importance(model, p, sub, batch_size=16, per_example=per_example)
    )(params, {"x": x, "y": y})
    ref = _torch_importance(params, x, y, 16, per_example)
    for k, v in _flat(ours).items():
        np.testing.assert_allclose(np.asarray(v), ref[k], rtol=1e-4, atol=1e-9)


def test_dampen_matches_numpy_reference_and_selects_something():
    model, params, x, y = _problem()
    i_f = minibatch_importance(model, params, {"x": x[y == 0], "y": y[y == 0]}, batch_size=8)
    i_d = minibatch_importance(model, params, {"x": x, "y": y}, batch_size=16)
    alpha, lam = 1.5, 0.7
    new = jax.jit(lambda p, f, d, a, l: ssd_dampen(p, f, d, alpha=a, lam=l))(params, i_f, i_d, alpha, lam)
    n_sel = 0
    for p, f, d, q in zip(*(jax.tree.leaves(t) for t in (params, i_f, i_d, new))):
        p, f, d = map(np.asarray, (p, f, d))
        sel = f > alpha * d
        n_sel += sel.sum()
        want = p.copy()
        want[sel] = p[sel] * np.minimum(lam * d[sel] / f[sel], 1.0)
        np.testing.assert_allclose(np.asarray(q), want, rtol=1e-6, atol=1e-7)
    assert n_sel > 0
    # excluded layers are untouched
    kept = ssd_dampen(params, i_f, i_d, alpha=alpha, lam=lam, exclude=("head",))
    np.testing.assert_array_equal(kept["head"]["kernel"], params["head"]["kernel"])


@pytest.mark.parametrize("alpha,lam", [(0.0, 1.0), (-1.0, 1.0), (10.0, 0.0), (10.0, -2.0)])
def test_bad_hyperparameters_are_refused_before_compute(alpha, lam):
    """Refused by the registry's ranges, in the config (``--set``) and in ``as_hparams``, with
    the key and the valid interval in the message."""
    bad = "alpha" if alpha <= 0 else "lambda"
    match = rf"ssd\.{bad}=-?[0-9.]+ is out of range; valid: \(0, inf\]"
    with pytest.raises(config.ConfigError, match=match):
        config.resolve(config.load("unlearn-class", tiny=True), [f"ssd.alpha={alpha}", f"ssd.lambda={lam}"])
    with pytest.raises(ValueError, match=match):
        as_hparams(get_method("ssd"), {"alpha": alpha, "lambda": lam})


def test_forget_set_smaller_than_a_minibatch_is_compared_at_its_own_size():
    """SSD's two importances average squared means of equally large minibatches: a forget set of 4
    rows (smaller than ``batch_size`` 64) is compared with 4-row minibatches of the training set,
    as the PyTorch reference computes them. A forget set drawn from the training distribution then
    selects few weights at alpha 10; the unequal comparison (4-row forget mean against 48-row
    training means: the squared mean's noise term is ~1/B) selects many times more, which is
    what collapsed SmolLM2 on TOFU's 4 forget rows."""
    from collections import namedtuple

    from jaxcl.loops import build_method, changed_fraction

    model, params, x, y = _problem()
    data = namedtuple("Data", "forget_set train_set")({"x": x[:4], "y": y[:4]}, {"x": x, "y": y})
    spec = get_method("ssd")
    hp = as_hparams(spec, {"alpha": 10.0, "lambda": 1.0})
    method = build_method(spec, model, hp, {"per_example": False, "exclude": (), "batch_size": 64})
    new = jax.jit(lambda p: method.edit(p, data, hp, jax.random.key(1)))(params)
    f_ref, d_ref = _torch_importance(params, x[:4], y[:4], 4), _torch_importance(params, x, y, 4)
    unequal = _torch_importance(params, x, y, 48)
    sel = sel_unequal = total = 0
    for k, p in _flat(params).items():
        p = np.asarray(p)
        s = f_ref[k] > 10.0 * d_ref[k]
        want = np.where(s, p * np.minimum(d_ref[k] / np.where(s, f_ref[k], 1.0), 1.0), p)
        np.testing.assert_allclose(np.asarray(_flat(new)[k]), want, rtol=1e-4, atol=1e-7)
        sel, total = sel + s.sum(), total + s.size
        sel_unequal += (f_ref[k] > 10.0 * unequal[k]).sum()
    assert float(changed_fraction(params, new)) == pytest.approx(sel / total, abs=1e-6)
    assert sel / total < 0.05 and sel_unequal > 3 * max(sel, 1), (sel, sel_unequal, total)
