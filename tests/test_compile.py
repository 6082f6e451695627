"""``jaxcl compile``: every study that declares its programs compiles them for this CPU at its tiny
size, one row per program, and the programs follow the config (a doubled batch doubles the
one-step program's FLOPs)."""

from __future__ import annotations

import copy

import jax
import pytest

from jaxcl import compile as C
from jaxcl import config
from jaxcl.studies import get_study


def _check(name: str, batch_key: str, *sets: str):
    """Compile ``name``'s tiny config (``sets``: ``--set`` overrides) for ``cpu``: one row per
    declared program, memory > 0, every program fits; then the first one-step program of a config
    with ``batch_key`` (that step's batch) doubled does about twice the work."""
    cfg = config.resolve(config.load(name, tiny=True), sets)
    study = get_study(cfg["study"])
    progs = study.programs(cfg, None)
    names = [p.name for p in progs]
    res = study.compile(cfg, "cpu", mesh=None)
    assert list(res["rows"]) == names and len(set(names)) == len(names)
    # the programs declared for their figures only (a run never calls them) are the one-step ones
    assert [p.name for p in progs if not p.called] == [n for n in names if n.endswith("one step")] != []
    for row in res["rows"].values():
        a = row["analysis"]
        assert a["total_bytes"] > 0 and a["fits"] and a["flops"] > 0, a
    one = next(n for n in names if n.endswith("one step"))
    small = res["rows"][one]["analysis"]
    big = copy.deepcopy(cfg)
    sec, key = batch_key.split(".")
    big[sec][key] *= 2
    prog = next(p for p in study.programs(big, None) if p.name == one)
    grown = C.analyse(prog, C.target("cpu"), 1)
    # the step's work follows the batch (about twice the FLOPs); its memory is not checked here:
    # XLA's buffer assignment may even shrink a tiny model's temporaries at a larger batch
    # (unlearn-class's GA step: 1.2 MB -> 0.8 MB), and the argument bytes are checked against an
    # independent count in tests/test_compile_check.py
    assert grown["flops"] > 1.5 * small["flops"], (grown["flops"], small["flops"])


def test_programs_lm_cpt():
    _check("lm-cpt", "train.batch_size", "rows=er", "methods=er")


def test_programs_lm_memory():
    _check("lm-facts", "train.batch_size")


def test_programs_sort():
    _check("sort", "train.batch_size")


def test_programs_lm_junk():
    _check("lm-junk", "base.batch_size")


def test_programs_restor():
    _check("restor", "train.batch_size", "methods=gu-npo")


def test_programs_muse():
    _check("muse", "train.batch_size")


def test_programs_cl_zoo():
    _check("cl-zoo", "loop.batch_size", "methods=er", "benchmarks=mnist1d-class-il")


def test_programs_cl_order():
    _check("cl-order", "loop.batch_size", "methods=er")


def test_programs_unlearn_class():
    _check("unlearn-class", "unlearn.batch_size", "methods=ga")


def test_programs_tofu():
    _check("tofu", "train.batch_size", "methods=npo")


def test_programs_rft_continual():
    _check("rft-continual", "post.batch_size")


def test_programs_mm_cit():
    _check("mm-cit", "train.batch_size", "methods=er")


def test_the_fit_check_compiles_what_a_run_calls_and_each_program_once():
    """CI's fit check (``called_only``) leaves out the one-step programs; a program compiled
    before (``seen``) is not compiled again and gets the first one's figures, whatever its name."""
    cfg = config.resolve(config.load("unlearn-class", tiny=True), ["methods=ga"])
    study = get_study(cfg["study"])
    progs = study.programs(cfg, None)
    seen = {}
    called = study.compile(cfg, "cpu", mesh=None, called_only=True, seen=seen)["rows"]
    assert list(called) == [p.name for p in progs if p.called] and 0 < len(called) < len(progs)
    assert len(seen) == len(called) and not any("same_as" in r["analysis"] for r in called.values())
    full = study.compile(cfg, "cpu", mesh=None, seen=seen)["rows"]
    assert list(full) == [p.name for p in progs] and len(seen) == len(progs)
    for name, row in full.items():
        a = row["analysis"]
        if name in called:  # compiled once, in the first call
            assert a["same_as"] == name and a == {**called[name]["analysis"], "same_as": name}
        else:
            assert "same_as" not in a and a["total_bytes"] > 0
    # a program under another name (the same function on the same arguments) is found too
    again = C.analyse(C.Program("renamed", progs[0].fn, progs[0].args), C.target("cpu"), 1, seen)
    assert again["same_as"] == progs[0].name and again["flops"] == full[progs[0].name]["analysis"]["flops"]


def test_the_fit_cache_gives_a_programs_figures_without_compiling_and_misses_a_changed_program(
    tmp_path, monkeypatch
):
    """scripts/compile_check.py's committed cache: a program with the same lowered text, target,
    devices and versions gets the figures saved before (``cached``) and is not compiled; a program
    whose text changed (another batch size) has another key and is compiled, one the change does not
    touch keeps its key."""
    cfg = config.resolve(config.load("unlearn-class", tiny=True), ["methods=ga"])
    study = get_study(cfg["study"])
    seen = {}
    first = study.compile(cfg, "cpu", mesh=None, called_only=True, seen=seen)["rows"]
    path = str(tmp_path / "fit-cache-cpu.json")
    C.save_fit_cache(path, seen, [r["analysis"]["key"] for r in first.values()])
    cache = C.load_fit_cache(path)
    assert set(cache) == set(seen) and all(r["cached"] for r in cache.values())

    def no_compile(*a, **k):
        raise AssertionError("a cached program was compiled")

    monkeypatch.setattr(jax.stages.Lowered, "compile", no_compile)
    again = study.compile(cfg, "cpu", mesh=None, called_only=True, seen=dict(cache))["rows"]
    for name, row in again.items():
        a, b = row["analysis"], first[name]["analysis"]
        assert a["cached"] and a["key"] == b["key"]
        assert {k: a[k] for k in ("total_bytes", "temp_bytes", "flops", "fits")} == {
            k: b[k] for k in ("total_bytes", "temp_bytes", "flops", "fits")
        }
    other = config.resolve(config.load("unlearn-class", tiny=True), ["methods=ga", "train.batch_size=4"])
    assert other["train"]["batch_size"] != cfg["train"]["batch_size"]
    t = C.target("cpu")
    keys = {p.name: C.program_key(p.fn.lower(*p.args), t, 1) for p in study.programs(other, None) if p.called}
    # training's batch changed its programs; the unlearning phase (its own batch) is the same program
    assert keys["train the original"] not in cache and keys["train the oracle"] not in cache
    assert keys["ga (15 steps)"] in cache
    assert C.compiler_versions().startswith(f"jax {jax.__version__} ")
    # scripts/compile_check.py's VERIFY: a fresh compile that differs from the cache is seen
    row = first["train the original"]["analysis"]
    assert C.stale(cache[row["key"]], row) == []
    assert C.stale({**cache[row["key"]], "temp_bytes": row["temp_bytes"] + 1}, row) == ["temp_bytes"]
    assert C.stale({**row, "flops": float("nan")}, {**row, "flops": float("nan")}) == []


def _compile_checks():
    """scripts/compile_check.py's CHECKS (the script is not a module of the package)."""
    import importlib.util
    import os

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "compile_check.py"
    )
    spec = importlib.util.spec_from_file_location("compile_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CHECKS


def test_every_accelerator_size_is_valid_and_compile_checked():
    """Every config with ``get_config(size="accel")`` resolves and passes its study's checks, is
    compiled for a v5e-8 by scripts/compile_check.py (a check that must fit) and the language
    models are SmolLM2-135M or larger, pretrained or of its shape."""
    from jaxcl.models import llama, lm

    smol = llama.smollm2_135m()
    checked = {cfg_name for _, cfg_name, size, _, _, fits in _compile_checks() if size == "accel" and fits}
    accel = []
    for name in config.available():
        try:
            cfg = config.load(name, size="accel")
        except config.ConfigError as e:
            assert "has no accelerator size" in str(e), e
            continue
        accel.append(name)
        study = get_study(cfg["study"])
        cfg = config.resolve(cfg, [], study=study)
        study.validate(cfg)
        assert name in checked, f"{name}: its accelerator size is not in scripts/compile_check.py's CHECKS"
        m = cfg["model"]
        if "d_model" in m:  # a language model, or a VLM's decoder (from scratch: no name)
            name_ = m.get("name", "scratch")
            names = name_ if isinstance(name_, (list, tuple)) else (name_,)
            for n in names:
                if n in lm.SHAPES:
                    assert lm.SHAPES[n]().d_model >= smol.d_model, (name, n)
                else:
                    assert n == "scratch" and (m["d_model"], m["n_layers"], m["d_ff"]) == (
                        smol.d_model,
                        smol.n_layers,
                        smol.d_ff,
                    ), (name, m)
    for name in (
        "unlearn-class",
        "lm-cpt",
        "lm-facts",
        "sort",
        "lm-junk",
        "restor",
        "rft-continual",
        "tofu",
        "mm-cit",
    ):
        assert name in accel, f"{name} has no accelerator size"


def test_unlearn_class_accel_is_cifar10_shapes_and_refuses_to_run_without_the_data(tmp_path, monkeypatch):
    """The accelerator size's programs take CIFAR-10's shapes (every example, 32x32x3) without
    the data; loading it where it is not is one line naming where to put it."""
    from jaxcl import hf
    from jaxcl.data.loaders import DatasetNotFoundError
    from jaxcl.unlearn.classifier import load_problem

    cfg = config.resolve(config.load("unlearn-class", size="accel"), ["methods=ga"])
    train = get_study(cfg["study"]).programs(cfg, None)[0]
    x = train.args[1].x_retain  # the original's training set: every CIFAR-10 training image
    assert x.shape == (50000, 32, 32, 3), x.shape
    monkeypatch.setenv("JAXCL_DATA", str(tmp_path))

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(hf, "load_hub_dataset", offline)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 not found .*\$JAXCL_DATA/cifar10"):
        load_problem(cfg)
