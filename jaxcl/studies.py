"""The registry of studies that ``jaxcl run <study>`` knows.

A study registers a name, a one-line summary, ``add_args(parser)`` for its own command-line
options, and ``run(args) -> dict``. Common options every study gets: ``--method`` (repeatable),
``--seeds``, ``--tiny``, ``--out``. Study modules are imported lazily by name so that
``jaxcl list`` stays fast and a study's heavy imports load only when it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    summary: str
    run: Callable  # (argparse.Namespace) -> dict
    add_args: Callable | None = None  # (argparse.ArgumentParser) -> None
    methods: tuple = ()
    main: Callable | None = None  # (argv) -> Any: a study that parses its own arguments


STUDIES: dict[str, Study] = {}

# modules that register studies when imported; a module that fails to import (a missing optional
# dependency) only hides its own studies.
STUDY_MODULES = ["jaxcl.cl_study", "jaxcl.unlearn.study"]


def register_study(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


def _tofu_main(argv):
    from .tofu.cli import main

    return main(argv)


register_study(
    Study(
        "tofu",
        "TOFU LLM unlearning: GA/GradDiff/NPO/IDK, each with and without GU "
        "(--model smollm2-135m|tiny, --split forget01|05|10, --tiny)",
        run=None,
        main=_tofu_main,
    )
)


def load_all() -> dict[str, Study]:
    for mod in STUDY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith(mod.rsplit(".", 1)[0]) and e.name != mod:
                raise
    return STUDIES


def get_study(name: str) -> Study:
    load_all()
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]
