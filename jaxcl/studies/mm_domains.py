"""Domain-sequence rehearsal for the VLM (``study: mm-domains``): each image data set that ships
here is a domain, the domains arrive one after another, and the question is how much of the
cross-domain and cross-task ability a continual learner keeps.

Paper: "Towards General Purpose Medical AI: Continual Learning Medical Foundation Model" (2023):
domain/task-specialised learning vs joint learning vs continual learning of a vision-language
model, evaluated on cross-domain and cross-task test sets; rehearsal during sequential training
gives "a sharp boost" in generalisation, so continual learning with rehearsal is a practical way
to build a foundation model. Here on the offline domains (``data.domains``: scikit-learn's
digits, MNIST, Fashion-MNIST), every picture resampled to ``data.side`` pixels a side
(:func:`jaxcl.data.multimodal.resize`) so one model sees them all.

Protocol: a domain's task mixes the instruction kinds ``data.kinds`` (captions, yes/no attribute
questions; :mod:`jaxcl.data.multimodal`) on its pictures, ``data.n_train`` training and
``data.n_eval`` held-out examples. **Cross-task** test sets (``data.held_out``, ``kind@domain``):
a kind never trained on that domain's pictures, e.g. ``attributes@mnist-10k``: MNIST's digits are
only captioned in training, the attribute questions about digits are trained on scikit-learn's
digits only, so answering them on MNIST pictures needs both. **Cross-domain**: every domain's
held-out set, evaluated by models that have not trained on that domain yet.

Rows (the same VLM, optimiser and steps; :func:`jaxcl.studies.mm_cit.run_row` on the one loop):
``standalone`` (the paper's domain-specialised learning: a fresh model per domain, ``standalone:
true``), ``finetune`` (continual, no rehearsal), ``er`` (continual with reservoir rehearsal; any CL
method of the registry that applies, e.g. ``derpp``, ``ewc``, ``finetune+kl``), ``joint`` (batches
from every domain seen so far: at the last domain, joint learning on all of them).

Columns (``A[i, j]``: the answer accuracy, greedy-exact, of domain ``j``'s held-out set after
training domain ``i``; ``X[i, h]`` that of cross-task set ``h``):

- ``acc``: the final model's mean over domains (``standalone``: each domain by its own model, the
  ensemble of specialists);
- ``just_trained``: mean of ``A[i, i]``, each domain right after training on it (plasticity);
- ``forgetting`` (sequential rows): :func:`jaxcl.metrics.forgetting` of ``A``;
- ``cross_domain``: mean of ``A[i, j]`` over the domains ``j`` the model of row ``i`` has not
  trained on (``standalone``: every ``j != i``; sequential rows: ``j > i``);
- ``cross_task``: mean over the cross-task sets of the final model's ``X`` (``standalone``: the
  model of the set's own domain); beside it in ``extra['cross_task_majority']`` what always giving
  a set's most frequent answer scores (yes / no questions: about a half);
- ``k_acc``: the final model's knowledge accuracy (the likeliest option, :mod:`jaxcl.studies.mm_cit`).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from .. import metrics as M
from .. import plots, results
from ..config import ConfigError
from ..data import multimodal as MM
from ..driver import Report, Run, Study
from ..loops import seeds_keys
from ..models import vlm
from . import mm_cit

DOMAINS = ("digits", "mnist-10k", "fashion-mnist")
KINDS = ("captions", "attributes")
METHODS = ("finetune", "er", "der", "derpp", "ewc", "joint")

DEFAULTS = {
    "model": vlm.section(),
    "data": {
        "domains": DOMAINS,
        "kinds": KINDS,
        "held_out": ("attributes@mnist-10k",),
        "side": 8,
        "n_train": 512,
        "n_eval": 128,
        "seq_len": 56,
    },
    "train": {"steps_per_task": 300, "batch_size": 32, "eval_every": 50, "consolidate_samples": 64},
    "methods": ("finetune", "er", "joint"),
    "standalone": True,
    "seeds": 8,
    "seed": 0,
}

COLUMNS = [
    ("acc", "ACC", "pct"),
    ("just_trained", "just trained", "pct"),
    ("forgetting", "forgetting", "pct"),
    ("cross_domain", "cross-domain", "pct"),
    ("cross_task", "cross-task", "pct"),
    ("k_acc", "knowledge ACC", "pct"),
    ("time_s", "time (s)", "seconds"),
]


def held_out(cfg: dict) -> list[tuple[str, str]]:
    """``data.held_out`` as ``(kind, domain)`` pairs."""
    return [tuple(h.split("@", 1)) for h in cfg["data"]["held_out"]]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    bad = [x for x in d["domains"] if x not in DOMAINS]
    if bad or len(d["domains"]) < 2 or len(set(d["domains"])) != len(d["domains"]):
        raise ConfigError(
            f"data.domains={tuple(d['domains'])!r}: give 2 or more distinct of {', '.join(DOMAINS)}"
        )
    if not d["kinds"] or any(k not in KINDS for k in d["kinds"]):
        raise ConfigError(f"data.kinds={tuple(d['kinds'])!r}: give 1 or more of {', '.join(KINDS)}")
    for h in d["held_out"]:
        kind, _, dom = h.partition("@")
        if kind not in d["kinds"] or dom not in d["domains"]:
            raise ConfigError(
                f"data.held_out: {h!r} is not kind@domain of data.kinds and data.domains "
                f"(e.g. {d['kinds'][-1]}@{d['domains'][1]})"
            )
    for dom in d["domains"]:
        if all(f"{k}@{dom}" in d["held_out"] for k in d["kinds"]):
            raise ConfigError(f"data.held_out holds every kind of {dom}: leave it one to train on")
    if not isinstance(cfg["standalone"], bool):
        raise ConfigError(f"standalone={cfg['standalone']!r}: give true or false")
    mm_cit.validate_schedule(cfg, ("data.side",))


def examples(cfg: dict, dom: str, kinds, split: str, n: int, salt: int) -> MM.Examples:
    """``n`` examples of ``kinds`` (split evenly) on domain ``dom``'s ``split`` pictures."""
    d = cfg["data"]
    x, y = MM.source(dom, split)
    x = MM.resize(x, d["side"])
    parts = []
    for i, kind in enumerate(kinds):
        m = n // len(kinds) + (i < n % len(kinds))
        seed = cfg["seed"] * 1000 + 100 * salt + 10 * KINDS.index(kind) + (split == "test")
        parts.append(getattr(MM, kind)(x, y, dom, m, seed, d["seq_len"]))
    return MM.concat(*parts)


def build_domains(cfg: dict) -> tuple[dict, dict]:
    """``(train, eval)`` as :func:`jaxcl.studies.mm_cit.build_tasks` gives them: ``train`` one
    entry per domain (its kinds not held out), ``eval`` one per domain, then one per cross-task
    set of ``data.held_out``, each with its options (``'choices'``)."""
    d = cfg["data"]
    held = held_out(cfg)
    train, ev = [], []
    for dom in d["domains"]:  # a domain's examples do not depend on its place in the order
        kinds = [k for k in d["kinds"] if (k, dom) not in held]
        train.append(examples(cfg, dom, kinds, "train", d["n_train"], DOMAINS.index(dom)))
        ev.append(examples(cfg, dom, kinds, "test", d["n_eval"], DOMAINS.index(dom)))
    for kind, dom in held:
        ev.append(examples(cfg, dom, [kind], "test", d["n_eval"], DOMAINS.index(dom)))
    opts = [MM.choices(e, d["seq_len"]) for e in ev]
    C = max(o["valid"].shape[1] for o in opts)
    opts = [mm_cit.pad_choices(o, C) for o in opts]
    stack = lambda rows: {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}  # noqa: E731
    return stack([MM.batch(e) for e in train]), {**stack([MM.batch(e) for e in ev]), "choices": stack(opts)}


def unseen(D: int, standalone: bool) -> np.ndarray:
    """``D x D`` booleans: ``A[i, j]`` is of a domain the model of row ``i`` has not trained on."""
    return ~np.eye(D, dtype=bool) if standalone else np.triu(np.ones((D, D), bool), 1)


def row_metrics(r: dict, D: int, held_dom: list[int], standalone: bool) -> dict:
    """The per-seed columns of a row from :func:`jaxcl.studies.mm_cit.run_row`'s output: ``A``
    (``S x D x D``), ``X`` (``S x D x H``) and the knowledge accuracies (see the module docstring)."""
    final = r["trace"][:, :, -1, :]  # S x D x J
    A, X, Kn = final[:, :, :D], final[:, :, D:], r["know"]
    S = len(A)
    own = np.arange(D)
    per = {
        "acc": A[:, own, own].mean(-1) if standalone else A[:, -1].mean(-1),
        "just_trained": A[:, own, own].mean(-1),
        "cross_domain": A[:, unseen(D, standalone)].mean(-1),
        "k_acc": Kn[:, own, own].mean(-1) if standalone else Kn[:, -1, :D].mean(-1),
    }
    if held_dom:
        H = np.arange(len(held_dom))
        per["cross_task"] = (X[:, held_dom, H] if standalone else X[:, -1]).mean(-1)
    if not standalone:
        per["forgetting"] = [M.forgetting(a) for a in A]
    per["time_s"] = [r["seconds"]]
    assert all(len(v) == S for k, v in per.items() if k != "time_s")
    return per


def body(cfg: dict, run: Run) -> Report:
    train, ev = build_domains(cfg)
    data = {"train": train, "eval": ev}
    d = cfg["data"]
    D, S = len(d["domains"]), cfg["seeds"]
    held_dom = [d["domains"].index(dom) for _, dom in held_out(cfg)]
    model = mm_cit.model_of(cfg, train["image"].shape[2:])
    keys = seeds_keys(cfg["seed"], S)
    names = (("standalone",) if cfg["standalone"] else ()) + tuple(cfg["methods"])
    rows, timing, traces, mats = {}, {}, {}, {}
    with run.progress(len(names) * D, "domain") as bar:
        for name in names:
            alone = name == "standalone"
            prog = mm_cit.make_program(cfg, model, "finetune" if alone else name, run.mesh)
            r = mm_cit.run_row(cfg, prog, data, keys, bar, fresh=alone)
            final = r["trace"][:, :, -1, :]
            timing[name], traces[name], mats[name] = r["seconds"], r["trace"], final[:, :, :D]
            rows[name] = results.row(
                row_metrics(r, D, held_dom, alone),
                A_mean=final[:, :, :D].mean(0).tolist(),
                A_per_seed=final[:, :, :D].tolist(),
                X_mean=final[:, :, D:].mean(0).tolist(),
                X_per_seed=final[:, :, D:].tolist(),
                K_mean=r["know"].mean(0).tolist(),
                b_mean=r["b"].mean(0).tolist(),
                acc_trace_mean=r["trace"].mean(0).tolist(),
            )
    sets = [*d["domains"], *d["held_out"]]
    majority = {}  # a cross-task set's majority answer rate: what always giving one answer scores
    for (kind, dom), h in zip(held_out(cfg), d["held_out"], strict=True):
        answers = examples(cfg, dom, [kind], "test", d["n_eval"], DOMAINS.index(dom)).answer
        majority[h] = max(answers.count(a) for a in set(answers)) / len(answers)
    res = results.make(
        "mm-domains",
        cfg,
        rows,
        COLUMNS,
        timing=timing,
        extra={
            "domains": list(d["domains"]),
            "held_out": list(d["held_out"]),
            "sets": sets,
            "cross_task_majority": majority,
            "model": model.name,
        },
    )
    header = (
        f"\n{cfg['name']}: {model.name} on the domains {' -> '.join(d['domains'])} "
        f"({', '.join(d['kinds'])}; {d['side']} x {d['side']} pictures), cross-task "
        f"{', '.join(d['held_out']) or 'none'}; {S} seeds, {cfg['train']['steps_per_task']} steps per "
        f"domain of {cfg['train']['batch_size']}; answer accuracy (greedy-exact), mean ± std\n"
    )
    every = cfg["train"]["eval_every"]
    title = f"{cfg['name']} ({S} seeds)"
    plot_files = (
        lambda res, out: plots.accuracy_matrices(
            mats, os.path.join(out, "accuracy_matrix.png"), f"{title}: A[i, j], domain j after domain i", what="domain"
        ),
        lambda res, out: plots.stability_gap(
            traces, every, os.path.join(out, "domains.png"), f"{title}: every set's accuracy over the stream",
            what="domain", labels=sets,
        ),
    )  # fmt: skip
    return Report(res, header, plots=plot_files, every=every, axis="set", memory={"data": data})


STUDY = Study(
    "mm-domains",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=METHODS,
    mesh_batches=("train.batch_size",),
)
run, sweep = STUDY.run, STUDY.sweep
