"""The one method registry: continual-learning and unlearning methods, one file each. Importing
this package imports every module in it, which registers its method(s) (``METHODS``); adding a
method is adding its file. See :mod:`.base` for what a method is."""

import importlib
import pkgutil

from .base import METHODS, Hparam, Method, MethodSpec, get_method, optimizer, register

_HELPERS = {"base", "compose", "unlearning"}
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in _HELPERS:
        importlib.import_module(f"{__name__}.{_m}")

__all__ = ["METHODS", "Hparam", "Method", "MethodSpec", "get_method", "optimizer", "register"]
