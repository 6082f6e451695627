"""Elastic weight consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in
neural networks", PNAS 2017), in its online form (Schwarz et al., 2018, with decay 1):

    L(theta) = L_t(theta) + lambda/2 * sum_i F_i (theta_i - theta*_i)^2,

with ``theta*`` the parameters at the end of the previous task and ``F`` the sum over past tasks
of the diagonal empirical Fisher (mean squared per-example gradient on ``fisher_samples``
examples of the task). The anchor and Fisher are on-device state of an ``ewc_anchor`` data
transform; consolidation at a task end is a state change.
"""


from ..data.context import ewc_anchor, set_ewc_anchor
from ..losses import classification_loss, empirical_fisher, with_ewc_penalty
from .base import Method, MethodSpec, optimizer, register


def build(model, hp, params_like, *, optim="adam", momentum=0.0, decay=1.0):
    base = classification_loss(model.apply)

    def consolidate(state, task_batch, key):
        fisher = empirical_fisher(base, state.params, task_batch, key)
        return state.replace(data_state=set_ewc_anchor(state.data_state, state.params, fisher, decay=decay))

    return Method(
        with_ewc_penalty(base, lam=hp["ewc_lambda"]),
        optimizer(optim, hp["lr"], momentum),
        data=ewc_anchor(params_like),
        consolidate=consolidate,
    )


SPEC = register(
    MethodSpec(
        "ewc",
        build,
        {"lr": 0.001, "ewc_lambda": 1000.0},
        {"optim": "adam", "momentum": 0.0, "decay": 1.0},
        "elastic weight consolidation (online, empirical Fisher)",
    )
)
