"""Gradient transforms: plain optax transforms, extra inputs as keyword-only extra args."""

from .project import project_conflicting, project_out_basis, tree_dot

__all__ = ["project_conflicting", "project_out_basis", "tree_dot"]
