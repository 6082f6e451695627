"""The task-order study: every order x seed in one program equals running that order's stream on
its own through the library (an independent path: the stream permuted on the host, then
``loops.run_seeds``), and the order changes the result (the study's central quantity)."""

import json

import jax
import numpy as np

from jaxcl import cli, config
from jaxcl import metrics as M
from jaxcl.data import streams
from jaxcl.loops import Experiment, LoopConfig, run_seeds, seeds_keys
from jaxcl.methods import get_method
from jaxcl.models import from_config
from jaxcl.studies import cl_order


def test_orders_in_one_program_equal_each_order_run_alone(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["run", "cl-order", "--tiny", "--method", "finetune", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    cfg = config.resolve(config.load("cl-order", tiny=True), ["methods=finetune"])
    perms = cl_order.orders(cfg)
    assert res["extra"]["orders"] == perms.tolist() and (perms[0] == np.arange(5)).all()
    assert len({tuple(p) for p in perms}) == len(perms)  # distinct orders

    d = {**cfg["data"], "max_train_per_task": 0, "max_test_per_task": 0}
    base = streams.from_config(d, cfg["seed"])
    model = from_config(cfg["model"], base.input_shape, base.n_classes)
    exp = Experiment(model, get_method("finetune", "cl"), LoopConfig(**cfg["loop"]))
    acc = []
    for perm in perms:
        stream = jax.tree.map(lambda a: np.asarray(a)[perm], base)
        o = run_seeds(exp, stream, exp.default_hparams(), seeds_keys(cfg["seed"], cfg["seeds"]))
        per = M.per_seed(np.asarray(o["R"]), np.asarray(o["R0"]), np.asarray(o["trace"]["acc"]))
        acc.append([p["acc"] for p in per])
    acc = np.asarray(acc)  # (orders, seeds)
    row = res["rows"]["finetune"]
    np.testing.assert_allclose(row["per_seed"]["acc"], acc.ravel(), atol=1e-6)
    np.testing.assert_allclose(row["acc_per_order"], acc.mean(1), atol=1e-6)
    # the study's point: fine-tuning's final accuracy depends on which task comes last
    assert min(row["per_seed"]["order_range"]) > 0.02
    assert (out / "orders.png").exists()
