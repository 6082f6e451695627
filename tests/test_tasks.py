"""Verifiable tasks: generated answers are right (checked by independent Python), and the JAX reward
agrees with the plain string check on hand-written correct and incorrect completions, for the
byte tokenizer and for a multi-byte-token vocabulary."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl import tasks
from jaxcl.hf import ByteTokenizer

TOK = ByteTokenizer()


def solve(prompt: str) -> str:
    """An independent solver of every task's prompt."""
    name, rest = prompt.split(" ", 1)
    if name in ("add", "sub", "mul"):
        return str(eval(rest.rstrip("=")))
    if name == "rev":
        return rest.rstrip("=")[::-1]
    if name == "sort":
        return "".join(sorted(rest.rstrip("=")))
    if name == "chain":  # running sums mod 10, each followed by ",", then "=" and the last
        terms = [int(t) for t in rest.rstrip("=").split("+")]
        sums = [sum(terms[: i + 1]) % 10 for i in range(1, len(terms))]
        return "".join(f"{v}," for v in sums) + f"={sums[-1]}"
    if name == "count":
        c, s = re.match(r"(\d) in (\d+)=", rest).groups()
        return str(s.count(c))
    a, b, c = map(int, re.match(r"(\d+)x\+(\d+)=(\d+) x=", rest).groups())
    assert (c - b) % a == 0
    return str((c - b) // a)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_generated_answers_are_correct_and_deterministic(name):
    pairs = tasks.generate(name, 50, seed=3, digits=2)
    assert pairs == tasks.generate(name, 50, seed=3, digits=2)
    assert pairs != tasks.generate(name, 50, seed=4, digits=2)
    for q, a in pairs:
        assert q.startswith(name if name != "lineq" else "solve")
        assert solve(q) == a, (q, a)


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'div'; valid tasks: add, sub"):
        tasks.generate("div", 3)


def _reward(completions, answers, tok=TOK, table=None, partial=False):
    ids = [tok.encode(c) + [tok.eos_id] for c in completions]
    N = max(map(len, ids)) + 2
    comp = np.full((len(ids), N), tok.pad_id, np.int32)
    for i, x in enumerate(ids):
        comp[i, : len(x)] = x
    comp = jnp.asarray(comp)
    before = jnp.cumsum(comp == tok.eos_id, axis=1) == 0
    ans, lens = tasks.encode_answers(answers, 6)
    table, length = table or tasks.token_bytes(tok)
    return np.asarray(tasks.exact_reward(comp, before, ans, lens, table, length, partial=partial))


CASES = [("132", "132", 1), ("0132", "132", 0), ("13", "132", 0), ("1320", "132", 0), (" 132", "132", 0),
         ("7", "7", 1), ("", "7", 0), ("5874", "5874", 1), ("5847", "5874", 0)]  # fmt: skip


def test_reward_matches_the_string_check_on_hand_written_completions():
    got = _reward([c for c, _, _ in CASES], [a for _, a, _ in CASES])
    want = [float(tasks.check_answer(c, a)) for c, a, _ in CASES]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, [w for _, _, w in CASES])
    part = _reward(["132", "135", "5847"], ["132", "132", "5874"], partial=True)
    np.testing.assert_allclose(part, [1.0, 0.5 * 2 / 3, 0.5 * 2 / 4])


class PairTokenizer:
    """Tokens of two bytes (digit pairs) and one byte: the reward must not depend on the split."""

    def __init__(self):
        self.pieces = [bytes([i]) for i in range(256)] + [f"{i:02d}".encode() for i in range(100)]
        self.vocab_size, self.eos_id, self.pad_id = len(self.pieces) + 1, len(self.pieces), len(self.pieces)

    def decode(self, ids):
        return b"".join(self.pieces[i] for i in ids if i < len(self.pieces)).decode(errors="replace")

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text[i : i + 2].isdigit() and len(text[i : i + 2]) == 2:
                out.append(256 + int(text[i : i + 2]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_reward_is_independent_of_the_tokenizer():
    tok = PairTokenizer()
    assert tok.encode("5874") == [256 + 58, 256 + 74]
    got = _reward([c for c, _, _ in CASES], [a for _, a, _ in CASES], tok=tok)
    np.testing.assert_array_equal(got, [w for _, _, w in CASES])


def test_encode_prompts_left_pads_and_sft_masks_the_answer():
    p = tasks.encode_prompts(TOK, [("add 1+2=", "3")], prompt_len=10, answer_width=3)
    assert TOK.decode(np.asarray(p["prompt"][0][p["prompt_valid"][0]])) == "add 1+2="
    assert not p["prompt_valid"][0, :2].any()
    s = tasks.encode_sft(TOK, [("add 1+2=", "3")], prompt_len=10, completion_len=3)
    assert list(s["tokens"][0, 10:]) == [ord("3"), TOK.eos_id, TOK.pad_id]
    np.testing.assert_array_equal(s["loss_mask"][0], [0] * 10 + [1, 1, 0])
    with pytest.raises(ValueError, match="'12345' has 5 bytes, more than answer_width=3"):
        tasks.encode_answers(["12345"], 3)
