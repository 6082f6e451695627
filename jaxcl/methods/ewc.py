"""Elastic weight consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in
neural networks", PNAS 2017), in its online form (Schwarz et al., 2018, with decay 1):

    L(theta) = L_t(theta) + lambda/2 * sum_i F_i (theta_i - theta*_i)^2,

with ``theta*`` the parameters at the end of the previous task and ``F`` the sum over past tasks
of the diagonal empirical Fisher (mean squared per-example gradient on ``consolidate_samples``
examples of the task). The anchor and Fisher are on-device state of an ``ewc_anchor`` data
transform; consolidation at a task end is a state change.
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


def ewc_method(model, params_like, *, lr, lam, decay, opt) -> Method:
    """The EWC method: the penalty on the supervised loss, the anchor as data state, and at each
    task end the Fisher accumulated as ``F* <- decay * F* + F_t`` (``decay`` static or traced)."""
    base = supervised_loss(model)

    def consolidate(state, task_batch, key):
        fisher = empirical_fisher(base, state.params, task_batch, key)
        data_state = set_ewc_anchor(state.data_state, state.params, fisher, decay=decay)
        return state.replace(data_state=data_state)

    return Method(
        with_ewc_penalty(base, lam=lam),
        optimizer_from(opt, lr),
        data=ewc_anchor(params_like),
        consolidate=consolidate,
    )


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    return ewc_method(model, params_like, lr=hp["lr"], lam=hp["ewc_lambda"], decay=options["decay"], opt=opt)


SPEC = register(
    MethodSpec(
        "ewc",
        build,
        {"lr": LR(1e-3), "ewc_lambda": Hparam(1000.0, 0.0, None, help="penalty weight")},
        {"decay": 1.0, **OPTIMIZER_OPTIONS},
        "elastic weight consolidation (online, empirical Fisher)",
        paper="Kirkpatrick et al. 2017, Overcoming catastrophic forgetting in neural networks",
        choices={"optim": OPTIMIZERS},
    )
)
