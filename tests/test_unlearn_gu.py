"""GU's projection (:func:`jaxcl.transforms.gu.project_out`; the methods are ``gu-<base>`` in
:mod:`jaxcl.methods.gu`): property tests.

The projected update is orthogonal to every kept retain gradient (and basis vector, rebuilt by
``basis_of`` from the state, which keeps no basis), projecting twice changes nothing, the basis is
orthonormal, ``retain_scale`` adds the scaled retain gradient, and the transform keeps dtypes
and tree structure, traces once and runs under vmap. Tolerances: float32, |dot| < 1e-4 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcl.transforms import gu, tree_dot

PARAMS = {"w": jnp.ones((6, 4)), "b": jnp.ones((3,)), "head": {"k": jnp.ones((4, 2))}}


def _rand_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def _feed(tx, n, seed=0):
    state = tx.init(PARAMS)
    retain, key = [], jax.random.key(seed)
    upd = jax.jit(tx.update)
    for _ in range(n):
        key, k1, k2 = jax.random.split(key, 3)
        r, g = _rand_like(k1, PARAMS), _rand_like(k2, PARAMS)
        out, state = upd(g, state, None, retain_grads=r)
        retain.append(r)
    return out, state, retain, g


def _leaf_dots(a, b):
    return [float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
@pytest.mark.parametrize("rank", [1, 3])
def test_projected_update_is_orthogonal_to_every_basis_vector_and_kept_gradient(mode, rank):
    tx = gu.project_out(rank=rank, mode=mode)
    out, state, retain, g = _feed(tx, 5)
    basis, _ = gu.basis_of(state, mode=mode)
    scale = float(jnp.sqrt(tree_dot(g, g)))
    for r in retain[-rank:]:  # the kept history
        dots = _leaf_dots(out, r) if mode == "per_tensor" else [float(tree_dot(out, r))]
        assert max(abs(d) for d in dots) < 1e-4 * scale * 10
    for k in range(rank):
        u = jax.tree.map(lambda b: b[k], basis)
        dots = _leaf_dots(out, u) if mode == "per_tensor" else [float(tree_dot(out, u))]
        assert max(abs(d) for d in dots) < 1e-5 * scale * 10
    # the basis is orthonormal (per leaf, or over the tree)
    if mode == "global":
        gram = np.array(
            [
                [
                    float(
                        tree_dot(
                            jax.tree.map(lambda b: b[i], basis),
                            jax.tree.map(lambda b: b[j], basis),
                        )
                    )
                    for j in range(rank)
                ]
                for i in range(rank)
            ]
        )
        np.testing.assert_allclose(gram, np.eye(rank), atol=1e-5)
    else:
        for b in jax.tree.leaves(basis):
            m = b.reshape(rank, -1)
            np.testing.assert_allclose(m @ m.T, np.eye(rank), atol=1e-5)


@pytest.mark.parametrize("mode", ["per_tensor", "global"])
def test_projecting_twice_changes_nothing(mode):
    tx = gu.project_out(rank=3, mode=mode)
    out, state, _, _ = _feed(tx, 4)
    twice = gu.project(out, *gu.basis_of(state, mode=mode), mode=mode)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(twice)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_retain_scale_adds_the_retain_gradient_and_first_step_removes_it():
    plain = gu.project_out(rank=2)
    g = _rand_like(jax.random.key(1), PARAMS)
    r = _rand_like(jax.random.key(2), PARAMS)
    a, _ = plain.update(g, plain.init(PARAMS), retain_grads=r)
    # retain_scale is a traced extra arg (a method's retain weight): one program for every value
    joint = jax.jit(lambda w: plain.update(g, plain.init(PARAMS), retain_grads=r, retain_scale=w)[0])
    for w in (1.0, 0.5):
        b = joint(w)
        for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(r)):
            np.testing.assert_allclose(y, x + w * z, atol=1e-6)
    # with r == g the forget update is entirely in the span: nothing is left
    c, _ = plain.update(g, plain.init(PARAMS), retain_grads=g)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(c)) < 1e-5


def test_preconditioned_update_is_orthogonal_to_retain_gradients():
    tx = gu.project_out(rank=2, preconditioned=True)
    out, state, retain, _ = _feed(tx, 3)
    for r in retain[-2:]:
        assert max(abs(d) for d in _leaf_dots(out, r)) < 1e-3


def test_rank_and_missing_args_are_refused():
    with pytest.raises(ValueError, match="rank"):
        gu.project_out(rank=0)
    with pytest.raises(ValueError, match="mode"):
        gu.project_out(mode="layer")
    hist = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), PARAMS)
    with pytest.raises(ValueError, match=r"rank=3 must be in \[1, H\] with H=2"):
        gu.basis_from_history(hist, 3)
    tx = gu.project_out()
    with pytest.raises(ValueError, match="retain_grads"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_basis_from_history_spans_the_history():
    hist = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), (4,) + p.shape), PARAMS)
    basis, valid = gu.basis_from_history(hist, 4, mode="global")
    g = _rand_like(jax.random.key(4), PARAMS)
    out = gu.project(g, basis, valid, mode="global")
    for i in range(4):
        assert abs(float(tree_dot(out, jax.tree.map(lambda h: h[i], hist)))) < 1e-3


def test_chain_with_optimizer_keeps_structure_dtypes_traces_once_and_vmaps():
    tx = optax.chain(gu.project_out(rank=2), optax.adam(1e-3))
    traces = []

    def step(params, state, g, r):
        traces.append(1)
        u, state = tx.update(g, state, params, retain_grads=r)
        return optax.apply_updates(params, u), state

    f = jax.jit(step)
    state = tx.init(PARAMS)
    p = PARAMS
    for i in range(3):
        p, state = f(
            p, state, _rand_like(jax.random.key(i), PARAMS), _rand_like(jax.random.key(10 + i), PARAMS)
        )
    assert len(traces) == 1
    assert jax.tree.structure(p) == jax.tree.structure(PARAMS)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(PARAMS)))
    # vmap over seeds: 3 independent parameter sets and gradients
    ps = jax.tree.map(lambda a: jnp.stack([a] * 3), PARAMS)
    gs = jax.vmap(lambda k: _rand_like(k, PARAMS))(jax.random.split(jax.random.key(0), 3))
    rs = jax.vmap(lambda k: _rand_like(k, PARAMS))(jax.random.split(jax.random.key(1), 3))
    states = jax.vmap(tx.init)(ps)
    out, _ = jax.jit(jax.vmap(step))(ps, states, gs, rs)
    one, _ = step(PARAMS, tx.init(PARAMS), jax.tree.map(lambda a: a[1], gs), jax.tree.map(lambda a: a[1], rs))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(one)):
        np.testing.assert_allclose(a[1], b, atol=1e-6)
