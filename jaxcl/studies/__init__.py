"""Study runners: what ``jaxcl run CONFIG`` does with a config, by its ``study`` key.

Every runner module defines ``STUDY``, a :class:`jaxcl.driver.Study` (its defaults, the
method kinds it runs, its validation, its body and its sweep on the one driver), and exposes
``run = STUDY.run`` / ``sweep = STUDY.sweep``. Modules are imported when first used.
"""

from __future__ import annotations

import importlib

STUDIES = {
    "cl": "jaxcl.studies.cl",
    "cl-zoo": "jaxcl.studies.cl_zoo",
    "unlearn-class": "jaxcl.studies.unlearn_class",
    "tofu": "jaxcl.studies.tofu",
    "rft": "jaxcl.studies.rft",
    "lm-memory": "jaxcl.studies.lm_memory",
    "restor": "jaxcl.studies.restor",
    "lm-unforget": "jaxcl.studies.lm_unforget",
    "lm": "jaxcl.studies.lm",
    "lm-junk": "jaxcl.studies.lm_junk",
    "sort": "jaxcl.studies.sort",
    "unlearn-stream": "jaxcl.studies.unlearn_stream",
    "cl-order": "jaxcl.studies.cl_order",
    "auto-cei": "jaxcl.studies.auto_cei",
    "mm-cit": "jaxcl.studies.mm_cit",
    "mm-unlearn": "jaxcl.studies.mm_unlearn",
    "mm-domains": "jaxcl.studies.mm_domains",
    "lm-recall": "jaxcl.studies.lm_recall",
    "muse": "jaxcl.studies.muse",
}


def get_study(name: str):
    """The :class:`~jaxcl.driver.Study` registered under ``name``."""
    if name not in STUDIES:
        from ..config import ConfigError

        raise ConfigError(f"unknown study {name!r} (the config's 'study' key); valid: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name]).STUDY
