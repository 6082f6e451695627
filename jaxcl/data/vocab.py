"""Vocabularies of scratch language models: the padding id of a tokenizer, and a tokenizer
restricted to the ids a run uses (:class:`CompactTokenizer`), built in two passes through a
:class:`TokenRecorder`."""

from __future__ import annotations

import numpy as np

from . import text


def pad_id(tok) -> int:
    """The tokenizer's padding id, or its end-of-text id when it has none."""
    pad = getattr(tok, "pad_id", None)
    return int(pad) if isinstance(pad, int) else text.end_id(tok)


class TokenRecorder:
    """A tokenizer that remembers every id it produced (the first pass of :class:`CompactTokenizer`)."""

    def __init__(self, base):
        self.base, self.ids = base, set()
        self.eos_id, self.pad_id = text.end_id(base), pad_id(base)

    def encode(self, s: str) -> list[int]:
        ids = self.base.encode(s)
        self.ids.update(ids)
        return ids

    def decode(self, ids):
        return self.base.decode(ids)


class CompactTokenizer:
    """A tokenizer restricted to the ids a run uses, renumbered densely: a scratch model's
    embedding and output layer then hold only those (SmolLM2's 49152 ids -> a few thousand)."""

    def __init__(self, base, ids):
        self.base = base
        eos, pad = text.end_id(base), pad_id(base)
        keep = sorted(set(int(i) for i in ids) | {eos, pad})
        self.dense = {i: j for j, i in enumerate(keep)}
        self.sparse = np.asarray(keep, np.int64)
        self.vocab_size = len(keep)
        self.eos_id, self.pad_id = self.dense[eos], self.dense[pad]

    def encode(self, s: str) -> list[int]:
        try:
            return [self.dense[i] for i in self.base.encode(s)]
        except KeyError:
            raise ValueError(f"{s[:60]!r} has a token outside the run's compact vocabulary") from None

    def decode(self, ids):
        return self.base.decode([int(self.sparse[i]) for i in ids])


def compact(base, record) -> CompactTokenizer:
    """``record(recorder)`` encodes everything the run will encode; the tokenizer of those ids."""
    rec = TokenRecorder(base)
    record(rec)
    return CompactTokenizer(rec.base, rec.ids)
