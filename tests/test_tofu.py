"""TOFU: data, metrics, the problem, GU and NPO on a language model through the registry and
loops.Phase, and the --tiny study end to end through the CLI."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import cli, config, hf
from jaxcl.loops import Phase, PhaseConfig, as_hparams
from jaxcl.losses import mean_nll
from jaxcl.methods import get_method
from jaxcl.models import llama
from jaxcl.models.lm import language_model
from jaxcl.studies import tofu as T
from jaxcl.tofu import data as tdata
from jaxcl.tofu import metrics as tm
from jaxcl.tofu import problem as tproblem
from jaxcl.unlearn.lm import LMProblem, chunk_len, n_steps

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


# -- a tiny language model on a hand-made problem ----------------------------------------------

TOK = hf.ByteTokenizer()
QA = [(f"Who wrote book {i}?", f"Author number {i} wrote it in {1900 + 7 * i}.") for i in range(8)]


def tiny_problem(n_retain: int = 4) -> LMProblem:
    enc = lambda qa: tproblem.encode(TOK, [{"question": q, "answer": a} for q, a in qa], 64)
    forget, retain = QA[:3], QA[3 : 3 + n_retain]
    alt = [(q, "I don't know.") for q, _ in forget]
    return LMProblem(forget=enc(forget), forget_alt=enc(alt), retain=enc(retain))


@pytest.fixture(scope="module")
def lm():
    cfg = llama.tiny(vocab_size=TOK.vocab_size)
    return language_model(cfg, "tiny"), llama.init_params(cfg, seed=0)


def test_problem_draws_forget_and_its_alternatives_together():
    p = tiny_problem()
    b = jax.jit(lambda k: p.draw(k, 16))(jax.random.key(1))
    assert b["tokens"].shape == (16, 64) and b["forget"]["tokens"].shape == (16, 64)
    f, alt = np.asarray(b["forget"]["tokens"]), np.asarray(b["forget_alt"]["tokens"])
    rows = {tuple(r): i for i, r in enumerate(np.asarray(p.forget["tokens"]))}
    rows_alt = {tuple(r): i for i, r in enumerate(np.asarray(p.forget_alt["tokens"]))}
    assert [rows[tuple(r)] for r in f] == [rows_alt[tuple(r)] for r in alt]  # the same questions
    assert len(set(rows[tuple(r)] for r in f)) > 1
    full = p.learning(**p.train_set)
    assert full.retain_set["tokens"].shape[0] == 7 and full.forget_set is p.forget


def one_step(model, params, name, problem, **options):
    spec = get_method(name, "unlearn")
    phase = Phase(model, spec, PhaseConfig(steps=1, batch_size=4, eval_every=1, eval_size=4), **options)
    hp = as_hparams(spec, {"lr": 1e-2})
    return jax.jit(phase.run)(params, jax.random.key(0), problem, hp)


def test_gu_update_is_orthogonal_to_the_retain_gradient_on_a_language_model(lm):
    """GU (registry ``gu-ga`` through loops.Phase, one step) moves the parameters orthogonally
    to the retain gradient in its history: the first-order change of the retain NLL,
    ``g_r . (theta_1 - theta_0)``, vanishes, while plain GA at the same lr raises it. The retain
    set is one question, so every retain batch has the gradient ``g_r`` measured here."""
    model, params = lm
    problem = tiny_problem(n_retain=1)
    g_r = jax.grad(mean_nll(model))(params, problem.retain_set)
    dot = lambda a, b: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def cosine(name, **options):  # cos(g_r, theta_1 - theta_0)
        new = one_step(model, params, name, problem, **options)["params"]
        delta = jax.tree.map(lambda a, b: a - b, new, params)
        assert dot(delta, delta) > 0
        return dot(g_r, delta) / math.sqrt(dot(g_r, g_r) * dot(delta, delta))

    assert cosine("ga", optim="sgd") > 0.1  # ascent on the forget set raises the retain NLL
    assert abs(cosine("gu-ga", rank=1, optim="sgd")) < 1e-5
    assert abs(cosine("gu-ga", rank=1, preconditioned=True)) < 1e-5  # Adam-whitened, then projected
    # Adam after the projection (the default) rescales each coordinate: only roughly orthogonal
    assert abs(cosine("gu-ga", rank=1)) > 1e-3


def test_npo_loss_at_the_start_is_two_log_two_over_beta(lm):
    """At theta = theta_ref every log ratio is 0, so NPO's loss is (2/beta) softplus(0) =
    (2/beta) log 2 (Zhang et al. 2024), whatever the data; with retain_weight 0 it is the loss."""
    model, params = lm
    spec = get_method("npo", "unlearn")
    phase = Phase(model, spec, PhaseConfig(steps=1, batch_size=4, eval_every=1, eval_size=4))
    run = jax.jit(phase.run)  # beta is traced: one program for both
    for beta in (0.1, 0.5):
        hp = as_hparams(spec, {"lr": 1e-5, "beta": beta})
        trace = run(params, jax.random.key(0), tiny_problem(), hp)["trace"]
        assert float(trace["npo"][0]) == pytest.approx(2 / beta * math.log(2), rel=1e-5)
        assert float(trace["loss"][0]) == pytest.approx(2 / beta * math.log(2), rel=1e-5)


# -- the runner ----------------------------------------------------------------------------------


def tiny_cfg(*sets):
    cfg = config.resolve(config.load("tofu", tiny=True), list(sets))
    T.validate(cfg)
    return cfg


def test_config_errors_name_the_bad_value():
    with pytest.raises(config.ConfigError, match="forget02.*forget01, forget05, forget10"):
        tiny_cfg("data.split=forget02")
    with pytest.raises(config.ConfigError, match=r"gu-npo.rank=50 .*\(12 unlearning steps\)"):
        tiny_cfg("gu-npo.rank=50")
    with pytest.raises(config.ConfigError, match="n_forget=41.*40"):
        tiny_cfg("data.n_forget=41")
    with pytest.raises(config.ConfigError, match="compute_dtype='fp8'"):
        tiny_cfg("model.compute_dtype=fp8")
    assert chunk_len(12, 5) == 4 and chunk_len(12, 0) == 12 and chunk_len(7, 3) == 1
    assert n_steps(10, 40, 32) == 12 and n_steps(0.1, 4, 32) == 1


def test_cli_refuses_a_missing_model_file_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "tofu", "--tiny", "--set", "model.name=/nonexistent.gguf", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "/nonexistent.gguf" in err and "model.name" in err
    assert not out.exists()  # refused before the output folder was made


def test_cli_refuses_a_data_dir_without_the_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = cli.main(["run", "tofu", "--tiny", "--set", f"data.data_dir={empty}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(empty) in err and "forget10.jsonl" in err


@needs_data
def test_tiny_study_end_to_end(tmp_path):
    # three of the eight methods (plain, with alternatives, with GU's projection): each method's
    # step is checked by the registry's conformance tests; this checks the study around them
    methods = ["ga", "idk", "gu-npo"]
    argv = ["run", "tofu", "--tiny", "--out", str(tmp_path), "--set", "methods=" + ",".join(methods)]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["schema"] == "jaxcl-results/1" and res["study"] == "tofu"
    assert list(res["rows"]) == [T.REFERENCE, T.TARGET, *methods]
    assert [c[1] for c in res["columns"]][:9] == [
        "FQ",
        "MU",
        "F.prob",
        "F.rouge",
        "F.TR",
        "R.prob",
        "R.rouge",
        "RA.rouge",
        "WF.rouge",
    ]
    for name, row in res["rows"].items():
        for key, _, _ in res["columns"]:
            assert len(row["per_seed"][key]) == 1 and np.isfinite(row["summary"][key]["mean"]), (name, key)
        s = {k: v["mean"] for k, v in row["summary"].items()}
        assert 0.0 <= s["forget_quality"] <= 1.0 and 0.0 <= s["model_utility"] <= 1.0
        assert len(res["extra"]["generations"][name]["forget"]) == 8
        assert 0.0 <= s["forget_refusal"] <= 1.0 and 0.0 <= s["sarr"] <= 1.0  # refusal rates
    f_prob = {n: r["summary"]["forget_prob"]["mean"] for n, r in res["rows"].items()}
    assert res["rows"][T.REFERENCE]["summary"]["forget_quality"]["mean"] == pytest.approx(1.0)
    # fine-tuning worked: the target answers the forget questions far better than its random init
    cfg = tiny_cfg()
    model, params0, tok = tproblem.load_model(cfg)
    rows = tproblem.load_problem(cfg, tok)[1]["forget"]
    t, m = tdata.encode_qa(tok, [r["question"] for r in rows], [r["answer"] for r in rows], 192)
    random_prob = float(np.mean(np.exp(-tm.avg_nll(model.cfg, params0, t, m, 8))))
    assert f_prob[T.TARGET] > 3 * random_prob
    # gradient ascent lowers the forget-set answer probability (to 0.51x with XLA's optimisations
    # off, as the tests compile, 0.45x with them on: float rounding over 60 steps)
    assert f_prob["ga"] < 0.6 * f_prob[T.TARGET]
    assert res["plots"] == ["fq_vs_mu.png"] and (tmp_path / "fq_vs_mu.png").stat().st_size > 0
    # membership inference of the forget rows against the holdout, every row
    mia = ["mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"]
    assert [c[0] for c in res["columns"]][-5:] == [*mia, "privleak"]
    for name, row in res["rows"].items():
        assert all(0.0 <= row["summary"][k]["mean"] <= 1.0 for k in mia), name
    assert res["rows"][T.REFERENCE]["summary"]["privleak"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert res["extra"]["n_holdout"] == 8


@needs_data
def test_holdout_is_in_neither_models_training_data():
    """The holdout rows (the MIA's non-members) are the last ``n_holdout`` of the retain split and
    in neither the target's (forget + retain) nor the retain model's (retain) training rows."""
    for sets, n_h in (((), 8), (("data.n_retain=0",), 8), (("data.n_holdout=20",), 20)):
        cfg = tiny_cfg(*sets)
        assert tproblem.n_holdout(cfg) == n_h
        retain, holdout = tproblem.split_retain(cfg)
        full = tdata.load_split("retain99")
        assert holdout == full[-n_h:] and len(holdout) == n_h
        tok = hf.ByteTokenizer()
        problem = tproblem.load_problem(cfg, tok)[0]
        enc = tproblem.load_holdout(cfg, tok)
        train = {tuple(r) for r in np.asarray(problem.train_set["tokens"])}  # target's rows
        assert {tuple(r) for r in np.asarray(problem.retain_set["tokens"])} <= train  # retain model's
        assert not {tuple(r) for r in np.asarray(enc["tokens"])} & train
    assert (
        tproblem.n_holdout(config.resolve(config.load("tofu"), ["data.split=forget10", "data.n_forget=0"]))
        == 40
    )
    assert tproblem.load_holdout(tiny_cfg("data.n_holdout=0"), hf.ByteTokenizer()) is None
    with pytest.raises(config.ConfigError, match="n_holdout=-2"):
        tiny_cfg("data.n_holdout=-2")


@needs_data
def test_study_mia_columns_equal_the_audit_modules_suite():
    """The study's one-program MIA (forget rows against the holdout, chunked) gives the same AUCs
    as :func:`jaxcl.unlearn.attacks.mia` run on the two sets apart, for a model trained on some
    forget rows (AUCs away from 0.5, so a swapped sign or set would show)."""
    from jaxcl.unlearn import attacks

    cfg = tiny_cfg()
    model, params, tok = tproblem.load_model(cfg)
    problem = tproblem.load_problem(cfg, tok)[0]
    holdout = tproblem.load_holdout(cfg, tok)
    forget = problem.forget
    loss = lambda p: mean_nll(model)(p, forget)  # noqa: E731
    step = jax.jit(lambda p: jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(loss)(p)))
    for _ in range(20):
        params = step(params)
    study = T.MIA(model, forget, holdout, tok, chunk=3)(params)
    suite = attacks.mia(model, params, forget, holdout, tokenizer=tok, chunk=5)
    for a in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert study[f"mia_{a}"] == pytest.approx(suite[a], abs=1e-6), a
    assert study["mia_loss"] > 0.6  # the trained-on forget rows are told from the holdout


@needs_data
def test_tiny_sweep_runs_every_cell_in_one_program(tmp_path):
    grid = {"ga.lr": [1e-4, 1e-3]}
    res = T.sweep(tiny_cfg("train.epochs=2"), grid, out=str(tmp_path), verbose=False)
    assert res["study"] == "sweep" and list(res["rows"]) == ["ga.lr=0.0001", "ga.lr=0.001"]
    fp = [r["summary"]["forget_prob"]["mean"] for r in res["rows"].values()]
    assert fp[1] < fp[0]  # the larger learning rate forgets more
    assert (tmp_path / "results.json").exists() and (tmp_path / "sweep.png").exists()
