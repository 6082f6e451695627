"""SafeEraser's prompt-decouple (PD) loss, a modifier of any unlearning method (``ga+pd``,
``graddiff+pd``, ``idk+pd``, ``npo+pd``): Chen et al., "SafeEraser: Enhancing Safety in
Multimodal Large Language Models through Multimodal Machine Unlearning" (ACL Findings 2025).

Unlearning that pushes a model away from the forget set's answers also teaches it to refuse
anything that looks like the forget prompts (over-forgetting). PD descends the ordinary NLL of
*decoupled* rows: each forget row's question in a safe context with a normal answer
(``batch['forget_pd']``, row for row with ``batch['forget']``)::

    L(theta) = L_base(theta) + w * NLL(theta; D_pd)

In SafeEraser a PD row keeps the harmful question and swaps the harmful image for a safe one,
whose helpful answer is the target (the authors' ``forget.py``: ``w = 0.5`` with GA and GradDiff,
``w = 1`` with KL and IDK; the weight is hard-coded per method there, an option here). In text
(TOFU, :func:`jaxcl.tofu.problem.decoupled`) the question is kept and the entity is swapped: the
retained question about another author with the most words in common once names are set aside,
with that author's answer. Default ``weight``: the authors' per base, 0.5 after GA and GradDiff
(``ga+pd``, ``graddiff+pd`` and their GU forms), 1 after every other base (IDK, KL, NPO, ...);
``--set pd.weight=...`` overrides it. Its effect is measured by SARR, the refusal rate on
harmless questions (:func:`jaxcl.tofu.metrics.refusal_rate`). Only a modifier: alone it is
refused; a problem without PD rows is refused when the step is built.
"""

from ..losses import mean_nll
from .base import Hparam, Joins, MethodSpec, register
from .compose import Modifier

PD_KEY = "forget_pd"


def modifier(model, hp, params_like, **options) -> Modifier:
    nll = mean_nll(model)

    def wrap(loss):
        def wrapped(params, batch, key):
            if PD_KEY not in batch:
                raise ValueError(
                    f"pd needs prompt-decouple rows (batch[{PD_KEY!r}]): the TOFU study's problem has "
                    "them; this problem does not, so drop +pd from the method"
                )
            base, aux = loss(params, batch, key)
            pd = nll(params, batch[PD_KEY])
            return base + hp["weight"] * pd, {**aux, "pd_nll": pd}

        return wrapped

    return Modifier(wrap=wrap)


def build(model, hp, params_like, **options):
    raise ValueError("pd is a modifier; use it in a chain such as idk+pd or graddiff+pd")


SPEC = register(
    MethodSpec(
        "pd",
        build,
        {"weight": Hparam(1.0, 0.0, None, help="weight of the NLL on the prompt-decouple rows")},
        {},
        "SafeEraser's prompt-decouple loss: NLL of normal answers to decoupled forget prompts (modifier)",
        kind="unlearn",
        paper="Chen et al. 2025, SafeEraser",
        joins=Joins(
            modifier,
            kinds=("unlearn",),
            alone=False,
            base_defaults=tuple((base, "weight", 0.5) for base in ("ga", "graddiff", "gu-ga", "gu-graddiff")),
        ),
    )
)
