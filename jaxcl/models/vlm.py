"""A small vision-language model: image encoder -> projector -> the Llama decoder (LLaVA's design,
Liu et al., "Visual Instruction Tuning", NeurIPS 2023; the two-layer GELU projector of LLaVA-1.5,
Liu et al., "Improved Baselines with Visual Instruction Tuning", CVPR 2024).

An image ``X_v`` is cut into ``patch x patch`` patches, embedded and run through ViT blocks
(:class:`jaxcl.models.vit.Block`, no class token: every patch is an output), ``Z_v = g(X_v)``;
the projector maps each patch feature to the decoder width, ``H_v = W2 GELU(W1 Z_v + b1) + b2``
(``linear``: ``H_v = W Z_v``, the first LLaVA's), and the decoder reads ``[H_v; embed(X_q)]``: the
image tokens before the text tokens, one causal sequence with RoPE positions 0 .. N + T - 1. The
loss is LLaVA's autoregressive one on text positions only: ``-sum_i m_i log p(x_{i+1} | H_v,
x_{<=i})`` with ``m`` the answer mask; the image positions have no targets (their outputs are
dropped, :func:`jaxcl.models.llama.forward`'s ``prefix_BxPxD``).

Parameters: the Llama's own dict (``embed``, ``layers``, ``final_norm``; every Llama tool, LoRA's
``layers/wq`` targets and the Hugging Face names of :func:`jaxcl.hf.llama_params`, applies
unchanged) plus ``vision``: the encoder and the projector. A batch carries its image:
``{'image': uint8 BxHxWxC, 'tokens': BxT, 'mask': BxT}``; :class:`VisionLanguageModel` is a
:class:`jaxcl.models.lm.LanguageModel` whose ``apply`` takes ``(params, image, tokens)`` and
whose ``nll`` / ``token_logits`` / ``token_logprobs`` read the batch's image, so the registry's
methods and :class:`jaxcl.lmprogram.LMProgram` train it like the Llama. Methods that read the
decoder's hidden states by name (RMU, GeRe) see the text alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import llama
from .base import to_float
from .vit import Block, patchify

PROJECTORS = ("mlp", "linear")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    text: llama.LlamaConfig  # the decoder
    image_shape: tuple = (16, 16, 1)  # H, W, C
    patch: int = 4
    enc_dim: int = 32
    enc_depth: int = 1
    enc_heads: int = 2
    enc_mlp: int = 64
    projector: str = "mlp"  # "mlp": LLaVA-1.5's Linear-GELU-Linear; "linear": LLaVA's

    @property
    def n_image_tokens(self) -> int:
        h, w, _ = self.image_shape
        return (h // self.patch) * (w // self.patch)

    def replace(self, **kw) -> VLMConfig:
        return dataclasses.replace(self, **kw)


def tiny(**kw) -> VLMConfig:
    """A test-sized VLM: 16x16x1 images (16 image tokens), one encoder block, the tiny Llama."""
    text = kw.pop("text", None) or llama.tiny()
    return VLMConfig(text=text, **kw)


class Vision(nnx.Module):
    """The image encoder and the projector: ``image_BxHxWxC -> image tokens_BxNxD``."""

    def __init__(self, vc: VLMConfig, *, rngs: nnx.Rngs):
        h, w, c = vc.image_shape
        if h % vc.patch or w % vc.patch:
            raise ValueError(f"VLM: image {h}x{w} is not divisible by patch={vc.patch}")
        if vc.projector not in PROJECTORS:
            raise ValueError(f"VLM: projector={vc.projector!r}; valid: {', '.join(PROJECTORS)}")
        self.patch, E, D = vc.patch, vc.enc_dim, vc.text.d_model
        self.embed = nnx.Linear(vc.patch * vc.patch * c, E, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, vc.n_image_tokens, E)))
        self.blocks = nnx.List([Block(E, vc.enc_heads, vc.enc_mlp, rngs=rngs) for _ in range(vc.enc_depth)])
        self.ln = nnx.LayerNorm(E, rngs=rngs)
        self.proj1 = nnx.Linear(E, D, rngs=rngs, use_bias=vc.projector == "mlp")
        self.proj2 = nnx.Linear(D, D, rngs=rngs) if vc.projector == "mlp" else None

    def __call__(self, image_BxHxWxC):
        z_BxNxE = self.embed(patchify(to_float(image_BxHxWxC), self.patch)) + self.pos[...]
        for blk in self.blocks:
            z_BxNxE = blk(z_BxNxE)
        h_BxNxD = self.proj1(self.ln(z_BxNxE))
        return h_BxNxD if self.proj2 is None else self.proj2(jax.nn.gelu(h_BxNxD))


def _vision_graph(vc: VLMConfig):
    return nnx.split(nnx.eval_shape(lambda: Vision(vc, rngs=nnx.Rngs(0))), nnx.Param)[0]


def init_params(vc: VLMConfig, key) -> dict:
    """Random parameters: the Llama's dict plus ``vision`` (a pure dict); works under vmap."""
    k_text, k_vis = jax.random.split(key)
    params = llama.Llama(vc.text, rngs=nnx.Rngs(params=k_text)).params()
    params["vision"] = nnx.to_pure_dict(nnx.state(Vision(vc, rngs=nnx.Rngs(params=k_vis)), nnx.Param))
    return params


def image_tokens(vc: VLMConfig, params, image_BxHxWxC, graph=None):
    """The projected image tokens ``H_v``: (B, N, d_model), float32."""
    graph = _vision_graph(vc) if graph is None else graph
    return nnx.merge(graph, llama.pure_dict(params)["vision"])(image_BxHxWxC)


def forward(vc: VLMConfig, params, image_BxHxWxC, tokens_BxT, *, graph=None, **kw):
    """:func:`jaxcl.models.llama.forward` with the image tokens before ``tokens_BxT``: logits
    (or hidden states, ``return_hidden``) of the T text positions."""
    prefix_BxNxD = image_tokens(vc, params, image_BxHxWxC, graph)
    return llama.forward(vc.text, params, tokens_BxT, prefix_BxPxD=prefix_BxNxD, **kw)


def token_logprobs(vc: VLMConfig, params, image_BxHxWxC, tokens_BxT, *, graph=None):
    """log p(tokens[t+1] | image, tokens[:t+1]) for t < T-1: (B, T-1), float32."""
    h_BxTxD = forward(vc, params, image_BxHxWxC, tokens_BxT[:, :-1], graph=graph, return_hidden=True)
    return llama.target_logprobs(vc.text, params, h_BxTxD, tokens_BxT[:, 1:])


class VisionLanguageModel(NamedTuple):
    """A VLM as the registry sees it: :class:`jaxcl.models.lm.LanguageModel`'s fields, ``apply``
    taking the image, and the batch-reading ``token_logits`` / ``token_logprobs`` that
    :mod:`jaxcl.losses` uses instead of the Llama's."""

    init: Callable  # key -> params
    apply: Callable  # (params, image_BxHxWxC, tokens_BxT) -> logits_BxTxV
    nll: Callable  # (params, {'image', 'tokens', 'mask'}) -> (nll_B, count_B)
    cfg: llama.LlamaConfig  # the decoder's
    name: str
    lora: object = None
    token_logits: Callable | None = None  # (params, sub) -> (logits_BxTxV, targets_BxT, mask_BxT)
    token_logprobs: Callable | None = None  # (params, sub) -> (logp_BxT, mask_BxT)
    vcfg: VLMConfig | None = None
    # (params, rows) -> the image tokens H_v (B, N, d_model) of rows['image']: what a method that
    # feeds the decoder itself (GRPO's rollouts and policy log-probs, jaxcl.grpo.Context) puts
    # before the text
    prefix: Callable | None = None
    prefix_keys: tuple = ("image",)


def vision_language_model(vc: VLMConfig, name: str = "vlm") -> VisionLanguageModel:
    graph = _vision_graph(vc)

    def apply(params, image_BxHxWxC, tokens_BxT):
        return forward(vc, params, image_BxHxWxC, tokens_BxT, graph=graph)

    def logprobs(params, sub):
        lp_BxT = token_logprobs(vc, params, sub["image"], sub["tokens"], graph=graph)
        return lp_BxT, sub["mask"][:, 1:].astype(jnp.float32)

    def nll(params, sub):
        lp_BxT, m_BxT = logprobs(params, sub)
        return -(lp_BxT * m_BxT).sum(-1), m_BxT.sum(-1)

    def logits(params, sub):
        logits_BxTxV = apply(params, sub["image"], sub["tokens"][:, :-1])
        return logits_BxTxV, sub["tokens"][:, 1:], sub["mask"][:, 1:].astype(jnp.float32)

    def prefix(params, rows):
        return image_tokens(vc, params, rows["image"], graph)

    return VisionLanguageModel(
        lambda key: init_params(vc, key), apply, nll, vc.text, name, None, logits, logprobs, vc, prefix
    )


def generate(vc: VLMConfig, params, image_BxHxWxC, prompts, *, max_new_tokens: int, **kw):
    """:func:`jaxcl.generate.generate` (KV cache, greedy by default) with each row's image tokens
    before its (left-padded) prompt: new tokens (B, max_new_tokens)."""
    from ..generate import generate as gen

    prefix_BxNxD = jax.jit(lambda p, x: image_tokens(vc, p, x))(params, jnp.asarray(image_BxHxWxC))
    return gen(vc.text, params, prompts, max_new_tokens=max_new_tokens, prefix=prefix_BxNxD, **kw)


# ----------------------------------------------------------------------------- config section

DIMS = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "patch",
    "enc_dim",
    "enc_depth",
    "enc_heads",
    "enc_mlp",
)


def section(**kw) -> dict:
    """A study config's ``model`` section for a scratch VLM: the decoder's dimensions (default
    :data:`jaxcl.models.lm.SIZES`' ``xs``), the encoder's (``patch``, ``enc_*``), ``projector``
    (:data:`PROJECTORS`), ``compute_dtype`` and ``lora`` (:func:`jaxcl.models.lora.section`;
    rank 0: off; targets: the decoder's linears)."""
    from . import lm
    from . import lora as lora_mod

    base = {**lm.SIZES["xs"], "patch": 4, "enc_dim": 32, "enc_depth": 1, "enc_heads": 2, "enc_mlp": 64}
    out = {**base, "projector": "mlp", "compute_dtype": "float32", "lora": lora_mod.section()}
    out.update({k: v for k, v in kw.items() if k != "lora"})
    out["lora"] = {**out["lora"], **kw.get("lora", {})}
    return out


def from_section(sec: dict, image_shape: tuple, vocab_size: int, max_seq_len: int) -> VisionLanguageModel:
    """The scratch VLM of a ``model`` section (:func:`section`) for images of ``image_shape`` and
    text of ``max_seq_len`` tokens; a :class:`jaxcl.config.ConfigError` (one line) for a bad key."""
    from ..config import ConfigError
    from . import lora as lora_mod

    if set(sec) != set(section()):
        raise ConfigError(
            f"model: keys {sorted(set(sec) ^ set(section()))} differ from {', '.join(section())}"
        )
    for k in DIMS:
        if not isinstance(sec[k], int) or sec[k] <= 0:
            raise ConfigError(f"model.{k}={sec[k]!r} must be a positive integer")
    if sec["projector"] not in PROJECTORS:
        raise ConfigError(f"model.projector={sec['projector']!r}; valid: {', '.join(PROJECTORS)}")
    if (
        sec["d_model"] % sec["n_heads"]
        or sec["n_heads"] % sec["n_kv_heads"]
        or sec["enc_dim"] % sec["enc_heads"]
    ):
        raise ConfigError("model.n_heads must divide model.d_model, n_kv_heads n_heads, enc_heads enc_dim")
    h, w, _ = image_shape
    if h % sec["patch"] or w % sec["patch"]:
        raise ConfigError(f"model.patch={sec['patch']} does not divide the {h}x{w} images; pick a divisor")
    text = llama.LlamaConfig(
        vocab_size=vocab_size,
        max_seq_len=max_seq_len + (h // sec["patch"]) * (w // sec["patch"]),
        compute_dtype=sec["compute_dtype"],
        **{k: sec[k] for k in DIMS[:5]},
    )
    vc = VLMConfig(text, tuple(image_shape), projector=sec["projector"], **{k: sec[k] for k in DIMS[5:]})
    model = vision_language_model(vc, f"vlm-d{sec['d_model']}-l{sec['n_layers']}")
    return model._replace(lora=lora_mod.from_section(sec["lora"], model))


# ----------------------------------------------------------------------------- hub weights

# where a LLaVA-family checkpoint keeps its parts (transformers < 4.52, then >= 4.52)
HUB_LAYOUTS = (
    ("language_model.model.", "language_model.lm_head.weight", "multi_modal_projector."),
    ("model.language_model.", "lm_head.weight", "model.multi_modal_projector."),
)


def load_hub(path: str, vc: VLMConfig, *, key=None) -> tuple[VLMConfig, dict, list[str]]:
    """``(config, params, loaded)`` from a LLaVA-family checkpoint folder (``config.json`` with a
    ``text_config``, ``*.safetensors``): the decoder always (its shape from ``text_config``,
    replacing ``vc.text``; :func:`jaxcl.hf.llama_params`), the projector where the shapes allow
    (``linear_1``/``linear_2`` onto ``vision/proj1``/``proj2`` when ``vc.projector == 'mlp'`` and
    ``linear_1`` reads ``vc.enc_dim`` features), the rest (our small encoder; the hub's is a CLIP
    or SigLIP tower) initialised from ``key``. ``loaded`` names what came from the file."""
    from safetensors.numpy import load_file

    from .. import hf

    with open(os.path.join(path, "config.json")) as f:
        conf = json.load(f)
    if "text_config" not in conf:
        raise ValueError(f"{path}/config.json has no text_config: not a LLaVA-family checkpoint")
    text = hf.hf_config_to_llama(
        {"model_type": "llama", **conf["text_config"]},
        compute_dtype=vc.text.compute_dtype,
        remat=vc.text.remat,
    )
    vc = vc.replace(text=text)
    tensors = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, fn)))
    layout = next((lay for lay in HUB_LAYOUTS if lay[0] + "embed_tokens.weight" in tensors), None)
    if layout is None:
        raise ValueError(f"{path}: no decoder tensors under {' or '.join(lay[0] for lay in HUB_LAYOUTS)}")
    prefix, head, proj = layout

    def get(name, k=None):
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} (for {k or name}) in {path}")
        return np.asarray(tensors[name], np.float32)

    params = jax.tree.map(jnp.asarray, hf.llama_params(text, get, prefix, head))
    for k, s in llama.layer_shapes(text).items():
        if params["layers"][k].shape != (text.n_layers, *s):
            raise ValueError(
                f"{path}: layers/{k} has shape {params['layers'][k].shape}, text_config wants {s}"
            )
    key = jax.random.key(0) if key is None else key
    params["vision"] = init_params(vc, key)["vision"]
    loaded = ["decoder"]
    w1 = tensors.get(proj + "linear_1.weight")
    if vc.projector == "mlp" and w1 is not None and w1.shape == (text.d_model, vc.enc_dim):
        v = params["vision"]
        v["proj1"] = {
            "kernel": jnp.asarray(get(proj + "linear_1.weight").T),
            "bias": jnp.asarray(get(proj + "linear_1.bias")),
        }
        v["proj2"] = {
            "kernel": jnp.asarray(get(proj + "linear_2.weight").T),
            "bias": jnp.asarray(get(proj + "linear_2.bias")),
        }
        loaded.append("projector")
    return vc, params, loaded


__all__ = [
    "VLMConfig",
    "VisionLanguageModel",
    "forward",
    "from_section",
    "generate",
    "image_tokens",
    "init_params",
    "load_hub",
    "section",
    "tiny",
    "token_logprobs",
    "vision_language_model",
]
