"""Multimodal continual instruction tuning (``study: mm-cit``), a skeleton: the small VLM
(:mod:`jaxcl.models.vlm`) instruction-tuned on a stream of image-text tasks with different answer
styles (:mod:`jaxcl.data.multimodal`: ``captions`` (a short phrase), ``attributes`` (yes / no),
``counting`` (a number, or yes / no comparing two grid cells)), one task after another.

Papers: MLLM-CTBench (continual instruction tuning of multimodal LLMs: answer accuracy per task
after each task, CL algorithms against sequential fine-tuning) and SEFE (Chen et al. 2025: the
answer-format forgetting of a task stream whose answer styles differ). This skeleton has the
protocol's first rows only: ``finetune`` (SFT: sequential fine-tuning) and ``er`` (reservoir
replay of earlier tasks' examples); the reasoning-quality matrix, RFT rows, and the superficial /
essential split of SEFE are not built yet (issue 24, part 2).

Protocol: each task has ``data.n_train`` training and ``data.n_eval`` held-out examples (the
data set's train and test splits) of one image shape and ``data.seq_len`` text tokens; a VLM is
initialised per seed (``vmap``) and trained ``train.steps_per_task`` steps on each task in order
through :class:`jaxcl.lmprogram.LMProgram` and the one loop; every ``train.eval_every`` steps the
answer accuracy of every task is measured inside the compiled loop: an example is right when
every answer token is the argmax given the image, the prompt and the answer's earlier tokens,
which is exactly when greedy decoding writes the answer. ``A[i, j]`` is task ``j``'s accuracy
after training task ``i``; reported per row: ACC (the mean of the last row of ``A``), BWT and
forgetting (:mod:`jaxcl.metrics`), the matrix and the per-step curves in the results.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, results
from .. import metrics as M
from ..config import ConfigError
from ..data import multimodal as MM
from ..data import text
from ..driver import Report, Run, Study
from ..lmprogram import LMProgram
from ..loops import seeds_keys
from ..models import vlm

TASKS = ("captions", "attributes", "counting")
DATASETS = ("digits", "mnist-10k", "fashion-mnist")
CIT_METHODS = ("finetune", "er")

DEFAULTS = {
    "model": vlm.section(),
    "data": {"dataset": "digits", "tasks": TASKS, "n_train": 512, "n_eval": 128, "seq_len": 56},
    "train": {"steps_per_task": 300, "batch_size": 32, "eval_every": 50},
    "methods": CIT_METHODS,
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("acc", "ACC", "pct"),
    ("bwt", "BWT", "pct"),
    ("forgetting", "forgetting", "pct"),
    ("time_s", "time (s)", "seconds"),
]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    if d["dataset"] not in DATASETS:
        raise ConfigError(f"data.dataset={d['dataset']!r}; valid: {', '.join(DATASETS)}")
    bad = [t for t in d["tasks"] if t not in TASKS]
    if bad or len(d["tasks"]) < 2:
        raise ConfigError(f"data.tasks={tuple(d['tasks'])!r}: give 2 or more of {', '.join(TASKS)}")
    config.check_nonempty(cfg, ["methods"], "set methods=finetune,er")
    config.check_positive(
        cfg,
        [
            "data.n_train",
            "data.n_eval",
            "data.seq_len",
            "train.steps_per_task",
            "train.batch_size",
            "train.eval_every",
            "seeds",
        ],
    )
    config.check_multiple(cfg, "train.steps_per_task", "train.eval_every")


def build_tasks(cfg: dict) -> tuple[dict, dict]:
    """``(train, eval)``: each ``{'image': K x N x H x W x C, 'tokens': K x N x T, 'mask'}``, one
    entry per task of ``data.tasks``, from the data set's train and test splits."""
    d = cfg["data"]
    parts = {"train": [], "eval": []}
    for split, n, key in (("train", d["n_train"], "train"), ("test", d["n_eval"], "eval")):
        x, y = MM.source(d["dataset"], split)
        for i, task in enumerate(d["tasks"]):
            seed = cfg["seed"] * 1000 + 10 * i + (split == "test")
            if task == "counting":
                ex = MM.counting(x, y, n, seed, d["seq_len"])
            else:
                ex = getattr(MM, task)(x, y, d["dataset"], n, seed, d["seq_len"])
            parts[key].append(MM.batch(ex))
    stack = lambda rows: {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    return stack(parts["train"]), stack(parts["eval"])


def answer_accuracy(model, params, sub) -> jax.Array:
    """The fraction of ``sub``'s examples whose every answer token is the argmax (greedy writes
    the answer exactly)."""
    logits_BxTxV, t_BxT, m_BxT = model.token_logits(params, sub)
    ok_BxT = (jnp.argmax(logits_BxTxV, -1) == t_BxT) | (m_BxT == 0)
    return ok_BxT.all(-1).mean()


def make_program(cfg: dict, model, method: str) -> LMProgram:
    B = cfg["train"]["batch_size"]

    def draw(data, key):
        n = data["train"]["tokens"].shape[1]
        i = jax.random.randint(key, (B,), 0, n)
        return jax.tree.map(lambda a: a[data["t"], i], data["train"])

    def evaluate(params, data):
        return {"acc": jax.lax.map(lambda sub: answer_accuracy(model, params, sub), data["eval"])}

    return LMProgram(model, cfg, method, eval_every=cfg["train"]["eval_every"], draw=draw, evaluate=evaluate)


def run_row(cfg: dict, prog: LMProgram, data: dict, keys, bar) -> dict:
    """Every task in order for all seeds: ``trace`` (S x K x E x K) of the tasks' accuracies."""
    K, t0 = data["train"]["tokens"].shape[0], time.perf_counter()
    E = cfg["train"]["steps_per_task"] // cfg["train"]["eval_every"]
    at = lambda t: {**data, "t": jnp.int32(t)}
    init = jax.jit(jax.vmap(lambda k, d: prog.init(k, None, prog.hp, d), in_axes=(0, None)))
    ev = jax.jit(jax.vmap(lambda s, d: prog.evaluate(prog.params(s), d)["acc"], in_axes=(0, None)))
    call = jax.jit(jax.vmap(lambda s, d: prog.call(s, prog.hp, d, E), in_axes=(0, None)))
    state = init(keys, at(0))
    b = np.asarray(ev(state, at(0)))
    trace = np.zeros((len(keys), K, E, K), np.float32)
    for t in range(K):
        state, tr = call(state, at(t))
        trace[:, t] = np.asarray(tr["acc"])
        bar.update(1)
    return {"trace": trace, "b": b, "seconds": time.perf_counter() - t0}


def body(cfg: dict, run: Run) -> Report:
    train, ev = build_tasks(cfg)
    data = {"train": train, "eval": ev}
    K, S = len(cfg["data"]["tasks"]), cfg["seeds"]
    tok = text.tokenizer("byte")
    model = vlm.from_section(cfg["model"], train["image"].shape[2:], tok.vocab_size, cfg["data"]["seq_len"])
    keys = seeds_keys(cfg["seed"], S)
    rows, timing = {}, {}
    with run.progress(len(cfg["methods"]) * K, "task") as bar:
        for method in cfg["methods"]:
            r = run_row(cfg, make_program(cfg, model, method), data, keys, bar)
            A = r["trace"][:, :, -1, :]  # S x K x K
            per = {
                "acc": [M.acc(a) for a in A],
                "bwt": [M.bwt(a) for a in A],
                "forgetting": [M.forgetting(a) for a in A],
                "time_s": [r["seconds"]],
            }
            timing[method] = r["seconds"]
            rows[method] = results.row(
                per,
                A_mean=A.mean(0).tolist(),
                A_per_seed=A.tolist(),
                b_mean=r["b"].mean(0).tolist(),
                acc_trace_mean=r["trace"].mean(0).tolist(),
            )
    d = cfg["data"]
    res = results.make(
        "mm-cit", cfg, rows, COLUMNS, timing=timing, extra={"tasks": list(d["tasks"]), "model": model.name}
    )
    header = (
        f"\n{cfg['name']}: {model.name} on {d['dataset']} image-text tasks {', '.join(d['tasks'])}; "
        f"{S} seeds, {cfg['train']['steps_per_task']} steps per task of {cfg['train']['batch_size']}; "
        "answer accuracy (every answer token greedy-correct), mean ± std\n"
    )
    return Report(res, header, every=cfg["train"]["eval_every"], axis="task", memory={"data": data})


STUDY = Study(
    "mm-cit",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=CIT_METHODS,
    takes_mesh=False,
)
run, sweep = STUDY.run, STUDY.sweep
