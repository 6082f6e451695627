"""Recall items cut from a text a pretrained model has very likely seen: the numbers and the names
of the King James Bible, for the memorisation probe of a pretrained model (``lm-recall``; "The
Memorization Problem: Can We Trust LLMs' Economic Forecasts?", 2025: exact recall of values seen
in training, masked entities reconstructed from minimal cues).

An item is a list of :data:`jaxcl.probes.Segments`: the previous verse and the verse up to the
target as context, the target span, the rest of the verse. Kinds:

* ``numbers``: a spelled-out number of at least ``min_words`` number words ("nine hundred sixty
  and nine", "forty and six thousand and five hundred": ages, census counts, measures), so
  the value is a multi-token span the context does not give away;
* ``entities``: the first capitalised name of a verse that occurs neither earlier in the verse
  nor in the previous one, after at least ``min_context`` words (not a stop word such as God,
  LORD or I, and not right after punctuation, where a capital starts a clause or a quotation), so
  it cannot be copied from the context.

:func:`pair_counterfactuals` pairs every item with another item's target of the same kind
(:func:`jaxcl.probes.counterfactual`): the same context with a value of the same corpus and kind
that this context never carried, the matched control.
"""

from __future__ import annotations

import re

import numpy as np

from .. import probes

UNITS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand"
).split()
NUMBER_WORDS = frozenset(UNITS)
# capitalised words that are not names, or are too frequent to be a recall target
STOP = frozenset(
    "God LORD Lord I O And But For Then Thus So Now Behold Yea Nay The This That These Those "
    "Wherefore Therefore Moreover Also If When Who What Which Why How Ye Thou Thee He She It "
    "They We My His Her Our Their Let Is Are Be In On At By With As Of To From All Amen".split()
)
KINDS = ("numbers", "entities")
_WORD = re.compile(r"[A-Za-z]+")


def number_spans(verse: str, min_words: int = 2) -> list[tuple[int, int]]:
    """Character spans of the spelled-out numbers of ``verse`` with at least ``min_words`` number
    words (``and`` joins them inside a span, never starts or ends one; punctuation ends one)."""
    words = list(_WORD.finditer(verse))
    out, i = [], 0
    while i < len(words):
        if words[i].group().lower() not in NUMBER_WORDS:
            i += 1
            continue
        j, last, count = i, i, 0
        while j < len(words) and (w := words[j].group().lower()) in NUMBER_WORDS | {"and"}:
            if j > i and verse[words[j - 1].end() : words[j].start()].strip():
                break  # punctuation between the words: a new clause
            if w != "and":
                last, count = j, count + 1
            j += 1
        if count >= min_words:
            out.append((words[i].start(), words[last].end()))
        i = last + 1
    return out


def entity_span(verse: str, previous: str, min_context: int = 5) -> tuple[int, int] | None:
    """The character span of the verse's first name (a capitalised word that is no stop word and
    follows a word, not punctuation) after ``min_context`` words that appears neither earlier in
    the verse nor in ``previous``."""
    words = list(_WORD.finditer(verse))
    for k, m in enumerate(words):
        w = m.group()
        if k < min_context or not w[0].isupper() or w in STOP or len(w) < 3:
            continue
        if not verse[words[k - 1].end() : m.start()].isspace():
            continue  # after punctuation: the first word of a clause or a quotation, not a name
        before = verse[: m.start()]
        if re.search(rf"\b{w}\b", before) or re.search(rf"\b{w}\b", previous):
            continue
        return m.start(), m.end()
    return None


def items(verses, kind: str, *, min_words: int = 2, min_context: int = 5) -> list[probes.Segments]:
    """Every item of ``kind`` in ``verses`` (texts in order; the previous verse is context), one
    per number span, at most one name per verse."""
    if kind not in KINDS:
        raise ValueError(f"recall item kind {kind!r}; valid: {', '.join(KINDS)}")
    out = []
    for i, verse in enumerate(verses):
        previous = verses[i - 1] if i else ""
        spans = (
            number_spans(verse, min_words)
            if kind == "numbers"
            else [s for s in [entity_span(verse, previous, min_context)] if s is not None]
        )
        for a, b in spans:
            lead = (previous + " " if previous else "") + verse[:a].rstrip()
            out.append([(lead, False), (" " + verse[a:b], True), (verse[b:], False)])
    return out


def subsample(found: list, n: int, seed: int) -> list:
    """``n`` of ``found`` (all when ``n`` is 0 or larger), chosen by ``seed``, in corpus order."""
    if not n or n >= len(found):
        return list(found)
    keep = np.sort(np.random.default_rng(seed).choice(len(found), n, replace=False))
    return [found[i] for i in keep]


def target(segs: probes.Segments) -> str:
    return "".join(t for t, is_t in segs if is_t)


def pair_counterfactuals(found: list[probes.Segments], seed: int) -> list[probes.Segments]:
    """For every item the same context with another item's target (a random derangement, each
    partner's value different from the item's own; ValueError when fewer than two values)."""
    n = len(found)
    values = [target(s) for s in found]
    if len(set(values)) < 2:
        raise ValueError("counterfactual values need at least two different targets")
    order = np.random.default_rng(seed).permutation(n)
    partner = {}
    for k, i in enumerate(order):
        for step in range(1, n):
            j = order[(k + step) % n]
            if values[j] != values[i]:
                partner[i] = j
                break
    return [probes.counterfactual(found[i], found[partner[i]]) for i in range(n)]
