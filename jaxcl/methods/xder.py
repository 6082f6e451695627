"""X-DER, eXtended Dark Experience Replay (Boschini, Bonicelli, Buzzega, Porrello and Calderara,
"Class-Incremental Continual Learning into the eXtended DER-verse", IEEE TPAMI 2022), its core.

DER++ (:mod:`jaxcl.methods.der`) keeps, with each buffered example, the logits the network gave it
when it was stored, and matches them for ever. Those logits say nothing useful about the classes
that had not been seen yet when the example was stored (their heads were untrained, and the
cross-entropy of the example's own task pushed them down), so matching them fights the learning of
every later task. X-DER *rewrites the memory*: after task ``t``, for every buffered example of an
earlier task, the stored logits of the classes not seen before task ``t`` (the present and future
heads) are replaced by what the current network gives it, rescaled so that they do not exceed
the example's stored ground-truth logit (the paper's "future past" update, Sec. 4.1):

    z_m[c] <- s * f(x_m)[c]   for every class c not seen before task t,
    s = gamma * z_m[y_m] / max_{c new} f(x_m)[c]   if  max_{c new} f(x_m)[c] > z_m[y_m],   else s = 1,

with ``gamma = xder_gamma`` (0.85); the cap is exact when ``z_m[y_m] > 0`` (the multiplicative rule
of the paper is kept as it is for a non-positive stored label logit, which training rarely leaves). Training minimises the DER++ loss on the rewritten memory,

    L = CE(f(x), y) + alpha * || f(x') - z' ||_2^2 + beta * CE(f(x''), y'')

(:func:`jaxcl.methods.der.der_loss`; ``(x', z')`` and ``(x'', y'')`` two independent draws from the
buffer). Defaults: Mammoth's best arguments for X-DER on Split-CIFAR-100 at buffer 500
(alpha = 0.3, beta = 0.8, gamma = 0.85).

Simplifications (the core only, as stated):

* the memory is DER's reservoir buffer, written during training; X-DER fills a class-balanced
  buffer at each task end (and then updates the new rows' past-head logits);
* the update runs only at task ends (``consolidate``), not also on the rows drawn during training
  (X-DER's in-training update with probability ``1 / #updates``);
* no future-heads preparation: no supervised-contrastive consistency term on the future heads, no
  future/past logit constraints, and the current and replayed cross-entropies use all the heads
  (X-DER restricts them to the present and the past heads).

The classes "seen before task t" are kept in the data state (``past``, a mask over the classes,
grown at every task end by the classes of the task just learned, read from its examples' labels
and masks).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ..data.logit_replay import logit_reservoir
from ..engine import DataTransform
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
from .der import der_loss


def transplant(stored_NxC, y_N, current_NxC, new_C, gamma):
    """X-DER's logit update of ``N`` stored rows: the columns ``new_C`` (bool over classes) take the
    current logits, scaled by ``gamma * stored[y] / max_new(current)`` where that maximum exceeds
    the stored ground-truth logit ``stored[y]``; the other columns keep their stored values."""
    gt_N = jnp.take_along_axis(stored_NxC, y_N[:, None], axis=1)[:, 0]
    top_N = jnp.where(new_C[None], current_NxC, -jnp.inf).max(-1)
    scale_N = jnp.where(top_N > gt_N, gamma * gt_N / jnp.where(top_N > gt_N, top_N, 1.0), 1.0)
    return jnp.where(new_C[None], current_NxC * scale_N[:, None], stored_NxC)


def xder_memory(capacity: int, n_classes: int, *, memory_size: int, draws: int = 2) -> DataTransform:
    """DER's logit reservoir plus ``past``, the mask of the classes of the tasks already ended."""
    inner = logit_reservoir(capacity, n_classes, memory_size=memory_size, draws=draws)

    def init(example):
        return {**inner.init(example), "past": jnp.zeros((n_classes,), bool)}

    def update(batch, state, key):
        batch, _ = inner.update(batch, state, key)
        return batch, state

    def after(batch, state, params, aux, key):
        return {**state, **inner.after(batch, state, params, aux, key)}

    return DataTransform(init, update, after)


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    C, cap = model.n_classes, options["capacity"]
    data = xder_memory(cap, C, memory_size=options["memory_batch"])
    loss = der_loss(model.apply, hp["der_alpha"], hp["der_beta"])

    def consolidate(state, task_batch, key):
        del key
        ds = state.data_state
        buf = ds["buffer"]
        task_C = (jax.nn.one_hot(task_batch["y"], C, dtype=bool) & task_batch["mask"]).any(0)
        filled_N = jnp.arange(cap) < jnp.minimum(ds["seen"], cap)
        earlier_N = filled_N & ds["past"][buf["y"]]  # rows of the tasks ended before this one
        current = jax.lax.stop_gradient(model.apply(state.params, buf["x"])).astype(jnp.float32)
        moved = transplant(buf["logits"], buf["y"], current, ~ds["past"], hp["xder_gamma"])
        logits = jnp.where(earlier_N[:, None], moved, buf["logits"])
        new_ds = {**ds, "buffer": {**buf, "logits": logits}, "past": ds["past"] | task_C}
        return state.replace(data_state=new_ds)

    return Method(loss, optimizer_from(opt, hp["lr"]), data=data, consolidate=consolidate)


def transplant_numpy(stored, y, current, new, gamma):
    """The same update written row by row in numpy (the tests' reference)."""
    out = np.array(stored, np.float64, copy=True)
    for i in range(out.shape[0]):
        cols = np.flatnonzero(new)
        top, gt = current[i, cols].max(), stored[i, y[i]]
        s = gamma * gt / top if top > gt else 1.0
        out[i, cols] = s * current[i, cols]
    return out


SPEC = register(
    MethodSpec(
        "xder",
        build,
        {
            "lr": LR(1e-3),
            "der_alpha": Hparam(0.3, 0.0, None, help="logit-matching weight"),
            "der_beta": Hparam(0.8, 0.0, None, help="replayed-label weight"),
            "xder_gamma": Hparam(
                0.85, 0.0, 1.0, help="cap of the updated logits, times the stored label logit"
            ),
        },
        {"capacity": 1000, "memory_batch": 32, **OPTIMIZER_OPTIONS},
        "X-DER: DER++ whose buffered logits of past examples take the new classes' current logits",
        paper="Boschini et al. 2022, Class-Incremental Continual Learning into the eXtended DER-verse",
        choices={"optim": OPTIMIZERS},
    )
)
