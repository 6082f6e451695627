"""The one method registry: continual-learning and unlearning methods, one file each; importing
this package registers them all (``METHODS``). See :mod:`.base` for what a method is."""

from . import (  # noqa: F401  (continual learning)  # noqa: F401  (unlearning)
    agem,
    er,
    ewc,
    finetune,
    ga,
    graddiff,
    gu,  # noqa: F401  (GU variants of the unlearning methods; after their bases)
    iau,
    idk,
    joint,
    lwf,
    npo,
    random_label,
    ssd,
)
from .base import METHODS, Hparam, Method, MethodSpec, get_method, optimizer, register

__all__ = ["METHODS", "Hparam", "Method", "MethodSpec", "get_method", "optimizer", "register"]
