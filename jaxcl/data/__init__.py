"""Data: loaders (real data sets, offline first), streams of tasks, and data transforms."""

from . import context, replay
from .replay import reservoir

__all__ = ["context", "replay", "reservoir"]
