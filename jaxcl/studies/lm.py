"""The continual pre-training runner (``study: lm``): a language model trained on a sequence of
text domains, with the held-out loss of every domain evaluated inside the compiled loop.

Papers: "Continual Pre-training of Language Models" (Ke et al., ICLR 2023: domain-adaptive
pre-training over a domain sequence forgets earlier domains; replay and knowledge-preserving
methods reduce it), "Continual Pre-Training of Large Language Models: How to (re)warm your
model?" (Gupta et al., 2023) and "Simple and Scalable Strategies to Continually Pre-train Large
Language Models" (Ibrahim et al., 2024: re-warming and re-decaying the learning rate plus a
small replay fraction match re-training on the union; forgetting falls with model size).

Protocol: the domains of ``data.domains`` (:mod:`jaxcl.data.text`; default four genres of the KJV
bible) are tokenised and packed once; for every model of ``model.name`` (a list: sizes of
:data:`jaxcl.models.lm.SIZES`, ``scratch``, or ``smollm2-135m`` with ``model.tokenizer=smollm2``) and
every row of ``rows`` a Llama is trained from a random initialisation (or the pretrained SmolLM2-135M) through the domains in order, ``train.steps_per_domain``
steps each, and every ``train.eval_every`` steps the held-out NLL per token of every domain is
computed inside the compiled loop. A row is a registry method (``finetune``, ``er`` (reservoir
replay of past windows, ``er.replay_fraction``), ``ewc``) optionally with ``+rewarm`` (the
learning rate warmed up and cosine-decayed again at each domain: ``lr_restart_every``), or
``joint`` (fine-tuning on every domain seen so far: the upper bound).

Yildiz et al., "Investigating Continual Pretraining in Large Language Models" (2024): continual
pre-training over a domain sequence beats stand-alone fine-tuning on each domain when the
sequence is semantically similar, a random (dissimilar) order transfers better and ends lower,
and smaller models learn and forget the most. Row ``standalone`` trains ``finetune`` on each
domain alone from the same start (same keys), for ``steps_per_domain`` steps; a row with
``@similar`` or ``@dissimilar`` runs its method through the domains in another order: from
``data.domains[0]``, each next domain is the remaining one nearest to (``similar``) or farthest
from (``dissimilar``) the current one by the Jensen-Shannon divergence of the domains' held-out
unigram (token) distributions (:func:`jaxcl.metrics.js_divergence`; the matrix and the orders are
in ``extra``). Its loss matrix is in its own order. Column ``vs stand-alone``
(:func:`jaxcl.metrics.gain_vs_standalone`, when the run has a ``standalone`` row): mean over
domains j >= 1 of the stand-alone loss on j minus the row's loss on j right after training on it,
paired by seed (> 0: the earlier domains helped).

DELT (Dai et al., "Data Efficacy for Language Model Training", 2025): row ``pretrain@random``,
``pretrain@delt`` or ``pretrain@delt-select`` pre-trains once on one pool of
``steps_per_domain x domains x batch_size`` windows of all the domains (:func:`pretrain_reading`),
read in order at the step counter: a random order, DELT's LQS folding order, or the top
``data.delt_select`` share by LQS in folding order (read cyclically, the same number of steps);
only its final losses are reported, and column ``vs random order`` is the random row's final loss
minus this row's, paired by seed (> 0: the order helped).

Reported per row, mean ± std over seeds (``vmap``): the loss-matrix metrics of
:func:`jaxcl.metrics.loss_metrics` (final loss, BWT, FWT, forgetting, worst-case loss), the final
perplexity, and time. One program per (size, row) trains one domain (the domain index traced); a
checkpoint follows every domain, so an interrupted run resumes with the finished domains kept.
``jaxcl sweep`` runs a grid of one method's traced hyperparameters (``er.replay_fraction``,
``finetune.lr``) x seeds through all domains as one program.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, driver, plots, report, results
from .. import metrics as M
from ..config import ConfigError
from ..data import text
from ..driver import Report, Run, Study
from ..lmprogram import LMProgram
from ..loops import seeds_keys
from ..models import llama, lm
from ..parallel import jit_seeds, shard_batch
from ..sweep import SweepPlan

MODELS = ("scratch", *lm.SIZES, "smollm2-135m")
ORDERS = ("similar", "dissimilar")  # a row's "@order": see domain_order
PRETRAIN_ORDERS = ("random", "delt", "delt-select")  # row pretrain's "@order": see pretrain_reading
LM_METHODS = ("finetune", "er", "ewc", "kappatune", "gere")
MESH_BATCHES = ("train.batch_size",)  # split over a mesh's data axis

DEFAULTS = {
    "model": lm.section(("xs",)),  # a list of models: one row each
    "data": {
        "domains": ("bible:law", "tofu", "convention:democrat", "headlines"),
        "seq_len": 64,
        "n_eval": 16,  # held-out windows per domain
        "max_train": 4000,  # training windows kept per domain
        # rows pretrain@delt / @delt-select (jaxcl.data.delt.order_windows): folding layers, the
        # share kept by @delt-select, the proxy run (SGD steps, learning rate, checkpoints) and the
        # target windows of LQS
        "delt_layers": 3,
        "delt_select": 0.5,
        "delt_proxy_steps": 100,
        "delt_lr": 0.5,
        "delt_checkpoints": 3,
        "delt_target": 256,
    },
    "train": {
        "steps_per_domain": 150,
        "batch_size": 16,
        "eval_every": 25,
        "consolidate_samples": 32,
        "checkpoint": True,
    },
    "rows": ("finetune", "finetune+rewarm", "er", "er+rewarm", "joint"),
    "methods": ("finetune", "er"),
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("final_loss", "final loss", "float"),
    ("final_ppl", "final ppl", "float"),
    ("bwt", "BWT", "float"),
    ("forgetting", "forgetting", "float"),
    ("fwt", "FWT", "float"),
    ("max_loss", "worst loss", "float"),
    ("diag_loss", "loss after its domain", "float"),
    ("sa_gain", "vs stand-alone", "float"),
    ("order_gain", "vs random order", "float"),
    ("time_s", "time (s)", "seconds"),
]


# -- config ---------------------------------------------------------------------------------------


def parse_row(row: str) -> tuple[str, bool, str | None]:
    """``"er+rewarm"`` -> ``("er", True, None)``; ``"finetune@similar"`` -> ``("finetune", False,
    "similar")``; ``"joint"`` / ``"standalone"`` -> ``(row, False, None)``; a chain of methods
    (``"finetune+kl"``, :mod:`jaxcl.methods.compose`) -> ``("finetune+kl", False, None)``."""
    head, _, order = row.partition("@")
    rewarm = head.endswith("+rewarm")
    name = head[: -len("+rewarm")] if rewarm else head
    special = name in ("joint", "standalone", "pretrain")
    if name == "pretrain" and not rewarm and (order or "random") in PRETRAIN_ORDERS:
        return name, False, order or "random"
    if (
        (name.split("+")[0] not in LM_METHODS and not special)
        or (order and (order not in ORDERS or special))
        or (special and rewarm)
    ):
        raise ConfigError(
            f"rows: unknown row {row!r}; a row is one of {', '.join(LM_METHODS)} (or a chain of one and "
            f"modifiers in methods, e.g. finetune+kl) with an optional '+rewarm' and an optional order "
            f"'@{'|@'.join(ORDERS)}', or 'joint', or 'standalone', or 'pretrain' with an optional "
            f"'@{'|@'.join(PRETRAIN_ORDERS)}'"
        )
    return name, rewarm, order or None


def row_names(cfg: dict) -> tuple[str, ...]:
    """The rows: ``rows``, then each chain of ``methods`` (``finetune+kl``) that no row names."""
    named = {parse_row(r)[0] for r in cfg["rows"]}
    return tuple(cfg["rows"]) + tuple(m for m in cfg["methods"] if "+" in m and m not in named)


def validate(cfg: dict) -> None:
    d, t = cfg["data"], cfg["train"]
    if len(d["domains"]) < 2:
        raise ConfigError(f"data.domains={d['domains']!r}: a continual study needs at least 2 domains")
    lm.check(cfg["model"], names=MODELS, tokenizers=("byte",))
    config.check_nonempty(cfg, ["rows"], "set rows=finetune,er,...")
    for r in row_names(cfg):
        name, _, _ = parse_row(r)
        if name not in ("joint", "standalone", "pretrain") and name not in cfg["methods"]:
            raise ConfigError(f"rows: {r!r} needs {name!r} in methods (now {', '.join(cfg['methods'])})")
    config.check_positive(
        cfg,
        [
            "data.seq_len",
            "data.n_eval",
            "data.max_train",
            "train.steps_per_domain",
            "train.batch_size",
            "train.eval_every",
            "train.consolidate_samples",
            "seeds",
        ],
    )
    if t["consolidate_samples"] > 32 and t["consolidate_samples"] % 32:
        raise ConfigError(
            f"train.consolidate_samples={t['consolidate_samples']}: EWC's Fisher takes chunks of 32 "
            "windows; give a multiple of 32 (or fewer than 32)"
        )
    config.check_multiple(cfg, "train.steps_per_domain", "train.eval_every")
    if any(parse_row(r)[0] == "pretrain" for r in row_names(cfg)):
        config.check_positive(
            cfg, ["data.delt_layers", "data.delt_proxy_steps", "data.delt_lr", "data.delt_target"]
        )
        if not 0.0 < d["delt_select"] <= 1.0:
            raise ConfigError(f"data.delt_select={d['delt_select']}: give the share kept, in (0, 1]")
        if d["delt_checkpoints"] < 2:
            raise ConfigError(
                f"data.delt_checkpoints={d['delt_checkpoints']}: LQS compares consecutive checkpoints; give >= 2"
            )


# -- the model ------------------------------------------------------------------------------------


def sizes(cfg: dict) -> tuple[str, ...]:
    """The models of ``model.name`` (a name or a list), one row each."""
    n = cfg["model"]["name"]
    return (n,) if isinstance(n, str) else tuple(n)


def load_model(cfg: dict, size: str, *, shapes_only: bool = False):
    """``(LanguageModel, pretrained params or None)`` of one of ``model.name``'s models:
    SmolLM2-135M, or a scratch Llama over bytes (:func:`jaxcl.models.lm.load`; ``shapes_only``:
    pretrained params as ShapeDtypeStructs)."""
    section = {**cfg["model"], "name": size}
    model, params, _ = lm.load(
        section,
        max_seq_len=cfg["data"]["seq_len"],
        tokenizer=text.tokenizer("byte"),
        shapes_only=shapes_only,
    )
    return model, params


def build_stream(cfg: dict) -> text.TextStream:
    d = cfg["data"]
    return text.build_stream(
        d["domains"],
        tokenizer_name=cfg["model"]["tokenizer"],
        seq_len=d["seq_len"],
        n_eval=d["n_eval"],
        max_train=d["max_train"],
        seed=cfg["seed"],
    )


# -- the programs ---------------------------------------------------------------------------------


class Program(LMProgram):
    """The compiled pieces of one (model size, row) on :class:`jaxcl.lmprogram.LMProgram`:
    ``init(params, keys, stream)`` and ``domain(state, t, hp, stream)``, vmapped over seeds. The
    stream is an argument of every program, never a constant inside it. ``mesh``: seeds sharded
    over its ``seeds`` axis, every drawn batch over its ``data`` axis, the train state replicated
    along ``data``."""

    def __init__(self, cfg: dict, model, pretrained, row: str, mesh=None):
        self.cfg, self.row = cfg, row
        self.name, self.rewarm, self.order = parse_row(row)
        self.kind = self.name  # LMProgram's name becomes the row's
        S = cfg["train"]["steps_per_domain"]
        super().__init__(
            model,
            cfg,
            "finetune" if self.name in ("joint", "standalone", "pretrain") else self.name,
            eval_every=cfg["train"]["eval_every"],
            opts={"warmup_cosine_steps": S, "lr_restart_every": S} if self.rewarm else None,
            pretrained=pretrained,
            mesh=mesh,
            name=row,
            handles=("consolidate", "sample_seen"),
            norms=False,  # the grad/param norm metrics are unused here and re-read every parameter
        )
        self.init = jit_seeds(self._init, (None, 0, None), mesh, state=True)
        # the jitted domain program; domain(state, t, hp, stream[, reading]) calls it
        self.domain_program = jit_seeds(self._domain, (0, None, None, None, None), mesh, donate_argnums=0)

    def domain(self, state, t, hp, stream, reading=None):
        """:meth:`_domain` of every seed, compiled (``reading``: row ``pretrain``'s only)."""
        return self.domain_program(state, t, hp, stream, reading)

    def draw(self, data, key):
        """A batch of domain ``data["t"]``; ``joint``: of every domain seen so far, uniformly."""
        stream, t, B = data["stream"], data["t"], self.cfg["train"]["batch_size"]
        if self.name == "joint":
            w = (jnp.arange(stream.n_domains) <= t).astype(jnp.float32)
            return shard_batch(text.draw_mixture(stream, w, key, B), self.mesh)
        return shard_batch(text.draw(stream, t, key, B), self.mesh)

    def wrap(self, step, data):
        """Row ``pretrain``: the step reads the pool in its order (:func:`jaxcl.data.text.read`)
        at the state's step counter, whatever the loop drew."""
        if self.kind != "pretrain":
            return step
        B, r = self.cfg["train"]["batch_size"], data["reading"]

        def read_step(state, _batch):
            batch = text.read(data["stream"], r["pairs"], r["n"], state.step, B)
            return step(state, shard_batch(batch, self.mesh))

        return read_step

    def evaluate(self, params, data):
        return {"heldout": text.domain_losses(self.model.nll, params, data["stream"])}

    def _init(self, params, key, stream):
        return LMProgram.init(self, key, params, self.hp, {"stream": stream, "t": 0})

    def _domain(self, state, t, hp, stream, reading=None):
        """Train on domain ``t`` (traced) for ``steps_per_domain`` steps with the held-out loss of
        every domain after every ``eval_every`` steps; then consolidate (EWC). Row ``pretrain``:
        the next ``steps_per_domain`` steps of reading the pool (``reading``: ``{'pairs', 'n'}``,
        :func:`pretrain_reading`) instead of domain ``t``."""
        tr = self.cfg["train"]
        data = {"stream": stream, "t": t, "reading": reading}
        state, trace = self.call(state, hp, data, tr["steps_per_domain"] // tr["eval_every"])
        method = self.method(hp, state.frozen)
        if method.consolidate is not None:
            k = jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), -1 - t)
            batch = text.draw(stream, t, k, tr["consolidate_samples"])
            state = method.consolidate(state, batch, k)
        return state, trace

    def initial_losses(self, state, stream):
        return _losses_program(self.model)(self.params(state), stream)


@functools.cache
def _losses_program(model):
    """Every domain's held-out loss, vmapped over seeds: one program per model, shared by rows."""
    return jax.jit(jax.vmap(lambda p, s: text.domain_losses(model.nll, p, s), in_axes=(0, None)))


# -- running ------------------------------------------------------------------------------------


def domain_order(D: np.ndarray, similar: bool) -> list[int]:
    """A greedy chain through the domains of divergence matrix ``D`` (K x K) from domain 0: each
    next domain is the remaining one with the smallest (``similar``) or largest divergence from
    the current one (ties: the lower index)."""
    order, left = [0], list(range(1, len(D)))
    while left:
        d = [D[order[-1], j] for j in left]
        order.append(left.pop(int(np.argmin(d) if similar else np.argmax(d))))
    return order


def unigram_divergence(stream) -> np.ndarray:
    """The Jensen-Shannon divergence (nats) between every two domains' held-out token unigram
    distributions (``stream.eval``, the windows the losses are measured on), K x K."""
    ev = np.asarray(stream.eval).reshape(stream.n_domains, -1)
    V = int(ev.max()) + 1
    return M.js_divergence(np.stack([np.bincount(r, minlength=V) for r in ev]))


def pretrain_reading(cfg: dict, model, stream, order: str) -> tuple[dict, np.ndarray | None]:
    """Row ``pretrain@<order>``'s reading of the pool (``({'pairs', 'n'}, LQS scores or None)``):
    ``steps_per_domain x domains x batch_size`` windows drawn once over all domains
    (:func:`jaxcl.data.text.pool`, the same for every order, fewer when the domains hold fewer),
    read in a random order (``random``), or in DELT's folding order of their LQS (``delt``),
    or the top ``data.delt_select`` share of them in folding order, read cyclically over the
    same number of steps (``delt-select``). The LQS proxy is a fresh model of the row's
    (``data.delt_*``, :func:`jaxcl.data.delt.order_windows`)."""
    from ..data import delt

    d, tr = cfg["data"], cfg["train"]
    pairs = text.pool(stream, tr["steps_per_domain"] * stream.n_domains * tr["batch_size"], cfg["seed"])
    scores = None
    if order != "random":
        windows = np.asarray(stream.train)[pairs[:, 0], pairs[:, 1]]
        idx, scores = delt.order_windows(
            model.nll,
            model.init(jax.random.key(cfg["seed"] + 0xDE17)),
            windows,
            layers=d["delt_layers"],
            select=d["delt_select"] if order == "delt-select" else 1.0,
            proxy_steps=d["delt_proxy_steps"],
            checkpoints=d["delt_checkpoints"],
            target=d["delt_target"],
            lr=d["delt_lr"],
            batch=tr["batch_size"],
            seed=cfg["seed"],
        )
        pairs = pairs[idx]
    return {"pairs": jnp.asarray(pairs), "n": jnp.int32(len(pairs))}, scores


def run_row(
    prog: Program, stream, keys, *, order=None, reading=None, ckpt_dir=None, resume=False, progress=None
) -> dict:
    """Every domain of one row for all seeds, in ``order`` (default the stream's): a segment of
    the schedule per domain (a checkpoint after each). ``loss[:, i]`` is the trace while training
    the i-th domain of the order (held-out losses of every domain in the stream's order); row
    ``standalone``: domain i alone, from the start; row ``pretrain``: the i-th stretch of
    ``steps_per_domain`` steps reading the pool (``reading``)."""
    T = stream.n_domains
    order = list(range(T)) if order is None else list(order)
    E = prog.cfg["train"]["steps_per_domain"] // prog.cfg["train"]["eval_every"]
    t0 = time.perf_counter()
    state = prog.init(prog.pretrained, keys, stream)
    b = np.asarray(prog.initial_losses(state, stream))
    alone = prog.name == "standalone"

    def domain(i):
        t = order[i]

        def fn(state, out):
            if alone:  # every domain from the same start
                state = prog.init(prog.pretrained, keys, stream)
            state, tr = prog.domain(state, jnp.int32(t), prog.hp, stream, reading)
            out["loss"][:, i] = np.asarray(tr["heldout"])
            if state.nonfinite_step.max() < 0 and not np.isfinite(out["loss"][:, i]).all():
                raise FloatingPointError(
                    f"row {prog.row}: the held-out loss became non-finite on domain {stream.names[t]!r}; "
                    "lower the learning rate"
                )
            return state, out

        return driver.Segment(fn, 1, f"(row {prog.row}, domain {stream.names[t]!r})")

    conf = report.to_jsonable({k: v for k, v in prog.cfg.items() if k not in ("rows", "tiny")})
    conf["row"] = prog.row
    out = {"loss": np.zeros((len(keys), T, E, T), np.float32)}
    segments = [domain(t) for t in range(T)]
    _, out, seconds = driver.run_segments(
        segments, state, out, ckpt_dir=ckpt_dir, conf=conf, resume=resume, progress=progress, t0=t0
    )
    return {"loss": out["loss"], "b": b, "seconds": seconds}


def row_metrics(loss: np.ndarray, b: np.ndarray, order=None, standalone=None) -> tuple[dict, np.ndarray]:
    """Per-seed metrics from the trace ``loss`` (S x T x E x T, trained in ``order``, evaluated in
    the stream's order) and initial losses ``b`` (S x T); the loss matrix is taken in the row's
    own order. ``standalone``: the stand-alone losses ``s[S, j]`` (stream order) for column
    ``sa_gain``, else NaN."""
    T = loss.shape[1]
    order = np.arange(T) if order is None else np.asarray(order)
    loss, b = loss[..., order], b[:, order]
    L = loss[:, :, -1, :]
    per = [M.loss_metrics(L[s], b[s], loss[s]) for s in range(len(L))]
    out = {k: [r[k] for r in per] for k in ("final_loss", "bwt", "fwt", "forgetting", "max_loss")}
    out["final_ppl"] = np.exp(L[:, -1].mean(-1)).tolist()
    out["diag_loss"] = np.diagonal(L, axis1=1, axis2=2).mean(-1).tolist()
    if standalone is None:
        out["sa_gain"] = [float("nan")] * len(L)
    else:
        sa = np.asarray(standalone)[:, order]
        out["sa_gain"] = [M.gain_vs_standalone(L[s], sa[s]) for s in range(len(L))]
    return out, L


def standalone_losses(loss: np.ndarray) -> np.ndarray:
    """Row ``standalone``'s loss on each domain after training on it alone: ``s[S, j]`` from its
    trace (S x T x E x T, domain j trained at position j)."""
    return np.diagonal(loss[:, :, -1, :], axis1=1, axis2=2)


def _row_name(cfg, size, row):
    return row if len(sizes(cfg)) == 1 else f"{row} ({size})"


def body(cfg: dict, run: Run) -> Report:
    """Every (size, row) through every domain, a checkpoint after each domain; with a mesh, seeds
    over its ``seeds`` axis, the sequences of every batch over its ``data`` axis."""
    stream = build_stream(cfg)
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    T, S = stream.n_domains, cfg["seeds"]
    rows, raw, timing, params, delt_info = {}, {}, {}, {}, {}
    div = unigram_divergence(stream)
    orders = {o: domain_order(div, o == "similar") for o in ORDERS}
    total = len(sizes(cfg)) * len(row_names(cfg)) * T
    with run.progress(total, "domain") as bar:
        for size in sizes(cfg):
            model, pretrained = load_model(cfg, size)
            text.check_vocab(stream, model.cfg.vocab_size, cfg["model"]["tokenizer"])
            params[size] = llama.param_count(model.init(jax.random.key(0))) if pretrained is None else None
            done = {}
            for row in sorted(row_names(cfg), key=lambda r: r != "standalone"):  # stand-alone first
                name = _row_name(cfg, size, row)
                bar.set_postfix_str(f"{name} x {S} seeds")
                prog = Program(cfg, model, pretrained, row, run.mesh)
                order = orders[prog.order] if prog.order in ORDERS else None
                reading = None
                if prog.kind == "pretrain":
                    reading, lqs = pretrain_reading(cfg, model, stream, prog.order)
                    if lqs is not None:
                        delt_info[row] = {
                            "lqs_quantiles": np.quantile(lqs, [0, 0.25, 0.5, 0.75, 1]).tolist(),
                            "windows_read": int(reading["n"]),
                            "domain_share_read": np.bincount(
                                np.asarray(reading["pairs"])[:, 0], minlength=T
                            ).tolist(),
                        }
                ck = os.path.join(run.ckpt_dir, size, row) if run.ckpt_dir else None
                done[row] = (
                    prog,
                    order,
                    run_row(
                        prog,
                        stream,
                        keys,
                        order=order,
                        reading=reading,
                        ckpt_dir=ck,
                        resume=run.resume,
                        progress=bar,
                    ),
                )
            sa = standalone_losses(done["standalone"][2]["loss"]) if "standalone" in done else None
            rand = next((r for r in done if parse_row(r)[:3:2] == ("pretrain", "random")), None)
            for row in row_names(cfg):
                prog, order, r = done[row]
                name = _row_name(cfg, size, row)
                per, L = row_metrics(r["loss"], r["b"], order, None if row == "standalone" else sa)
                if row == "standalone":  # no sequence: only the loss on each domain trained alone
                    per = {k: (v if k == "diag_loss" else [float("nan")] * S) for k, v in per.items()}
                per["order_gain"] = [float("nan")] * S
                if prog.kind == "pretrain":  # one training set: only the end losses mean something
                    keep = ("final_loss", "final_ppl")
                    per = {k: (v if k in keep else [float("nan")] * S) for k, v in per.items()}
                    if rand is not None:  # > 0: lower final loss than reading the pool in random order
                        L_rand = done[rand][2]["loss"][:, -1, -1, :].mean(-1)
                        per["order_gain"] = (L_rand - r["loss"][:, -1, -1, :].mean(-1)).tolist()
                per["time_s"] = [r["seconds"]]
                timing[name] = r["seconds"]
                raw[name] = {"L": L, "trace": r["loss"]}
                rows[name] = results.row(
                    per,
                    size=size,
                    order=[stream.names[t] for t in (order or range(T))],
                    L_mean=L.mean(0).tolist(),
                    L_per_seed=L.tolist(),
                    b_mean=r["b"].mean(0).tolist(),
                    loss_trace_mean=r["loss"].mean(0).tolist(),
                )
    d = cfg["data"]
    res = results.make(
        "lm",
        cfg,
        rows,
        COLUMNS,
        timing=timing,
        extra={
            "domains": list(d["domains"]),
            "train_tokens": list(stream.tokens),
            "params": {k: v for k, v in params.items() if v is not None},
            "unigram_js": np.round(div, 6).tolist(),
            "orders": {o: [stream.names[t] for t in v] for o, v in orders.items()},
            **({"delt": delt_info} if delt_info else {}),
        },
        first="row",
    )
    shown = ", ".join(f"{s} ({params[s] / 1e6:.2f}M params)" if params[s] else s for s in params)
    header = (
        f"\n{cfg['name']}: domains {', '.join(d['domains'])}; models {shown}; {S} seeds, "
        f"{cfg['train']['steps_per_domain']} steps per domain of {cfg['train']['batch_size']} x "
        f"{d['seq_len']} tokens; held-out NLL per token (nats), mean ± std; BWT < 0 and forgetting > 0: "
        "earlier domains got worse\n"
    )
    plot_files = (
        lambda res, out: plots.accuracy_matrices(
            {m: r["L"] for m, r in raw.items()},
            os.path.join(out, "loss_matrix.png"),
            f"{cfg['name']}: held-out NLL per token L[i, j] (mean ± std over {S} seeds)",
            value_range=None,
            what="domain",
            cmap="viridis_r",
        ),
        lambda res, out: plots.stability_gap(
            {m: r["trace"] for m, r in raw.items()},
            cfg["train"]["eval_every"],
            os.path.join(out, "loss_over_training.png"),
            f"{cfg['name']}: held-out loss of each domain over training (mean over {S} seeds)",
            ylabel="NLL (nats/token)",
            ylim=None,
            what="domain",
            labels=list(d["domains"]),
        ),
    )
    every = cfg["train"]["eval_every"]
    return Report(
        res, header, plots=plot_files, every=every, axis="domain", memory={"raw": raw, "stream": stream}
    )


def sweep_cells(cfg: dict, method: str, run: Run) -> SweepPlan:
    """Every cell of the grid (one method's traced hyperparameters, e.g. ``er.replay_fraction``)
    x seeds trained through every domain as one program (``lax.scan`` over domains inside
    ``lax.map`` over cells), for the first model of ``model.name``; the row is the method (with
    ``+rewarm`` when ``rows`` has that method only with re-warming)."""
    stream = build_stream(cfg)
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    size = sizes(cfg)[0]
    model, pretrained = load_model(cfg, size)
    text.check_vocab(stream, model.cfg.vocab_size, cfg["model"]["tokenizer"])
    row = method if method in cfg["rows"] or f"{method}+rewarm" not in cfg["rows"] else f"{method}+rewarm"
    prog = Program(cfg, model, pretrained, row)
    state = prog.init(pretrained, keys, stream)
    b = np.asarray(prog.initial_losses(state, stream))
    T = stream.n_domains
    domain = jax.vmap(prog._domain, in_axes=(0, None, None, None))

    def one_cell(state, stream, hp):
        s, tr = jax.lax.scan(lambda s, t: domain(s, t, hp, stream), state, jnp.arange(T))
        return {"loss": tr["heldout"], "nonfinite_step": s.nonfinite_step}

    def cell_row(o):
        per, L = row_metrics(np.moveaxis(o["loss"], 1, 0), b)  # (T, S, E, K) -> (S, T, E, K)
        per["diverged"] = (o["nonfinite_step"] >= 0).astype(np.float32).tolist()
        return per, {"L_mean": L.mean(0).tolist()}

    extra = {"row": row, "size": size}
    return SweepPlan(
        one_cell, (state, stream), prog.hp, cell_row, COLUMNS, "forgetting", "forgetting", extra=extra
    )


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``), on the config's stream (small host text)
    and the models' abstract parameters: per model the initial held-out losses; per (model, row)
    ``init``, the domain program (``steps_per_domain`` steps and the consolidation) and one
    training step of every seed."""
    from .. import compile as C

    stream = build_stream(cfg)
    sp = C.seeds_spec(mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, sp)
    st, t = C.abstract(stream, mesh), C.abstract(jnp.int32(0), mesh)
    out = []
    for size in sizes(cfg):
        model, pretrained = load_model(cfg, size, shapes_only=True)
        pre = None if pretrained is None else C.abstract(pretrained, mesh)
        for i, row in enumerate(row_names(cfg)):
            prog = Program(cfg, model, pretrained, row, mesh)
            name, hp = _row_name(cfg, size, row), C.abstract(prog.hp, mesh)
            state = jax.eval_shape(jax.vmap(prog._init, in_axes=(None, 0, None)), pre, keys, st)
            state = C.abstract(state, mesh, sp)
            if i == 0:
                out.append(
                    C.Program(
                        f"{size}: held-out losses",
                        _losses_program(model),
                        (C.abstract(jax.eval_shape(jax.vmap(prog.params), state), mesh, sp), st),
                    )
                )
            step = jit_seeds(prog.one_step, (0, None, None), mesh)
            rd = None
            if prog.kind == "pretrain":  # the pool's reading: its shape, not its order
                P = cfg["train"]["steps_per_domain"] * stream.n_domains * cfg["train"]["batch_size"]
                P = min(P, int(np.asarray(stream.n_train).sum()))
                rd = C.abstract({"pairs": jnp.zeros((P, 2), jnp.int32), "n": jnp.int32(P)}, mesh)
            out += [
                C.Program(f"{name}: init", prog.init, (pre, keys, st)),
                C.Program(f"{name}: a domain", prog.domain_program, (state, t, hp, st, rd)),
                C.Program(
                    f"{name}: one step",
                    step,
                    (state, hp, {"stream": st, "t": t, "reading": rd}),
                    steps=1,
                    called=False,
                ),
            ]
    return out


STUDY = Study(
    "lm",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    methods=LM_METHODS,
    mesh_batches=MESH_BATCHES,
    checkpoint_key="train.checkpoint",
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
