"""RegLoRA (SEFE, Chen et al. 2025): the key elements and the penalty against numpy on hand-made
adapters, and what it is for: after a task ends, the next task's update stays near zero on that
task's key elements (and only there) while plain LoRA fine-tuning moves them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli
from jaxcl.lmprogram import LMProgram
from jaxcl.methods import METHODS
from jaxcl.methods import reglora as R
from jaxcl.models import lm, lora


def np_key_elements(delta, fraction):
    *lead, i, o = delta.shape
    k = max(1, int(fraction * i * o))
    flat = np.abs(delta).reshape(-1, i * o)
    out = np.zeros_like(flat, bool)
    for r, row in enumerate(flat):
        out[r] = row >= np.sort(row)[::-1][k - 1]
    return out.reshape(delta.shape)


def test_key_elements_and_penalty_match_numpy():
    rng = np.random.default_rng(0)
    # a stacked weight (2 layers, 10 x 12, rank 3) and a plain one (6 x 5, rank 2)
    shapes = {"layers/wq": ((2, 10, 3), (2, 3, 12)), "head/kernel": ((6, 2), (2, 5))}
    ad = {n: {"a": rng.normal(size=a), "b": rng.normal(size=b)} for n, (a, b) in shapes.items()}
    anchor = {n: {"a": rng.normal(size=a), "b": rng.normal(size=b)} for n, (a, b) in shapes.items()}
    jad = jax.tree.map(jnp.asarray, ad)
    jan = jax.tree.map(jnp.asarray, anchor)
    mask = {}
    for n in shapes:
        delta = ad[n]["a"] @ ad[n]["b"] - anchor[n]["a"] @ anchor[n]["b"]
        for frac in (0.02, 0.1, 0.5):
            got = np.asarray(R.key_elements(R.product(jad[n]) - R.product(jan[n]), frac))
            want = np_key_elements(delta, frac)
            np.testing.assert_array_equal(got, want)
        mask[n] = np_key_elements(delta, 0.1)
    assert mask["layers/wq"][0].sum() == int(0.1 * 120) and mask["head/kernel"].sum() == 3
    # the penalty: the mean over the three matrices (2 layers + 1) of each one's mean |delta| on K
    per = []
    for n in sorted(shapes):
        d = np.abs(ad[n]["a"] @ ad[n]["b"] - anchor[n]["a"] @ anchor[n]["b"]).reshape(-1, *mask[n].shape[-2:])
        m = mask[n].reshape(d.shape)
        per += [d[i][m[i]].mean() for i in range(len(d))]
    got = R.penalty(jad, jan, jax.tree.map(jnp.asarray, mask))
    np.testing.assert_allclose(float(got), np.mean(per), rtol=1e-5)
    # an unmoved matrix (the adapters' B = 0 at the start) marks no key element
    still = {"a": jnp.ones((2, 10, 3)), "b": jnp.zeros((2, 3, 12))}
    assert not np.asarray(R.key_elements(R.product(still), 0.02)).any()
    # no key element yet: 0
    empty = jax.tree.map(lambda m: jnp.zeros(m.shape, bool), mask)
    assert float(R.penalty(jad, jan, empty)) == 0.0


def test_the_next_task_leaves_the_key_elements_alone():
    targets = ("layers/wq", "layers/wv", "layers/w_up", "layers/w_down")
    sec = {**lm.section("tiny", compute_dtype="float32"), "lora": {**lora.section(4), "targets": targets}}
    model = lm.load(sec)[0]
    toks = jnp.asarray(np.random.default_rng(0).integers(3, 64, (2, 16, 16)), jnp.int32)
    data = {"tokens": toks, "mask": jnp.ones_like(toks, jnp.float32)}

    def draw(d, key):
        i = jax.random.randint(key, (8,), 0, 16)
        return {"tokens": d["tokens"][d["t"], i], "mask": d["mask"][d["t"], i]}

    def evaluate(params, d):
        return {"nll": model.nll(params, {"tokens": d["tokens"][0], "mask": d["mask"][0]})}

    cfg = {m: {} for m in METHODS}
    got = {}
    for name in ("finetune", "reglora"):
        prog = LMProgram(model, cfg, name, eval_every=25, draw=draw, evaluate=evaluate, hp={"lr": 1e-2},
                         handles=("consolidate",))  # fmt: skip

        def run(key, prog=prog):
            s, _ = prog.call(prog.init(key, None, prog.hp, {**data, "t": 0}), prog.hp, {**data, "t": 0}, 2)
            method = prog.method(prog.hp, s.frozen)
            s = s if method.consolidate is None else method.consolidate(s, None, None)
            end0 = s.params
            s, _ = prog.call(s, prog.hp, {**data, "t": 1}, 2)
            return s, end0

        got[name] = jax.jit(run)(jax.random.key(0))
    (s, end0), (sf, end0f) = got["reglora"], got["finetune"]
    for n in targets:
        m = np.asarray(s.data_state["mask"][n])
        assert 0.019 < m.mean() < 0.03  # 2 % of every layer's matrix
        np.testing.assert_array_equal(np.asarray(s.data_state["anchor"][n]["b"]), np.asarray(end0[n]["b"]))
        upd = np.abs(np.asarray(R.product(s.params[n]) - R.product(end0[n])))
        upd_f = np.abs(np.asarray(R.product(sf.params[n]) - R.product(end0f[n])))
        assert upd[m].mean() < 0.1 * upd_f[m].mean(), n  # held on the key elements
        assert upd[~m].mean() > 0.5 * upd_f[~m].mean(), n  # free elsewhere


def test_without_adapters_it_refuses_in_one_line(tmp_path, capsys):
    argv = ["run", "mm-cit", "--tiny", "--set", "methods=reglora", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "model.lora.rank" in err and "Traceback" not in err


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_bad_key_fraction_is_refused(fraction, tmp_path, capsys):
    argv = ["run", "mm-cit", "--tiny", "--set", "methods=reglora", "--set", "model.lora.rank=4",
            "--set", f"reglora.key_fraction={fraction}", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 2
    assert "reglora.key_fraction" in capsys.readouterr().err


# -- answer style diversification (ASD): the data rewrite and the modifier that trains on it --------


def test_diversify_keeps_the_knowledge_and_changes_the_style():
    from jaxcl.data import multimodal as MM

    x, y = MM.source("digits", "train")
    ex = MM.concat(
        MM.captions(x, y, "digits", 60, 0, 72),
        MM.attributes(x, y, "digits", 60, 1, 72),
        MM.counting(x, y, 60, 2, 72),
    )
    alt = MM.diversify(ex, 1.0, 3, 72)
    seen = set()
    for i, (p0, a0, p, a) in enumerate(zip(ex.prompt, ex.answer, alt.prompt, alt.answer, strict=True)):
        own = MM.style(a0)
        assert p.startswith(p0 + " ") and MM.style(a) != own or a in ("a", "b"), (p0, a0, p, a)
        tail = p[len(p0) + 1 :]
        if tail == "a number":  # a caption's class index
            assert own == "phrase" and a == str(y_of(ex, i)), (p, a)
        elif tail == "1 or 0":
            assert a == {"yes": "1", "no": "0"}[a0]
        elif tail == "in words":
            assert a == MM.DIGITS[int(a0)]
        elif tail == "true or false":
            assert a == {"yes": "true", "no": "false"}[a0]
        elif tail.startswith("a: "):
            o1, o2 = tail[3:].split(" b: ")
            assert (o1 if a == "a" else o2) == a0 and o1 != o2 or a0 in (o1, o2)
            seen.add("choice")
            continue
        else:  # yes/no: the candidate is the true answer or another of its kind
            assert tail.endswith("?") and a == ("yes" if tail[:-1] == a0 else "no"), (p, a)
        seen.add(MM.style(a))
    assert seen == {"phrase", "yes/no", "number", "choice"}
    # the tokens are the rewritten text; the images and labels are the examples' own
    tokens, mask, _ = MM.encode(alt.prompt, alt.answer, 72)
    np.testing.assert_array_equal(alt.tokens, tokens)
    np.testing.assert_array_equal(alt.image, ex.image)
    # a fraction: that many examples rewritten, the rest untouched
    part = MM.diversify(ex, 0.25, 3, 72)
    changed = sum(p != q for p, q in zip(part.prompt, ex.prompt, strict=True))
    assert changed == 45


def y_of(ex, i):
    return int(ex.labels[i, 0])


def test_asd_trains_on_the_rewritten_rows_below_the_fraction():
    from jaxcl.methods import asd

    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(0, 9, (6, 5))),
        "mask": jnp.ones((6, 5), bool),
        "image": jnp.zeros((6, 2, 2, 1)),
        "asd": {
            "tokens": jnp.asarray(rng.integers(10, 19, (6, 5))),
            "mask": jnp.zeros((6, 5), bool),
            "u": jnp.asarray([0.05, 0.5, 0.15, 0.9, 0.3, 0.19]),
        },
    }
    for frac, want in ((0.2, [0, 2, 5]), (0.0, []), (1.0, range(6))):
        out = jax.jit(asd.swap)(batch, jnp.float32(frac))
        assert "asd" not in out and out["image"].shape == (6, 2, 2, 1)
        use = np.isin(np.arange(6), list(want))
        np.testing.assert_array_equal(
            np.asarray(out["tokens"]), np.where(use[:, None], batch["asd"]["tokens"], batch["tokens"])
        )
        np.testing.assert_array_equal(np.asarray(out["mask"]), ~use[:, None] & np.ones((6, 5), bool))


def test_sefe_rows_run_in_mm_cit_and_asd_elsewhere_is_refused(tmp_path, capsys):
    argv = ["run", "mm-cit", "--tiny", "--set", "methods=reglora+asd", "--set", "model.lora.rank=4",
            "--set", "train.base_steps=2", "--set", "data.seq_len=72", "--seeds", "1", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    import json

    res = json.loads((tmp_path / "results.json").read_text())
    assert list(res["rows"]) == ["reglora+asd"] and res["config"]["asd"]["fraction"] == 0.2
    # the rewritten questions need room: a one-line error naming the key
    argv = argv[:-2] + ["--out", str(tmp_path / "short")]
    argv[argv.index("data.seq_len=72")] = "data.seq_len=56"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "data.seq_len=56" in err and "Traceback" not in err
    # a study whose batches carry no rewritten answers
    argv = ["run", "split-mnist", "--tiny", "--set", "methods=finetune+asd", "--out", str(tmp_path / "cl")]
    assert cli.main(argv) == 2
    assert "asd: this study's batches carry no rewritten answers" in capsys.readouterr().err
