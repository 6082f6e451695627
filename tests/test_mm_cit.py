"""The multimodal continual-instruction-tuning study (``mm-cit``): its tiny run writes an
answer-accuracy and a knowledge-accuracy matrix per row, the accuracy it reports is what greedy
decoding gets, the knowledge accuracy is the option with the lowest NLL (scored one option at a
time by the model's own ``nll``), and its KL row consolidates at task ends."""

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
    assert set(res["rows"]) == {"er", "finetune+kl"}
    for row in res["rows"].values():
        A, Kn = np.asarray(row["A_per_seed"]), np.asarray(row["K_per_seed"])
        assert (
            A.shape == Kn.shape == (2, 3, 3) and ((A >= 0) & (A <= 1)).all() and ((Kn >= 0) & (Kn <= 1)).all()
        )
        np.testing.assert_allclose(row["summary"]["acc"]["mean"], A[:, -1].mean(), atol=1e-6)
        np.testing.assert_allclose(row["summary"]["k_acc"]["mean"], Kn[:, -1].mean(), atol=1e-6)
        sup = row["summary"]["superficial"]["mean"]
        np.testing.assert_allclose(
            sup, row["summary"]["forgetting"]["mean"] - row["summary"]["k_forgetting"]["mean"], atol=1e-6
        )


def test_choices_are_the_kinds_options_with_the_own_answer_marked():
    x, y = MM.source("digits", "test")
    ex = MM.counting(x, y, 24, seed=3, seq_len=56)
    ch = MM.choices(ex, 56)
    N, C, T = ch["tokens"].shape
    assert (N, T) == (24, 56) and C == len({a for a in ex.answer if a not in ("yes", "no")})
    for i in range(N):
        yn = ex.answer[i] in ("yes", "no")
        assert ch["valid"][i].sum() == (2 if yn else C)
        # the own option is the example itself; every option keeps the prompt
        np.testing.assert_array_equal(ch["tokens"][i, ch["answer"][i]], ex.tokens[i])
        P = int(ex.prompt_len[i])
        assert (ch["tokens"][i, :, :P] == ex.tokens[i, :P]).all()
    padded = mm_cit.pad_choices(ch, C + 2)
    assert padded["tokens"].shape[1] == C + 2 and not padded["valid"][:, C:].any()


def test_knowledge_accuracy_is_the_least_nll_option():
    """Against the model's own per-example NLL, one option at a time, argmin in numpy; on a
    briefly trained model whose picks are a mix of right and wrong."""
    x, y = MM.source("digits")
    ex = MM.captions(x, y, "digits", 12, seed=2, seq_len=40)
    ch = mm_cit.pad_choices(MM.choices(ex, 40), 12)  # two padded options that must never win
    vc, model, params, sub = briefly_trained(ex, key=1, steps=15)
    got = float(jax.jit(lambda p: mm_cit.knowledge_accuracy(model, p, {**sub, "choices": ch}))(params))
    nll = jax.jit(lambda p, t, m: model.nll(p, {"image": sub["image"], "tokens": t, "mask": m})[0])
    nll_NxC = np.stack([np.asarray(nll(params, ch["tokens"][:, c], ch["mask"][:, c])) for c in range(12)], 1)
    pick = np.argmin(np.where(ch["valid"], nll_NxC, np.inf), 1)
    want = float((pick == ch["answer"]).mean())
    assert 0 < want < 1, want
    assert abs(got - want) < 1e-6  # the same picks (float32 mean)


def test_bad_task_is_one_line_exit_2(capsys, tmp_path):
    assert (
        cli.main(["run", "mm-cit", "--tiny", "--set", "data.tasks=captions,poems", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.tasks" in err


def briefly_trained(ex, *, key: int, steps: int):
    """A tiny VLM after ``steps`` Adam steps on ``ex``: ``(vc, model, params, batch)``."""
    vc = vlm.tiny(text=llama.tiny(vocab_size=260))
    model = vlm.vision_language_model(vc)
    params = model.init(jax.random.key(key))
    sub = jax.tree.map(jnp.asarray, MM.batch(ex))
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, o):
        g = jax.grad(lambda q: model.nll(q, sub)[0].mean())(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    opt = tx.init(params)
    for _ in range(steps):
        params, opt = step(params, opt)
    return vc, model, params, sub


def test_answer_accuracy_is_greedy_decoding_exactness():
    """answer_accuracy counts an example right exactly when greedy generation from its prompt
    writes its answer, on a model that gets some answers right and some wrong (40 Adam steps)."""
    x, y = MM.source("digits")
    ex = MM.attributes(x, y, "digits", 16, seed=1, seq_len=40)
    vc, model, params, sub = briefly_trained(ex, key=0, steps=40)
    one = jax.jit(lambda p, s: mm_cit.answer_accuracy(model, p, s))
    got = [float(one(params, jax.tree.map(lambda a: a[i : i + 1], sub))) for i in range(16)]
    assert 0 < sum(got) < 16, got  # a mix: the check below sees both outcomes
    for i in range(16):
        P, n = int(ex.prompt_len[i]), int(ex.mask[i].sum())
        gen = np.asarray(
            vlm.generate(vc, params, ex.image[i : i + 1], [list(ex.tokens[i, :P])], max_new_tokens=n)
        )
        assert got[i] == float((gen[0] == ex.tokens[i, P : P + n]).all()), i


def test_replay_keeps_each_rows_image_and_derpp_trains_the_vlm():
    """ER's and DER++'s buffers store a VLM row's image with its tokens (a replayed answer is asked
    about its own image, not the current batch's), and DER++'s step on the VLM stores every
    position's logits and changes the loss once its memory has rows."""
    from jaxcl.engine import init_state, make_step
    from jaxcl.loops import as_hparams, build_method
    from jaxcl.methods import METHODS

    x, y = MM.source("digits")
    old = jax.tree.map(jnp.asarray, MM.batch(MM.captions(x, y, "digits", 4, seed=1, seq_len=40)))
    new = jax.tree.map(jnp.asarray, MM.batch(MM.attributes(x, y, "digits", 4, seed=2, seq_len=40)))
    model = vlm.vision_language_model(vlm.tiny(text=llama.tiny(vocab_size=260)))

    def built(name, **opts):
        spec = METHODS[name]
        hp, o = spec.split(opts)
        return build_method(spec, model, as_hparams(spec, hp), o)

    er = built("er", replay_fraction=1.0, capacity=4)
    state = er.data.init(old)
    _, state = er.data.update(old, state, jax.random.key(0))
    mixed, _ = er.data.update(new, state, jax.random.key(1))
    for i in range(4):  # every row replayed: its tokens and image are one old example's
        j = int(np.flatnonzero((np.asarray(old["tokens"]) == np.asarray(mixed["tokens"][i])).all(-1))[0])
        np.testing.assert_array_equal(mixed["image"][i], old["image"][j])

    d = built("derpp", capacity=8, memory_batch=2, lr=1e-2)
    params = model.init(jax.random.key(0))
    st = init_state(params, d.tx, jax.random.key(0), d.data, old)
    step = jax.jit(make_step(d.loss_fn, d.tx, d.data))
    st, m1 = step(st, old)
    buf = st.data_state["buffer"]
    np.testing.assert_array_equal(buf["image"][:4], old["image"])
    want = model.token_logits(params, old)[0]
    assert buf["logits"].shape[1:] == want.shape[1:]
    np.testing.assert_allclose(buf["logits"][:4], want, rtol=1e-4, atol=1e-4)
    st, m2 = step(st, new)
    assert float(m1["der_mse"]) == 0.0 and float(m2["der_mse"]) > 0.0


def test_step_accuracies_are_greedy_steps_and_the_final_answer_given_them():
    """With reasoning answers (``it is an eight, so yes``; ``3 and 9, so no``): ``reason`` is
    whether greedy generation from the prompt writes the steps exactly, ``final`` whether greedy
    generation from the prompt and the right steps writes the final answer exactly; checked
    example by example with vlm.generate on a briefly trained model that gets some right."""
    x, y = MM.source("digits")
    ex = MM.concat(
        MM.attributes(x, y, "digits", 8, seed=1, seq_len=68, reasoning=True),
        MM.counting(x, y, 8, seed=2, seq_len=68, reasoning=True),
    )
    vc, model, params, sub = briefly_trained(ex, key=0, steps=150)
    sub = {**sub, "steps": jnp.asarray(ex.steps)}
    one = jax.jit(lambda p, s: mm_cit.step_accuracies(model, p, s))
    got = [jax.tree.map(float, one(params, jax.tree.map(lambda a: a[i : i + 1], sub))) for i in range(16)]
    reason, final = [g["reason"] for g in got], [g["final"] for g in got]
    assert 0 < sum(reason) < 16 and 0 < sum(final) < 16, (reason, final)  # both outcomes seen
    for i in range(16):
        P, n, ns = int(ex.prompt_len[i]), int(ex.mask[i].sum()), int(ex.steps[i].sum())
        gen = np.asarray(
            vlm.generate(vc, params, ex.image[i : i + 1], [list(ex.tokens[i, :P])], max_new_tokens=ns)
        )
        assert reason[i] == float((gen[0] == ex.tokens[i, P : P + ns]).all()), i
        Q = P + ns  # the prompt and the right steps
        gen = np.asarray(
            vlm.generate(vc, params, ex.image[i : i + 1], [list(ex.tokens[i, :Q])], max_new_tokens=n - ns)
        )
        assert final[i] == float((gen[0] == ex.tokens[i, Q : P + n]).all()), i
    # a batch without steps has no reasoning score
    no_steps = {**sub, "steps": jnp.zeros_like(sub["steps"])}
    assert np.isnan(float(one(params, no_steps)["reason"]))


def test_column_forgetting_is_forgetting_on_the_chosen_tasks():
    from jaxcl import metrics as M

    R = np.random.default_rng(0).random((4, 4))
    assert mm_cit.column_forgetting(R, range(4)) == M.forgetting(R)
    want = np.mean([R[:3, j].max() - R[3, j] for j in (1, 2)])
    assert abs(mm_cit.column_forgetting(R, [1, 2, 3]) - want) < 1e-12


def test_tiny_reasoning_run_reports_steps_and_final_answers_apart(tmp_path):
    out = tmp_path / "o"
    sets = ["--set", "data.reasoning=true", "--set", "data.seq_len=68", "--set", "methods=finetune"]
    assert cli.main(["run", "mm-cit", "--tiny", *sets, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["extra"]["reasoning_tasks"] == ["attributes", "counting"]
    row = res["rows"]["finetune"]
    R, F = np.asarray(row["R_per_seed"]), np.asarray(row["F_per_seed"])
    assert R.shape == F.shape == (2, 3, 2) and np.isfinite(R).all()
    np.testing.assert_allclose(row["per_seed"]["r_acc"], R[:, -1].mean(-1), atol=1e-6)
    np.testing.assert_allclose(row["per_seed"]["f_acc"], F[:, -1].mean(-1), atol=1e-6)
    assert "reasoning ACC" in res["table"]
