"""Online EWC (Schwarz et al., "Progress & Compress: A scalable framework for continual
learning", ICML 2018, eq. 7-8):

    F*_t = gamma * F*_{t-1} + F_t,
    L(theta) = L_t(theta) + lambda/2 * sum_i F*_i (theta_i - theta*_i)^2,

with ``F_t`` the diagonal empirical Fisher of task t (mean squared per-example gradient),
``theta*`` the parameters at the end of the previous task and ``gamma`` a traced decay (the
``ewc`` method is the case gamma = 1 as a static option). Defaults: Mammoth's ``ewc_on``
(``gamma = 1.0``; ``lambda`` as jaxcl's ``ewc``).
"""

from .base import LR, OPTIMIZER_OPTIONS, OPTIMIZERS, Hparam, MethodSpec, pop_optimizer, register
from .ewc import ewc_method


def build(model, hp, params_like, **options):
    opt = pop_optimizer(options)
    return ewc_method(model, params_like, lr=hp["lr"], lam=hp["ewc_lambda"], decay=hp["ewc_gamma"], opt=opt)


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
