"""Mesh specs parsed and checked before anything is computed. The studies on a mesh (8 forced
host devices: numbers, sharding, refusals) are in tests/test_mesh_agreement.py."""

import pytest

from jaxcl import config
from jaxcl.studies import lm, meshing


def test_mesh_specs_are_parsed_and_checked_before_compute():
    assert meshing.parse("seeds=2,data=4") == {"seeds": 2, "data": 4}
    assert meshing.parse("data=2") == {"data": 2}
    for bad in ("seeds=2,foo=1", "seeds=x", "seeds=2,seeds=2", "auto2", "data=0"):
        with pytest.raises(config.ConfigError, match="--mesh"):
            meshing.parse(bad)
    cfg = config.resolve(config.load("lm-cpt", tiny=True), [], study=lm.STUDY)
    assert meshing.batch_sizes(cfg) == {"train.batch_size": cfg["train"]["batch_size"]}
    assert meshing.study_mesh(cfg, None) is None and meshing.study_mesh(cfg, "none") is None
    assert meshing.study_mesh(cfg, "auto") is None  # one device here: no mesh
