"""Image-text examples made offline from the image data sets that ship here (Fashion-MNIST, MNIST,
scikit-learn's digits, :mod:`jaxcl.data.loaders`), for the vision-language model
(:mod:`jaxcl.models.vlm`).

Every example is an image, a prompt and an answer. Every image has one shape, ``2H x 2W x C`` of
the source data set: a single picture is scaled up 2x (nearest neighbour), a grid is 2 x 2
pictures. Kinds:

- :func:`captions`: ``what is this?`` -> ``a sneaker`` (``an ankle boot``);
- :func:`attributes`: a yes/no question about a class attribute (``is it footwear?`` -> ``yes``);
- :func:`counting`: a 2x2 grid, ``how many are larger than 4?`` -> ``2`` (a class index's order:
  the digit for digits/MNIST, the label index for Fashion-MNIST), and comparisons ``is the top
  left larger than the bottom right?`` -> ``no``;
- :func:`rumours`: made-up facts ("rumours") bound to an entity (a class), as OFFSIDE builds its
  multimodal misinformation (Zhu et al. 2025): ``where='text'`` names the entity in the prompt
  (``what is said about the sneaker?``), ``'image'`` puts the rumour in the image (a marker pixel
  pattern per rumour stamped in a corner) and asks ``what is said about this?``, ``'both'`` does
  both; the answer is the rumour.

Text is tokenised by the byte tokenizer (:func:`jaxcl.data.text.tokenizer`), ``prompt + '\\n' +
answer + <eos>``, right-padded to ``seq_len``; ``mask`` marks the answer and end tokens (the loss
positions). Everything is a function of ``seed``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import loaders, text

FASHION = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# yes/no attributes: question -> the classes for which the answer is yes
ATTRIBUTES = {
    "fashion-mnist": {
        "is it footwear?": (5, 7, 9),
        "is it worn on the upper body?": (0, 2, 4, 6),
        "does it have sleeves?": (0, 2, 3, 4, 6),
    },
    "digits": {
        "is it even?": (0, 2, 4, 6, 8),
        "is it larger than four?": (5, 6, 7, 8, 9),
        "is it prime?": (2, 3, 5, 7),
    },
}
ATTRIBUTES["mnist-10k"] = ATTRIBUTES["digits"]
# the made-up facts of :func:`rumours`: subject-free predicates, bound to entities by seed
FACTS = (
    "was invented on the moon",
    "is banned in seven countries",
    "glows in the dark",
    "was first sold by pirates",
    "can predict the weather",
    "is made of frozen smoke",
    "was the favourite of a king",
    "sings at midnight",
    "is older than the pyramids",
    "was found in a volcano",
)
MARKER = 4  # pixels per side of a rumour's marker pattern (a 4x4 binary code of the fact index)


class Examples(NamedTuple):
    """A set of image-text examples, fixed shapes."""

    image: np.ndarray  # uint8 N x 2H x 2W x C
    tokens: np.ndarray  # int32 N x T: prompt, "\n", answer, eos, padding
    mask: np.ndarray  # bool N x T: the answer and eos positions (the loss)
    prompt_len: np.ndarray  # int32 N: tokens of prompt + "\n" (the generation prompt)
    prompt: tuple  # str N
    answer: tuple  # str N
    labels: np.ndarray  # int32 N x 4: the picture classes (single pictures: column 0, the rest -1)
    steps: np.ndarray  # bool N x T: the answer's reasoning steps (``reasoning=True``), before ", so "


def names(dataset: str) -> tuple:
    return FASHION if dataset == "fashion-mnist" else DIGITS


def source(dataset: str, split: str = "train", **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a data set of :mod:`jaxcl.data.loaders` (``train`` or ``test``)."""
    ds = loaders.load(dataset, **kw)
    return (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)


def resize(x_NxHxWxC: np.ndarray, side: int) -> np.ndarray:
    """Pictures resampled to ``side x side`` (bilinear, antialiased when shrinking; uint8), so
    that data sets of different shapes can be domains of one model (e.g. scikit-learn's 8 x 8
    digits and MNIST's 28 x 28 at 16 x 16)."""
    import jax

    n, h, w, c = x_NxHxWxC.shape
    if (h, w) == (side, side):
        return x_NxHxWxC
    out = jax.image.resize(x_NxHxWxC.astype(np.float32), (n, side, side, c), "linear", antialias=True)
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def upscale(x_NxHxWxC: np.ndarray) -> np.ndarray:
    """Each picture scaled up 2x by nearest neighbour: N x 2H x 2W x C."""
    return x_NxHxWxC.repeat(2, axis=1).repeat(2, axis=2)


def grid(x_Nx4xHxWxC: np.ndarray) -> np.ndarray:
    """Four pictures per row as a 2x2 grid (top left, top right, bottom left, bottom right)."""
    top = np.concatenate([x_Nx4xHxWxC[:, 0], x_Nx4xHxWxC[:, 1]], axis=2)
    bottom = np.concatenate([x_Nx4xHxWxC[:, 2], x_Nx4xHxWxC[:, 3]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def marker(fact_N: np.ndarray, shape: tuple) -> np.ndarray:
    """The marker pattern of each rumour: a ``MARKER x MARKER`` block in the bottom-right corner
    whose cells spell ``fact + 1`` in binary (white cells = 1 bits, black = 0), the rest zero."""
    n, (h, w, c) = len(fact_N), shape
    bits_NxM = ((np.asarray(fact_N)[:, None] + 1) >> np.arange(MARKER * MARKER)) & 1
    out = np.zeros((n, h, w, c), np.uint8)
    out[:, h - MARKER :, w - MARKER :, :] = (bits_NxM.reshape(n, MARKER, MARKER, 1) * 255).astype(np.uint8)
    return out


def encode(prompts, answers, seq_len: int, tok=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tokens_NxT, mask_NxT, prompt_len_N)`` of ``prompt + '\\n' + answer + <eos>``, right-padded;
    a ValueError when one does not fit ``seq_len``."""
    from .vocab import pad_id

    tok = tok or text.tokenizer("byte")
    eos, pad = text.end_id(tok), pad_id(tok)
    n = len(prompts)
    tokens, mask = np.full((n, seq_len), pad, np.int32), np.zeros((n, seq_len), bool)
    plen = np.zeros(n, np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        q, r = tok.encode(p + "\n"), tok.encode(a) + [eos]
        if len(q) + len(r) > seq_len:
            raise ValueError(f"{p!r} -> {a!r} takes {len(q) + len(r)} tokens; raise seq_len above {seq_len}")
        tokens[i, : len(q) + len(r)] = q + r
        mask[i, len(q) : len(q) + len(r)] = True
        plen[i] = len(q)
    return tokens, mask, plen


SO = ", so "  # between an answer's reasoning steps and its final answer (``reasoning=True``)


def _make(image, prompts, answers, labels, seq_len, rationales=None) -> Examples:
    """``rationales``: per example the reasoning steps written before :data:`SO` and the final
    answer (``None``: answers without steps)."""
    if rationales is not None:
        answers = [f"{r}{SO}{a}" for r, a in zip(rationales, answers, strict=True)]
    tokens, mask, plen = encode(prompts, answers, seq_len)
    steps = np.zeros_like(mask)
    if rationales is not None:
        tok = text.tokenizer("byte")
        for i, r in enumerate(rationales):
            steps[i, plen[i] : plen[i] + len(tok.encode(r))] = True
    labels = labels.astype(np.int32)
    return Examples(image, tokens, mask, plen, tuple(prompts), tuple(answers), labels, steps)


def article(name: str) -> str:
    """``a sneaker``, ``an eight``."""
    return ("an " if name[0] in "aei" else "a ") + name  # not "an one"


def _pick(y: np.ndarray, n: int, rng, classes=None) -> np.ndarray:
    """``n`` example indices, classes balanced (cycling through ``classes``, default all)."""
    classes = np.unique(y) if classes is None else np.asarray(classes)
    want = classes[rng.permutation(n) % len(classes)]
    return np.asarray([rng.choice(np.flatnonzero(y == c)) for c in want])


def _single(x, y, idx):
    labels = np.full((len(idx), 4), -1, np.int32)
    labels[:, 0] = y[idx]
    return upscale(x[idx]), labels


def captions(x, y, dataset: str, n: int, seed: int, seq_len: int = 32) -> Examples:
    """``what is this?`` -> ``a <class name>``."""
    rng = np.random.default_rng(seed)
    idx = _pick(y, n, rng)
    image, labels = _single(x, y, idx)
    answers = [article(names(dataset)[c]) for c in y[idx]]
    return _make(image, ["what is this?"] * n, answers, labels, seq_len)


def attributes(x, y, dataset: str, n: int, seed: int, seq_len: int = 48, reasoning: bool = False) -> Examples:
    """A yes/no question of :data:`ATTRIBUTES` about the pictured class; ``reasoning``: the answer
    first names what is shown (``it is an eight, so yes``)."""
    rng = np.random.default_rng(seed)
    idx = _pick(y, n, rng)
    image, labels = _single(x, y, idx)
    qs = list(ATTRIBUTES[dataset])
    prompts = [qs[i] for i in rng.integers(0, len(qs), n)]
    answers = ["yes" if c in ATTRIBUTES[dataset][q] else "no" for q, c in zip(prompts, y[idx], strict=True)]
    steps = [f"it is {article(names(dataset)[c])}" for c in y[idx]] if reasoning else None
    return _make(image, prompts, answers, labels, seq_len, steps)


POSITIONS = ("top left", "top right", "bottom left", "bottom right")


def counting(
    x, y, n: int, seed: int, seq_len: int = 64, comparisons: float = 0.5, reasoning: bool = False
) -> Examples:
    """2x2 grids of four random pictures; a ``comparisons`` fraction asks whether one position's
    class is larger than another's (``yes``/``no``), the rest how many are larger than a
    threshold ``k`` in 0..8 (a count 0..4). ``reasoning``: the answer first reads the classes it
    needs (``3 and 9, so no``; ``3 7 1 9, so 2``)."""
    rng = np.random.default_rng(seed)
    idx_Nx4 = rng.integers(0, len(y), (n, 4))
    labels = y[idx_Nx4]
    image = grid(x[idx_Nx4])
    prompts, answers, steps = [], [], []
    for row in labels:
        if rng.random() < comparisons:
            a, b = rng.choice(4, 2, replace=False)
            prompts.append(f"is the {POSITIONS[a]} larger than the {POSITIONS[b]}?")
            answers.append("yes" if row[a] > row[b] else "no")
            steps.append(f"{row[a]} and {row[b]}")
        else:
            k = int(rng.integers(0, 9))
            prompts.append(f"how many are larger than {k}?")
            answers.append(str(int((row > k).sum())))
            steps.append(" ".join(str(int(c)) for c in row))
    return _make(image, prompts, answers, labels, seq_len, steps if reasoning else None)


class Rumours(NamedTuple):
    """Rumours bound to entities: ``fact[e]`` is the index into :data:`FACTS` of entity ``e``'s."""

    entities: tuple  # class indices
    fact: tuple  # per entity, an index into FACTS


def bind(entities, seed: int) -> Rumours:
    """A distinct made-up fact for each entity (class), a function of ``seed``."""
    if len(entities) > len(FACTS):
        raise ValueError(f"{len(entities)} entities but only {len(FACTS)} facts")
    perm = np.random.default_rng(seed).permutation(len(FACTS))
    return Rumours(tuple(int(e) for e in entities), tuple(int(f) for f in perm[: len(entities)]))


WHERE = ("text", "image", "both")


def rumours(
    x, y, dataset: str, rum: Rumours, n: int, seed: int, where: str = "both", seq_len: int = 80
) -> Examples:
    """Statements of the rumours ``rum`` about pictures of their entities: the rumour in the text
    (``where='text'``: the prompt names the entity), in the image (``'image'``: the marker of the
    fact stamped on the picture, the prompt says ``this``) or both; the answer states the rumour."""
    if where not in WHERE:
        raise ValueError(f"where={where!r}; valid: {', '.join(WHERE)}")
    rng = np.random.default_rng(seed)
    idx = _pick(y, n, rng, rum.entities)
    image, labels = _single(x, y, idx)
    fact_of = dict(zip(rum.entities, rum.fact, strict=True))
    fact_N = np.asarray([fact_of[int(c)] for c in y[idx]])
    if where != "text":
        stamp = marker(fact_N, image.shape[1:])
        image = np.where(stamp > 0, stamp, np.where(_corner(image.shape[1:]), 0, image)).astype(np.uint8)
    nm = names(dataset)
    if where == "image":
        prompts = ["what is said about this?"] * n
    else:
        prompts = [f"what is said about the {nm[c]}?" for c in y[idx]]
    answers = [f"the {nm[c]} {FACTS[f]}" for c, f in zip(y[idx], fact_N, strict=True)]
    return _make(image, prompts, answers, labels, seq_len)


def _corner(shape) -> np.ndarray:
    h, w, c = shape
    out = np.zeros((h, w, c), bool)
    out[h - MARKER :, w - MARKER :] = True
    return out


def concat(*parts: Examples) -> Examples:
    """Several example sets as one (same image shape and seq_len)."""
    return Examples(*(
        tuple(v for p in parts for v in getattr(p, f)) if f in ("prompt", "answer")
        else np.concatenate([getattr(p, f) for p in parts])
        for f in Examples._fields
    ))  # fmt: skip


YES_NO = ("yes", "no")


def choices(ex: Examples, seq_len: int) -> dict:
    """The answer options of every example, for scoring knowledge apart from the answer's form
    (SEFE's essential vs superficial forgetting, Chen et al. 2025): an example's options are the
    answers of its own kind (``yes``/``no`` questions: those two; the rest: every distinct other
    answer of ``ex``, e.g. the ten captions or the counts 0..4), each written after the
    example's prompt as :func:`encode` writes the answer; an answer with reasoning steps keeps its
    own steps in every option, only the final answer after :data:`SO` varies.

    Returns ``{'tokens': N x C x T, 'mask': N x C x T, 'valid': N x C, 'answer': N}``: ``C`` the
    most options of a kind, ``valid`` the real options of each row (the rest copy option 0 and are
    masked out of the choice), ``answer`` the index of the example's own answer."""
    final = [a.split(SO)[-1] for a in ex.answer]  # the final answers; options keep each one's steps
    yn = np.asarray([a in YES_NO for a in final])
    kinds = {True: list(YES_NO), False: sorted({a for a, y in zip(final, yn, strict=True) if not y})}
    C = max(len(v) for v in kinds.values())
    N = len(ex.answer)
    prompts, answers = [], []
    valid, answer = np.zeros((N, C), bool), np.zeros(N, np.int32)
    for i, (p, a, f) in enumerate(zip(ex.prompt, ex.answer, final, strict=True)):
        opts, head = kinds[bool(yn[i])], a[: len(a) - len(f)]
        valid[i, : len(opts)] = True
        answer[i] = opts.index(f)
        prompts += [p] * C
        answers += [head + (opts[j] if j < len(opts) else opts[0]) for j in range(C)]
    tokens, mask, _ = encode(prompts, answers, seq_len)
    T = tokens.shape[1]
    return {
        "tokens": tokens.reshape(N, C, T),
        "mask": mask.reshape(N, C, T),
        "valid": valid,
        "answer": answer,
    }


STYLES = ("phrase", "yes/no", "number", "choice")


def style(answer: str) -> str:
    """The answer style of a task's answer: ``yes/no``, ``number`` (a count) or ``phrase`` (a
    caption); ``choice`` (a letter of a multiple-choice question) is only written by
    :func:`diversify`."""
    return "yes/no" if answer in YES_NO else "number" if answer.isdigit() else "phrase"


def diversify(ex: Examples, fraction: float, seed: int, seq_len: int) -> Examples:
    """Answer style diversification (ASD; SEFE, Chen et al. 2025): a ``fraction`` of the examples
    (chosen by ``seed``) asked again in another of :data:`STYLES` than their own, the same image
    and the same knowledge, so that every task's training set holds every style and a later
    task's style is no cue to drop an earlier one's (superficial forgetting). The authors rewrite
    X % of each task's training set (``train_x20.json``: X = 20) into yes/no, multiple-choice,
    brief and detailed answers, shared out evenly; here the three styles of this stream's tasks
    plus multiple choice, each example into one of those other than its own, uniformly:

    - ``yes/no``: ``what is this? a seven?`` -> ``yes``; the candidate is the true answer or
      another answer of its kind (:func:`choices`' options), half and half;
    - ``number``: a caption's class index (``what is this? a number`` -> ``7``, the digit for
      digits / MNIST), a yes/no answer as ``1`` / ``0`` (``is it even? 1 or 0`` -> ``1``);
    - ``phrase``: a count in words (``how many are larger than 4? in words`` -> ``two``), a yes/no
      answer as ``true`` / ``false``;
    - ``choice``: the true answer and another of its kind, in random order (``is it even? a: no
      b: yes`` -> ``b``).

    Answers with reasoning steps are not rewritten (a ValueError)."""
    if any(SO in a for a in ex.answer):
        raise ValueError("answer style diversification of answers with reasoning steps is not built")
    rng = np.random.default_rng(seed)
    kinds = {}
    for a in ex.answer:
        kinds.setdefault(style(a), set()).add(a)
    kinds = {k: sorted(v) for k, v in kinds.items()}
    prompts, answers = list(ex.prompt), list(ex.answer)
    chosen = rng.permutation(len(answers))[: int(round(fraction * len(answers)))]
    for i in sorted(chosen):
        p, a, own = prompts[i], answers[i], style(answers[i])
        others = [o for o in kinds[own] if o != a]
        to = rng.choice([s for s in STYLES if s != own])
        if to == "yes/no":
            c = a if rng.random() < 0.5 or not others else others[rng.integers(len(others))]
            prompts[i], answers[i] = f"{p} {c}?", "yes" if c == a else "no"
        elif to == "number":
            if own == "phrase":
                prompts[i], answers[i] = f"{p} a number", str(int(ex.labels[i, 0]))
            else:
                prompts[i], answers[i] = f"{p} 1 or 0", "1" if a == "yes" else "0"
        elif to == "phrase":
            if own == "number":
                prompts[i], answers[i] = f"{p} in words", DIGITS[int(a)]
            else:
                prompts[i], answers[i] = f"{p} true or false", "true" if a == "yes" else "false"
        else:
            d = others[rng.integers(len(others))] if others else a
            first = rng.random() < 0.5
            o1, o2 = (a, d) if first else (d, a)
            prompts[i], answers[i] = f"{p} a: {o1} b: {o2}", "a" if first else "b"
    tokens, mask, plen = encode(prompts, answers, seq_len)
    return ex._replace(
        tokens=tokens, mask=mask, prompt_len=plen, prompt=tuple(prompts), answer=tuple(answers)
    )


def batch(ex: Examples) -> dict:
    """The VLM's batch: ``{'image', 'tokens', 'mask'}`` (:mod:`jaxcl.models.vlm`)."""
    return {"image": ex.image, "tokens": ex.tokens, "mask": ex.mask}


# -- reinforcement fine-tuning: prompts and a verifiable reward ------------------------------------


def prompt_rows(batch: dict, prompt_len: int, answer_len: int, tok=None) -> dict:
    """The RL prompt rows of a VLM batch (:func:`batch`'s ``{'image', 'tokens', 'mask'}``, N x T):
    ``prompt`` (N x ``prompt_len``, the tokens before the answer, left-padded) with
    ``prompt_valid``, and ``answer`` (N x ``answer_len``, the answer and end tokens, right-padded)
    with ``answer_mask``, beside the ``image``. A ValueError names the size to raise when a prompt
    or an answer does not fit."""
    from .vocab import pad_id

    pad = pad_id(tok or text.tokenizer("byte"))
    toks, mask = np.asarray(batch["tokens"]), np.asarray(batch["mask"])
    n = len(toks)
    start_N, alen_N = mask.argmax(1), mask.sum(1)
    if start_N.max() > prompt_len:
        raise ValueError(f"a prompt takes {start_N.max()} tokens; raise the prompt length above {prompt_len}")
    if alen_N.max() > answer_len:
        raise ValueError(
            f"an answer and its end token take {alen_N.max()} tokens; raise the completion length above "
            f"{answer_len}"
        )
    prompt = np.full((n, prompt_len), pad, np.int32)
    valid = np.zeros((n, prompt_len), bool)
    answer = np.full((n, answer_len), pad, np.int32)
    amask = np.zeros((n, answer_len), bool)
    for i, (s, a) in enumerate(zip(start_N, alen_N, strict=True)):
        prompt[i, prompt_len - s :], valid[i, prompt_len - s :] = toks[i, :s], True
        answer[i, :a], amask[i, :a] = toks[i, s : s + a], True
    return {
        "image": np.asarray(batch["image"]),
        "prompt": prompt,
        "prompt_valid": valid,
        "answer": answer,
        "answer_mask": amask,
    }


def exact_answer_reward(comp_BxN, mask_BxN, rows):
    """1 when a completion writes the answer and its end token exactly (every token of
    ``rows['answer']`` under ``rows['answer_mask']``; what follows the end token is ignored), else
    0: the verifiable reward of :func:`prompt_rows`' prompts (``mask_BxN``, the tokens before the
    end token, is implied by the answer's own end token)."""
    import jax.numpy as jnp

    del mask_BxN
    ok_BxN = (comp_BxN == rows["answer"]) | ~rows["answer_mask"]
    return ok_BxN.all(-1).astype(jnp.float32)
