"""Text streams: packing, held-out split, sampling inside jit, per-domain losses, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.config import ConfigError
from jaxcl.data import text
from jaxcl.hf import ByteTokenizer


def _texts():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    return {
        "a": [" ".join(rng.choice(words[:3], 30)) for _ in range(20)],
        "b": [" ".join(rng.choice(words[2:], 60)) for _ in range(20)],
    }


def test_pack_is_non_overlapping_windows():
    ids = np.arange(23)
    got = text.pack(ids, 5)
    np.testing.assert_array_equal(got, np.arange(20).reshape(4, 5))


def test_stream_holds_out_documents_and_packs_the_rest():
    texts = _texts()
    tok = ByteTokenizer()
    s = text.build_stream(["a", "b"], tokenizer_name=tok, seq_len=16, n_eval=4, texts=texts)
    # domain a: documents 0..8 and 10..18 train, 9 and 19 held out (every 10th)
    train_docs = [d for i, d in enumerate(texts["a"]) if i % 10 != 9]
    ids = np.concatenate([np.r_[tok.encode(d), tok.eos_id] for d in train_docs])
    n = len(ids) // 16
    assert int(s.n_train[0]) == n
    np.testing.assert_array_equal(np.asarray(s.train[0, :n]), ids[: n * 16].reshape(n, 16))
    held = np.concatenate([np.r_[tok.encode(texts["a"][i]), tok.eos_id] for i in (9, 19)])
    np.testing.assert_array_equal(np.asarray(s.eval[0, 0]), held[:16])
    assert s.train.shape[1] == max(int(c) for c in s.n_train)  # shorter domains repeat rows


def test_draw_samples_only_real_rows_of_the_traced_domain():
    s = text.build_stream(["a", "b"], tokenizer_name=ByteTokenizer(), seq_len=16, n_eval=4, texts=_texts())
    f = jax.jit(lambda k, key: text.draw(s, k, key, 64)["tokens"])
    for k in (0, 1):
        got = np.asarray(f(k, jax.random.key(k)))
        rows = {tuple(r) for r in np.asarray(s.train[k, : int(s.n_train[k])])}
        assert all(tuple(r) in rows for r in got)
    w = jnp.array([0.0, 1.0])
    got = np.asarray(text.draw_mixture(s, w, jax.random.key(3), 32)["tokens"])
    rows_b = {tuple(r) for r in np.asarray(s.train[1, : int(s.n_train[1])])}
    assert all(tuple(r) in rows_b for r in got)


def test_domain_losses_equal_a_numpy_unigram_model():
    s = text.build_stream(["a", "b"], tokenizer_name=ByteTokenizer(), seq_len=16, n_eval=4, texts=_texts())
    logp = np.log(np.random.default_rng(1).dirichlet(np.ones(300)))

    def nll(params, sub):  # a unigram model: -log p(token) for every token after the first
        lp = jnp.asarray(params)[sub["tokens"][:, 1:]]
        m = sub["mask"][:, 1:].astype(jnp.float32)
        return -(lp * m).sum(-1), m.sum(-1)

    got = np.asarray(jax.jit(lambda p: text.domain_losses(nll, p, s))(logp))
    ev = np.asarray(s.eval)
    want = [-logp[ev[k][:, 1:]].mean() for k in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bad_domains_are_clear_errors():
    with pytest.raises(ConfigError, match="did you mean bible:law"):
        text.documents("bible:laws")
    with pytest.raises(ConfigError, match="is empty"):
        text.build_stream(["x"], tokenizer_name=ByteTokenizer(), texts={"x": ["", "  "]})
    with pytest.raises(ConfigError, match="shorter than one sequence"):
        text.build_stream(["zen"], tokenizer_name=ByteTokenizer(), seq_len=4096)
    s = text.build_stream(["zen"], tokenizer_name=ByteTokenizer(), seq_len=32)
    with pytest.raises(ConfigError, match="vocabulary"):
        text.check_vocab(s, 200, "byte")


def test_real_corpora_have_their_domains():
    law, nt = text.documents("bible:law"), text.documents("bible:nt")
    assert len(law) == 187 and law[0].startswith("In the beginning God created")
    assert len(nt) == 260
    assert len(text.documents("headlines")) > 4000
    assert len(text.documents("tofu")) == 200
