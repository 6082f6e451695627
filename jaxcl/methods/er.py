"""Experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019).

A reservoir buffer of ``capacity`` examples lives on the device; every batch has a fraction
``replay_fraction`` of its rows replaced by buffer samples, then
``theta <- theta - lr * grad L(batch_mixed)``. See :mod:`jaxcl.data.replay`.

In a chain after a base (``ewc+er``, ``grpo+er``) it is the replay alone: the base's loss on the
mixed batch. Its data transform runs before the other pieces', so references computed on the
batch (GRPO's reference log-probs, ``kl``'s logits) see the replayed rows. After GRPO the rows are
the rollouts (prompt and completion tokens, their advantages and weights), replayed with the
advantages they were scored with (with ``grpo.mu = 1`` the policy loss of a replayed rollout is
its policy gradient at the current parameters; a rollout is stored once per inner step).
"""

from ..data.replay import EXAMPLE_FIELDS, reservoir
from ..losses import supervised_loss
from .base import (
    LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    Hparam,
    Joins,
    Method,
    MethodSpec,
    optimizer_from,
    pop_optimizer,
    register,
)
from .compose import Modifier

FIELDS = EXAMPLE_FIELDS  # a replayed row keeps every field of its example (a VLM row its image)
RL_FIELDS = ("valid", "completion_mask", "adv", "weight", "old_logp")  # a GRPO rollout's rows


def modifier(model, hp, params_like, **options) -> Modifier:
    del model, params_like
    return Modifier(data=reservoir(options["capacity"], hp["replay_fraction"], fields=FIELDS + RL_FIELDS))


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    return Method(
        supervised_loss(model),
        optimizer_from(opt, hp["lr"]),
        data=reservoir(options["capacity"], hp["replay_fraction"], fields=FIELDS),
    )


SPEC = register(
    MethodSpec(
        "er",
        build,
        {"lr": LR(1e-3), "replay_fraction": Hparam(0.5, 0.0, 1.0, help="replayed rows per batch")},
        {"capacity": 1000, **OPTIMIZER_OPTIONS},
        "experience replay, reservoir buffer mixed into every batch",
        paper="Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning",
        choices={"optim": OPTIMIZERS},
        joins=Joins(modifier, kinds=("cl", "rl", "any"), rows=True),
    )
)
