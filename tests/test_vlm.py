"""The vision-language model (jaxcl.models.vlm) and its offline image-text data (jaxcl.data.multimodal):
the image prefix against the plain Llama, KV-cache generation against recomputation, training
through LMProgram (the image matters; vmapped seeds = separate runs; LoRA trains adapters only),
the data's answers against numpy, the hub loader's round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import losses
from jaxcl.data import multimodal as M
from jaxcl.lmprogram import LMProgram
from jaxcl.methods import get_method
from jaxcl.models import llama, lora, vlm

VC = vlm.tiny()
MODEL = vlm.vision_language_model(VC)


@pytest.fixture(scope="module")
def digits():
    return M.source("digits", "train")


@pytest.fixture(scope="module")
def params():
    return MODEL.init(jax.random.key(0))


def _images(n, seed=1):
    return jax.random.randint(jax.random.key(seed), (n, *VC.image_shape), 0, 256).astype(jnp.uint8)


def test_prefix_is_the_llama_on_the_joined_sequence(params):
    """Image tokens that equal token embeddings give the plain Llama's logits of the joined
    sequence (the prefix takes positions 0..N-1, the text N..N+T-1, one causal sequence)."""
    ptok = jax.random.randint(jax.random.key(3), (2, 5), 0, 256)
    tok = jax.random.randint(jax.random.key(4), (2, 7), 0, 256)
    prefix = params["embed"][ptok]
    got = llama.forward(VC.text, params, tok, prefix_BxPxD=prefix)
    want = llama.forward(VC.text, params, jnp.concatenate([ptok, tok], 1))[:, 5:]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_image_changes_logits_jit_equals_eager_and_nll_matches_numpy(params):
    img, tok = _images(3), jax.random.randint(jax.random.key(2), (3, 9), 0, 256)
    mask = np.zeros((3, 9), bool)
    mask[:, 4:7] = True
    sub = {"image": img, "tokens": tok, "mask": jnp.asarray(mask)}
    logits = MODEL.apply(params, img, tok)
    assert logits.shape == (3, 9, VC.text.vocab_size)
    assert float(jnp.abs(logits - MODEL.apply(params, img[::-1], tok)).max()) > 1e-3
    np.testing.assert_allclose(jax.jit(MODEL.apply)(params, img, tok), logits, atol=1e-5)
    # the summed answer NLL from the logits, in numpy: targets tokens[t+1], mask[t+1]
    lg = np.asarray(logits, np.float64)[:, :-1]
    lp = (
        lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
    )
    t = np.asarray(tok)[:, 1:]
    want = -(np.take_along_axis(lp, t[..., None], -1)[..., 0] * mask[:, 1:]).sum(-1)
    nll, count = jax.jit(MODEL.nll)(params, sub)
    np.testing.assert_allclose(nll, want, rtol=1e-4)
    np.testing.assert_array_equal(count, mask[:, 1:].sum(-1))
    lp_BxT, m = losses.token_logprobs(MODEL)(params, sub)  # the losses' dispatch reads the image
    np.testing.assert_allclose(-(lp_BxT * m).sum(-1), want, rtol=1e-4)


def test_greedy_generation_with_the_image_prefix_matches_recomputation(params):
    img = _images(2, seed=5)
    prompts = [[104, 105, 10], [97, 10]]
    out = np.asarray(vlm.generate(VC, params, img, prompts, max_new_tokens=4, pad_multiple=1))
    for b, p in enumerate(prompts):  # no cache: the full forward, argmax, append
        seq = list(p)
        for _ in range(4):
            lg = MODEL.apply(params, img[b : b + 1], jnp.asarray([seq]))
            seq.append(int(jnp.argmax(lg[0, -1])))
        assert list(out[b]) == seq[len(p) :]


# -- data --------------------------------------------------------------------------------------------


def test_counting_and_comparison_answers_match_numpy(digits):
    x, y = digits
    ex = M.counting(x, y, 64, seed=3)
    assert ex.image.shape == (64, 16, 16, 1) and ex.tokens.shape == (64, 64)
    for i, (q, a) in enumerate(zip(ex.prompt, ex.answer, strict=True)):
        lab = ex.labels[i]
        if q.startswith("how many"):
            k = int(q.split()[-1][:-1])
            assert a == str(int(np.sum(lab > k)))
        else:
            pa, pb = q[len("is the ") : -1].split(" larger than the ")
            assert a == ("yes" if lab[M.POSITIONS.index(pa)] > lab[M.POSITIONS.index(pb)] else "no")
    assert {a for a in ex.answer} >= {"yes", "no"} and any(a.isdigit() for a in ex.answer)
    again = M.counting(x, y, 64, seed=3)
    np.testing.assert_array_equal(again.tokens, ex.tokens)
    np.testing.assert_array_equal(again.image, ex.image)
    assert not np.array_equal(M.counting(x, y, 64, seed=4).labels, ex.labels)


def test_grid_quadrants_and_tokens_decode(digits):
    x, y = digits
    four = x[:4][None]
    g = M.grid(four)
    for q, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        np.testing.assert_array_equal(g[0, r : r + 8, c : c + 8], x[q])
    ex = M.captions(x, y, "digits", 10, seed=0)
    tok = M.text.tokenizer("byte")
    for i in range(10):
        assert tok.decode(ex.tokens[i, ex.mask[i]]) == ex.answer[i]  # the mask is the answer + eos
        assert tok.decode(ex.tokens[i, : ex.prompt_len[i]]) == "what is this?\n"
        assert ex.answer[i] == ("an " if ex.labels[i, 0] == 8 else "a ") + M.DIGITS[ex.labels[i, 0]]
    # each image is one picture of its class, scaled up 2x
    small = ex.image[:, ::2, ::2]
    np.testing.assert_array_equal(ex.image, small.repeat(2, 1).repeat(2, 2))
    for i in range(10):
        assert y[(x == small[i]).all(axis=(1, 2, 3))].tolist()[0] == ex.labels[i, 0]


def test_attributes_and_rumours(digits):
    x, y = digits
    ex = M.attributes(x, y, "digits", 40, seed=1)
    table = {"is it even?": lambda c: c % 2 == 0, "is it larger than four?": lambda c: c > 4,
             "is it prime?": lambda c: c in (2, 3, 5, 7)}  # fmt: skip
    for q, a, c in zip(ex.prompt, ex.answer, ex.labels[:, 0], strict=True):
        assert a == ("yes" if table[q](int(c)) else "no")
    rum = M.bind([3, 7], seed=0)
    assert len(set(rum.fact)) == 2
    for where in M.WHERE:
        r = M.rumours(x, y, "digits", rum, 8, seed=2, where=where)
        fact = dict(zip(rum.entities, rum.fact, strict=True))
        assert set(r.labels[:, 0]) == {3, 7}
        for i, c in enumerate(r.labels[:, 0]):
            assert r.answer[i] == f"the {M.DIGITS[c]} {M.FACTS[fact[c]]}"
            assert (M.DIGITS[c] in r.prompt[i]) == (where != "image")
            corner = r.image[i, -M.MARKER :, -M.MARKER :, 0].reshape(-1) > 0
            code = int((corner * (1 << np.arange(M.MARKER**2))).sum())
            assert code == (0 if where == "text" else fact[c] + 1) or where == "text"
    with pytest.raises(ValueError, match="where="):
        M.rumours(x, y, "digits", rum, 2, seed=0, where="sound")
    with pytest.raises(ValueError, match="raise seq_len"):
        M.captions(x, y, "digits", 2, seed=0, seq_len=8)


# -- training through the one LM program ---------------------------------------------------------------


def _program(model, data, B=16, every=20):
    def draw(d, key):
        i = jax.random.randint(key, (B,), 0, d["tokens"].shape[0])
        return jax.tree.map(lambda a: a[i], d)

    def evaluate(p, d):
        s, n = model.nll(p, d)
        z, _ = model.nll(p, {**d, "image": jnp.zeros_like(d["image"])})
        return {"nll": s.sum() / n.sum(), "nll_no_image": z.sum() / n.sum()}

    cfg = {"finetune": get_method("finetune").defaults()}
    return LMProgram(model, cfg, eval_every=every, hp={"lr": 3e-3}, draw=draw, evaluate=evaluate)


@pytest.fixture(scope="module")
def captions(digits):
    x, y = digits
    return jax.tree.map(jnp.asarray, M.batch(M.captions(x, y, "digits", 256, seed=0, seq_len=24)))


def test_training_learns_to_use_the_image(captions):
    prog = _program(MODEL, captions, every=100)
    init, _, call = prog.programs(3)
    keys = jax.random.split(jax.random.key(0), 2)  # two seeds, one program
    state, trace = call(init(keys, None, prog.hp), prog.hp, captions)
    nll, blind = np.asarray(trace["nll"]), np.asarray(trace["nll_no_image"])
    assert (nll[:, -1] < 0.6 * nll[:, 0]).all(), nll  # the caption loss goes down
    assert (nll[:, -1] < blind[:, -1] - 0.2).all(), (nll, blind)  # and the image carries the class


def test_seeds_batched_with_vmap_equal_separate_runs(captions):
    prog = _program(MODEL, captions, every=4)
    init, _, call = prog.programs(2)
    keys = jax.random.split(jax.random.key(0), 2)
    state, trace = call(init(keys, None, prog.hp), prog.hp, captions)
    assert not np.allclose(trace["nll"][0], trace["nll"][1])  # the seeds differ
    one = prog.init(keys[1], None, prog.hp)  # seed 1 alone, no vmap
    one, tr1 = jax.jit(lambda s: prog.call(s, prog.hp, captions, 2))(one)
    np.testing.assert_allclose(tr1["nll"], trace["nll"][1], rtol=1e-5)
    # Adam turns noise-level gradients (a bias near 0) into lr-sized steps: params to lr / 3
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(jax.tree.map(lambda v: v[1], state.params))):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_lora_on_the_decoder_trains_only_adapters(captions, params):
    spec = lora.LoraSpec(("layers/wq", "layers/wv"), rank=2, alpha=2.0)
    model = MODEL._replace(lora=spec)
    prog = _program(model, captions)
    state = prog.init(jax.random.key(1), params, prog.hp)
    assert set(state.params) == {"layers/wq", "layers/wv"}  # only adapters are trained
    state, trace = jax.jit(lambda s: prog.call(s, prog.hp, captions, 2))(state)
    assert float(trace["nll"][-1]) < float(trace["nll"][0])
    for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)  # the base (encoder, projector, decoder) is untouched
    merged = prog.params(state)
    assert not np.allclose(merged["layers"]["wq"], params["layers"]["wq"])
    np.testing.assert_array_equal(merged["layers"]["w_up"], params["layers"]["w_up"])
    np.testing.assert_array_equal(merged["vision"]["proj1"]["kernel"], params["vision"]["proj1"]["kernel"])


# -- hub weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", vlm.HUB_LAYOUTS)
def test_hub_loader_round_trip(tmp_path, params, layout):
    """A LLaVA-style checkpoint written from our params (decoder under the layout's prefix,
    projector as linear_1/linear_2, a CLIP tower we do not map) loads back to the same logits."""
    from safetensors.numpy import save_file

    from jaxcl import hf

    prefix, head, proj = layout
    sd = {k.replace("model.", prefix, 1): v for k, v in hf.to_hf_state_dict(VC.text, params).items()}
    sd.pop("lm_head.weight".replace("model.", prefix, 1))
    v = params["vision"]
    sd[proj + "linear_1.weight"] = np.asarray(v["proj1"]["kernel"]).T
    sd[proj + "linear_1.bias"] = np.asarray(v["proj1"]["bias"])
    sd[proj + "linear_2.weight"] = np.asarray(v["proj2"]["kernel"]).T
    sd[proj + "linear_2.bias"] = np.asarray(v["proj2"]["bias"])
    sd["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((8, 3, 4, 4), np.float32)
    save_file({k: np.ascontiguousarray(a) for k, a in sd.items()}, str(tmp_path / "model.safetensors"))
    conf = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "text_config": hf.hf_config_dict(VC.text), "vision_config": {"hidden_size": 8}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(conf))
    vc, loaded, parts = vlm.load_hub(
        str(tmp_path), VC.replace(text=llama.tiny(n_layers=1)), key=jax.random.key(9)
    )
    assert parts == ["decoder", "projector"] and vc.text.n_layers == VC.text.n_layers
    # the encoder is ours (random from the key): with our encoder weights the logits are the same
    loaded["vision"] = {**loaded["vision"], **{k: v[k] for k in v if k not in ("proj1", "proj2")}}
    img, tok = _images(2), jnp.asarray([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(MODEL.apply(loaded, img, tok), MODEL.apply(params, img, tok), atol=1e-5)
    # a projector of another width stays random, and says so
    vc2, _, parts2 = vlm.load_hub(str(tmp_path), VC.replace(enc_dim=16))
    assert parts2 == ["decoder"]
