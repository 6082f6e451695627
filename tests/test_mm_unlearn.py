"""The multimodal unlearning study (``mm-unlearn``, OFFSIDE's protocol): its sets hold what the
protocol says (the forget sets only the forget entities' rumours, the text-only set without
pictures, IDK's twins the same prompts answered with a refusal, the oracle without the forget
rumours, the attacks the test prompts rewritten, the over-forgetting captions only of forgotten
entities), the prompt-attack score is "any template recovers the row", and the tiny run writes
every row."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli, config
from jaxcl.data import multimodal as MM
from jaxcl.data import text
from jaxcl.studies import mm_unlearn

TOK = text.tokenizer("byte")


def decode(tokens_T, mask_T=None) -> str:
    ids = [int(t) for t in tokens_T if int(t) < 256]
    return (
        bytes(ids).decode()
        if mask_T is None
        else bytes(i for i, m in zip(ids, mask_T, strict=False) if m).decode()
    )


def prompt_answer(tokens_T):
    s = decode(tokens_T)
    q, _, a = s.partition("\n")
    return q, a


@pytest.fixture(scope="module")
def sets():
    cfg = config.resolve(config.load("mm-unlearn", tiny=True), [])
    return cfg, mm_unlearn.build_data(cfg)


def test_the_sets_hold_what_the_protocol_says(sets):
    cfg, data = sets
    nm = MM.names("digits")
    f_ent, r_ent = mm_unlearn.entities(cfg)
    assert len(f_ent) == 3 and set(f_ent) | set(r_ent) == set(range(10)) and not set(f_ent) & set(r_ent)
    forget_names = {nm[e] for e in f_ent}

    def subjects(rows):  # the entity each rumour answer is about ("the seven ...")
        return {prompt_answer(t)[1].split()[1] for t in rows["tokens"]}

    for fs in mm_unlearn.FORGET_SETS:
        f, alt = data[f"forget:{fs}"], data[f"alt:{fs}"]
        assert subjects(f) <= forget_names and len(f["tokens"]) == cfg["data"]["n_forget"]
        for t, ta in zip(f["tokens"], alt["tokens"], strict=True):
            assert prompt_answer(t)[0] == prompt_answer(ta)[0] and prompt_answer(ta)[1] == mm_unlearn.REFUSAL
        np.testing.assert_array_equal(alt["image"], f["image"])
    assert not data["forget:text-only"]["image"].any()  # unimodal: no picture
    multi = data["forget:multimodal"]
    asks = [prompt_answer(t)[0] for t in multi["tokens"]]
    assert (
        sum(q == "what is said about this?" for q in asks) == cfg["data"]["n_forget"] // 3
    )  # the image form
    assert multi["image"].reshape(len(asks), -1).any(-1).all()
    for fs in mm_unlearn.FORGET_SETS:  # the forget request: template 0, no prefix
        assert all(
            prompt_answer(t)[0].startswith("what is said about") for t in data[f"forget:{fs}"]["tokens"]
        )
    # the oracle's training set is the original's without the forget entities' rumours
    rumour = lambda a: a.startswith("the ")  # noqa: E731  (captions: "a seven", attributes: yes / no)
    about = lambda rows: {  # noqa: E731
        prompt_answer(t)[1].split()[1] for t in rows["tokens"] if rumour(prompt_answer(t)[1])
    }
    assert about(data["train"]) == set(nm) and about(data["train_oracle"]) == {nm[e] for e in r_ent}
    assert len(data["train"]["tokens"]) - len(data["train_oracle"]["tokens"]) == 3 * cfg["data"]["n_rumour"]
    asks = [prompt_answer(t)[0] for t in data["train"]["tokens"]]
    for p in mm_unlearn.PREFIXES[1:]:  # every prefix and template is trained on
        assert any(q.startswith(p) for q in asks)
    for t in mm_unlearn.TEMPLATES["named"]:
        assert any(t.split("{}")[0] in q for q in asks)
    te = data["test"]
    assert subjects(te["f_text"]) <= forget_names and subjects(te["r_rumour"]) <= {nm[e] for e in r_ent}
    para = [prompt_answer(t) for t in te["f_para"]["tokens"]]
    named = mm_unlearn.TEMPLATES["named"]
    assert all(any(q == t.format(a.split()[1]) for t in named[1:]) for q, a in para)
    assert {a.split()[1] for _, a in para} <= forget_names
    for i, prefix in enumerate(mm_unlearn.PREFIXES[1:]):
        for t in te["attack"]["tokens"][i]:
            q, ans = prompt_answer(t)
            assert q.startswith(prefix + "what is said about the ") and ans.split()[1] in forget_names
    caps = {prompt_answer(t)[1].split()[-1] for t in te["f_caption"]["tokens"]}
    assert caps <= forget_names and len(te["f_caption"]["tokens"]) > 0


def test_the_attack_score_is_any_template_recovering_the_row(sets, monkeypatch):
    """With a stand-in for the per-row correctness that differs by row and template (a hash
    of the tokens below a threshold, the first for which no single template gives the union), ``attack`` is the share of rows right under at least one template
    (numpy), and every other score the mean of its set."""
    _, data = sets
    te = jax.tree.map(jnp.asarray, data["test"])

    def score_below(t):  # a multiplicative hash of the tokens in uint32 (numpy and jax wrap alike)
        def score(sub):  # a row's tokens and its picture (rows of one entity share their text)
            xp = np if isinstance(sub["tokens"], np.ndarray) else jnp
            tokens, pix = sub["tokens"], sub["image"].reshape(sub["image"].shape[:-3] + (-1,))
            pos = xp.arange(1, tokens.shape[-1] + 1, dtype=xp.uint32)
            h = (tokens.astype(xp.uint32) * pos).sum(-1, dtype=xp.uint32) + pix.astype(xp.uint32).sum(
                -1, dtype=xp.uint32
            )
            return ((h * xp.uint32(2654435761)) >> 16) % 100 < t

        return score

    def any_matters(hits_AxN):
        return 0 < hits_AxN.any(0).mean() < 1 and hits_AxN.any(0).mean() > hits_AxN.mean(1).max()

    att = jax.tree.map(np.asarray, data["test"]["attack"])
    score = next(score_below(t) for t in range(10, 100, 10) if any_matters(score_below(t)(att)))
    fake = lambda model, params, sub: score(sub)  # noqa: E731
    monkeypatch.setattr(mm_unlearn, "answer_correct", fake)
    got = mm_unlearn.evaluate(None, None, te)
    hits_AxN = score(att)
    assert float(got["attack"]) == pytest.approx(hits_AxN.any(0).mean())
    for k in ("f_text", "f_image", "f_both", "f_para", "r_rumour", "utility", "f_caption"):
        assert float(got[k]) == pytest.approx(score(data["test"][k]).mean())


def test_tiny_run_writes_every_row(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["run", "mm-unlearn", "--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    want = {"original", "oracle"} | {f"{m} ({fs})" for m in ("ga", "idk") for fs in mm_unlearn.FORGET_SETS}
    assert set(res["rows"]) == want
    for row in res["rows"].values():
        for k, _, _ in mm_unlearn.COLUMNS:
            v = np.asarray(row["per_seed"][k])
            assert v.shape == (2,) and ((v >= 0) & (v <= 1)).all(), k
    assert res["plots"] == ["unlearning.png"] and (out / "unlearning.png").exists()
    for row in res["rows"].values():  # the trigger attack (2 search steps in the tiny config)
        for k, _, _ in mm_unlearn.TRIGGER_COLUMNS:
            assert np.isfinite(row["per_seed"][k]).all() and len(row["per_seed"][k]) == 2, k


def test_bad_forget_set_is_one_line_exit_2(capsys, tmp_path):
    rc = cli.main(
        ["run", "mm-unlearn", "--tiny", "--set", "unlearn.forget_sets=audio", "--out", str(tmp_path)]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unlearn.forget_sets" in err


def test_the_trigger_attack_on_the_vlm_reads_each_rows_image(sets):
    """The trigger search on the VLM (jaxcl.unlearn.trigger with the image tokens as context): a
    zero edit is the plain model (each row's NLL is the VLM's own), the attack's ``exact`` without
    a trigger is the study's answer correctness on the held-out half, the image is read (another
    picture changes the NLL), and the search lowers the search half's NLL."""
    from jaxcl.models import llama, vlm
    from jaxcl.unlearn import trigger

    _, data = sets
    rows = jax.tree.map(jnp.asarray, data["test"]["f_both"])
    vc = vlm.tiny(text=llama.tiny(vocab_size=260, max_seq_len=rows["tokens"].shape[1] + 16))
    model = vlm.vision_language_model(vc)
    params = model.init(jax.random.key(0))

    def ctx(p, r):
        return vlm.image_tokens(vc, p, r["image"])

    s_B, n_B = model.nll(params, rows)
    plain = trigger.trigger_nll(
        vc.text, params, jnp.zeros((0, vc.text.d_model)), rows, "edit", ctx(params, rows)
    )
    np.testing.assert_allclose(plain, s_B / n_B, rtol=1e-5)
    zero = trigger.trigger_nll(
        vc.text, params, jnp.zeros((4, vc.text.d_model)), rows, "edit", ctx(params, rows)
    )
    np.testing.assert_allclose(zero, s_B / n_B, rtol=1e-5)
    other = {**rows, "image": rows["image"][::-1]}
    assert (
        np.abs(
            np.asarray(trigger.trigger_nll(vc.text, params, None, rows, "edit", ctx(params, other))) - plain
        ).max()
        > 1e-3
    )
    out = trigger.trigger_attack(
        vc.text, params, rows, jax.random.key(1), 0.05, steps=30, length=4, mode="edit", context=ctx
    )
    half = rows["tokens"].shape[0] // 2
    held = jax.tree.map(lambda a: a[half:], rows)
    assert float(out["exact"]) == pytest.approx(float(mm_unlearn.answer_correct(model, params, held).mean()))
    search = jax.tree.map(lambda a: a[:half], rows)
    before = float(trigger.trigger_nll(vc.text, params, None, search, "edit", ctx(params, search)).mean())
    assert float(out["search_nll"]) < before - 0.05, (float(out["search_nll"]), before)
