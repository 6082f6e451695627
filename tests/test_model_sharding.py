"""The ``model`` mesh axis: the FSDP placement rule, the ``--mesh seeds=S,data=D,model=M`` spec, and
(8 forced host devices, tests/scripts/model_sharding.py) the same numbers as one device with the
train state really sharded.

Bounds, measured on 8 forced host devices (load 5, XLA's optimisations off), each against the
data-parallel baseline (a mesh with model=1) and what a seed mix-up would change:

- MLP on Split Digits (ER, EWC): parameters within 1e-4 of one device (measured 1.9e-6 to 1.3e-5;
  data-only 9.7e-8), accuracies R within 1e-6 (measured 6e-8: the same predictions); exchanging
  the two seeds moves the parameters by 0.57. The model axis splits the contracting dimension of
  some matrix products, so their sums are added in another order, which Adam amplifies where a
  gradient is near 0.
- ViT (ER): parameters within 2e-2 (measured 4.3e-3; the data-only baseline already 3.5e-3:
  attention + Adam amplify any reordering), R within 1e-6 (measured 0); the seeds differ by 1.09.
- Llama (the lm-cpt runner, ER, 2 seeds): every held-out loss within 2e-4 (measured 5.3e-5 on
  2x1x4, 0 on 2x2x2; data-only 9.5e-7), against ~2.4 between the seeds (tests/test_mesh_agreement.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxcl import config, parallel
from jaxcl.studies import meshing

SCRIPT = Path(__file__).parent / "scripts" / "model_sharding.py"
ROOT = Path(__file__).parent.parent
TOL_MLP, TOL_VIT, TOL_R, TOL_LM = 1e-4, 2e-2, 1e-6, 2e-4


def test_fsdp_rule_shards_the_largest_dimension_the_axis_divides():
    assert parallel.fsdp_spec((64, 256), 8) == P(None, "model")
    assert parallel.fsdp_spec((256, 64), 8) == P("model", None)
    assert parallel.fsdp_spec((3, 3, 64, 64), 4) == P(None, None, "model", None)  # ties: the first
    assert parallel.fsdp_spec((100, 96), 8) == P(None, "model")  # 100 is not divisible by 8
    assert parallel.fsdp_spec((99, 101), 8) == P()  # nothing divisible: replicated
    assert parallel.fsdp_spec((512,), 8) == P()  # small (a bias): replicated
    assert parallel.fsdp_spec((64, 256), 1) == P()  # no model axis
    assert parallel.fsdp_spec((2, 64, 256), 4, leading="seeds") == P("seeds", None, "model")
    assert parallel.fsdp_spec((2, 512), 4, leading="seeds") == P("seeds")
    assert parallel.fsdp_spec((64, 256), 8, min_size=10**6) == P()


def test_state_sharding_gives_abstract_sharded_arguments():
    mesh = parallel.make_mesh(data=1)
    assert dict(mesh.shape) == {"seeds": 1, "data": 1, "model": 1}
    tree = {"w": jax.ShapeDtypeStruct((64, 256), "float32"), "b": jax.ShapeDtypeStruct((256,), "float32")}
    sh = parallel.state_sharding(tree, mesh)
    assert sh["w"].mesh == mesh and sh["w"].spec == P()  # model axis of 1: replicated
    abstract = jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), tree, sh)
    assert jax.jit(lambda t: t["w"] @ t["b"]).lower(abstract).compile() is not None
    assert parallel.state_sharding(tree, mesh, seeds=True)["w"].spec == P("seeds")


def test_mesh_spec_with_a_model_axis_and_its_errors():
    assert meshing.parse("seeds=2,data=2,model=2") == {"seeds": 2, "data": 2, "model": 2}
    assert meshing.complete({"model": 4}, 8) == {"seeds": 1, "model": 4, "data": 2}
    assert meshing.complete({"seeds": 2, "model": 4}, 8) == {"seeds": 2, "model": 4, "data": 1}
    for bad in ("model=x", "model=0", "model=2,model=2", "tensor=2"):
        with pytest.raises(config.ConfigError, match="--mesh"):
            meshing.parse(bad)
    with pytest.raises(config.ConfigError, match=r"seeds=1,data=2,model=2 needs 4 devices .* sees 8"):
        meshing.complete({"data": 2, "model": 2}, 8, "data=2,model=2")
    with pytest.raises(config.ConfigError, match="needs 3 devices and this process sees 1"):
        meshing.study_mesh({"study": "lm"}, "model=3")


def test_cli_refuses_a_mesh_that_does_not_match_the_devices_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "jaxcl.cli", "run", "lm-cpt", "--tiny", "--mesh", "seeds=1,model=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if "--mesh" in ln]
    assert len(lines) == 1 and "model=2 needs 2 devices" in lines[0], p.stderr[-2000:]


@pytest.fixture(scope="module")
def result():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(ROOT),
    }
    p = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("case", "tol"), [("mlp/er", TOL_MLP), ("mlp/ewc", TOL_MLP), ("vit/er", TOL_VIT)])
def test_classifiers_on_a_model_axis_match_one_device(result, case, tol):
    r = result["classifier"][case]
    assert r["seed_swap"] > 10 * tol, r  # a seed mix-up would be seen
    for mesh, row in r["rows"].items():
        assert row["params"] < tol and row["R"] < TOL_R, (case, mesh, row)
        m = int(mesh.split("x")[2])
        if m > 1:  # the parameters really lie sharded: one device holds about 1/m of them
            assert row["device_share"] < 1.5 / m, (case, mesh, row)
            assert any("model" in s for s in row["specs"]), row
            assert all(s.startswith("P('seeds'") for s in row["specs"]) == mesh.startswith("2x"), row


def test_the_method_states_are_sharded_and_the_program_all_gathers(result):
    assert result["all_gather_in_hlo"]
    for part in ("opt", "buffer"):  # Adam's moments, ER's buffer: 1/8 per device on model=8
        assert result["er_state"][part]["device_share"] < 0.2, result["er_state"]
        assert result["er_state"][part]["devices"] == 8


def test_llama_on_a_model_axis_matches_one_device(result):
    for mesh, r in result["lm"].items():
        assert r["n_values"] > 10, r
        assert r["maxdiff"] < TOL_LM, (mesh, r)
        m = int(mesh.split("x")[2])
        # the state after init and after each domain: sharded over seeds, and over model
        assert len(r["states"]) >= 3 and all(s["devices"] == 8 for s in r["states"]), r
        assert all(s["device_share"] < (1.5 / m if m > 1 else 0.51) for s in r["states"]), (mesh, r["states"])
