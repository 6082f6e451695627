"""Sequence-order-recall (SORT) data: books as token arrays, prompt layouts, fixed test pairs and
training rows drawn inside the compiled loop.

Paper: Pink et al., "Assessing Episodic Memory in LLMs with Sequence Order Recall Tasks" (SORT,
2024). Given an excerpt of ``X`` tokens of a book and two of its segments of ``G`` tokens,
starting at offsets ``i < j`` (distance ``d = j - i``, ``G <= d <= X - G``), which came first?

A SORT example (``symbols`` prompt) is ``>1:<seg>\\n2:<seg>\\n<excerpt>\\nfirst:<answer>`` (no
excerpt: ``>1:<seg>\\n2:<seg>\\nfirst:<answer>``; the segments come before the excerpt so that a
causal model meets them again while reading it), the answer ``1`` when the segment shown first
came first in the book, else ``2``; the loss is on the answer token only. The ``natural`` prompt
asks in English, the excerpt first as in the paper (``Passage: ... Segment A: ... Which segment
appears first ...? Answer:`` `` A`` / `` B``), for a pretrained model.

Every example is a :class:`Layout` (where each token comes from) filled by :func:`render`, one
function for numpy (the fixed test pairs, :func:`make_pairs` / :func:`pair_items`) and
jax.numpy (the rows :func:`draw_rows` draws on the device, so no training pair repeats).
Books take one role each (:data:`ROLES`; a chapter in two roles is an error: test text would be
trained on).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ConfigError
from . import text, vocab

ROLES = ("parametric", "parametric_format", "context_format", "context", "control")
PROMPTS = ("symbols", "natural")
# the prompt of each format as pieces: text, or "X" (the excerpt), "A" (the segment shown first),
# "B" (the one shown second); then the two answers (A came first / B came first). The symbols
# format shows the segments before the excerpt: a causal model then meets them again while it
# reads the excerpt, and the answer is which one it met last (see the README).
TEMPLATES = {
    "symbols": {
        "excerpt": (">1:", "A", "\n2:", "B", "\n", "X", "\nfirst:"),
        "no_excerpt": (">1:", "A", "\n2:", "B", "\nfirst:"),
        "answers": ("1", "2"),
    },
    "natural": {
        "excerpt": (
            "Passage: ",
            "X",
            "\nSegment A: ",
            "A",
            "\nSegment B: ",
            "B",
            "\nQuestion: Which segment appears first in the passage, A or B?\nAnswer:",
        ),
        "no_excerpt": (
            "Two segments of a book you have read.\nSegment A: ",
            "A",
            "\nSegment B: ",
            "B",
            "\nQuestion: Which segment appears first in the book, A or B?\nAnswer:",
        ),
        "answers": (" A", " B"),
    },
}


# -- books ----------------------------------------------------------------------------------------


def book_documents(books: dict) -> dict[str, dict[str, list[str]]]:
    """``{role: {domain: [documents]}}`` of ``books`` (``{role: [text domains]}``, every role of
    :data:`ROLES`); a document (a chapter) in two roles is an error (test text would leak into
    training)."""
    out, owner = {}, {}
    for role in ROLES:
        out[role] = {}
        for name in books[role]:
            docs = [x for x in text.documents(name) if x.strip()]
            if not docs:
                raise ConfigError(f"books.{role}: {name!r} has no text")
            for doc in docs:
                prev = owner.setdefault(doc, (role, name))
                if prev[0] != role:
                    raise ConfigError(
                        f"books.{role} and books.{prev[0]} share text ({name!r} and {prev[1]!r}): each book "
                        "may have one role only, so that no test text is trained on"
                    )
            out[role][name] = docs
    return out


@dataclasses.dataclass
class Books:
    """Books of one role as one token array on the host: ``tokens`` (the books joined, an end token
    between), ``spans`` ``[(name, begin, end)]`` per book."""

    tokens: np.ndarray
    spans: list

    def starts(self, length: int) -> np.ndarray:
        """Every start of a window of ``length`` tokens inside one book."""
        out = [np.arange(b, e - length + 1) for _, b, e in self.spans if e - b >= length]
        return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)


def encode_books(tok, books: dict[str, list[str]], need: int, role: str) -> Books:
    """Each book's chapters joined by a space and tokenised; a book shorter than ``need`` tokens is
    an error naming it."""
    eos = text.end_id(tok)
    ids, spans = [], []
    for name, docs in books.items():
        t = tok.encode(" ".join(d.strip() for d in docs))
        if len(t) < need:
            raise ConfigError(
                f"books.{role}: {name!r} has {len(t)} tokens, fewer than the {need} one window needs "
                "(sort.excerpt_len or the sequence length); choose a longer book or a shorter excerpt"
            )
        spans.append((name, len(ids), len(ids) + len(t)))
        ids += list(t) + [eos]
    return Books(np.asarray(ids, np.int32), spans)


def encode_roles(tok, docs: dict, T: int) -> dict[str, Books]:
    """:class:`Books` of every role that has books, plus ``lm``: the parametric and
    parametric-format books together (the language-model text)."""
    out = {r: encode_books(tok, docs[r], T, r) for r in ROLES if docs[r]}
    if "parametric" in out or "parametric_format" in out:
        lm = {**docs["parametric"], **docs["parametric_format"]}
        out["lm"] = encode_books(tok, lm, T, "parametric")
    return out


def tokenizer(name: str, docs: dict, prompt: str):
    """The tokenizer of a scratch model: ``byte``, or ``smollm2`` restricted to the ids of the
    books ``docs`` and the ``prompt`` templates (:class:`jaxcl.data.vocab.CompactTokenizer`: a few
    thousand of SmolLM2's 49152 ids)."""
    if name == "byte":
        return text.tokenizer("byte")

    def record(rec):
        for role in ROLES:
            for chapters in docs[role].values():
                rec.encode(" ".join(d.strip() for d in chapters))
        t = TEMPLATES[prompt]
        for piece in (*t["excerpt"], *t["no_excerpt"], *t["answers"]):
            rec.encode(piece)

    return vocab.compact(text.tokenizer("smollm2"), record)


def seq_len(tok, prompt: str, X: int, G: int) -> int:
    """The sequence length of every row: the in-context prompt (excerpt of ``X`` tokens, segments
    of ``G``) and its answer."""
    pieces = TEMPLATES[prompt]
    n = sum(len(tok.encode(p)) for p in pieces["excerpt"] if p not in ("X", "A", "B"))
    n += X + 2 * G
    return n + len(tok.encode(pieces["answers"][0]))


# -- prompts --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every token of a SORT example comes from: ``src`` -1 (the template ``tokens``), 0
    (the excerpt), 1 (the segment shown first), 2 (the segment shown second), with ``off`` the
    offset inside it; the answer at ``answer_pos``; ``length`` tokens before padding; the excerpt
    and segment lengths ``X`` and ``G`` the rows drawn with it use (also without the excerpt)."""

    tokens: np.ndarray
    src: np.ndarray
    off: np.ndarray
    answer_pos: int
    length: int
    answers: tuple  # (id of "the first shown came first", id of "the second shown came first")
    excerpt_len: int
    segment_len: int


def answer_ids(tok, prompt: str) -> tuple[int, int]:
    ids = []
    for a in TEMPLATES[prompt]["answers"]:
        t = tok.encode(a)
        if len(t) != 1:
            raise ConfigError(
                f"sort.prompt={prompt!r}: the answer {a!r} is {len(t)} tokens for this tokenizer; the "
                "readout "
                "compares two single answer tokens: use the other prompt format"
            )
        ids.append(int(t[0]))
    if ids[0] == ids[1]:
        raise ConfigError(f"sort.prompt={prompt!r}: both answers are the same token")
    return ids[0], ids[1]


def make_layout(tok, prompt: str, X: int, G: int, with_excerpt: bool, T: int, pad: int) -> Layout:
    """The layout of one prompt format, right-padded to ``T`` tokens."""
    pieces = TEMPLATES[prompt]["excerpt" if with_excerpt else "no_excerpt"]
    toks, src, off = [], [], []

    def const(s):
        ids = tok.encode(s) if s else []
        toks.extend(ids)
        src.extend([-1] * len(ids))
        off.extend([0] * len(ids))

    def fill(which, n):
        toks.extend([pad] * n)
        src.extend([which] * n)
        off.extend(range(n))

    for piece in pieces:
        if piece in ("X", "A", "B"):
            fill("XAB".index(piece), X if piece == "X" else G)
        else:
            const(piece)
    answers = answer_ids(tok, prompt)
    pos = len(toks)
    const(TEMPLATES[prompt]["answers"][0])  # the answer's slot (filled per example)
    n = len(toks)
    if n > T:
        raise ConfigError(f"a SORT prompt has {n} tokens, more than the sequence length {T}")
    pad_n = T - n
    toks += [pad] * pad_n
    src += [-1] * pad_n
    off += [0] * pad_n
    return Layout(
        np.asarray(toks, np.int32),
        np.asarray(src, np.int32),
        np.asarray(off, np.int32),
        pos,
        n,
        answers,
        X,
        G,
    )


def render(xp, lay: Layout, book, start, a, b):
    """``(tokens (T,), mask (T,))`` of one example (``xp``: numpy or jax.numpy, so the host's test
    items and the loop's training rows are the same function): the excerpt ``book[start :
    start + X]``, the segment shown first at ``start + a``, the second at ``start + b`` (offsets
    in the excerpt); the answer is the first one when ``a < b``. Only the answer is scored."""
    src, off = xp.asarray(lay.src), xp.asarray(lay.off)
    pos = start + xp.where(src == 1, a, xp.where(src == 2, b, 0)) + off
    idx = xp.arange(len(lay.src))
    toks = xp.where(src >= 0, book[xp.clip(pos, 0, len(book) - 1)], xp.asarray(lay.tokens))
    ans = xp.where(a < b, lay.answers[0], lay.answers[1])
    toks = xp.where(idx == lay.answer_pos, ans, toks)
    return toks.astype(xp.int32), idx == lay.answer_pos


# -- test pairs (host) ------------------------------------------------------------------------------


def distance_edges(X: int, G: int, n_bins: int) -> np.ndarray:
    """Integer edges of ``n_bins`` equal bins of the distance ``d`` between two segments' starts,
    ``G <= d <= X - G``; bin ``k`` is ``edges[k] <= d < edges[k + 1]``."""
    return np.round(np.linspace(G, X - G + 1, n_bins + 1)).astype(int)


@dataclasses.dataclass(frozen=True)
class Pair:
    book: str
    start: int  # excerpt start in the role's token array
    i: int  # the earlier segment's offset in the excerpt
    j: int  # the later one's (j - i: the distance)
    bin: int


def make_pairs(books: Books, n: int, X: int, G: int, n_bins: int, seed: int) -> list[Pair]:
    """``n`` test pairs, bin ``k % n_bins`` for the ``k``-th, the distance uniform in its bin, the
    excerpt and position uniform; each segment occurs once in its excerpt (else redrawn)."""
    rng = np.random.default_rng(seed)
    starts = books.starts(X)
    edges = distance_edges(X, G, n_bins)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ConfigError(
                f"could not draw {n} SORT pairs whose segments are unique in their excerpt; use longer "
                "sort.segment_len or fewer sort.pairs"
            )
        k = len(out) % n_bins
        d = int(rng.integers(edges[k], edges[k + 1]))
        s = int(starts[rng.integers(len(starts))])
        i = int(rng.integers(0, X - G - d + 1))
        ex = books.tokens[s : s + X]
        segs = [ex[i : i + G], ex[i + d : i + d + G]]
        windows = np.lib.stride_tricks.sliding_window_view(ex, G)
        if any(int((windows == seg).all(-1).sum()) != 1 for seg in segs):
            continue
        name = next(nm for nm, b, e in books.spans if b <= s < e)
        out.append(Pair(name, s, i, i + d, k))
    return out


def pair_items(books: Books, lay: Layout, pairs: list[Pair]) -> dict:
    """Both orders of every pair (rows ``2k`` and ``2k + 1``): ``tokens``, ``mask`` (the answer),
    ``answer_pos``, ``correct`` and ``wrong`` answer ids."""
    toks, mask, correct, wrong = [], [], [], []
    for p in pairs:
        for a, b in ((p.i, p.j), (p.j, p.i)):
            t, m = render(np, lay, books.tokens, p.start, a, b)
            toks.append(t)
            mask.append(m)
            c = lay.answers[0] if a < b else lay.answers[1]
            correct.append(c)
            wrong.append(lay.answers[1] if c == lay.answers[0] else lay.answers[0])
    n = len(toks)
    return {
        "tokens": np.stack(toks),
        "mask": np.stack(mask),
        "answer_pos": np.full((n,), lay.answer_pos, np.int32),
        "correct": np.asarray(correct, np.int32),
        "wrong": np.asarray(wrong, np.int32),
    }


def eval_set(books: list[Books], layouts: list[Layout], n: int, n_bins: int, seed: int):
    """The test items of several conditions as one array: condition ``k`` has ``n`` pairs of
    ``books[k]`` (:func:`make_pairs`, seed ``seed + k``) rendered with ``layouts[k]``. Returns
    ``(pairs per condition, (begin, end) rows per condition, items)``."""
    pairs, rows, items, at = [], [], [], 0
    for k, (bk, lay) in enumerate(zip(books, layouts)):
        p = make_pairs(bk, n, lay.excerpt_len, lay.segment_len, n_bins, seed + k)
        items.append(pair_items(bk, lay, p))
        pairs.append(p)
        rows.append((at, at + 2 * len(p)))
        at += 2 * len(p)
    return pairs, rows, {key: np.concatenate([i[key] for i in items]) for key in items[0]}


def nll_windows(books: Books, T: int, n: int) -> np.ndarray:
    """(n, T) windows of ``books``, evenly spaced over every window start."""
    st = books.starts(T)
    return np.stack([books.tokens[i : i + T] for i in st[np.linspace(0, len(st) - 1, n).astype(int)]])


def sources(books: dict[str, Books], X: int, T: int, pad: int) -> dict:
    """The training sources ``{tokens, starts}``: ``lm`` (windows of ``T``), ``context_format`` and
    ``parametric_format`` (excerpts of ``X``); a role without books gets a placeholder of padding
    (its weight in the mix is 0)."""
    placeholder = Books(np.full((T + 1,), pad, np.int32), [("none", 0, T + 1)])
    out = {}
    for role, length in (("lm", T), ("context_format", X), ("parametric_format", X)):
        src = books.get(role, placeholder)
        out[role] = {"tokens": src.tokens, "starts": src.starts(length)}
    return out


# -- training rows (jittable) -------------------------------------------------------------------------


def draw_rows(src: dict, lay: Layout, key, B: int, prompt_loss: bool = False) -> dict:
    """``B`` SORT rows from random excerpts of ``src``: the distance uniform in ``[G, X - G]``,
    the position uniform, the order random. ``prompt_loss``: every prompt token is scored too, not
    only the answer (a dense signal)."""
    X, G = lay.excerpt_len, lay.segment_len
    k1, k2, k3, k4 = jax.random.split(key, 4)
    start = src["starts"][jax.random.randint(k1, (B,), 0, src["starts"].shape[0])]
    d = jax.random.randint(k2, (B,), G, X - G + 1)
    i = jnp.floor(jax.random.uniform(k3, (B,)) * (X - G - d + 1)).astype(jnp.int32)
    swap = jax.random.bernoulli(k4, 0.5, (B,))
    a, b = jnp.where(swap, i + d, i), jnp.where(swap, i, i + d)
    toks, mask = jax.vmap(lambda st, aa, bb: render(jnp, lay, src["tokens"], st, aa, bb))(start, a, b)
    if prompt_loss:
        mask = jnp.broadcast_to(jnp.arange(len(lay.src)) < lay.length, mask.shape)
    return {"tokens": toks, "mask": mask}


def draw_windows(src: dict, key, B: int, T: int) -> dict:
    """``B`` language-model windows of ``T`` tokens of ``src``, every token scored."""
    start = src["starts"][jax.random.randint(key, (B,), 0, src["starts"].shape[0])]
    toks = src["tokens"][start[:, None] + jnp.arange(T)]
    return {"tokens": toks, "mask": jnp.ones_like(toks, bool)}


def draw_batch(data: dict, layouts: dict, key, B: int, mix, prompt_loss: bool = False) -> dict:
    """One batch of one kind, the kind drawn with probabilities ``mix``: language-model windows
    of ``data["lm"]``, in-context SORT rows of ``data["context_format"]`` (``layouts[True]``),
    no-excerpt SORT rows of ``data["parametric_format"]`` (``layouts[False]``)."""
    k0, k1, k2, k3 = jax.random.split(key, 4)
    batches = [
        draw_windows(data["lm"], k1, B, len(layouts[True].src)),
        draw_rows(data["context_format"], layouts[True], k2, B, prompt_loss),
        draw_rows(data["parametric_format"], layouts[False], k3, B, prompt_loss),
    ]
    w = jnp.asarray(mix, jnp.float32)
    kind = jax.random.categorical(k0, jnp.log(jnp.maximum(w, 0.0) + 1e-30))
    return jax.tree.map(lambda *xs: jnp.stack(xs)[kind], *batches)
