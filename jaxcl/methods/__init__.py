"""Continual-learning methods, one file each; importing this package registers them all."""

from . import agem, er, ewc, finetune, joint, lwf  # noqa: F401  (registration)
from .base import METHODS, Method, MethodSpec, get_method, optimizer, register

__all__ = ["METHODS", "Method", "MethodSpec", "get_method", "optimizer", "register"]
