"""KL to a frozen reference, as a modifier of any base (``finetune+kl``, ``npo+kl``, ``er+kl``):

    L(theta) = L_base(theta) + beta * T^2 * mean_positions KL(p_ref(. | x) / T || p_theta(. | x) / T)

over the batch's scored positions (a classifier's examples, a language model's answer tokens:
:func:`jaxcl.losses.with_reference_kl`), on the batch the base trains on (the current task; the
retain set in unlearning). ``p_ref`` is the model at the last consolidate, kept frozen in this
piece's data state (:func:`jaxcl.data.context.reference`): in continual learning the model at the
end of the previous task (no term on the first task), i.e. Learning without Forgetting (Li and
Hoiem, ECCV 2016) for any model, language models included; in unlearning the original model,
i.e. TOFU's KL regulariser on the retain set (Maini et al., "TOFU: A Task of Fictitious
Unlearning for LLMs", 2024: forget loss + KL(original || current) on retain, weight 1, T = 1),
which with NPO is the NPO-KL variant of Zhang et al. (2024). Defaults: ``beta = 1``, ``T = 1``.
Only a modifier: alone it is refused (``finetune+kl`` is KL-regularised fine-tuning).
"""

from ..data.context import freeze_current, reference
from ..losses import token_logits, with_reference_kl
from .base import Hparam, Joins, MethodSpec, register
from .compose import Modifier

REF_KEY = "kl_ref_logits"


def modifier(model, hp, params_like, **options) -> Modifier:
    logits = token_logits(model)
    data = reference(lambda p, b: logits(p, b)[0], params_like, key=REF_KEY)
    wrap = lambda loss: with_reference_kl(  # noqa: E731
        loss, model, weight=hp["beta"], temperature=options["temperature"], ref_key=REF_KEY
    )
    return Modifier(wrap=wrap, data=data, consolidate=freeze_current)


def build(model, hp, params_like, **options):
    raise ValueError("kl is a modifier; use it in a chain such as finetune+kl")


SPEC = register(
    MethodSpec(
        "kl",
        build,
        {"beta": Hparam(1.0, 0.0, None, help="weight of the KL to the reference")},
        {"temperature": 1.0},
        "KL to the model at the last consolidate, added to the base's loss (modifier)",
        kind="any",
        paper="Li and Hoiem 2016, Learning without Forgetting; Maini et al. 2024, TOFU",
        joins=Joins(
            modifier,
            kinds=("cl", "unlearn", "any"),
            alone=False,
            conflicts=(("lwf", "LwF already adds a KL to the previous model"),),
        ),
    )
)
