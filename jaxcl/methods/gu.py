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

``gu`` alone is the projection as a modifier of any base (``npo+gu``, ``ewc+gu``): the base's
whole gradient (its retain term included, unlike ``gu-<base>``) is projected off the span of
the last ``rank`` retain gradients before the base's optimizer. The retain gradient is that of the
NLL on the retain rows (the batch's top level) in unlearning and, in continual learning (no
retain rows), on a batch of ``memory_batch`` rows drawn from a reservoir of ``capacity`` past
examples (A-GEM's episodic memory, Chaudhry et al. 2019; zero while it is empty, and zero
gradients are dropped from the basis), so the update leaves the memory's loss unchanged to first
order.
"""

import jax

from ..data.replay import EXAMPLE_FIELDS, reservoir
from ..engine import DataTransform
from ..losses import mean_nll
from ..transforms import project_out
from . import dpo, ga, graddiff, idk, npo, satimp, simnpo, undial, wga
from .base import METHODS, Joins, MethodSpec, register
from .compose import Modifier
from .unlearning import GU_CHOICES, spec

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


MEMORY_FIELDS = (*EXAMPLE_FIELDS, "valid", "loss_mask")


def modifier(model, hp, params_like, **options) -> Modifier:
    """GU's projection before the base's optimizer, fed the retain gradient (module docstring)."""
    del hp, params_like
    nll = mean_nll(model)
    memory = reservoir(
        options["capacity"], mode="separate", memory_size=options["memory_batch"], fields=MEMORY_FIELDS
    )

    def init(example):  # unlearning batches carry their retain rows: no memory
        return () if "forget" in example else memory.init(example)

    def update(batch, state, key):
        return (batch, state) if "forget" in batch else memory.update(batch, state, key)

    def extra_args(params, batch, key):
        del key
        if "forget" in batch:
            return {"retain_grads": jax.grad(nll)(params, batch)}
        mem = batch["memory"]
        g = jax.grad(nll)(params, mem)
        return {"retain_grads": jax.tree.map(lambda a: a * mem["weight"].max(), g)}

    tx = project_out(int(options["rank"]), options["mode"])
    return Modifier(tx=tx, data=DataTransform(init, update), extra_args=extra_args)


class _Spec(MethodSpec):
    """The ``gu`` modifier's spec: whole-number options checked before anything is compiled."""

    def split(self, section: dict) -> tuple[dict, dict]:
        hp, opts = super().split(section)
        for k in ("rank", "capacity", "memory_batch"):
            v = opts[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 1:
                raise ValueError(
                    f"gu.{k}={v!r} is not valid; give a whole number >= 1 (default {self.options[k]})"
                )
        return hp, opts


def _alone(model, hp, params_like, **options):
    raise ValueError("gu is a modifier; use it in a chain such as npo+gu or ewc+gu")


GU = register(
    _Spec(
        "gu",
        _alone,
        {},
        {"rank": 8, "mode": "per_tensor", "capacity": 1000, "memory_batch": 64},
        "GU's projection of the base's gradient off the last retain gradients (modifier)",
        kind="any",
        paper="Geometric-Disentanglement Unlearning, 2025",
        choices={"mode": GU_CHOICES["mode"]},
        joins=Joins(
            modifier,
            kinds=("cl", "unlearn", "any"),
            alone=False,
            conflicts=(("gu-*", "gu-<base> already projects its forget gradient"),),
        ),
    )
)
