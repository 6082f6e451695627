"""LoRA: low-rank adapters on chosen linear weights (Hu et al., "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR 2022).

LoRA here is a *split of the parameters*: a small trainable pytree of adapters and the frozen base.
The effective weight of each target is `W + scale * A @ B` (A: in x r, random; B: r x out, zero, so
training starts at the base model). Everything downstream sees only the adapters as "params", so
every jaxcl wrapper (loss wrappers, optax gradient transforms such as GU, data transforms, edits)
works on them unchanged:

    spec = lora.LoraSpec(targets=("layers/wq", "layers/wv"), rank=8, alpha=16)
    adapters = lora.init(spec, base, jax.random.key(0))
    opt_state = tx.init(adapters)                      # any optax transform, adapters only

    @jax.jit
    def train(adapters, opt_state, base, batches):    # base is an argument, not a closure
      loss_fn = lora.wrap_loss(spec, full_loss_fn, base)   # an ordinary LossFn over adapters
      def step(carry, batch):
        adapters, opt_state = carry
        grads, aux = jax.grad(loss_fn, has_aux=True)(adapters, batch, None)
        updates, opt_state = tx.update(grads, opt_state, adapters)
        return (optax.apply_updates(adapters, updates), opt_state), aux
      return jax.lax.scan(step, (adapters, opt_state), batches)

Build the adapter `LossFn` inside the jitted function (so `base` is a traced argument and not a
compile-time constant). `merge(spec, base, adapters)` gives ordinary params for deployment.

Targets are '/'-joined key paths into the params dict (e.g. "layers/wq" for the stacked query
weights of `jaxcl.models.llama`, whose leading layer axis is kept as a batch axis). A target may
end in '*' to match a prefix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

LLAMA_ATTN = ("layers/wq", "layers/wk", "layers/wv", "layers/wo")
LLAMA_ALL = LLAMA_ATTN + ("layers/w_gate", "layers/w_up", "layers/w_down")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    targets: tuple[str, ...] = ("layers/wq", "layers/wv")
    rank: int = 8
    alpha: float = 16.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _path_str(path) -> str:
    parts = []
    for p in path:
        parts.append(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))))
    return "/".join(parts)


def _matches(spec: LoraSpec, name: str) -> bool:
    return any(name == t or (t.endswith("*") and name.startswith(t[:-1])) for t in spec.targets)


def target_paths(spec: LoraSpec, params) -> list[str]:
    names = [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    found = [n for n in names if _matches(spec, n)]
    missing = [t for t in spec.targets if not any(_matches(LoraSpec((t,)), n) for n in found)]
    if missing:
        raise ValueError(f"LoRA targets {missing} not found in params; available: {names}")
    return found


def init(spec: LoraSpec, params, key) -> dict[str, dict[str, jax.Array]]:
    """Adapters `{path: {"a": (..., in, r), "b": (..., r, out)}}`; B = 0 so merge(base) == base."""
    flat = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    out = {}
    for i, name in enumerate(target_paths(spec, params)):
        w = flat[name]
        if w.ndim < 2:
            raise ValueError(f"LoRA target {name} has shape {w.shape}; need a (..., in, out) weight")
        *lead, d_in, d_out = w.shape
        a = jax.random.normal(jax.random.fold_in(key, i), (*lead, d_in, spec.rank), jnp.float32)
        out[name] = {"a": a / jnp.sqrt(d_in), "b": jnp.zeros((*lead, spec.rank, d_out), jnp.float32)}
    return out


def delta(spec: LoraSpec, ad: dict[str, jax.Array]):
    return spec.scale * jnp.einsum("...ir,...ro->...io", ad["a"], ad["b"])


def merge(spec: LoraSpec, base, adapters):
    """Params with every target replaced by `W + scale * A @ B` (pure, differentiable in both)."""

    def f(path, w):
        name = _path_str(path)
        if name in adapters:
            return w + delta(spec, adapters[name]).astype(w.dtype)
        return w

    return jax.tree_util.tree_map_with_path(f, base)


def wrap_apply(spec: LoraSpec, apply: Callable) -> Callable:
    """`apply(params, *a, **k)` -> `apply_lora(adapters, base, *a, **k)`."""

    def apply_lora(adapters, base, *args, **kwargs):
        return apply(merge(spec, base, adapters), *args, **kwargs)

    return apply_lora


def wrap_loss(spec: LoraSpec, loss_fn: Callable, base) -> Callable:
    """A `LossFn` over the adapters: `(adapters, batch, key) -> loss_fn(merge(base, adapters), ...)`.

    Call it where `base` is a traced value (inside the jitted run), not a global array.
    """

    def lora_loss(adapters, batch, key):
        return loss_fn(merge(spec, base, adapters), batch, key)

    return lora_loss


def count(adapters) -> int:
    return sum(x.size for x in jax.tree.leaves(adapters))
