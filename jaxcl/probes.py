"""Memory probes for language models: synthetic facts and sequences to inject into a training
stream, and their scoring inside the compiled loop.

**Generator** (deterministic in its seed): fictional entities with names built from syllables,
each with a birth year, a home city (unique) and a profession. A fact is rendered as

* a training document ("Dalomi Renvo was born in 1873. Dalomi Renvo lives in Tarmere. ..."),
* memorisation probes: the document up to each attribute's value, the value the target span
  (the exact sentence the model saw; Chang et al. 2024),
* paraphrase probes: the same attribute in a sentence never seen ("The year of birth of
  Dalomi Renvo is 1873"), semantic generalisation,
* composition probes: two facts of one entity combined through the unique city ("The person
  who lives in Tarmere works as a baker"), compositional generalisation,

and numeric / entity items (study 7, "The Memorization Problem"): "The vault code of <name> is
48213907" (the number is the target) and "The lighthouse of <city> was built by <name>" (the
entity is the target), half of them injected, half never seen. Every text is a list of
``(text, is_target)`` segments, encoded segment by segment, so the training document and its
probes share the target's tokens exactly whatever the tokenizer.

**Scoring** (pure, jittable; ``apply(params, tokens_BxT) -> logits_BxTxV``):

* :func:`span_scores`: teacher-forced log-probability of the target span and exact match (the
  argmax equals every target token; equal to greedy decoding reproducing the span);
* :func:`greedy_recall`: a continuation generated greedily from a cue with the KV cache
  (:func:`jaxcl.generate.generate_ids`), exact and token accuracy against the true continuation;
* :func:`sequence_nll` and :func:`auc`: recognition of seen vs novel sequences from the
  per-sequence loss, a rank (Mann-Whitney) AUC in JAX;
* :func:`power_law_fit` (host): ``y = c * t ** -alpha`` by least squares in log-log space.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SYLLABLES = (
    "ka lo mi ren tal vo shi dar el qu zan bor fe nix ro sa tem ul wy gri "
    "pa den sol mar ith cor ves lun bri hal"
).split()
CITY_SUFFIXES = ("mere", "vale", "ford", "holm", "stead", "wick")
PROFESSIONS = (
    "baker weaver sailor painter miller glassblower clockmaker beekeeper cartographer potter "
    "tailor mason fisher brewer archivist locksmith"
).split()
WARES = "ledger vault locker archive safe cabinet".split()
ATTRIBUTES = ("year", "city", "profession")

Segments = list[tuple[str, bool]]  # (text, is_target)


def _word(rng, n: int) -> str:
    return "".join(rng.choice(SYLLABLES, n)).capitalize()


def _unique(rng, make, n: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        w = make(rng)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    year: int
    city: str
    profession: str

    def document(self) -> Segments:
        """The training document: one sentence per attribute, each value a target span."""
        return [
            (f"{self.name} was born in", False),
            (f" {self.year}", True),
            (f". {self.name} lives in", False),
            (f" {self.city}", True),
            (f". {self.name} works as a", False),
            (f" {self.profession}", True),
            (".", False),
        ]

    def memorization(self) -> list[Segments]:
        """The document up to each attribute's value (that value the only target)."""
        doc, out = self.document(), []
        for i in (1, 3, 5):
            out.append([(t, False) for t, _ in doc[:i]] + [doc[i]])
        return out

    def paraphrase(self) -> list[Segments]:
        return [
            [(f"The year of birth of {self.name} is", False), (f" {self.year}", True)],
            [(f"The home town of {self.name} is", False), (f" {self.city}", True)],
            [(f"By trade, {self.name} is a", False), (f" {self.profession}", True)],
        ]

    def composition(self) -> list[Segments]:
        return [
            [(f"The person who lives in {self.city} was born in", False), (f" {self.year}", True)],
            [(f"The person who lives in {self.city} works as a", False), (f" {self.profession}", True)],
        ]


def entities(n: int, seed: int, *, taken: set | None = None) -> list[Entity]:
    """``n`` fictional entities, deterministic in ``seed``: unique names (2+3 syllables), unique
    cities (2 syllables + a suffix), a birth year in 1700-1999 and a profession."""
    rng = np.random.default_rng(seed)
    taken = set() if taken is None else taken
    names = _unique(rng, lambda r: f"{_word(r, 2)} {_word(r, 3)}", n, taken)
    cities = _unique(rng, lambda r: _word(r, 2) + str(r.choice(CITY_SUFFIXES)), n, taken)
    years = rng.integers(1700, 2000, n)
    profs = rng.choice(PROFESSIONS, n)
    return [Entity(a, int(y), c, str(p)) for a, y, c, p in zip(names, years, cities, profs)]


def numeric_items(n: int, seed: int, *, digits: int = 8) -> list[Segments]:
    """``n`` sentences whose target is a ``digits``-digit number (study 7)."""
    rng = np.random.default_rng(seed)
    names = _unique(rng, lambda r: f"{_word(r, 2)} {_word(r, 2)}", n, set())
    out = []
    for name in names:
        num = "".join(str(d) for d in rng.integers(0, 10, digits))
        ware = str(rng.choice(WARES))
        out.append([(f"The {ware} code of {name} is", False), (f" {num}", True), (".", False)])
    return out


def entity_items(n: int, seed: int) -> list[Segments]:
    """``n`` sentences whose target is a person's name (a masked entity, cued by a unique city)."""
    rng = np.random.default_rng(seed)
    taken: set = set()
    cities = _unique(rng, lambda r: _word(r, 2) + str(r.choice(CITY_SUFFIXES)), n, taken)
    names = _unique(rng, lambda r: f"{_word(r, 2)} {_word(r, 2)}", n, taken)
    return [
        [(f"The lighthouse of {c} was built by", False), (f" {a}", True), (".", False)]
        for c, a in zip(cities, names)
    ]


def random_sequences(n: int, length: int, seed: int) -> list[str]:
    """``n`` strings of ``length`` characters made of random syllables and spaces: stimuli
    without structure (study 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = ""
        while len(s) < length:
            s += _word(rng, int(rng.integers(1, 4))).lower() + " "
        out.append(s[:length])
    return out


def counterfactual(segs: Segments, other: Segments) -> Segments:
    """``segs`` with its target segments replaced, in order, by those of ``other`` (the same
    probe of another item): the same context, a value the model never saw for it. The paired
    difference ``log p(true) - log p(counterfactual)`` measures what was memorised, not what the
    template or the stream taught (both targets gain from those alike)."""
    alts = [t for t, is_t in other if is_t]
    n = sum(is_t for _, is_t in segs)
    if len(alts) != n:
        raise ValueError(f"counterfactual: {n} target segments but the other probe has {len(alts)}")
    it = iter(alts)
    return [(next(it), True) if is_t else (t, False) for t, is_t in segs]


# -- encoding -------------------------------------------------------------------------------------


def encode_segments(tok, segs: Segments) -> tuple[list[int], list[bool]]:
    ids, target = [], []
    for text, is_t in segs:
        t = tok.encode(text)
        ids += t
        target += [is_t] * len(t)
    return ids, target


def encode_probes(tok, items: list[Segments], pad_id: int, length: int | None = None) -> dict:
    """``{'tokens': (N, T) int32, 'target': (N, T) bool, 'valid': (N, T) bool}``, right-padded to
    ``length`` (default: the longest item). An item longer than ``length`` raises ValueError."""
    enc = [encode_segments(tok, s) for s in items]
    longest = max(len(i) for i, _ in enc)
    T = longest if length is None else length
    if longest > T:
        i = int(np.argmax([len(x) for x, _ in enc]))
        text = "".join(t for t, _ in items[i])
        raise ValueError(f"the probe {text!r} has {longest} tokens, more than the sequence length {T}")
    toks = np.full((len(items), T), pad_id, np.int32)
    tgt = np.zeros((len(items), T), bool)
    val = np.zeros((len(items), T), bool)
    for r, (ids, t) in enumerate(enc):
        if t and t[0]:
            raise ValueError("a probe's first token cannot be a target (nothing predicts it)")
        toks[r, : len(ids)], tgt[r, : len(ids)], val[r, : len(ids)] = ids, t, True
    return {"tokens": toks, "target": tgt, "valid": val}


# -- scoring (pure, jittable) ----------------------------------------------------------------------


def _target_logp(apply, params, probes):
    tokens = probes["tokens"]
    logits = apply(params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    lp_BxT1 = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    hit_BxT1 = logits.argmax(-1) == tokens[:, 1:]
    return lp_BxT1, hit_BxT1


def span_scores(apply, params, probes) -> dict:
    """Teacher-forced scores of every probe's target span: ``logp`` (N,) the summed
    log-probability of the target tokens, ``logp_tok`` (N,) per token, ``exact`` (N,) 1.0 when
    the argmax at every target position is the target token (= greedy decoding from the prefix
    reproduces the span), ``tok_acc`` (N,) the fraction of target tokens that are the argmax."""
    lp, hit = _target_logp(apply, params, probes)
    m = probes["target"][:, 1:]
    n = jnp.maximum(m.sum(-1), 1)
    s = jnp.where(m, lp, 0.0).sum(-1)
    return {
        "logp": s,
        "logp_tok": s / n,
        "exact": jnp.all(hit | ~m, -1).astype(jnp.float32),
        "tok_acc": jnp.where(m, hit, False).sum(-1) / n,
    }


def sequence_nll(apply, params, tokens_NxT, valid_NxT=None) -> jax.Array:
    """(N,) mean NLL per token of each sequence (every valid token after the first)."""
    v = jnp.ones_like(tokens_NxT, bool) if valid_NxT is None else valid_NxT
    lp, _ = _target_logp(apply, params, {"tokens": tokens_NxT})
    m = v[:, 1:]
    return -jnp.where(m, lp, 0.0).sum(-1) / jnp.maximum(m.sum(-1), 1)


def recall_scores(generated_NxL, target_NxL) -> dict:
    """``exact`` (N,) 1.0 when the whole continuation is right, ``tok_acc`` (N,) the fraction
    of right tokens (position by position)."""
    eq = generated_NxL == target_NxL
    return {"exact": jnp.all(eq, -1).astype(jnp.float32), "tok_acc": eq.mean(-1)}


def greedy_recall(cfg, params, cue_NxP, target_NxL, cue_mask_NxP=None, pad_id: int = 0) -> dict:
    """Greedy continuation of ``target_NxL.shape[1]`` tokens from each (left-padded) cue with the
    KV cache of a :mod:`jaxcl.models.llama` model ``cfg``, scored by :func:`recall_scores`;
    ``generated`` (N, L) too."""
    from .generate import Sampling, generate_ids

    N, P = cue_NxP.shape
    L = target_NxL.shape[1]
    mask = jnp.ones((N, P), bool) if cue_mask_NxP is None else cue_mask_NxP
    gen = generate_ids(
        params,
        cue_NxP,
        mask,
        jax.random.key(0),
        cfg=cfg,
        max_new_tokens=L,
        cache_len=P + L,
        sampling=Sampling(),
        eos_id=None,
        pad_id=pad_id,
    )
    return {**recall_scores(gen, target_NxL), "generated": gen}


def auc(scores_N, labels_N) -> jax.Array:
    """Area under the ROC curve of ``scores_N`` for the positives ``labels_N`` (bool): the
    Mann-Whitney statistic from mid-ranks (ties count one half), as ``sklearn``'s
    ``roc_auc_score(labels, scores)``. NaN when a class is empty."""
    s = scores_N.astype(jnp.float32)
    pos = labels_N.astype(bool)
    less = (s[None, :] < s[:, None]).sum(-1)
    equal = (s[None, :] == s[:, None]).sum(-1)
    rank = less + (equal + 1) / 2.0  # 1-based mid-ranks
    n_pos = pos.sum()
    n_neg = pos.size - n_pos
    u = jnp.where(pos, rank, 0.0).sum() - n_pos * (n_pos + 1) / 2.0
    return jnp.where((n_pos > 0) & (n_neg > 0), u / jnp.maximum(n_pos * n_neg, 1), jnp.nan)


# -- host ------------------------------------------------------------------------------------------


def power_law_fit(t, y) -> dict:
    """Fit ``y = c * t ** (-alpha)`` by least squares of ``log y`` on ``log t`` over the points
    with ``t > 0`` and ``y > 0``: ``{'alpha', 'c', 'r2', 'n'}`` (NaN with fewer than 3 points)."""
    t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
    ok = (t > 0) & (y > 0) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return {"alpha": float("nan"), "c": float("nan"), "r2": float("nan"), "n": n}
    x, z = np.log(t[ok]), np.log(y[ok])
    b, a = np.polyfit(x, z, 1)
    resid = z - (a + b * x)
    ss_tot = float(((z - z.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"alpha": float(-b), "c": float(np.exp(a)), "r2": r2, "n": n}
