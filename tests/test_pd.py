"""SafeEraser's prompt-decouple loss (jaxcl/methods/pd.py) and TOFU's decoupled rows
(jaxcl/tofu/problem.py): the chain's loss against numpy, the matching by hand, the refusals, and
what the term is for (the decoupled rows keep their answers through unlearning)."""

import jax
import numpy as np
import pytest

from jaxcl import hf
from jaxcl.loops import Phase, PhaseConfig, as_hparams, build_method
from jaxcl.methods import get_method
from jaxcl.models import llama
from jaxcl.models.lm import language_model
from jaxcl.tofu import problem as tproblem
from jaxcl.unlearn.lm import LMProblem

TOK = hf.ByteTokenizer()
QA = [(f"Who wrote book {i}?", f"Author number {i} wrote it in {1900 + 7 * i}.") for i in range(10)]


def enc(qa):
    return tproblem.encode(TOK, [{"question": q, "answer": a} for q, a in qa], 64)


def problem(pd=True) -> LMProblem:
    forget, retain, decoupled = QA[:3], QA[3:7], QA[7:10]
    alt = [(q, "I don't know.") for q, _ in forget]
    return LMProblem(
        forget=enc(forget), forget_alt=enc(alt), retain=enc(retain), forget_pd=enc(decoupled) if pd else None
    )


@pytest.fixture(scope="module")
def lm():
    cfg = llama.tiny(vocab_size=TOK.vocab_size)
    return language_model(cfg, "tiny"), llama.init_params(cfg, seed=0)


def numpy_nll(cfg, params, sub):
    """Token-mean NLL of the answer tokens from the model's logits, in numpy."""
    logits = np.asarray(llama.forward(cfg, params, sub["tokens"][:, :-1]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tgt = np.asarray(sub["tokens"][:, 1:])
    m = np.asarray(sub["mask"][:, 1:], np.float64)
    lp = np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    return float(-(lp * m).sum() / m.sum())


@pytest.mark.parametrize("w", [0.5, 1.0])
def test_base_plus_pd_is_the_base_loss_plus_w_times_the_decoupled_rows_nll(lm, w):
    model, params = lm
    batch = problem().draw(jax.random.key(1), 4)
    spec, base = get_method("graddiff+pd", "unlearn"), get_method("graddiff", "unlearn")
    hp = as_hparams(spec, {"pd.weight": w})
    chain = build_method(spec, model, hp, spec.split({})[1])
    plain = build_method(base, model, as_hparams(base), base.split({})[1])
    got, aux = chain.loss_fn(params, batch, jax.random.key(0))
    want = plain.loss_fn(params, batch, jax.random.key(0))[0] + w * numpy_nll(
        model.cfg, params, batch["forget_pd"]
    )
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert float(aux["pd_nll"]) == pytest.approx(numpy_nll(model.cfg, params, batch["forget_pd"]), rel=1e-5)


def test_pd_weight_defaults_to_the_authors_value_for_its_base():
    """SafeEraser's forget.py: 0.5 after GA and GradDiff, 1 after IDK and KL; a set value wins."""
    for chain, w in (
        ("ga+pd", 0.5),
        ("graddiff+pd", 0.5),
        ("gu-graddiff+pd", 0.5),
        ("idk+pd", 1.0),
        ("npo+pd", 1.0),
    ):
        spec = get_method(chain, "unlearn")
        assert spec.hparams["pd.weight"].default == w, chain
        assert float(as_hparams(spec)["pd.weight"]) == w, chain
    spec = get_method("ga+pd", "unlearn")
    assert float(as_hparams(spec, {"pd.weight": 2.0})["pd.weight"]) == 2.0
    assert spec.defaults()["pd.weight"] == 0.5


def test_pd_is_refused_alone_and_without_decoupled_rows(lm):
    model, params = lm
    with pytest.raises(ValueError, match="is a modifier"):
        get_method("pd")
    spec = get_method("idk+pd", "unlearn")
    method = build_method(spec, model, as_hparams(spec), spec.split({})[1])
    batch = problem(pd=False).draw(jax.random.key(1), 4)
    with pytest.raises(ValueError, match=r"pd needs prompt-decouple rows .* drop \+pd") as e:
        method.loss_fn(params, batch, jax.random.key(0))
    assert "\n" not in str(e.value)


def test_decoupled_rows_are_the_same_question_about_another_author():
    forget = [
        {"question": "What gender is author Basil Al-Kuwaiti?", "answer": "male"},
        {"question": "In which city was Basil Al-Kuwaiti born?", "answer": "Kuwait City"},
    ]
    pool = [
        {"question": "In which city was Yevgeny Grimkov born?", "answer": "Astana"},
        {"question": "What gender is the author Zeynab Nazirova?", "answer": "female"},
        {"question": "What genre does Zeynab Nazirova write in?", "answer": "fiction"},
    ]
    got = tproblem.decoupled(forget, pool)
    assert [r["answer"] for r in got] == ["female", "Astana"]
    with pytest.raises(ValueError, match="no rows"):
        tproblem.decoupled(forget, [])


def test_pd_keeps_the_decoupled_answers_through_gradient_ascent(lm):
    """What PD is for: 8 steps of gradient ascent on the forget rows also unlearn the look-alike
    questions; with ``+pd`` at weight 1 they keep their answers, at the authors' GA weight (0.5,
    the default after GA) the spread is smaller."""
    model, params = lm
    pb = problem()
    after = {}
    for name, sets in (("ga", {}), ("ga+pd", {}), ("ga+pd", {"pd.weight": 1.0})):
        spec = get_method(name, "unlearn")
        phase = Phase(model, spec, PhaseConfig(steps=8, batch_size=4, eval_every=8, eval_size=4))
        hp = as_hparams(spec, {"lr": 3e-3, **sets})
        out = jax.jit(phase.run)(params, jax.random.key(0), pb, hp)["params"]
        after[name + "".join(f" {k}={v}" for k, v in sets.items())] = numpy_nll(model.cfg, out, pb.forget_pd)
    before = numpy_nll(model.cfg, params, pb.forget_pd)
    # ascent on the forget rows spreads to the look-alike questions (5.50 -> 7.59 nats/token here);
    # with +pd at weight 1 they end below where they started (5.01), at 0.5 above (7.41)
    assert after["ga+pd pd.weight=1.0"] < before < after["ga+pd"] < after["ga"], (before, after)
