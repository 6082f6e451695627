"""mm-cit's reinforcement fine-tuning rows (``grpo``, with and without its KL): every row starts
from the same base model (``train.base_steps``), GRPO's KL reference is the model at each task's
start (the base model on the first task), and the settings that cannot work are one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl import cli, config
from jaxcl.loops import seeds_keys
from jaxcl.studies import mm_cit

SETS = ["methods=grpo,finetune", "train.base_steps=2", "grpo.group_size=2", "grpo.max_new_tokens=10"]


def tiny(*sets):
    return config.resolve(config.load("mm-cit", tiny=True), [*SETS, *sets])


def test_tiny_rft_run_starts_every_row_from_the_base_model(tmp_path):
    out = tmp_path / "o"
    args = ["run", "mm-cit", "--tiny", "--out", str(out)]
    assert cli.main(args + [a for s in SETS for a in ("--set", s)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"grpo", "finetune"}
    base = np.asarray(res["extra"]["base_acc_mean"])
    assert base.shape == (3,) and res["extra"]["base_seconds"] > 0
    for row in res["rows"].values():
        np.testing.assert_allclose(row["b_mean"], base, atol=1e-6)  # the accuracy every row starts at
        A = np.asarray(row["A_per_seed"])
        assert A.shape == (2, 3, 3) and ((A >= 0) & (A <= 1)).all()


def test_grpo_reference_is_the_model_at_each_tasks_start():
    cfg = tiny()
    train, ev = mm_cit.build_tasks(cfg)
    data = {"train": train, "eval": ev}
    model = mm_cit.model_of(cfg, train["image"].shape[2:])
    keys = seeds_keys(0, 2)
    base, _ = mm_cit.train_base(cfg, model, data, keys)
    prog = mm_cit.make_program(cfg, model, "grpo")
    c = mm_cit.calls(prog, cfg)
    assert "end" not in c  # the reference moves at a task's start, not after its end
    at = lambda t: {**data, "t": jnp.int32(t)}  # noqa: E731
    state = c["init"](keys, base, at(0))
    jax.tree.map(np.testing.assert_array_equal, state.params, base)
    after0, _ = c["task"](state, at(0))
    ref = after0.data_state["params"]
    jax.tree.map(np.testing.assert_array_equal, ref, base)  # task 0's reference: the base model
    np.testing.assert_array_equal(after0.data_state["on"], 1.0)
    moved = max(
        float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(after0.params), jax.tree.leaves(base))
    )
    assert moved > 0
    after1, _ = c["task"](after0, at(1))
    jax.tree.map(np.testing.assert_array_equal, after1.data_state["params"], after0.params)


def one_line_exit_2(capsys, tmp_path, sets, *words):
    args = ["run", "mm-cit", "--tiny", "--out", str(tmp_path)] + [a for s in sets for a in ("--set", s)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


def test_rft_settings_that_cannot_work_are_one_line_errors(capsys, tmp_path):
    no_base = [s for s in SETS if not s.startswith("train.base_steps")]
    one_line_exit_2(capsys, tmp_path, no_base, "train.base_steps", "reward")
    one_line_exit_2(capsys, tmp_path, SETS + ["grpo.max_new_tokens=3"], "grpo.max_new_tokens")
    one_line_exit_2(capsys, tmp_path, SETS + ["model.lora.rank=2"], "model.lora.rank")
    one_line_exit_2(capsys, tmp_path, SETS + ["train.base_steps=3"], "train.base_steps")
