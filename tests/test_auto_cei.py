"""Auto-CEI (:mod:`jaxcl.auto_cei`, registry ``auto_cei``, study ``auto-cei``): the IDK reward
schedule, the curriculum's start and moves and the per-level answer statistics against numpy on
hand-made cases; parsing, steering and the expert-iteration weights on a hand-made batch of
completions; the rollout keeps only correct or IDK-ending completions; the study's tiny run goes
through the driver."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import auto_cei as A
from jaxcl import cli, grpo
from jaxcl.hf import ByteTokenizer
from jaxcl.loops import as_hparams, build_method
from jaxcl.methods import METHODS
from jaxcl.models import llama
from jaxcl.models.lm import language_model

TOK = ByteTokenizer()
T = A.byte_tokens()


def np_idk_reward(t, c1, c2):
    return 2.0 / (1.0 + np.exp(-c2 * (np.asarray(t, np.float64) - c1))) - 1.0


def test_idk_reward_schedule_against_numpy():
    t = np.array([0, 1, 2, 3, 5, 9])
    for c1, c2 in ((2.0, 0.4), (4.5, 1.3), (0.0, 0.05)):
        got = np.asarray(A.idk_reward(jnp.asarray(t), c1, c2))
        np.testing.assert_allclose(got, np_idk_reward(t, c1, c2), rtol=1e-5, atol=1e-6)
    # below the threshold an IDK loses, above it wins, at it 0
    r = np.asarray(A.idk_reward(jnp.asarray([1, 3, 5]), 3.0, 0.4))
    assert r[0] < 0 and abs(r[1]) < 1e-7 and r[2] > 0
    correct = jnp.asarray([True, False, False])
    steps = jnp.asarray([1, 1, 6])
    np.testing.assert_allclose(
        A.rewards(correct, steps, 3.0, 0.4, steer=True), [1.0, *np_idk_reward([1, 6], 3.0, 0.4)], rtol=1e-5
    )
    np.testing.assert_array_equal(A.rewards(correct, steps, 3.0, 0.4, steer=False), [1.0, -1.0, -1.0])


def ref_climb(c1, s, fs):
    """The hill climb with the stop rule, written out: ``[(c1 after the round, accepted)]``."""
    best_f, best_c1, d, worse, out = -1.0, c1, 1.0, 0, []
    for f in fs:
        if worse >= 2:  # stopped
            out.append((c1, False))
            continue
        if f > best_f:
            worse = 1 if best_f > -1 else 0  # the neighbour behind is worse (not after round one)
            best_f, best_c1 = f, c1
            c1 += d * s
            out.append((c1, True))
        else:
            worse += 1
            if worse < 2:
                d = -d
                c1 = best_c1 + d * s
            else:
                c1 = best_c1
            out.append((c1, False))
    return out


def test_curriculum_start_and_moves_against_numpy():
    steps = np.array([1, 2, 2, 4, 6, 3])
    idk = np.array([0, 1, 0, 1, 1, 0], bool)
    cur = A.curriculum_init(jnp.asarray(steps), jnp.asarray(idk))
    std = steps.std()
    s = min(0.2 * std, 0.5)
    np.testing.assert_allclose(cur.step, s, rtol=1e-6)
    np.testing.assert_allclose(cur.c1, steps[idk].mean() + s, rtol=1e-6)
    np.testing.assert_allclose(cur.c2, -math.log(0.1) / std / 4, rtol=1e-6)
    # no IDK answer: the mean of all steps; one step count: std floored, c2 finite
    cur0 = A.curriculum_init(jnp.asarray([3, 3]), jnp.asarray([False, False]))
    np.testing.assert_allclose([cur0.c1, cur0.c2], [3 + 0.1, -math.log(0.1) / 2.0], rtol=1e-6)
    # the climb: up while f improves; after round one a worse round turns it to the other side,
    # later a worse round stops it (both neighbours of the best c1 worse); stopped, nothing moves
    for fs in (
        (0.7, 0.65, 0.8, 0.75, 0.9, 0.95),  # turn after round 2, down once, stop
        (0.5, 0.6, 0.7, 0.6, 0.99),  # up twice, stop at the third
        (0.7, 0.6, 0.6, 0.9),  # both sides of the first c1 worse: stop there
    ):
        c = cur
        want = ref_climb(float(cur.c1), s, fs)
        for f, (c1, acc) in zip(fs, want):
            c, accepted = A.curriculum_update(c, jnp.float32(f))
            np.testing.assert_allclose(float(c.c1), c1, rtol=1e-6, err_msg=str(fs))
            assert bool(accepted) == acc, fs
        assert bool(c.done)
    # the objective
    np.testing.assert_allclose(A.objective(0.9, 0.25, 0.2), 0.8 * 0.9 + 0.2 * 0.75, rtol=1e-6)


def test_a_discarded_round_restarts_from_the_best_state_with_fresh_randomness():
    from jaxcl.engine import TrainState

    def state(step, w, nonfinite=-1):
        return TrainState(
            step=jnp.int32(step),
            params={"w": jnp.full(3, w)},
            opt_state=(jnp.float32(w),),
            data_state=(),
            key=jax.random.key(7),
            nonfinite_step=jnp.int32(nonfinite),
        )

    best, trained = state(10, 1.0), state(20, 2.0, nonfinite=15)
    for accepted, w in ((True, 2.0), (False, 1.0)):
        s = A.restart(trained, best, jnp.asarray(accepted))
        np.testing.assert_array_equal(s.params["w"], np.full(3, w))
        assert float(s.opt_state[0]) == w
        # the step counter (hence fold_in(key, step), the next round's draws) goes on either way
        assert int(s.step) == 20 and int(s.nonfinite_step) == 15


def _batch(texts, N=10):
    comp = np.full((len(texts), N), TOK.pad_id, np.int32)
    for i, t in enumerate(texts):
        ids = TOK.encode(t) + [TOK.eos_id]
        comp[i, : len(ids)] = ids[:N]
    comp = jnp.asarray(comp)
    return comp, grpo.end_mask(comp, TOK.eos_id)[1]


def _text(row):
    out = []
    for i in np.asarray(row):
        if i == TOK.eos_id:
            return "".join(out) + "<e>"
        if i < 256:
            out.append(chr(i))
    return "".join(out)


def test_parse_steer_and_weights_on_a_hand_made_batch():
    # two prompts x G = 3: correct, wrong, IDK after 1 step | wrong (no marker), correct, correct
    texts = ["4,4,=4", "4,5,=1", "4,=?", "4,4,4,4,4", "0,=0", "0,=0"]
    comp, before = _batch(texts)
    steps, reasoning, answer, idk = A.parse(comp, before, sep_id=T.sep, mark_id=T.mark, idk_id=T.idk)
    np.testing.assert_array_equal(steps, [2, 2, 1, 4, 1, 1])
    np.testing.assert_array_equal(idk, [False, False, True, False, False, False])
    np.testing.assert_array_equal(answer.sum(-1), [1, 1, 1, 0, 1, 1])
    correct = jnp.asarray([True, False, False, False, True, True])
    new = A.steer_to_idk(
        comp, reasoning, ~correct, mark_id=T.mark, idk_id=T.idk, eos_id=TOK.eos_id, pad_id=TOK.pad_id
    )
    # wrong paths keep their reasoning and answer IDK; the 10-token row's reasoning is cut to 7
    want = ["4,4,=4<e>", "4,5,=?<e>", "4,=?<e>", "4,4,4,4=?<e>", "0,=0<e>", "0,=0<e>"]
    assert [_text(r) for r in new] == want
    steps2 = A.parse(new, grpo.end_mask(new, TOK.eos_id)[1], sep_id=T.sep, mark_id=T.mark, idk_id=T.idk)[0]
    np.testing.assert_array_equal(steps2, [2, 2, 1, 3, 1, 1])
    r = A.rewards(correct, steps2, 2.0, 0.4, steer=True).reshape(2, 3)
    w = np.asarray(A.ei_weights(r, 0.6))
    rn = np.asarray(r, np.float64)
    p = np.exp(rn / 0.6) / np.exp(rn / 0.6).sum(-1, keepdims=True)
    np.testing.assert_allclose(w, (rn > -1) * (1 + 3 * p), rtol=1e-5)
    # plain expert iteration: only the correct completions are kept
    r0 = A.rewards(correct, steps2, 2.0, 0.4, steer=False).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(A.ei_weights(r0, 0.6)) > 0, np.asarray(correct).reshape(2, 3))


def test_answer_stats_per_level_against_numpy():
    rng = np.random.default_rng(0)
    idk = rng.random((4, 9)) < 0.3
    correct = (rng.random((4, 9)) < 0.5) & ~idk
    idk[3] = True  # a level with nothing answered: precision 0
    correct[3] = False
    s = A.answer_stats(jnp.asarray(correct), jnp.asarray(idk))
    answered = (~idk).sum(-1)
    np.testing.assert_allclose(s["acc_L"], correct.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(s["refusal_L"], idk.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(s["precision_L"], correct.sum(-1) / np.maximum(answered, 1), rtol=1e-6)
    np.testing.assert_allclose(s["precision"], correct.sum() / (~idk).sum(), rtol=1e-6)
    np.testing.assert_allclose([s["acc"], s["refusal"]], [correct.mean(), idk.mean()], rtol=1e-6)


@pytest.mark.parametrize("steer", [True, False])
def test_rollout_keeps_correct_or_idk_completions(steer):
    """Behaviour: a random policy's samples are mostly wrong; with ``steer`` each kept completion is
    correct or ends in the IDK answer, without it only the correct ones are kept."""
    cfg = llama.tiny(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=24)
    model = language_model(cfg, "tiny")
    spec = METHODS["auto_cei"]
    _, opts = spec.split({"group_size": 4, "max_new_tokens": 8, "steer": steer})
    method = build_method(spec, model, as_hparams(spec, {"c1": 0.0}), opts)
    # "correct": the first sampled token is an even byte
    env = grpo.Env(lambda c, m, rows: (c[:, 0] % 2 == 0).astype(jnp.float32), TOK.eos_id, TOK.pad_id)
    prompts = {"prompt": jnp.full((3, 4), 65, jnp.int32), "prompt_valid": jnp.ones((3, 4), bool)}
    batch, m = jax.jit(lambda p, k: method.rollout.fn(p, prompts, k, env))(
        model.init(jax.random.key(0)), jax.random.key(1)
    )
    comp = np.asarray(batch["tokens"][:, 4:])
    kept = np.asarray(batch["weight"]) > 0
    even = comp[:, 0] % 2 == 0
    assert (~even).any() and even.any()
    if steer:  # every wrong sample is steered to IDK and kept (its IDK reward > -1)
        assert kept.all()
        assert all(_text(row).endswith("=?<e>") for row in comp[~even])
    else:  # plain expert iteration keeps the correct samples only
        np.testing.assert_array_equal(kept, even)
    np.testing.assert_allclose(float(m["correct"]), even.mean(), rtol=1e-6)


def test_tiny_study_runs_through_the_driver(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["run", "auto-cei", "--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["rows"]) == ["base", "sft", "ei", "grpo-idk", "auto-cei"]
    for name, r in res["rows"].items():
        for k in ("acc", "precision", "refusal", "refusal_0", "precision_1"):
            assert all(0 <= v <= 1 for v in r["per_seed"][k]), (name, k)
    c1 = res["rows"]["auto-cei"]["c1_trace_mean"]
    np.testing.assert_allclose(c1[0], np.mean(res["extra"]["c1_start_per_seed"]), rtol=1e-5)
    # the climb: round one always accepted; once stopped a seed stays stopped; the row reports its
    # best round's model, whose c1 is one the climb tried
    r = res["rows"]["auto-cei"]
    assert r["accepted_trace_mean"][0] == 1.0 and r["active_trace_mean"][0] == 1.0
    assert all(a >= b for a, b in zip(r["active_trace_mean"], r["active_trace_mean"][1:]))
    assert len(r["per_seed"]["best_c1"]) == 2 and all(np.isfinite(r["per_seed"]["best_c1"]))
    # a config error: one line naming the key and the fix, exit 2
    assert (
        cli.main(["run", "auto-cei", "--tiny", "--set", "data.answer_len=4", "--out", str(tmp_path / "e")])
        == 2
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the first run's progress bar
    assert last.startswith("error: data.answer_len=4") and ">= 7" in last
