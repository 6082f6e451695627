"""Answer style diversification (ASD), as a modifier of any base (``finetune+asd``,
``reglora+asd``: SEFE, Chen et al., "SEFE: Superficial and Essential Forgetting Eliminator for
Multimodal Continual Instruction Tuning", ICML 2025, is ``reglora+asd``).

ASD rewrites a fraction X of every task's training examples into other answer styles (the same
image and knowledge, another form: yes/no, multiple choice, a number, a phrase), so that every
task trains every style and a new task's style stops being a cue that overwrites an old task's
form (superficial forgetting). The rewrite is text, made once on the host by the study
(:func:`jaxcl.data.multimodal.diversify`: every training example's rewritten form, with a fixed
uniform ``u`` per example, in ``batch['asd']``); this piece is the data transform (level 3) that
trains on the rewritten form of the examples with ``u < fraction``:

    tokens_i, mask_i = (asd_tokens_i, asd_mask_i) if u_i < X else (tokens_i, mask_i)

so the same X of the data set is rewritten at every step, as in the authors' rewritten data set,
and ``X`` (``asd.fraction``) is a traced hyperparameter (an argument of the compiled program, not
a constant; mm-cit has no sweep verb yet, so a sweep of X is one run per value). Default X = 0.2 (the
authors' released training files ``train_x20.json``). It runs before every other piece's data
transform (a replay buffer stores the rewritten rows, as it would store the authors' data set).
Only a modifier; a study whose batches carry no ``asd`` rows (only ``mm-cit`` writes them) is
refused.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..engine import DataTransform
from .base import Hparam, Joins, MethodSpec, register
from .compose import Modifier

KEY = "asd"


def swap(batch: dict, fraction) -> dict:
    """``batch`` with the rewritten tokens and mask of the rows whose ``u`` is below ``fraction``
    (and without ``batch['asd']``)."""
    alt = batch[KEY]
    use_B = alt["u"] < fraction
    pick = lambda new, old: jnp.where(use_B.reshape(-1, *([1] * (old.ndim - 1))), new, old)  # noqa: E731
    rest = {k: v for k, v in batch.items() if k != KEY}
    return {**rest, "tokens": pick(alt["tokens"], batch["tokens"]), "mask": pick(alt["mask"], batch["mask"])}


def modifier(model, hp, params_like, **options) -> Modifier:
    del model, params_like, options

    def init(example):
        if example is not None and KEY not in example:
            raise ValueError(
                "asd: this study's batches carry no rewritten answers (batch['asd']); run it in mm-cit"
            )
        return ()

    def update(batch, state, rng):
        del rng
        return swap(batch, hp["fraction"]), state

    return Modifier(data=DataTransform(init, update))


def build(model, hp, params_like, **options):
    raise ValueError("asd is a modifier; use it in a chain such as finetune+asd or reglora+asd")


SPEC = register(
    MethodSpec(
        "asd",
        build,
        {
            "fraction": Hparam(
                0.2, 0.0, 1.0, help="X: the fraction of the training examples asked in another style"
            )
        },
        {},
        "answer style diversification: a fraction of the training answers in other styles (modifier)",
        paper="Chen et al., SEFE: Superficial and Essential Forgetting Eliminator (ASD), ICML 2025",
        joins=Joins(modifier, kinds=("cl", "any"), alone=False, rows=True),
    )
)
