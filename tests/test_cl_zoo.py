"""The cl-zoo study end to end (tiny: DER++ and iCaRL, whose evaluation goes through
``Method.predict``, on Split-Fashion-MNIST and Split-MNIST-1D), its bad configs, and the MNIST-1D
loader."""

import json

import numpy as np
import pytest

from jaxcl import cli, config
from jaxcl.data import loaders
from jaxcl.studies import cl_zoo


def test_tiny_zoo_end_to_end(tmp_path):
    out = tmp_path / "zoo"
    assert cli.main(["run", "cl-zoo", "--tiny", "--out", str(out)]) == 0
    res = json.load(open(out / "results.json"))
    assert set(res["rows"]) == {
        f"{b}/{m}" for b in ("fmnist-class-il", "mnist1d-class-il") for m in ("derpp", "icarl")
    }
    for b in ("fmnist-class-il", "mnist1d-class-il"):  # the rank rule: tests/test_cl_zoo_rank.py
        assert (out / b / "results.json").exists()
    assert (out / "zoo.png").stat().st_size > 1000
    assert set(res["extra"]["mean_rank"]) == {"derpp", "icarl"}
    # iCaRL's nearest-mean classifier answers from its exemplars: old tasks stay above chance (50% per task)
    R = np.asarray(res["rows"]["fmnist-class-il/icarl"]["R_mean"])
    assert R[-1, 0] > 0.5 and np.all(
        np.asarray(res["rows"]["fmnist-class-il/icarl"]["summary"]["acc"]["mean"]) > 0.3
    )
    sub = cl_zoo.sub_config(config.resolve(config.load("cl-zoo", tiny=True)), "fmnist-task-il")
    assert sub["data"]["scenario"] == "task-incremental" and sub["derpp"]["capacity"] == 100


def test_default_zoo_has_every_cl_method_and_one_buffer():
    cfg = config.resolve(config.load("cl-zoo"))
    assert (
        set(cfg["methods"]) == set(cl_zoo.all_cl_methods()) >= {"si", "mas", "der", "derpp", "gem", "icarl"}
    )
    sub = cl_zoo.sub_config(cfg, "fmnist-class-il")
    assert {sub[m]["capacity"] for m in cfg["methods"] if "capacity" in sub[m]} == {cfg["buffer"]}


@pytest.mark.parametrize(
    "sets, message",
    [
        (["benchmarks=nope"], "unknown benchmark 'nope'"),
        (["buffer=0"], "buffer=0 must be a positive integer"),
        (["buffer=5", "methods=gdumb"], "buffer=5 is smaller than the 10 classes"),
    ],
)
def test_bad_zoo_configs(capsys, tmp_path, sets, message):
    argv = ["run", "cl-zoo", "--tiny", "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_mnist1d_is_made_locally_and_quantised():
    d = loaders.load("mnist-1d", n=500)
    assert d.x_train.shape[1:] == (40, 1, 1) and d.x_train.dtype == np.uint8
    assert len(d.x_train) + len(d.x_test) == 500 and d.n_classes == 10
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 500
    raw = make_dataset(args)["x"]
    np.testing.assert_allclose(d.x_train[:, :, 0, 0] / 255.0 * 12.0 - 6.0, raw, atol=12 / 255)
