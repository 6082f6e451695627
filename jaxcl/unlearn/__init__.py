"""Machine unlearning for classifiers: one module per method, plus evaluation and scenarios.

Methods (each a pure, jittable function of the original parameters and a key, vmappable over
seeds): ``oracle`` (retrain on the retain set), ``finetune``, ``ga``, ``graddiff``, ``npo``,
``random_label``, ``ssd`` (a parameter edit), ``gu`` (an optax transform attached to GA,
GradDiff and NPO) and ``iau``. ``eval`` holds the forgetting metrics; ``study`` registers the
``unlearn-class`` study.
"""

from .gu import project_out

__all__ = ["project_out"]
