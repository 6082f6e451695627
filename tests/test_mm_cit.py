"""The multimodal continual-instruction-tuning study (``mm-cit``, a skeleton): its tiny run writes
an answer-accuracy matrix per row, and the accuracy it reports is what greedy decoding gets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl import cli
from jaxcl.data import multimodal as MM
from jaxcl.models import llama, vlm
from jaxcl.studies import mm_cit


def test_tiny_run_writes_accuracy_matrices(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["run", "mm-cit", "--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["rows"]) == {"finetune", "er"}
    for row in res["rows"].values():
        A = np.asarray(row["A_per_seed"])
        assert A.shape == (2, 3, 3) and ((A >= 0) & (A <= 1)).all()
        np.testing.assert_allclose(row["summary"]["acc"]["mean"], A[:, -1].mean(), atol=1e-6)


def test_bad_task_is_one_line_exit_2(capsys, tmp_path):
    assert (
        cli.main(["run", "mm-cit", "--tiny", "--set", "data.tasks=captions,poems", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.tasks" in err


def test_answer_accuracy_is_greedy_decoding_exactness():
    """answer_accuracy counts an example right exactly when greedy generation from its prompt
    writes its answer, on a model that gets some answers right and some wrong (40 Adam steps)."""
    x, y = MM.source("digits")
    ex = MM.attributes(x, y, "digits", 16, seed=1, seq_len=40)
    vc = vlm.tiny(text=llama.tiny(vocab_size=260))
    model = vlm.vision_language_model(vc)
    params = model.init(jax.random.key(0))
    sub = jax.tree.map(jnp.asarray, MM.batch(ex))
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, o):
        g = jax.grad(lambda q: model.nll(q, sub)[0].mean())(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    opt = tx.init(params)
    for _ in range(40):
        params, opt = step(params, opt)
    one = jax.jit(lambda p, s: mm_cit.answer_accuracy(model, p, s))
    got = [float(one(params, jax.tree.map(lambda a: a[i : i + 1], sub))) for i in range(16)]
    assert 0 < sum(got) < 16, got  # a mix: the check below sees both outcomes
    for i in range(16):
        P, n = int(ex.prompt_len[i]), int(ex.mask[i].sum())
        gen = np.asarray(
            vlm.generate(vc, params, ex.image[i : i + 1], [list(ex.tokens[i, :P])], max_new_tokens=n)
        )
        assert got[i] == float((gen[0] == ex.tokens[i, P : P + n]).all()), i
