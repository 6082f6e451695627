"""LoRA: low-rank adapters on chosen weights (Hu et al., "LoRA: Low-Rank Adaptation of Large
Language Models", ICLR 2022), as a model option of every study: ``--set model.lora.rank=8``.

LoRA here is a *split of the parameters*: a small trainable pytree of adapters and the frozen
base. The effective weight of each target is (the paper's Eq. 3, ``h = W0 x + (alpha / r) B A x``,
written for ``x @ W`` with ``W`` of shape (in, out))

    W = W0 + (alpha / r) * A @ B,    A: (in, r) ~ N(0, 1 / in),   B: (r, out) = 0,

so training starts at the base model. :func:`adapt` turns a model into one whose ``params`` are
the adapters (its ``init`` gives fresh adapters, its ``apply`` / ``nll`` / ``features`` merge them
into the base first; a Llama's adapters stay unmerged, :class:`LowRank`), so every jaxcl method (loss wrappers, optax transforms such as GU's
projection, data transforms, edits such as SSD's dampening) runs on the adapters unchanged. The
base is an *argument*: :func:`adapt` is called inside the compiled program with the base as a
traced value (the frozen base travels in ``TrainState.frozen``, see :func:`jaxcl.loops.Phase`
and :class:`jaxcl.lmprogram.LMProgram`), never closed over as a constant. :func:`merge` gives
ordinary params for evaluation and export.

Targets are '/'-joined key paths into the params dict, globs allowed (``blocks/*/fc1/kernel``).
A weight of shape ``(..., in, out)`` keeps its leading axes as batch axes: the Llama's stacked
layer axis (one adapter per layer), a convolution's ``(kh, kw)`` taps (one rank-r product per
tap). Defaults (:data:`DEFAULT_TARGETS`): the Llama's query and value projections (the paper's
choice, Sec. 7.1); the ViT's MLP dense layers of every block (its attention kernels are
``(d, heads, head_dim)`` tensors, not matrices); the ResNet's last block's two convolutions and
the classifier. ``alpha`` defaults to 8, the first rank the paper tries with alpha = r ("we
simply set alpha to the first r we try and do not tune it", Sec. 4.1): scale 1 at rank 8.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable

import jax
import jax.numpy as jnp

LLAMA_ATTN = ("layers/wq", "layers/wk", "layers/wv", "layers/wo")
LLAMA_ALL = LLAMA_ATTN + ("layers/w_gate", "layers/w_up", "layers/w_down")
# the targets of an empty ``model.lora.targets``, per model family
DEFAULT_TARGETS = {
    "llama": ("layers/wq", "layers/wv"),
    "vit": ("blocks/*/fc1/kernel", "blocks/*/fc2/kernel"),
    "resnet": ("blocks/7/conv1/kernel", "blocks/7/conv2/kernel", "head/kernel"),
    "other": ("*kernel",),  # the MLP's and the CNN's dense and convolution kernels
}
KEY = 0x10AA  # folded into a phase's key for its adapters' initialisation


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    targets: tuple[str, ...] = ("layers/wq", "layers/wv")
    rank: int = 8
    alpha: float = 8.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def section(rank: int = 0, alpha: float = 8.0, targets: tuple = ()) -> dict:
    """A config's ``model.lora`` section: ``rank`` (0: off, the default), ``alpha`` (the scale
    is ``alpha / rank``), ``targets`` (globs over the params' key paths; empty: the model's
    :data:`DEFAULT_TARGETS`)."""
    return {"rank": rank, "alpha": alpha, "targets": tuple(targets)}


def family(model) -> str:
    """``llama``, ``vit``, ``resnet`` or ``other`` (the key of :data:`DEFAULT_TARGETS`)."""
    if hasattr(model, "nll"):
        return "llama"
    name = getattr(model, "name", "")
    return next((f for f in ("vit", "resnet") if name.startswith(f)), "other")


def _path_str(path) -> str:
    parts = []
    for p in path:
        parts.append(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))))
    return "/".join(parts)


def _matches(spec: LoraSpec, name: str) -> bool:
    return any(
        fnmatch.fnmatchcase(name, t) or (t.endswith("*") and name.startswith(t[:-1])) for t in spec.targets
    )


def valid_names(params, fam: str = "other") -> list[str]:
    """The weights LoRA can adapt: the Llama's stacked linears (:data:`LLAMA_ALL`), a
    classifier's dense (2-d) and convolution (4-d) kernels."""
    names = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if fam == "llama":
        return [n for n in names if n in LLAMA_ALL]
    return [n for n, x in names.items() if n.endswith("kernel") and len(x.shape) in (2, 4)]


def spec_of(sec: dict | None, fam: str, valid) -> LoraSpec | None:
    """The :class:`LoraSpec` of a ``model.lora`` section (None: rank 0, off) for a model of
    family ``fam`` whose adaptable weights are ``valid``, or a :class:`jaxcl.config.ConfigError`
    naming ``model.lora.<key>`` and the valid values (no shapes needed: a config check)."""
    from ..config import ConfigError

    if not sec or not sec.get("rank"):
        return None
    if set(sec) != set(section()):
        raise ConfigError(f"model.lora: keys {sorted(sec)}; valid: rank, alpha, targets")
    rank, alpha = sec["rank"], sec["alpha"]
    if not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"model.lora.rank={rank!r} must be a non-negative integer (0: LoRA off)")
    if not isinstance(alpha, int | float) or alpha <= 0:
        raise ConfigError(f"model.lora.alpha={alpha!r} must be positive (the scale is alpha / rank)")
    spec = LoraSpec(tuple(sec["targets"]) or DEFAULT_TARGETS[fam], rank, float(alpha))
    for t in spec.targets:
        if not any(_matches(LoraSpec((t,)), n) for n in valid):
            raise ConfigError(
                f"model.lora.targets: {t!r} matches no weight LoRA can adapt; valid: {', '.join(valid)}"
            )
    return spec


def from_section(sec: dict | None, model, params_like=None) -> LoraSpec | None:
    """:func:`spec_of` for ``model`` (its family and its weights: ``params_like``, the params or
    their shapes, default ``eval_shape(model.init)``), the rank checked against the targets'
    dimensions."""
    from ..config import ConfigError

    if not sec or not sec.get("rank"):
        return None
    fam = family(model)
    if params_like is None:
        params_like = jax.eval_shape(model.init, jax.random.key(0))
    valid = valid_names(params_like, fam)
    spec = spec_of(sec, fam, valid)
    for n in valid:
        if _matches(spec, n) and spec.rank > min(_shape(params_like, n)[-2:]):
            raise ConfigError(
                f"model.lora.rank={spec.rank} exceeds a dimension of {n}; lower model.lora.rank"
            )
    return spec


def _shape(params, name):
    flat = {_path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    return flat[name].shape


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LowRank:
    """A frozen weight ``w`` (..., in, out) with its adapter, unmerged: :func:`matmul` computes
    ``x @ (w + scale A B)`` as ``x @ w + scale (x @ A) @ B`` (the paper's Eq. 3 as written, and
    PEFT's order). The gradient with respect to the adapters then never forms the full
    (in, out) weight gradient that differentiating a merged weight does (``x^T dy``: as many
    FLOPs as the forward matmul), and no merged copy of ``w`` is kept for the backward."""

    w: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = dataclasses.field(metadata={"static": True})


def matmul(x, w):
    """``x @ w`` for a weight or a :class:`LowRank` (all operands in ``x``'s dtype)."""
    if isinstance(w, LowRank):
        dt = x.dtype
        return x @ w.w.astype(dt) + w.scale * ((x @ w.a.astype(dt)) @ w.b.astype(dt))
    return x @ w


def attach(spec: LoraSpec, base, adapters):
    """:func:`merge`, except that a Llama's stacked linears (:data:`LLAMA_ALL`) become
    :class:`LowRank` leaves that its forward multiplies unmerged (:func:`matmul`); the same
    function of the adapters to rounding."""
    llama = {n: ad for n, ad in adapters.items() if n in LLAMA_ALL}
    rest = {n: ad for n, ad in adapters.items() if n not in LLAMA_ALL}
    out = merge(spec, base, rest) if rest else base
    if not llama:
        return out
    layers = dict(out["layers"])
    for n, ad in llama.items():
        k = n.split("/", 1)[1]
        layers[k] = LowRank(layers[k], ad["a"], ad["b"], spec.scale)
    return {**out, "layers": layers}


def merge(spec: LoraSpec, base, adapters):
    """Params with every target replaced by `W + scale * A @ B` (pure, differentiable in both)."""

    def f(path, w):
        name = _path_str(path)
        if name in adapters:
            return w + delta(spec, adapters[name]).astype(w.dtype)
        return w

    return jax.tree_util.tree_map_with_path(f, base)


def adapt(model, spec: LoraSpec, base):
    """``model`` (a :class:`jaxcl.models.lm.LanguageModel` or :class:`jaxcl.models.PureModel`)
    whose params are ``spec``'s adapters over ``base``: ``init(key)`` fresh adapters, ``apply`` /
    ``nll`` / ``features`` (and a ResNet's ``apply_train``) of the merged params; its ``lora`` is
    ``"adapters"`` (a method that reads a Llama's params by name refuses it). A Llama's adapters
    are not merged: its forward computes ``x @ W0 + s (x @ A) @ B`` (:func:`attach`). Call it
    inside the compiled program with ``base`` traced."""
    on = lambda fn: lambda ad, *a, **k: fn(attach(spec, base, ad), *a, **k)
    fields = {"init": lambda key: init(spec, base, key), "lora": "adapters"}
    wrapped = ("apply", "nll", "features", "token_logits", "token_logprobs")
    fields.update({f: on(getattr(model, f)) for f in wrapped if getattr(model, f, None) is not None})
    out = model._replace(**fields)
    if hasattr(model, "apply_train"):
        out.apply_train = on(model.apply_train)
    return out


def wrap_apply(spec: LoraSpec, apply: Callable) -> Callable:
    """`apply(params, *a, **k)` -> `apply_lora(adapters, base, *a, **k)` (over :func:`attach`)."""

    def apply_lora(adapters, base, *args, **kwargs):
        return apply(attach(spec, base, adapters), *args, **kwargs)

    return apply_lora


def wrap_loss(spec: LoraSpec, loss_fn: Callable, base) -> Callable:
    """A `LossFn` over the adapters: `(adapters, batch, key) -> loss_fn(attach(base, adapters), ...)`
    (a Llama's adapters unmerged, :func:`attach`: ``loss_fn`` passes the params to the model).

    Call it where `base` is a traced value (inside the jitted run), not a global array.
    """

    def lora_loss(adapters, batch, key):
        return loss_fn(attach(spec, base, adapters), batch, key)

    return lora_loss


def count(adapters) -> int:
    return sum(x.size for x in jax.tree.leaves(adapters))
