"""The gradient level: plain optax ``GradientTransformationExtraArgs``; extra inputs (reference
gradients) arrive as keyword-only extra args from :func:`jaxcl.engine.make_step`'s ``extra_args``.

* :func:`project_conflicting`: A-GEM's projection (``ref_grads=``).
* :func:`project_out`: GU's projection onto the orthogonal complement of recent retain gradients
  (``retain_grads=``, ``retain_scale=``), for classifiers and language models alike.
"""

from .conflicting import project_conflicting, tree_dot
from .gu import basis_from_history, basis_of, project, project_out

__all__ = ["basis_from_history", "basis_of", "project", "project_conflicting", "project_out", "tree_dot"]
