"""Conformance tests generated from the method registry (as optax's alias_test.py runs every
optimizer through one table of checks): for every registered method, on a tiny problem, the step
(or edit) is pure, jit equals no jit, two seeds batched equal two separate runs, the train state
round-trips through a checkpoint, losses stay finite, and one step matches a stored golden value
(so an accidental change of any method shows). ``JAXCL_UPDATE_GOLDEN=1`` rewrites the golden
files after an intended change; say why in the commit."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxcl import grpo, tasks
from jaxcl.checkpoint import Checkpointer
from jaxcl.engine import init_state, make_step
from jaxcl.hf import ByteTokenizer
from jaxcl.loops import Phase, PhaseConfig, as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.methods import grpo as grpo_method
from jaxcl.models import llama, mlp
from jaxcl.studies.tofu import lm_model
from jaxcl.unlearn.common import UnlearnData

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "methods")
MODEL = mlp((4, 4, 1), 3, hidden=(8,))


@struct.dataclass
class WithAlternatives(UnlearnData):
    """The classifier problem plus alternative targets for the forget examples (what IDK's
    refusal answers are for a language model)."""

    def draw(self, key, n):
        b = super().draw(key, n)
        return {**b, "forget_alt": {"x": b["forget"]["x"], "y": (b["forget"]["y"] + 1) % 3}}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(0, 256, (48, 4, 4, 1)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, 3, 48), jnp.int32)
    f = y == 0
    return WithAlternatives(x, y, x[~f], y[~f], x[f], y[f], x[:8], y[:8], x[f][:4], y[f][:4])


PROBLEM = _data()
CL_BATCH = {  # 32 rows: EWC's Fisher runs in chunks of 32
    "x": PROBLEM.x_train[:32],
    "y": PROBLEM.y_train[:32],
    "t": jnp.zeros((32,), jnp.int32),
    "mask": jnp.ones((32, 3), bool),
}


# reinforcement fine-tuning (kind "rl"): a 1-layer byte-level Llama, 2 prompts x 2 completions of
# 3 tokens, rewarded by the fraction of ASCII tokens (dense, so one iteration moves the policy)
RL_CFG = llama.tiny(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=32)
RL_MODEL = lm_model(RL_CFG, "tiny")
RL_PROMPTS = {
    k: jnp.asarray(v)
    for k, v in tasks.encode_prompts(
        ByteTokenizer(), tasks.generate("add", 4, digits=1), prompt_len=8, answer_width=3
    ).items()
}
RL_ENV = grpo.Env(lambda c, m, r: (c < 128).mean(-1).astype(jnp.float32), 258, 256)


def rl_one_step(spec, key):
    """One RL iteration (rollout + mu updates) of an RL method from fixed parameters."""
    hp = as_hparams(spec)
    _, opts = spec.split({"group_size": 2, "max_new_tokens": 3})
    method = build_method(spec, RL_MODEL, hp, opts)
    params = RL_MODEL.init(jax.random.key(0))
    prompts = jax.tree.map(lambda a: a[: grpo_method.prompt_rows(opts, 2)], RL_PROMPTS)
    ex = grpo.example_batch(prompts, group_size=2, max_new_tokens=3, pad_id=256)
    ex = jax.tree.map(lambda a: a[:4], ex)
    state = init_state(params, method.tx, key, method.data, ex)
    state = method.consolidate(state, ex, key)
    state, metrics = grpo.make_iteration(method, RL_ENV)(state, prompts)
    return state.params, metrics, state


def init_params(name: str):
    return (RL_MODEL if METHODS[name].kind == "rl" else MODEL).init(jax.random.key(0))


def one_step(name: str, key):
    """One step (or the edit) of method ``name`` from fixed parameters: ``(params, metrics, state)``."""
    spec = METHODS[name]
    if spec.kind == "rl":
        return rl_one_step(spec, key)
    hp = as_hparams(spec)
    _, opts = spec.split({})
    method = build_method(spec, MODEL, hp, opts)
    params = MODEL.init(jax.random.key(0))
    if not method.trains:
        return method.edit(params, PROBLEM, hp, key), {}, None
    batch = CL_BATCH if spec.kind == "cl" else PROBLEM.draw(jax.random.key(3), 6)
    state = init_state(params, method.tx, key, method.data, batch)
    if method.consolidate is not None:
        state = method.consolidate(state, batch, key)  # CL: as after a first task; unlearning: the start
    step = make_step(method.loss_fn, method.tx, method.data, extra_args=method.extra_args)
    state, metrics = step(state, batch)
    return state.params, metrics, state


NAMES = sorted(METHODS)
JIT_ONE_STEP = jax.jit(one_step, static_argnums=0)  # one compiled program per method, shared by the tests


@pytest.mark.parametrize("name", NAMES)
def test_step_is_pure_jit_equals_eager_and_finite(name):
    key = jax.random.key(1)
    p1, m1, _ = one_step(name, key)
    p2, m2, _ = one_step(name, key)
    p3, m3, _ = JIT_ONE_STEP(name, key)
    for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), jax.tree.leaves(p3)):
        np.testing.assert_array_equal(a, b)  # pure: same inputs, same outputs
        np.testing.assert_allclose(a, c, rtol=2e-5, atol=1e-6)  # jit equals no jit
        assert np.all(np.isfinite(a))
    for k, v in m1.items():
        assert np.all(np.isfinite(np.asarray(v))), (name, k)
    moved = sum(
        float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(init_params(name)))
    )
    assert moved > 0, f"{name} changed nothing"


@pytest.mark.parametrize("name", NAMES)
def test_two_seeds_batched_equal_separate_runs(name):
    spec = METHODS[name]
    kind = "unlearn" if spec.kind not in ("cl", "rl") else "cl"
    if kind == "cl":
        keys = jax.random.split(jax.random.key(5), 2)
        batched = jax.jit(jax.vmap(lambda k: one_step(name, k)[0]))(keys)
        for i in range(2):
            single = JIT_ONE_STEP(name, keys[i])[0]
            for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
                np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-6)
        return
    _, opts = spec.split({})
    if "rank" in opts:
        opts["rank"] = 2
    phase = Phase(MODEL, spec, PhaseConfig(steps=4, batch_size=6, eval_every=2, eval_size=8), **opts)
    params = MODEL.init(jax.random.key(0))
    hp = as_hparams(spec)
    keys = jax.random.split(jax.random.key(5), 2)
    run = jax.jit(lambda k: phase.run(params, k, PROBLEM, hp)["params"])
    batched = jax.jit(jax.vmap(lambda k: phase.run(params, k, PROBLEM, hp)["params"]))(keys)
    for i in range(2):
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(run(keys[i]))):
            np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if METHODS[n].hparams.get("lr") is not None and n not in ("iau",)]
)
def test_train_state_round_trips_through_a_checkpoint(name, tmp_path):
    _, _, state = one_step(name, jax.random.key(2))
    ck = Checkpointer(str(tmp_path / name), {"method": name})
    ck.save(1, {"state": state}, {})
    restored, _ = ck.restore_latest({"state": state})
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored["state"])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _golden_value(name):
    params, _, _ = one_step(name, jax.random.key(1))
    leaves = jax.tree.leaves(params)
    return [float(sum(jnp.sum(a) for a in leaves)), float(sum(jnp.sum(a * a) for a in leaves))]


@pytest.mark.parametrize("name", NAMES)
def test_golden_one_step_values(name):
    """One file per method (``tests/golden/methods/<name>.json``), so methods added side by side
    never touch the same golden file."""
    got = _golden_value(name)
    path = os.path.join(GOLDEN, f"{name}.json")
    if os.environ.get("JAXCL_UPDATE_GOLDEN") or not os.path.exists(path):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            json.dump(got, f, indent=1)
            f.write("\n")
        if not os.environ.get("JAXCL_UPDATE_GOLDEN"):
            pytest.fail(f"no golden value for {name!r}; wrote {path}: commit it")
    want = json.load(open(path))
    np.testing.assert_allclose(
        got,
        want,
        rtol=1e-4,
        err_msg=f"one step of {name!r} changed behaviour; if intended, rerun with JAXCL_UPDATE_GOLDEN=1",
    )


def test_no_golden_values_of_unregistered_methods():
    stale = sorted(set(f[: -len(".json")] for f in os.listdir(GOLDEN)) - set(NAMES))
    assert not stale, f"golden values of methods no longer registered: {stale}; delete them from {GOLDEN}"
