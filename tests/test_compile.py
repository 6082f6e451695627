"""``jaxcl compile``: every study that declares its programs compiles them for this CPU at its tiny
size, one row per program, and the programs follow the config (a doubled batch doubles the
one-step program's FLOPs)."""

from __future__ import annotations

import copy

from jaxcl import compile as C
from jaxcl import config
from jaxcl.studies import get_study


def _check(name: str, batch_key: str, *sets: str):
    """Compile ``name``'s tiny config (``sets``: ``--set`` overrides) for ``cpu``: one row per
    declared program, memory > 0, every program fits; then the first one-step program of a config
    with ``batch_key`` (that step's batch) doubled does about twice the work."""
    cfg = config.resolve(config.load(name, tiny=True), sets)
    study = get_study(cfg["study"])
    names = [p.name for p in study.programs(cfg, None)]
    res = study.compile(cfg, "cpu", mesh=None)
    assert list(res["rows"]) == names and len(set(names)) == len(names)
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
