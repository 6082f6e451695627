"""``jaxcl compile``: a study's programs compiled for a target without running them (issue 20).

The memory figures are checked against an independent count (the bytes of the abstract
arguments, per device after sharding), the fit check against a synthetic row, the CLI's errors
against their one-line messages; on Python 3.12 with ``libtpu`` the main job's tiny programs
compile for an abstract TPU v5e-8 with the seeds sharded (``JAXCL_TPU_COMPILER=required``, as
``scripts/test.sh`` sets it, fails instead of skipping when ``libtpu`` is missing).
"""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jaxcl import cli, compile, config
from jaxcl.studies import cl, get_study


def _nbytes(tree, per_device_split=None) -> int:
    """Bytes of the abstract leaves of ``tree``, each divided over its sharding's devices."""
    total = 0
    for a in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            item = 8  # a threefry key: two uint32
        else:
            item = np.dtype(a.dtype).itemsize
        n = int(np.prod(a.shape, dtype=np.int64)) * item
        shards = 1
        if a.sharding is not None and per_device_split:
            shards = int(np.prod([a.sharding.mesh.shape[ax] for ax in a.sharding.spec if ax]))
        total += n // shards
    return total


def _cfg(*sets):
    return config.resolve(config.load("split-fashion-mnist", tiny=True), ["methods=er", *sets])


def test_cli_compiles_the_main_job_for_this_cpu(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert (
        cli.main(
            [
                "compile",
                "split-fashion-mnist",
                "--tiny",
                "--set",
                "methods=er",
                "--target",
                "cpu",
                "--out",
                out,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "compiled for cpu" in text and "not a run" in text
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert list(res["rows"]) == ["er: the stream", "er: one step"]
    for r in res["rows"].values():
        a = r["analysis"]
        assert a["fits"] and a["total_bytes"] > 0 and a["flops"] > 0
        assert (
            a["total_bytes"]
            == a["arguments_bytes"]
            + a["outputs_bytes"]
            + a["temp_bytes"]
            + a["code_bytes"]
            - a["alias_bytes"]
        )


def test_argument_memory_is_the_abstract_arguments_bytes():
    """XLA's argument bytes equal the arguments' own bytes (the whole stream's program reads
    every argument; the one-step program drops the unused test sets), and grow with the seeds
    as the per-seed state does (an independent count from the shapes)."""
    got = {}
    for seeds in (2, 4):
        stream, step = cl.programs(_cfg(f"seeds={seeds}"), None)
        a = compile.analyse(stream, compile.target("cpu"), 1)
        unread = _nbytes(stream.args[1].task_classes)  # the one argument the run never reads
        assert _nbytes(stream.args) - a["arguments_bytes"] == unread, seeds
        a = compile.analyse(step, compile.target("cpu"), 1)
        got[seeds] = (a["arguments_bytes"], _nbytes(step.args[0]))
    # doubling the seeds adds exactly one more copy of the (per-seed) train states
    assert got[4][0] - got[2][0] == got[4][1] - got[2][1] == got[2][1]


def test_a_program_that_does_not_fit_is_one_line_naming_it():
    row = {"program": "gu-npo: one step", "total_bytes": 20 * 2**30, "hbm_bytes": 16 * 2**30, "fits": False}
    with pytest.raises(
        config.ConfigError,
        match=r"gu-npo: one step needs 20.00 GiB per device; a tpu-v5e-8 device has 16.00 GiB",
    ):
        compile.check_fits([row], compile.target("tpu-v5e-8"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "tpu-v9"], "--target 'tpu-v9' is not valid; valid: cpu, tpu-v2-8"),
        (["--size", "huge", "--target", "cpu"], "--size 'huge' is not valid; valid: tiny, default, accel"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(["compile", "split-fashion-mnist", "--tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_every_study_declares_its_programs_or_refuses_compile_by_name(capsys):
    from jaxcl.studies import STUDIES

    for name in STUDIES:
        study = get_study(name)
        if study.programs is None:
            with pytest.raises(config.ConfigError, match=f"the {name} study does not declare its programs"):
                study.refuse("compile")
        else:
            assert "compile" in study.verbs


def _tpu_compiler() -> bool:
    if importlib.util.find_spec("libtpu") is not None:
        return True
    if os.environ.get("JAXCL_TPU_COMPILER") == "required":
        pytest.fail("libtpu is not installed in this environment (pip install 'jax[tpu]')")
    pytest.skip("no libtpu here: the TPU compile checks run in the Python 3.12 environment")


def test_main_job_compiles_for_a_tpu_v5e_8_with_the_seeds_sharded():
    """On abstract TPU v5e-8 devices: every program compiles and fits; a device's arguments are
    at least the sharded arguments' bytes (the TPU pads arrays to its tiles), and splitting the
    4 seeds' states over a seeds axis of 2 lowers a device's share of the one-step program."""
    _tpu_compiler()
    t = compile.target("tpu-v5e-8")
    devs = compile.devices(t)
    assert len(devs) == 8 and "v5" in devs[0].device_kind.lower()
    from jaxcl.studies import meshing

    cfg = _cfg("seeds=4", "loop.batch_size=8")
    args = {}
    for spec in ("seeds=2,data=4", "seeds=1,data=8"):
        mesh = meshing.study_mesh(cfg, spec, devices=devs)
        for p in cl.programs(cfg, mesh):
            a = compile.analyse(p, t, len(devs))
            assert a["fits"] and a["hbm_bytes"] == 16 * 2**30, p.name
            assert a["roofline_s"] and a["roofline_s"] > 0
            unread = _nbytes(p.args[1].task_classes)
            assert a["arguments_bytes"] >= _nbytes(p.args, per_device_split=True) - unread, p.name
            args[spec, p.name] = a["arguments_bytes"]
    assert args["seeds=2,data=4", "er: one step"] < args["seeds=1,data=8", "er: one step"]


@pytest.mark.parametrize("name", ["lm-facts", "mm-cit"])
def test_an_initialisation_puts_each_seeds_state_on_its_own_devices(name):
    """The init program's outputs (a train state per seed, the pretrained weights broadcast to
    every seed in lm-facts) come out sharded over ``seeds`` as the train call takes them, not
    replicated: a device holds its seeds' share of the state (1573 MiB per v5e chip for
    SmolLM2-135M at 8 seeds, 12586 MiB when it came out replicated)."""
    _tpu_compiler()
    from jaxcl.studies import meshing

    t = compile.target("tpu-v5e-8")
    devs = compile.devices(t)
    cfg = config.load(name, tiny=True)
    study = get_study(cfg["study"])
    cfg = config.resolve(cfg, ["seeds=2"] + (["methods=er"] if name == "mm-cit" else []), study=study)
    mesh = meshing.study_mesh(cfg, "auto", devices=devs)
    assert mesh.shape["seeds"] == 2
    (init,) = [p for p in study.programs(cfg, mesh) if p.name.endswith("init")]
    compiled = init.fn.lower(*init.args).compile()
    out = jax.tree.leaves(compiled.output_shardings)
    assert out and all(s.spec and s.spec[0] == "seeds" for s in out), [s.spec for s in out][:5]


def test_a_run_on_an_accelerator_compiles_and_checks_its_programs_first(tmp_path, capsys, monkeypatch):
    """``jaxcl run`` makes the compile check on its own devices before running where it is on an
    accelerator (JAXCL_PREFLIGHT=1 makes it on this CPU); the run's numbers do not change."""
    args = ["run", "split-fashion-mnist", "--tiny", "--set", "methods=er", "--no-checkpoint"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    monkeypatch.setenv("JAXCL_PREFLIGHT", "1")
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    checked = capsys.readouterr().out
    assert "compiled for cpu" not in first and "compiled for cpu" in checked and "er: one step" in checked
    acc = lambda d: json.load(open(tmp_path / d / "results.json"))["rows"]["er"]["per_seed"]["acc"]  # noqa: E731
    assert acc("a") == acc("b")
