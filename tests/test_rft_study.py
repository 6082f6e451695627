"""The rft-continual study end to end (tiny), its results, resuming an interrupted row from its
checkpoints, and bad configs."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxcl import config
from jaxcl.studies import rft


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rft") / "out")
    cfg = config.resolve(config.load("rft-continual", tiny=True))
    return cfg, out, rft.run(cfg, out, verbose=False)


def test_tiny_study_writes_results_and_plots(tiny_run):
    cfg, out, res = tiny_run
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["schema"] == "jaxcl-results/1" and saved["study"] == "rft"
    assert list(saved["rows"]) == list(cfg["rows"])
    assert {"accuracy_matrix.png", "accuracy_over_training.png"} <= set(saved["plots"])
    T, S = len(cfg["data"]["tasks"]), cfg["seeds"]
    for name, row in saved["rows"].items():
        R = np.asarray(row["R_per_seed"])
        assert R.shape == (S, T, T) and np.all((R >= 0) & (R <= 1))
        for k in ("acc", "bwt", "forgetting", "learning_acc", "corpus_nll_delta", "base_task_acc"):
            assert len(row["per_seed"][k]) == S and np.all(np.isfinite(row["per_seed"][k])), (name, k)
        np.testing.assert_allclose(row["per_seed"]["acc"], R[:, -1].mean(-1))  # ACC: last row of R
    # RL rows report rewards; the KL of the no-KL row is measured but not optimised
    assert "reward_trace_mean" in saved["rows"]["rft"] and "kl_trace_mean" in saved["rows"]["rft-nokl"]
    # the rows that differ only in traced values share their compiled programs
    assert set(res["study"]._programs) == {"sft", "rft"}


def test_resume_after_an_interruption_equals_the_uninterrupted_row(tiny_run):
    cfg, out, res = tiny_run
    row_dir = os.path.join(out, "checkpoints", "rft")
    steps = sorted(int(d) for d in os.listdir(row_dir) if d.isdigit())
    assert steps[-1] == 2 * len(cfg["data"]["tasks"])  # a checkpoint every 2 of the 4 iterations of a task
    shutil.rmtree(os.path.join(row_dir, str(steps[-1])))  # as if killed in the middle of the last task
    again = rft.run_row(
        res["study"],
        "rft",
        res["base_params"],
        res["keys"],
        ckpt_dir=os.path.join(out, "checkpoints"),
        resume=True,
    )
    want = json.load(open(os.path.join(out, "results.json")))["rows"]["rft"]
    np.testing.assert_array_equal(
        again["traces"]["loss"].mean(0), np.asarray(want["loss_trace_mean"], np.float32)
    )
    np.testing.assert_array_equal(
        again["traces"]["acc"].mean(0), np.asarray(want["acc_trace_mean"], np.float32)
    )


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.tasks=add,divide"], "data.tasks: unknown task 'divide'; valid: add"),
        (["grpo.group_size=1"], "group_size=1.*at least 2"),
        (["rows=sft,ppo"], "unknown row 'ppo'"),
        (["post.eval_every=3"], "multiple of post.eval_every=3"),
        (["data.corpus=wiki"], "data.corpus='wiki' is not valid"),
        (["post.checkpoint_every=3"], "checkpoint_every=3 must be 0"),
    ],
)
def test_bad_configs_are_clear_errors(sets, match):
    with pytest.raises(config.ConfigError, match=match):  # refused when resolved or validated
        rft.validate(config.resolve(config.load("rft-continual", tiny=True), sets))


def test_a_base_model_that_answers_nothing_warns_that_grpo_has_no_reward():
    """Zero base accuracy on every task and seed with an RL row: a verifiable reward is 0 for every
    rollout, so GRPO would silently leave the model unchanged (SmolLM2 zero-shot,
    results/studies/rft-continual-smollm2-nobase.json); the run says so. One correct answer, or
    SFT rows only, give no warning."""
    cfg = config.resolve(config.load("rft-continual", tiny=True), ["rows=sft,rft,mtl-sft"], study=rft.STUDY)
    zero = np.zeros((2, len(cfg["data"]["tasks"])))
    w = rft.no_reward_warning(cfg, zero)
    assert w and "rft" in w and "base.steps" in w and "sft," not in w
    one = zero.copy()
    one[1, 0] = 1 / 8
    assert rft.no_reward_warning(cfg, one) is None
    sft_only = config.resolve(config.load("rft-continual", tiny=True), ["rows=sft,mtl-sft"], study=rft.STUDY)
    assert rft.no_reward_warning(sft_only, zero) is None
