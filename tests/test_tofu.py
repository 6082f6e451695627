"""TOFU: data, metrics, the switchable GU transform, and the --tiny study end to end."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import hf
from jaxcl.tofu import data as tdata
from jaxcl.tofu import metrics as tm
from jaxcl.tofu import unlearn as tun

HAVE_DATA = tdata.data_dir() is not None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="TOFU jsonl folder not found (set JAXCL_TOFU_DIR)")


@needs_data
def test_splits_nest_as_documented():
    f01, f10 = tdata.load_split("forget01"), tdata.load_split("forget10")
    assert len(f01) == 40 and f01 == f10[:40]
    assert len(tdata.load_split("retain99")) == 3960 and len(tdata.load_split("full")) == 4000
    assert tdata.retain_for("forget05") == "retain95"
    assert len(tdata.idk_answers()) == 100
    row = tdata.load_split("forget01_perturbed")[0]
    assert len(row["perturbed_answer"]) == 5 and "paraphrased_answer" in row


def test_encode_qa_masks_answer_tokens_only():
    tok = hf.ByteTokenizer()
    t, m = tdata.encode_qa(tok, ["Who?"], ["Me."], max_len=64)
    prompt = tok.encode(
        tok.apply_chat_template([{"role": "user", "content": "Who?"}], add_generation_prompt=True)
    )
    answer = tok.encode("Me.") + [tok.eos_id]
    assert list(t[0, : len(prompt) + len(answer)]) == prompt + answer
    assert m[0].sum() == len(answer) and m[0, len(prompt)] and not m[0, len(prompt) - 1]
    t, m = tdata.encode_qa(tok, ["Who?"], ["x" * 100], max_len=40)  # truncated at the end
    assert t.shape == (1, 40) and m[0, -1]


def test_metric_definitions():
    assert tm.rouge_l_recall("The capital is Paris", "Paris is the capital.") == pytest.approx(0.5)
    assert tm.rouge_l_recall("anything", "") == 0.0
    assert tm.rouge_l_recall("Basil Mahfouz Al-Kuwaiti", "basil mahfouz al kuwaiti") == 1.0
    same = np.linspace(0.1, 2, 30)
    assert tm.forget_quality(same, same) == pytest.approx(1.0)
    assert tm.forget_quality(same, same + 5) < 1e-6
    res = {s: dict(prob=0.5, truth_ratio=0.5, rouge=0.5) for s in tm.UTILITY_SETS}
    assert tm.model_utility(res) == pytest.approx(0.5)
    res["retain"]["rouge"] = 0.25
    assert tm.model_utility(res) == pytest.approx(9 / (8 * 2 + 4))
    res["world_facts"]["prob"] = 0.0
    assert tm.model_utility(res) == 0.0


def test_switchable_gu_projects_forget_gradient_and_adds_retain():
    k = jax.random.split(jax.random.key(0), 4)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros((3,))}
    g = {"w": jax.random.normal(k[0], (5, 3)), "b": jax.random.normal(k[1], (3,))}
    r = {"w": jax.random.normal(k[2], (5, 3)), "b": jax.random.normal(k[3], (3,))}
    tx = tun.switchable_gu(rank=2)
    state = tx.init(params)
    dot = lambda a, b: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    out, _ = tx.update(g, state, params, retain_grads=r, hp=tun.hparams("ga", True))
    for leaf_o, leaf_r in zip(jax.tree.leaves(out), jax.tree.leaves(r)):  # per-tensor GU
        assert abs(float(jnp.vdot(leaf_o, leaf_r))) < 1e-5
    out, _ = tx.update(g, state, params, retain_grads=r, hp=tun.hparams("ga", False))
    assert dot(out, g) == pytest.approx(dot(g, g))  # GU off: unchanged
    out, _ = tx.update(g, state, params, retain_grads=r, hp=tun.hparams("graddiff", False))
    np.testing.assert_allclose(out["w"], g["w"] + r["w"], atol=1e-6)  # retain term added
    with pytest.raises(ValueError, match="unknown unlearning method"):
        tun.hparams("nope", False)


@needs_data
def test_tiny_study_end_to_end(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "tofu.py")
    spec = importlib.util.spec_from_file_location("experiments_tofu", path)
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    results = exp.main(["--tiny", "--method", "ga,npo,idk", "--gu", "--out", str(tmp_path)])
    names = {
        "retain (reference)",
        "target (before unlearning)",
        "ga",
        "ga+gu",
        "npo",
        "npo+gu",
        "idk",
        "idk+gu",
    }
    assert set(results) == names
    for r in results.values():
        assert 0.0 <= r["forget_quality"] <= 1.0 and 0.0 <= r["model_utility"] <= 1.0
        assert np.isfinite(r["forget"]["prob"]) and len(r["forget"]["generations"]) == 8
    assert results["retain (reference)"]["forget_quality"] == pytest.approx(1.0)
    # gradient ascent lowers the forget-set answer probability
    assert results["ga"]["forget"]["prob"] < results["target (before unlearning)"]["forget"]["prob"]
    for f in ("table.txt", "results.json", "fq_vs_mu.png"):
        assert (tmp_path / f).stat().st_size > 0
