"""Learning without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2017), via ``with_kl``:

    L(theta) = CE(f_theta(x), y) + alpha * T^2 * KL(softmax(f_old(x)/T) || softmax(f_theta(x)/T)),

with ``f_old`` the model at the end of the previous task (a frozen teacher kept on the device)
and T = 2. On the first task there is no teacher and the term is off.
"""

from ..data.context import freeze_current, teacher
from ..losses import classification_loss, with_kl
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Hparam,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)

    consolidate = freeze_current

    loss = with_kl(
        classification_loss(model.apply), weight=hp["lwf_alpha"], temperature=options["temperature"]
    )
    return Method(
        loss, optimizer_from(opt, hp["lr"]), data=teacher(model.apply, params_like), consolidate=consolidate
    )


SPEC = register(
    MethodSpec(
        "lwf",
        build,
        {"lr": LR(1e-3), "lwf_alpha": Hparam(1.0, 0.0, None, help="distillation weight")},
        {"temperature": 2.0, **OPTIMIZER_OPTIONS},
        "learning without forgetting (distillation to the previous model)",
        paper="Li and Hoiem 2016, Learning without Forgetting",
        choices={"optim": OPTIMIZERS},
    )
)
