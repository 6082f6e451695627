"""Every study notebook runs on CPU with 8 forced host devices at the small size (its install cell
skipped), so a notebook that breaks fails CI; and the committed notebooks are what
``notebooks/make.py`` writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import make  # noqa: E402


def test_committed_notebooks_are_what_the_generator_writes():
    for name, nb in make.build().items():
        committed = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert [c["source"] for c in committed.cells] == [c["source"] for c in nb.cells], (
            f"notebooks/{name}.ipynb differs from notebooks/make.py: run python notebooks/make.py"
        )
        assert nb.cells[1].metadata["tags"] == ["install"] and 'JAXCL_SOURCE = ""\n' in nb.cells[1].source


def test_the_first_half_of_the_notebooks_runs_on_eight_host_devices(tmp_path):
    check_half(tmp_path, 0)


def check_half(tmp_path, part):
    """Every other notebook from the ``part``-th, in one subprocess: the halves are two files' tests
    (the second in tests/test_notebooks_second_half.py), run by the two workers at once."""
    names = sorted(make.build())[part::2]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "MPLBACKEND": "Agg"}
    env.pop("JAXCL_SOURCE", None)  # the install cells are tests/test_notebook_install.py's
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "run_notebooks.py"), str(tmp_path)]
        + [str(ROOT / "notebooks" / f"{n}.ipynb") for n in names],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    done = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            done[d["notebook"]] = d
    assert sorted(done) == [f"{n}.ipynb" for n in names]
    for d in done.values():
        assert d["rows"], d
        outs = [p for p in Path(d["cwd"]).iterdir() if p.is_dir()]
        assert all(any((o / png).exists() for o in outs) for png in d["plots"]), d
    if "quickstart.ipynb" in done:
        assert done["quickstart.ipynb"]["losses_shape"] == [8, 100]  # 8 seeds of the hand-made method
    # the continual-learning notebooks use the 8 devices: seeds x data
    for n in {"continual_learning.ipynb", "cl_zoo.ipynb"} & set(done):
        mesh = done[n]["mesh"]
        assert mesh is not None and mesh["seeds"] * mesh["data"] == 8, done[n]
    # every other study runner takes the mesh too (jaxcl.studies.meshing.study_mesh: the largest that
    # divides the tiny config's seeds and batch sizes)
    for n in (
        "unlearn_class",
        "tofu",
        "rft_continual",
        "lm_cpt",
        "lm_junk",
        "lm_facts",
        "restor",
        "sort",
        "mm_cit",
        "mm_domains",
    ):
        if f"{n}.ipynb" in done:
            assert done[f"{n}.ipynb"]["mesh"] is not None, done[f"{n}.ipynb"]
    if "lm_cpt.ipynb" in done:
        assert done["lm_cpt.ipynb"]["mesh"] == {"seeds": 2, "data": 4, "model": 1}, done["lm_cpt.ipynb"]
