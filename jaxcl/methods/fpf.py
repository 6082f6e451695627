"""FPF and k-FPF, forgetting-prioritized fine-tuning (Zhao, Zhou, Long, Jiang and Zhang, "Does
Continual Learning Equally Forget All Parameters?", ICML 2023).

Only a few modules change sensitively between tasks (in the paper's CNNs: the classifier, the BN
layers and the last block); forgetting is attributed to them. FPF fine-tunes only those
*forgetting-prone* parameters ``P`` on the replay buffer ``M`` after a continual learner has
trained on a task,

    theta_P <- theta_P - eta_ft * grad_P CE(f_theta(x_m), y_m),   (x_m, y_m) ~ M,   ``ft_steps`` times,

with every other parameter frozen. ``fpf`` is ER (every-step replay from a reservoir buffer)
followed by FPF at every task end; ``kfpf`` removes the every-step replay (plain SGD on the
stream, the buffer only filled) and keeps the FPF phases, so it replays ``T * ft_steps`` batches
instead of one per step.

Forgetting-prone modules (``prone``): ``"dynamics"`` picks, from the training dynamics of the task
just learned, the ``prone_modules`` modules (a layer's kernel and bias together) with the largest
relative change ``||theta_end - theta_start|| / ||theta_start||`` (the anchor ``theta_start`` is
kept in the data state: the parameters before the task's first step, then those after each FPF
phase); ``"head"`` fixes them to the classifier. Before any step has been taken the head is used.

Where this differs from the paper: k-FPF's FPF phases run at the T task ends (k = T) rather than
every fixed number of steps: a periodic phase inside the scanned step is a conditional, which vmap
over seeds turns into computing both branches at every step.
"""

import jax
import jax.numpy as jnp
import optax

from ..data.context import chain, zeros_like_tree
from ..data.replay import reservoir
from ..engine import DataTransform
from ..losses import masked_logits, supervised_loss
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


def anchor_tracker(params_like) -> DataTransform:
    """State ``{'anchor', 'on'}``: the parameters before the first step (set by ``after``), moved
    to the current parameters by each FPF phase."""

    def init(example):
        del example
        return {"anchor": zeros_like_tree(params_like), "on": jnp.zeros((), jnp.float32)}

    def update(batch, state, key):
        del key
        return batch, state

    def after(batch, state, params, aux, key):
        del batch, aux, key
        first = state["on"] == 0
        anchor = jax.tree.map(
            lambda p, a: jnp.where(first, jax.lax.stop_gradient(p), a), params, state["anchor"]
        )
        return {"anchor": anchor, "on": jnp.ones((), jnp.float32)}

    return DataTransform(init, update, after)


def _modules(params):
    """The module (the path without its last key, e.g. ``head`` or ``layers/0``) of every leaf."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path[:-1]) for path, _ in paths]


def head_selection(params):
    """1 for the tensors of the classifier head, 0 elsewhere (a tree of scalars)."""
    flags = [m.split("/")[0] == "head" for m in _modules(params)]
    return jax.tree.unflatten(jax.tree.structure(params), [jnp.float32(f) for f in flags])


def module_change(params, anchor):
    """Relative change ``||theta_m - anchor_m|| / ||anchor_m||`` of every module m (its tensors
    together): ``(names, scores)``."""
    names = _modules(params)
    order = list(dict.fromkeys(names))
    d2 = [jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))]
    a2 = [jnp.sum(a**2) for a in jax.tree.leaves(anchor)]
    per = lambda v, m: sum(x for x, n in zip(v, names) if n == m)  # noqa: E731
    scores = jnp.stack([jnp.sqrt(per(d2, m)) / (jnp.sqrt(per(a2, m)) + 1e-12) for m in order])
    return order, scores


def prone_selection(params, anchor, on, k: int):
    """1 for the tensors of the ``k`` modules with the largest relative change since ``anchor``
    (the head when ``on`` is 0: no dynamics recorded yet)."""
    order, scores = module_change(params, anchor)
    kth = jnp.sort(scores)[-min(k, len(order))]
    chosen = dict(zip(order, scores >= kth))
    flags = [chosen[m].astype(jnp.float32) for m in _modules(params)]
    top = jax.tree.unflatten(jax.tree.structure(params), flags)
    return jax.tree.map(lambda a, b: jnp.where(on > 0, a, b), top, head_selection(params))


def finetune_selected(apply_fn, params, select, buffer, filled, key, *, steps: int, batch: int, lr):
    """``steps`` SGD steps of cross-entropy on batches drawn uniformly from the first ``filled``
    rows of ``buffer``, updating only the tensors with ``select`` 1 (no update while empty)."""

    def loss(p, mb):
        logits = masked_logits(apply_fn(p, mb["x"]), mb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, mb["y"]).mean()

    on = (filled > 0).astype(jnp.float32)

    def one(p, k):
        idx = jax.random.randint(k, (batch,), 0, jnp.maximum(filled, 1))
        mb = jax.tree.map(lambda a: a[idx], buffer)
        g = jax.grad(loss)(p, mb)
        return jax.tree.map(lambda a, gi, s: a - lr * on * s * gi, p, g, select), None

    params, _ = jax.lax.scan(one, params, jax.random.split(key, steps))
    return params


def _build(every_step_replay: bool):
    def build(model, hp, params_like, **options):
        opt = pop_optimizer(options)
        fraction = hp["replay_fraction"] if every_step_replay else 0.0
        res = reservoir(options["capacity"], fraction, fields=("x", "y", "t", "mask"))
        data = chain(res, anchor_tracker(params_like))
        if options["prone"] not in ("dynamics", "head"):
            raise ValueError(f"prone={options['prone']!r}; valid: dynamics, head")

        def consolidate(state, task_batch, key):
            del task_batch
            rs, anc = state.data_state
            if options["prone"] == "head":
                select = head_selection(state.params)
            else:
                select = prone_selection(state.params, anc["anchor"], anc["on"], options["prone_modules"])
            filled = jnp.minimum(rs["seen"], options["capacity"])
            params = finetune_selected(
                model.apply,
                state.params,
                select,
                rs["buffer"],
                filled,
                key,
                steps=options["ft_steps"],
                batch=options["ft_batch"],
                lr=hp["fpf_lr"],
            )
            anc = {"anchor": jax.lax.stop_gradient(params), "on": anc["on"]}
            return state.replace(params=params, data_state=(rs, anc))

        return Method(
            supervised_loss(model), optimizer_from(opt, hp["lr"]), data=data, consolidate=consolidate
        )

    return build


PAPER = "Zhao et al. 2023, Does Continual Learning Equally Forget All Parameters?"
CHOICES = {"optim": OPTIMIZERS, "prone": ("dynamics", "head")}
FT_LR = Hparam(0.05, 0.0, None, low_open=True, help="SGD learning rate of the fine-tuning phases")
SPEC = register(
    MethodSpec(
        "fpf",
        _build(True),
        {
            "lr": LR(1e-3),
            "replay_fraction": Hparam(0.5, 0.0, 1.0, help="replayed rows per batch"),
            "fpf_lr": FT_LR,
        },
        {
            "capacity": 1000,
            "ft_steps": 50,
            "ft_batch": 32,
            "prone": "dynamics",
            "prone_modules": 1,
            **OPTIMIZER_OPTIONS,
        },
        "FPF: ER, then fine-tune only the forgetting-prone tensors on the buffer at each task end",
        paper=PAPER,
        choices=CHOICES,
    )
)
SPEC_K = register(
    MethodSpec(
        "kfpf",
        _build(False),
        {"lr": LR(1e-3), "fpf_lr": FT_LR},
        {
            "capacity": 1000,
            "ft_steps": 100,
            "ft_batch": 32,
            "prone": "dynamics",
            "prone_modules": 1,
            **OPTIMIZER_OPTIONS,
        },
        "k-FPF: no every-step replay; fine-tune the forgetting-prone tensors on the buffer at task ends",
        paper=PAPER,
        choices=CHOICES,
    )
)
