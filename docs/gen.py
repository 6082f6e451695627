"""Write the generated pages of the documentation: one page per method family from the registry
(so a method file that lands appears without editing the docs), the studies page from the
runners, and the notebooks as pages. Run by scripts/docs.sh before ``mkdocs build --strict``."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from jaxcl.methods import METHODS  # noqa: E402
from jaxcl.studies import STUDIES  # noqa: E402

FAMILIES = {
    "cl": ("Continual learning", "Methods for a stream of tasks, run by `jaxcl run <cl config>`."),
    "unlearn": ("Unlearning", "Methods that remove a forget set, run by `unlearn-class` and `tofu`."),
    "rl": (
        "Reinforcement fine-tuning",
        "Policy-gradient fine-tuning of a language model, run by `rft-continual`.",
    ),
}


def methods_pages() -> None:
    os.makedirs(os.path.join(HERE, "methods"), exist_ok=True)
    for kind, (title, text) in FAMILIES.items():
        lines = [f"# {title}", "", text, "", "| method | what it does | paper |", "|---|---|---|"]
        mods = []
        for name, spec in sorted(METHODS.items()):
            if spec.kind == kind or (spec.kind == "any" and kind != "rl"):
                lines.append(f"| `{name}` | {spec.summary} | {spec.paper or ''} |")
                mod = spec.build.__module__
                if mod not in mods:
                    mods.append(mod)
        lines.append("")
        for mod in mods:
            lines += [f"::: {mod}", ""]
        with open(os.path.join(HERE, "methods", f"{kind}.md"), "w") as f:
            f.write("\n".join(lines))


def studies_page() -> None:
    lines = [
        "# Studies",
        "",
        "A study is a config file in `experiments/` run by `jaxcl run CONFIG`: its defaults plus a",
        "schedule on the one driver.",
        "",
        "::: jaxcl.driver",
        "",
        "## Compiling for an accelerator (`jaxcl compile`)",
        "",
        "::: jaxcl.compile",
        "",
    ]
    for study, mod in STUDIES.items():
        lines += [
            f"## `{study}`",
            "",
            f"::: {mod}",
            "    options:",
            "      members: [STUDY, body, validate]",
            "",
        ]
    with open(os.path.join(HERE, "studies.md"), "w") as f:
        f.write("\n".join(lines))


def notebooks_page() -> None:
    nb_dir = os.path.join(os.path.dirname(HERE), "notebooks")
    lines = [
        "# Notebooks",
        "",
        "Open them in Colab (upload, or from your copy of the repository), pick a TPU or",
        "GPU runtime, set `JAXCL_SOURCE` in the first code cell to your copy of jaxcl (a wheel",
        "built by `bash scripts/build_wheel.sh` and uploaded, the git URL of your repository, or",
        "a checkout) and run all: that cell installs jaxcl, jax's plugin for the runtime and the",
        "data the notebook needs. Each is written by `notebooks/make.py`.",
        "",
    ]
    for fn in sorted(f for f in os.listdir(nb_dir) if f.endswith(".ipynb")):
        nb = json.load(open(os.path.join(nb_dir, fn)))
        lines += [f"## {fn}", ""]
        for c in nb["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] == "markdown":
                lines += [src.replace("# ", "### ", 1) if src.startswith("# ") else src, ""]
            else:
                lines += ["```python", src.rstrip(), "```", ""]
    with open(os.path.join(HERE, "notebooks.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    methods_pages()
    studies_page()
    notebooks_page()
