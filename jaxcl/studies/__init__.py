"""Study runners: what ``jaxcl run CONFIG`` does with a config, by its ``study`` key.

A runner module declares ``DEFAULTS`` (its config sections: every key, its default and so its
type), ``validate(cfg)`` (checks of a resolved config, before anything is compiled),
``run(cfg, out, *, resume=False, fresh=False, tensorboard=False, verbose=True) -> results`` and
``sweep(cfg, grid, *, chunk=None, out=None, verbose=True) -> results`` (a grid of traced
hyperparameters x seeds as one program). Every runner trains through :mod:`jaxcl.loops` and
writes through :mod:`jaxcl.results`. Modules are imported when first used.
"""

from __future__ import annotations

import importlib

RUNNERS = {
    "cl": "jaxcl.studies.cl",
    "cl-zoo": "jaxcl.studies.cl_zoo",
    "unlearn-class": "jaxcl.studies.unlearn_class",
    "tofu": "jaxcl.studies.tofu",
    "rft": "jaxcl.studies.rft",
    "lm-memory": "jaxcl.studies.lm_memory",
    "restor": "jaxcl.studies.restor",
    "lm": "jaxcl.studies.lm",
    "lm-junk": "jaxcl.studies.lm_junk",
    "sort": "jaxcl.studies.sort",
}


def get_runner(study: str):
    if study not in RUNNERS:
        raise ValueError(f"unknown study runner {study!r}; valid: {', '.join(RUNNERS)}")
    return importlib.import_module(RUNNERS[study])
