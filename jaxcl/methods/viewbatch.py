"""The view-batch model (Kang, Seifert, Lee and Ryu, "Do Your Best and Get Enough Rest for
Continual Learning", CVPR 2025), on experience replay.

Ebbinghaus' forgetting curve: learn a sample thoroughly, then rest long enough before seeing it
again. Two pieces:

* **View-batch replay** (the recall interval): a batch of B rows holds only ``n = B / R`` distinct
  samples, each as ``R`` views in a row (view 0 as drawn, views 1..R-1 randomly shifted by up to
  ``shift`` pixels). The number of steps is unchanged, so each sample is drawn R times less often:
  with a task of N examples drawn uniformly, the expected interval between two visits of a sample
  grows from ``N / B`` to ``R * N / B`` steps, and each visit learns it R times. Here the ``n``
  distinct rows are the first ``n`` of the drawn batch; a fraction ``replay_fraction`` of them is
  replaced by reservoir-buffer samples (ER) before the views are made, so replayed samples get the
  same treatment, and the buffer stores only the rows actually learned.
* **View-batch self-supervision**: the views of one sample should agree with its first view,

      L = CE(f(x_v), y) averaged over all B rows
          + alpha * mean_{i, v >= 1} KL( sg(softmax f(x_{i,0})) || softmax f(x_{i,v}) ),

  as the authors' code (``prog_alpha = 1``, 4 views by default).
"""

import jax
import jax.numpy as jnp
import optax

from ..data.replay import reservoir
from ..engine import DataTransform
from ..losses import masked_logits
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


def shift_images(x_BxHxWxC, key, max_shift: int):
    """Shift every image by its own random offset in ``[-max_shift, max_shift]`` along each axis
    longer than 1 (zero fill)."""
    _, h, w, _ = x_BxHxWxC.shape
    sh, sw = (max_shift if h > 1 else 0), (max_shift if w > 1 else 0)
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (sh, sh), (sw, sw), (0, 0)))
    k1, k2 = jax.random.split(key)
    b = x_BxHxWxC.shape[0]
    dy = jax.random.randint(k1, (b,), 0, 2 * sh + 1)
    dx = jax.random.randint(k2, (b,), 0, 2 * sw + 1)
    one = lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, img.shape[-1]))  # noqa: E731
    return jax.vmap(one)(padded, dy, dx)


def view_batch(inner: DataTransform, views: int, shift: int) -> DataTransform:
    """View-batch replay around a replay transform ``inner`` (see the module docstring); the batch
    gains ``batch['view']`` (0..views-1)."""

    def update(batch, state, key):
        b = batch["y"].shape[0]
        if b % views:
            raise ValueError(f"view-batch replay: the batch size {b} is not a multiple of views={views}")
        n = b // views
        k_inner, k_aug = jax.random.split(key)
        sub = jax.tree.map(lambda a: a[:n], batch)
        sub, state = inner.update(sub, state, k_inner)
        rep = jax.tree.map(lambda a: jnp.repeat(a, views, axis=0), sub)
        view = jnp.tile(jnp.arange(views, dtype=jnp.int32), n)
        moved = shift_images(rep["x"], k_aug, shift)
        first = (view == 0).reshape((b,) + (1,) * (rep["x"].ndim - 1))
        return {**rep, "x": jnp.where(first, rep["x"], moved), "view": view}, state

    return DataTransform(inner.init, update, inner.after)


def view_consistency(logits_BxC, views: int):
    """``mean_{i, v >= 1} KL(sg(p_{i,0}) || p_{i,v})`` for rows grouped ``views`` at a time."""
    logp = jax.nn.log_softmax(logits_BxC).reshape(-1, views, logits_BxC.shape[-1])
    ref = jax.lax.stop_gradient(logp[:, :1])
    kl = (jnp.exp(ref) * (ref - logp[:, 1:])).sum(-1)
    return kl.mean()


def build(model, hp, params_like, **options):
    del params_like
    opt = pop_optimizer(options)
    views = options["views"]
    if views < 2:
        raise ValueError(f"viewbatch.views={views} must be >= 2 (1 is plain ER)")
    res = reservoir(options["capacity"], hp["replay_fraction"], fields=("x", "y", "t", "mask"))
    data = view_batch(res, views, options["shift"])

    def loss_fn(params, batch, key):
        del key
        logits = masked_logits(model.apply(params, batch["x"]), batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        ssl = view_consistency(logits, views)
        acc = (logits.argmax(-1) == batch["y"]).mean()
        return ce + hp["vb_alpha"] * ssl, {"ce": ce, "view_kl": ssl, "train_acc": acc}

    return Method(loss_fn, optimizer_from(opt, hp["lr"]), data=data)


SPEC = register(
    MethodSpec(
        "viewbatch",
        build,
        {
            "lr": LR(1e-3),
            "replay_fraction": Hparam(0.5, 0.0, 1.0, help="replayed rows among the distinct samples"),
            "vb_alpha": Hparam(1.0, 0.0, None, help="weight of the view-batch self-supervised term"),
        },
        {"capacity": 1000, "views": 4, "shift": 2, **OPTIMIZER_OPTIONS},
        "view-batch model on ER: R views of B/R samples per batch (longer recall interval), view KL",
        paper="Kang et al. 2025, Do Your Best and Get Enough Rest for Continual Learning",
        choices={"optim": OPTIMIZERS},
    )
)
