"""GU: Geometric-disentanglement Unlearning ("Geometric-Disentanglement Unlearning", 2025),
attached to GA, GradDiff, NPO, IDK, SimNPO, WGA, SatImp, UNDIAL and DPO as ``gu-<base>``.

The forget update is split into its component in the span of the last ``rank`` retain gradients
and the orthogonal rest; only the rest is applied, so the retain loss is unchanged to first order:

    update = (I - B^T B) grad F(theta) + w * grad NLL_retain(theta),   B: orthonormal basis

with ``F`` the base method's forget term and ``w`` its retain weight (0 for GA and the classifier
NPO). The projection is the gradient transform :func:`jaxcl.transforms.project_out` (one
implementation for classifiers and language models); options ``rank`` (8), ``mode``
(``per_tensor`` as the reference, or ``global``) and ``preconditioned`` (project Adam-whitened
updates, then plain SGD).
"""

from . import dpo, ga, graddiff, idk, npo, satimp, simnpo, undial, wga
from .base import METHODS, register
from .unlearning import spec

BASES = {
    "ga": ga,
    "graddiff": graddiff,
    "npo": npo,
    "idk": idk,
    "simnpo": simnpo,
    "wga": wga,
    "satimp": satimp,
    "undial": undial,
    "dpo": dpo,
}

SPECS = {
    base: register(
        spec(
            f"gu-{base}",
            mod.forget_term,
            {k: h for k, h in METHODS[base].hparams.items()},
            summary=f"GU: {base}'s forget gradient projected off the retain gradients",
            paper="Geometric-Disentanglement Unlearning, 2025",
            gu=True,
        )
    )
    for base, mod in BASES.items()
}
