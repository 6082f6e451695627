"""Online EWC (Schwarz et al., "Progress & Compress: A scalable framework for continual
learning", ICML 2018, eq. 7-8):

    F*_t = gamma * F*_{t-1} + F_t,
    L(theta) = L_t(theta) + lambda/2 * sum_i F*_i (theta_i - theta*_i)^2,

with ``F_t`` the diagonal empirical Fisher of task t (mean squared per-example gradient),
``theta*`` the parameters at the end of the previous task and ``gamma`` a traced decay (the
``ewc`` method is the case gamma = 1 as a static option). Defaults: Mammoth's ``ewc_on``
(``gamma = 1.0``; ``lambda`` as jaxcl's ``ewc``).
"""

from ..data.context import ewc_anchor, set_ewc_anchor
from ..losses import empirical_fisher, supervised_loss, with_ewc_penalty
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
    base = supervised_loss(model)

    def consolidate(state, task_batch, key):
        fisher = empirical_fisher(base, state.params, task_batch, key)
        data_state = set_ewc_anchor(state.data_state, state.params, fisher, decay=hp["ewc_gamma"])
        return state.replace(data_state=data_state)

    return Method(
        with_ewc_penalty(base, lam=hp["ewc_lambda"]),
        optimizer_from(opt, hp["lr"]),
        data=ewc_anchor(params_like),
        consolidate=consolidate,
    )


SPEC = register(
    MethodSpec(
        "ewc_online",
        build,
        {
            "lr": LR(1e-3),
            "ewc_lambda": Hparam(1000.0, 0.0, None, help="penalty weight"),
            "ewc_gamma": Hparam(1.0, 0.0, 1.0, help="decay of the accumulated Fisher"),
        },
        dict(OPTIMIZER_OPTIONS),
        "online EWC: decayed running Fisher (traced gamma)",
        paper="Schwarz et al. 2018, Progress & Compress: A scalable framework for continual learning",
        choices={"optim": OPTIMIZERS},
    )
)
