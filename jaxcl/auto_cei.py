"""Auto-CEI: Automatic Curriculum Expert Iteration (Zhao, Dong, Saha, Xiong, Sahoo, "Automatic
Curriculum Expert Iteration for Reliable LLM Reasoning", ICLR 2025; authors' code
github.com/SalesforceAIResearch/Auto-CEI, ``src/utils/utils.py`` and ``src/rl/curriculum.py``).

A completion is reasoning steps, an answer marker and an answer; the answer may be "I don't know"
(IDK). With ``t`` the number of reasoning steps before the marker, the reward of a completion is
(the authors' ``reward_processor`` with ``conservative_reward``)::

    R = 1                                          correct answer
    R = 2 / (1 + exp(-c2 (t - c1))) - 1            IDK answer (in (-1, 1); > 0 only after c1 steps)
    R = -1                                         wrong answer

Expert iteration samples ``G`` completions per prompt from the current policy; a wrong one is
steered to IDK (its reasoning kept, its answer replaced by the IDK token, so it is rewarded as an
IDK after its ``t`` steps). The authors resample ``G`` of the group with probabilities
``softmax(R / T)`` (with replacement), add the ``G`` originals and drop every completion with
``R <= -1``; the SFT weight of completion ``i`` here is its expected number of copies, without the
sampling noise::

    w_i = [R_i > -1] (1 + G softmax(R / T)_i)

Plain expert iteration (``steer=False``) keeps only the correct completions (IDK and wrong: -1).

The curriculum moves the threshold ``c1`` between iterations by hill climbing on the measured
objective (``get_objective_function``; ``lambda`` = 0.2 in the authors' scripts)::

    f = (1 - lambda) precision + lambda (1 - refusal rate),   precision = correct / answered

Hill climbing on ``c1`` with the paper's stop rule (Section 3.3; ``auto_cei_hill_climbing``):
``c1`` starts at the mean steps of the IDK answers plus ``s``, with ``s = min(0.2 std(t), 0.5)``
and ``c2 = -ln(0.1) / (4 std(t))`` (``test_c1``; ``t`` over all sampled answers), and moves up by
``s`` while a round's ``f`` beats the best so far (the first round is always accepted: the authors'
best starts at 0). A round that does not improve is discarded: training restarts from the best
model, and the climb turns to the other side of the best ``c1`` when that side is still unknown
(only possible right after the first round); otherwise both neighbours of the best ``c1`` are worse
and the climb stops (:attr:`Curriculum.done`). The result is the best model (the authors keep the
best iteration). A compiled run does a fixed number of rounds; the rounds after the stop change
nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

SEP, MARK, IDK = ",", "=", "?"  # step terminator, answer marker, the IDK answer (chain task)


def parse(comp_BxN, before_BxN, *, sep_id: int, mark_id: int, idk_id: int):
    """``(steps_B, reasoning_BxN, answer_BxN, idk_B)`` of completions: ``reasoning`` the tokens
    before the first answer marker, ``steps`` the step terminators among them, ``answer`` the
    tokens after it (both within ``before_BxN``, the tokens before the end token), ``idk`` an
    IDK token in the answer."""
    is_mark = (comp_BxN == mark_id) & before_BxN
    seen = jnp.cumsum(is_mark, axis=1)
    reasoning = before_BxN & (seen == 0)
    answer = before_BxN & (seen > 0) & ~(is_mark & (seen == 1))
    steps = ((comp_BxN == sep_id) & reasoning).sum(-1)
    idk = jnp.any((comp_BxN == idk_id) & answer, axis=-1)
    return steps, reasoning, answer, idk


def idk_reward(steps_B, c1, c2):
    """The IDK reward ``2 / (1 + exp(-c2 (t - c1))) - 1``: in (-1, 1), 0 at ``t = c1``."""
    return 2.0 * jax.nn.sigmoid(c2 * (steps_B.astype(jnp.float32) - c1)) - 1.0


def rewards(correct_B, steps_B, c1, c2, *, steer: bool = True):
    """1 for a correct answer; with ``steer`` (Auto-CEI) the IDK reward for an IDK answer and for
    a wrong one (steered to IDK); else (plain expert iteration) -1 for both."""
    other = idk_reward(steps_B, c1, c2) if steer else -jnp.ones(steps_B.shape, jnp.float32)
    return jnp.where(correct_B, 1.0, other)


def steer_to_idk(comp_BxN, reasoning_BxN, steer_B, *, mark_id: int, idk_id: int, eos_id: int, pad_id: int):
    """Rows with ``steer_B``: their reasoning (cut to ``N - 3`` tokens), then the marker, the IDK
    token and the end token, padded; other rows unchanged."""
    N = comp_BxN.shape[1]
    n_B = jnp.minimum(reasoning_BxN.sum(-1), N - 3)[:, None]
    pos = jnp.arange(N)[None, :]
    out = jnp.where(pos < n_B, comp_BxN, pad_id)
    out = jnp.where(pos == n_B, mark_id, out)
    out = jnp.where(pos == n_B + 1, idk_id, out)
    out = jnp.where(pos == n_B + 2, eos_id, out)
    return jnp.where(steer_B[:, None], out, comp_BxN)


def ei_weights(r_BxG, temp):
    """Expected copies of each completion in the authors' resampling (module docstring)."""
    G = r_BxG.shape[-1]
    p = jax.nn.softmax(r_BxG / temp, axis=-1)
    return jnp.where(r_BxG > -1.0, 1.0 + G * p, 0.0)


def answer_stats(correct_LxN, idk_LxN) -> dict:
    """Per difficulty level (first axis) and pooled: accuracy (correct / all), refusal rate
    (IDK / all) and precision (correct / answered; 0 when nothing is answered)."""
    c = correct_LxN.astype(jnp.float32)
    i = idk_LxN.astype(jnp.float32)
    answered = 1.0 - i
    prec = lambda cs, a: cs / jnp.maximum(a, 1.0)  # noqa: E731
    return {
        "acc_L": c.mean(-1),
        "refusal_L": i.mean(-1),
        "precision_L": prec(c.sum(-1), answered.sum(-1)),
        "acc": c.mean(),
        "refusal": i.mean(),
        "precision": prec(c.sum(), answered.sum()),
    }


def objective(precision, refusal, lam):
    """The curriculum's objective ``(1 - lambda) precision + lambda (1 - refusal)``."""
    return (1.0 - lam) * precision + lam * (1.0 - refusal)


class Curriculum(NamedTuple):
    """The curriculum's state (arrays, so a seed batch carries one curriculum per seed): the IDK
    threshold ``c1`` of the next round, its slope ``c2``, the step size, the best objective so far
    and its ``c1``, the direction of the climb (+1 / -1) and how many neighbours of the best ``c1``
    are known to be worse (2: stopped)."""

    c1: jax.Array
    c2: jax.Array
    step: jax.Array
    best_f: jax.Array
    best_c1: jax.Array
    direction: jax.Array
    worse: jax.Array

    @property
    def done(self) -> jax.Array:
        return self.worse >= 2


def curriculum_init(steps_B, idk_B, *, min_std: float = 0.5) -> Curriculum:
    """The authors' start from sampled answers (``steps_B``, ``idk_B``): ``c1`` = mean steps of
    the IDK answers (of all answers when there is none) + ``s``; ``std`` floored at ``min_std`` so
    that ``c2`` stays finite; no best yet (``best_f = -1``, below any objective), climbing up."""
    t = steps_B.astype(jnp.float32)
    std = jnp.maximum(t.std(), min_std)
    step = jnp.minimum(0.2 * std, 0.5)
    n_idk = idk_B.sum()
    mean_idk = jnp.where(n_idk > 0, (t * idk_B).sum() / jnp.maximum(n_idk, 1), t.mean())
    c2 = -jnp.log(0.1) / (4.0 * std)
    c1 = mean_idk + step
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return Curriculum(c1, c2, step, f32(-1.0), c1, f32(1.0), jnp.asarray(0, jnp.int32))


def curriculum_update(cur: Curriculum, f) -> tuple[Curriculum, jax.Array]:
    """One hill-climbing move after a round trained at ``cur.c1`` reached objective ``f``:
    ``(next curriculum, accepted)``; a stopped curriculum stays as it is (never accepts).

    Accepted (``f > best_f``): the round's model and ``c1`` are the new best, the neighbour behind
    is worse (unless this was the first round) and ``c1`` moves on by ``direction * step``.
    Rejected: one more worse neighbour; with fewer than two the climb turns (``c1 = best_c1 -
    direction * step``), with two it stops at the best ``c1``."""
    live = ~cur.done
    acc = live & (f > cur.best_f)
    had_best = cur.best_f > -1.0
    worse_rej = cur.worse + 1
    turn = ~acc & live & (worse_rej < 2)
    direction = jnp.where(turn, -cur.direction, cur.direction)
    best_c1 = jnp.where(acc, cur.c1, cur.best_c1)
    worse = jnp.where(acc, had_best.astype(jnp.int32), jnp.where(live, worse_rej, cur.worse))
    c1 = jnp.where(acc, cur.c1 + direction * cur.step, best_c1 + direction * cur.step)
    c1 = jnp.where(worse >= 2, best_c1, c1)
    best_f = jnp.where(acc, f, cur.best_f)
    return cur._replace(c1=c1, best_f=best_f, best_c1=best_c1, direction=direction, worse=worse), acc


def restart(trained, best, accepted):
    """The state the next round starts from: the round's ``trained`` state when it was
    ``accepted``, else the ``best`` round's (the paper's hill climb discards a worse round). The
    step counter and the first non-finite step always come from ``trained``: per-step randomness is
    ``fold_in(key, step)`` (:mod:`jaxcl.engine`), so the round after a discarded one draws new
    prompts and samples instead of replaying the discarded round's."""
    kept = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), trained, best)
    return kept.replace(step=trained.step, nonfinite_step=trained.nonfinite_step)


class Tokens(NamedTuple):
    """The token ids Auto-CEI reads: step terminator, answer marker, IDK answer."""

    sep: int
    mark: int
    idk: int


def byte_tokens() -> Tokens:
    """The ids of :data:`SEP`, :data:`MARK` and :data:`IDK` for the byte tokenizer."""
    return Tokens(ord(SEP), ord(MARK), ord(IDK))
