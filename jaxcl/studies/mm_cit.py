"""Multimodal continual instruction tuning (``study: mm-cit``): the small VLM
(:mod:`jaxcl.models.vlm`) instruction-tuned on a stream of image-text tasks with different answer
styles (:mod:`jaxcl.data.multimodal`: ``captions`` (a short phrase), ``attributes`` (yes / no),
``counting`` (a number, or yes / no comparing two grid cells)), one task after another.

Papers: MLLM-CTBench (continual instruction tuning of multimodal LLMs: answer accuracy per task
after each task, CL algorithms against sequential fine-tuning) and SEFE (Chen et al. 2025:
superficial forgetting, the answers' form drifting to a later task's style, vs essential
forgetting, the knowledge lost). Rows: ``finetune`` (SFT), ``finetune+kl`` (KL to the model at
the previous task's end: LwF for a language model), ``er`` (reservoir replay: a replayed answer
with its own image), ``der`` / ``derpp`` (DER / DER++: the buffer keeps every answer position's
logits, matched by squared error; :mod:`jaxcl.methods.der`), ``ewc`` (Fisher at each task's end),
``joint`` (multi-task: every task seen so far, the upper bound), ``grpo`` (reinforcement
fine-tuning, RFT: GRPO's rollouts with the image tokens before every prompt, a verifiable reward
of 1 for the exact answer and end token, :func:`jaxcl.data.multimodal.exact_answer_reward`; its KL
penalty to the model at the task's start, or none with ``grpo.kl=none``: MLLM-CTBench's RFT with
and without KL), ``reglora`` (RegLoRA, SEFE's remedy for essential forgetting: LoRA adapters whose
update is held at zero on the key elements of earlier tasks' updates; :mod:`jaxcl.methods.reglora`,
with ``model.lora.rank``) and any row with ``+asd`` (SEFE's answer style diversification, its remedy
for superficial forgetting: a fraction ``asd.fraction`` of every task's training examples asked in
the other tasks' answer styles, :mod:`jaxcl.methods.asd`; ``reglora+asd`` is SEFE). An iteration samples ``grpo.group_size`` completions for each of
``train.batch_size / grpo.group_size`` prompts, as many sequences as an SFT step trains on.

A base model (``train.base_steps`` > 0): before the stream, every seed's model is fine-tuned on the
mix of every task for that many steps, and every row starts from it (RFT needs a model that
sometimes answers in a task's form, or every reward is 0: a row ``grpo`` requires it). The base
model trains every weight; with ``model.lora`` the rows then train adapters over it (as SEFE's
LoRA over a pretrained model), over a random initialisation without a base.

Reasoning quality (MLLM-CTBench tracks it apart from the final answer; ``data.reasoning: true``):
the attribute and counting answers write their steps first, what the picture shows or the grid
cells the question needs (``it is an eight, so yes``; ``3 and 9, so no``; ``3 7 1 9, so 2``),
then the final answer. Per task with steps: the **reasoning accuracy** (every step token greedy-
correct: greedy decoding writes the steps exactly) and the **final-answer accuracy** given the
right steps (:func:`step_accuracies`), each a matrix (``R``, ``F``) with its forgetting
(columns ``reasoning ACC`` / ``reasoning forgetting`` / ``final-answer ...``, over those tasks).

Superficial vs essential: besides the answer accuracy (greedy writes the answer exactly), the
**knowledge accuracy** of a task after each task is the fraction of its held-out examples whose
own answer has the highest likelihood among the options of its kind
(:func:`jaxcl.data.multimodal.choices`: the ten captions, yes / no, the counts), whatever form
greedy decoding would give. ``knowledge forgetting`` is the forgetting of that matrix (essential),
``superficial forgetting`` = answer forgetting - knowledge forgetting (what is lost in the form
only).

Protocol: each task has ``data.n_train`` training and ``data.n_eval`` held-out examples (the
data set's train and test splits) of one image shape and ``data.seq_len`` text tokens; a VLM is
initialised per seed (``vmap``) and trained ``train.steps_per_task`` steps on each task in order
through :class:`jaxcl.lmprogram.LMProgram` and the one loop; every ``train.eval_every`` steps the
answer accuracy of every task is measured inside the compiled loop: an example is right when
every answer token is the argmax given the image, the prompt and the answer's earlier tokens,
which is exactly when greedy decoding writes the answer. ``A[i, j]`` is task ``j``'s accuracy
after training task ``i``; reported per row: ACC (the mean of the last row of ``A``), BWT and
forgetting (:mod:`jaxcl.metrics`), ``just trained`` (the mean of ``A[i, i]``, each task right after
training on it: plasticity), the matrix and the per-step curves in the results.

Devices: ``--mesh`` shards the seeds over the mesh's ``seeds`` axis and each batch over ``data``
(the same numbers as one device); ``jaxcl compile mm-cit --size accel`` compiles a run's calls
(:func:`calls`, :func:`programs`) for an accelerator without one.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, grpo, results
from .. import metrics as M
from ..config import ConfigError
from ..data import multimodal as MM
from ..data import text, vocab
from ..driver import Report, Run, Study
from ..lmprogram import LMProgram
from ..loops import seeds_keys
from ..methods import METHODS
from ..methods import grpo as grpo_method
from ..models import lora, vlm
from ..parallel import jit_seeds, shard_batch

TASKS = ("captions", "attributes", "counting")
DATASETS = ("digits", "mnist-10k", "fashion-mnist")
CIT_METHODS = ("finetune", "er", "der", "derpp", "ewc", "joint", "grpo", "reglora")
BASE = 0xBA5E  # folded into a seed's key for its base model

DEFAULTS = {
    "model": vlm.section(),
    "data": {
        "dataset": "digits",
        "tasks": TASKS,
        "n_train": 512,
        "n_eval": 128,
        "seq_len": 56,
        "reasoning": False,
    },
    # base_steps: SFT on the mix of every task before the stream, every row's start (0: none)
    "train": {
        "steps_per_task": 300,
        "batch_size": 32,
        "eval_every": 50,
        "consolidate_samples": 64,
        "base_steps": 0,
    },
    # finetune+kl: KL to the model at the previous task's end, i.e. LwF for a language model
    "methods": ("finetune", "finetune+kl", "er", "derpp", "ewc", "joint"),
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("acc", "ACC", "pct"),
    ("bwt", "BWT", "pct"),
    ("forgetting", "forgetting", "pct"),
    ("just_trained", "just trained", "pct"),
    ("k_acc", "knowledge ACC", "pct"),
    ("k_forgetting", "knowledge forgetting", "pct"),
    ("superficial", "superficial forgetting", "pct"),
    ("time_s", "time (s)", "seconds"),
]
# with data.reasoning: the reasoning steps and the final answer (given the steps) apart, over the
# tasks whose answers have steps (attributes, counting)
REASONING_COLUMNS = [
    ("r_acc", "reasoning ACC", "pct"),
    ("r_forgetting", "reasoning forgetting", "pct"),
    ("f_acc", "final-answer ACC", "pct"),
    ("f_forgetting", "final-answer forgetting", "pct"),
]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    if d["dataset"] not in DATASETS:
        raise ConfigError(f"data.dataset={d['dataset']!r}; valid: {', '.join(DATASETS)}")
    bad = [t for t in d["tasks"] if t not in TASKS]
    if bad or len(d["tasks"]) < 2:
        raise ConfigError(f"data.tasks={tuple(d['tasks'])!r}: give 2 or more of {', '.join(TASKS)}")
    if not isinstance(d["reasoning"], bool):
        raise ConfigError(f"data.reasoning={d['reasoning']!r}: give true or false")
    if d["reasoning"] and not set(d["tasks"]) & {"attributes", "counting"}:
        raise ConfigError("data.reasoning: only attributes and counting write steps; add one to data.tasks")
    if d["reasoning"] and any(uses_asd(m) for m in cfg["methods"]):
        raise ConfigError("methods: +asd rewrites answers without reasoning steps; set data.reasoning=false")
    lora_only = [
        m for m in cfg["methods"] if any(METHODS[p].needs_lora for p in m.split("+") if p in METHODS)
    ]
    if lora_only and not cfg["model"]["lora"]["rank"]:
        raise ConfigError(
            f"methods: {', '.join(lora_only)} train(s) LoRA adapters only and the model has none: set "
            "model.lora.rank=8 (model.lora.targets picks the weights)"
        )
    validate_schedule(cfg)
    tr = cfg["train"]
    if not isinstance(tr["base_steps"], int) or tr["base_steps"] < 0 or tr["base_steps"] % tr["eval_every"]:
        raise ConfigError(
            f"train.base_steps={tr['base_steps']!r}: give 0 or a whole multiple of train.eval_every "
            f"({tr['eval_every']})"
        )
    if any(m.split("+")[0] == "grpo" for m in cfg["methods"]):
        if not tr["base_steps"]:
            raise ConfigError(
                "methods: grpo from a random initialisation never writes an answer, so every reward is 0 "
                "and nothing is learned; set train.base_steps (e.g. 150: SFT on the mix of every task first)"
            )
        if cfg["model"]["lora"]["rank"]:
            raise ConfigError("methods: grpo on LoRA adapters is not built; set model.lora.rank=0")
        if tr["batch_size"] < cfg["grpo"]["group_size"]:
            raise ConfigError(
                f"train.batch_size={tr['batch_size']} < grpo.group_size={cfg['grpo']['group_size']}: an "
                "iteration rolls out batch_size / group_size prompts; raise train.batch_size"
            )


def uses_asd(method: str) -> bool:
    """Whether row ``method`` trains on answer-style-diversified data (a ``+asd`` chain)."""
    return "asd" in method.split("+")[1:]


def validate_schedule(cfg: dict, more: tuple = ()) -> None:
    """The rows, sizes and schedule keys this study shares with :mod:`jaxcl.studies.mm_domains`
    (``more``: that study's own positive keys)."""
    config.check_nonempty(cfg, ["methods"], "set methods=finetune,er")
    config.check_positive(
        cfg,
        [
            *more,
            "data.n_train",
            "data.n_eval",
            "data.seq_len",
            "train.steps_per_task",
            "train.batch_size",
            "train.eval_every",
            "train.consolidate_samples",
            "seeds",
        ],
    )
    config.check_multiple(cfg, "train.steps_per_task", "train.eval_every")


def build_tasks(cfg: dict) -> tuple[dict, dict]:
    """``(train, eval)``: each ``{'image': K x N x H x W x C, 'tokens': K x N x T, 'mask'}``, one
    entry per task of ``data.tasks``, from the data set's train and test splits; ``eval`` also
    ``'steps'`` (``K x N x T``, the answers' reasoning steps; only with ``data.reasoning``) and ``'choices'``: the options of every held-out example (:func:`jaxcl.data.multimodal.choices`,
    ``K x N x C x T`` tokens and mask, ``K x N x C`` valid, ``K x N`` answer; ``C`` padded to the
    most options of a task). With a ``grpo`` row, ``train['rl']``: every training example as an RL
    prompt row (:func:`jaxcl.data.multimodal.prompt_rows`, completions of ``grpo.max_new_tokens``)."""
    d = cfg["data"]
    parts, opts = {"train": [], "eval": []}, []
    for split, n, key in (("train", d["n_train"], "train"), ("test", d["n_eval"], "eval")):
        x, y = MM.source(d["dataset"], split)
        for i, task in enumerate(d["tasks"]):
            seed = cfg["seed"] * 1000 + 10 * i + (split == "test")
            if task == "counting":
                ex = MM.counting(x, y, n, seed, d["seq_len"], reasoning=d["reasoning"])
            elif task == "attributes":
                ex = MM.attributes(x, y, d["dataset"], n, seed, d["seq_len"], reasoning=d["reasoning"])
            else:
                ex = MM.captions(x, y, d["dataset"], n, seed, d["seq_len"])
            steps = {"steps": ex.steps} if key == "eval" and d["reasoning"] else {}  # read by step_accuracies
            if key == "train" and any(uses_asd(m) for m in cfg["methods"]):
                steps = {"asd": diversified(ex, seed, d["seq_len"])}
            parts[key].append({**MM.batch(ex), **steps})
            if key == "eval":
                opts.append(MM.choices(ex, d["seq_len"]))
    C = max(o["valid"].shape[1] for o in opts)
    opts = [pad_choices(o, C) for o in opts]
    stack = lambda rows: jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *rows)  # noqa: E731
    train = stack(parts["train"])
    if any(m.split("+")[0] == "grpo" for m in cfg["methods"]):
        P = max(int(r["mask"].argmax(1).max()) for r in parts["train"])
        A = cfg["grpo"]["max_new_tokens"]
        try:
            train["rl"] = stack([MM.prompt_rows(r, P, A) for r in parts["train"]])
        except ValueError as e:
            raise ConfigError(f"grpo.max_new_tokens={A}: {e} (set grpo.max_new_tokens)") from None
    return train, {**stack(parts["eval"]), "choices": stack(opts)}


def diversified(ex, seed: int, seq_len: int) -> dict:
    """Every example of ``ex`` asked in another answer style (:func:`jaxcl.data.multimodal.diversify`
    at fraction 1) and a fixed uniform ``u`` per example: the ``asd`` rows a ``+asd`` chain draws
    from (:mod:`jaxcl.methods.asd`: the rewritten form where ``u < asd.fraction``)."""
    try:
        alt = MM.diversify(ex, 1.0, seed + 0xA5D, seq_len)
    except ValueError as e:
        raise ConfigError(f"data.seq_len={seq_len}: {e} (the rewritten questions are longer)") from None
    u = np.random.default_rng(seed + 0xA5D).random(len(ex.answer)).astype(np.float32)
    return {"tokens": alt.tokens, "mask": alt.mask, "u": u}


def pad_choices(opts: dict, C: int) -> dict:
    """``opts`` with ``C`` options per example: the added ones copy option 0, not valid."""
    extra = C - opts["valid"].shape[1]
    copy = lambda a: np.concatenate([a, np.repeat(a[:, :1], extra, 1)], 1)  # noqa: E731
    valid = np.concatenate([opts["valid"], np.zeros((len(opts["valid"]), extra), bool)], 1)
    return {**opts, "tokens": copy(opts["tokens"]), "mask": copy(opts["mask"]), "valid": valid}


def answer_correct(model, params, sub) -> jax.Array:
    """``B`` booleans: each of ``sub``'s examples has every answer token the argmax (greedy
    decoding writes the answer exactly)."""
    logits_BxTxV, t_BxT, m_BxT = model.token_logits(params, sub)
    ok_BxT = (jnp.argmax(logits_BxTxV, -1) == t_BxT) | (m_BxT == 0)
    return ok_BxT.all(-1)


def step_accuracies(model, params, sub) -> dict:
    """The reasoning steps and the final answer apart (``sub['steps']``, the answers' step
    tokens): ``reason``, the fraction of the examples with steps whose every step token is the
    argmax (greedy writes the steps exactly; NaN when no example has steps), and ``final``, the
    fraction whose every answer token after the steps is the argmax given the right steps."""
    logits_BxTxV, t_BxT, m_BxT = model.token_logits(params, sub)
    ok_BxT = jnp.argmax(logits_BxTxV, -1) == t_BxT
    st_BxT = sub["steps"][:, 1:]  # aligned with the targets (tokens[:, 1:])
    has_B = st_BxT.any(-1)
    reason_B = (ok_BxT | ~st_BxT).all(-1)
    final_B = (ok_BxT | ~((m_BxT > 0) & ~st_BxT)).all(-1)
    n = has_B.sum()
    reason = jnp.where(n > 0, (reason_B & has_B).sum() / jnp.maximum(n, 1), jnp.nan)
    return {"reason": reason, "final": final_B.mean()}


def answer_accuracy(model, params, sub) -> jax.Array:
    """The fraction of ``sub``'s examples whose every answer token is the argmax (greedy writes
    the answer exactly)."""
    return answer_correct(model, params, sub).mean()


def option_scores(model, params, image, tokens_NxCxT, mask_NxCxT) -> jax.Array:
    """``N x C``: the log-likelihood of each option's answer tokens given the image and prompt."""

    def one(tm):
        logits_NxTxV, t_NxT, m_NxT = model.token_logits(
            params, {"image": image, "tokens": tm[0], "mask": tm[1]}
        )
        logp_NxTxV = jax.nn.log_softmax(logits_NxTxV.astype(jnp.float32), -1)
        lp_NxT = jnp.take_along_axis(logp_NxTxV, t_NxT[..., None], -1)[..., 0]
        return (lp_NxT * m_NxT).sum(-1)

    return jax.lax.map(one, (tokens_NxCxT.swapaxes(0, 1), mask_NxCxT.swapaxes(0, 1))).T


def knowledge_accuracy(model, params, sub) -> jax.Array:
    """The fraction of ``sub``'s examples whose own answer is the likeliest of their options
    (``sub['choices']``): what the model knows, whatever form its greedy answer takes."""
    ch = sub["choices"]
    scores_NxC = option_scores(model, params, sub["image"], ch["tokens"], ch["mask"])
    pick_N = jnp.argmax(jnp.where(ch["valid"], scores_NxC, -jnp.inf), -1)
    return (pick_N == ch["answer"]).mean()


def make_program(cfg: dict, model, method: str, mesh=None) -> LMProgram:
    """Row ``method``'s program (``mesh``: seeds over its ``seeds`` axis, each batch over
    ``data``); ``joint`` (the multi-task upper bound) fine-tunes on batches of every task seen so
    far, uniformly."""
    B = cfg["train"]["batch_size"]

    rl, asd = method.split("+")[0] == "grpo", uses_asd(method)
    if rl:  # prompts: as many completions per iteration as an SFT batch has rows
        B = grpo_method.prompt_rows(cfg["grpo"], max(1, B // cfg["grpo"]["group_size"]))

    def draw(data, key):
        n = data["train"]["tokens"].shape[1]
        ki, kt = jax.random.split(key)
        i = jax.random.randint(ki, (B,), 0, n)
        t = jax.random.randint(kt, (B,), 0, data["t"] + 1) if method == "joint" else data["t"]
        if rl:  # make_iteration shards the prompts and the rollout batch
            return jax.tree.map(lambda a: a[t, i], data["train"]["rl"])
        rows = {k: v for k, v in data["train"].items() if k != "rl" and (k != "asd" or asd)}
        return shard_batch(jax.tree.map(lambda a: a[t, i], rows), mesh)

    def evaluate(params, data):
        ev = {k: v for k, v in data["eval"].items() if k != "choices"}
        out = {"acc": jax.lax.map(lambda sub: answer_accuracy(model, params, sub), ev)}
        if cfg["data"].get("reasoning"):
            out.update(jax.lax.map(lambda sub: step_accuracies(model, params, sub), ev))
        return out

    name = "finetune" if method == "joint" else method
    return LMProgram(
        model,
        cfg,
        name,
        eval_every=cfg["train"]["eval_every"],
        draw=draw,
        evaluate=evaluate,
        handles=("consolidate",),
        mesh=mesh,
        env=env() if rl else None,
    )


def env() -> grpo.Env:
    """The reward environment of the RL rows: the exact answer (byte tokens)."""
    tok = text.tokenizer("byte")
    return grpo.Env(MM.exact_answer_reward, text.end_id(tok), vocab.pad_id(tok))


def task_end(prog: LMProgram, cfg: dict, state, data):
    """After task ``data['t']``: the method's consolidate (EWC's Fisher, the KL reference) on
    ``train.consolidate_samples`` of the task's training examples."""
    method = prog.method(prog.hp, state.frozen)
    if method.consolidate is None:
        return state
    n, t = data["train"]["tokens"].shape[1], data["t"]
    k = jax.random.fold_in(jax.random.fold_in(state.key, 0x5EED), -1 - t)
    i = jax.random.randint(k, (cfg["train"]["consolidate_samples"],), 0, n)
    rows = {k: v for k, v in data["train"].items() if k not in ("rl", "asd")}
    return method.consolidate(state, jax.tree.map(lambda a: a[t, i], rows), k)


def calls(prog: LMProgram, cfg: dict) -> dict:
    """A row's compiled calls, every seed at once (seeds sharded over the program's mesh), the
    task ``data['t']`` an argument (one program for every task): ``init(keys, params0, data)``
    (``params0``: every seed's base model, or None for a random initialisation),
    ``evaluate(state, data)`` (answer and knowledge accuracy of every task, ``S x K`` each),
    ``task(state, data)`` (``train.steps_per_task`` steps with the answer accuracy every
    ``train.eval_every``; an RL method's reference becomes the model at the task's start first) and,
    for a method that consolidates at a task's end, ``end(state, data)`` (:func:`task_end`). The run
    calls these and ``jaxcl compile`` compiles them (:func:`programs`)."""
    E, m, model = cfg["train"]["steps_per_task"] // cfg["train"]["eval_every"], prog.mesh, prog.model
    rl = prog.spec.kind == "rl"

    def evaluate(state, data):
        params = prog.params(state)
        know = jax.lax.map(lambda sub: knowledge_accuracy(model, params, sub), data["eval"])
        return prog.evaluate(params, data)["acc"], know

    def task(state, data):
        if rl:  # GRPO's KL reference: the model at this task's start (the base model on the first)
            state = prog.method(prog.hp, state.frozen).consolidate(state, None, None)
        return prog.call(state, prog.hp, data, E)

    out = {
        "init": jit_seeds(lambda k, p, d: prog.init(k, p, prog.hp, d), (0, 0, None), m, state=True),
        "evaluate": jit_seeds(evaluate, (0, None), m),
        "task": jit_seeds(task, (0, None), m),
    }
    frozen = jax.eval_shape(model.init, jax.random.key(0)) if prog.lora else ()  # LoRA: the base's shapes
    if not rl and prog.method(prog.hp, frozen).consolidate is not None:
        out["end"] = jit_seeds(lambda s, d: task_end(prog, cfg, s, d), (0, None), m)
    return out


def train_base(cfg: dict, model, data: dict, keys, mesh=None) -> tuple:
    """Every seed's base model: ``train.base_steps`` fine-tuning steps on batches of every task
    (the ``joint`` row's draw over all of them; the seed's key folded with :data:`BASE`), one
    program. ``(params, trace)``: the parameters (S leading) and the answer accuracy of every task
    every ``train.eval_every`` steps (S x E x K)."""
    prog = make_program(cfg, model, "joint", mesh)
    E = cfg["train"]["base_steps"] // cfg["train"]["eval_every"]

    def base(key, data):
        state, trace = prog.call(prog.init(key, None, prog.hp, data), prog.hp, data, E)
        return prog.params(state), trace["acc"]

    K = data["train"]["tokens"].shape[0]
    keys = jax.vmap(lambda k: jax.random.fold_in(k, BASE))(keys)
    return jit_seeds(base, (0, None), mesh)(keys, {**data, "t": jnp.int32(K - 1)})


def run_row(cfg: dict, prog: LMProgram, data: dict, keys, bar, fresh: bool = False, base=None) -> dict:
    """Every task in order for all seeds: ``trace`` (S x K x E x J) of the ``J`` held-out sets'
    accuracies (one per task here; :mod:`jaxcl.studies.mm_domains` adds sets no task trains),
    ``know`` (S x K x J) of their knowledge accuracies after each task, ``b`` / ``kb`` (S x J)
    both at initialisation. ``fresh``: every task from a new initialisation (a stand-alone model
    per task; the same keys, so each task's model starts where the sequence's first did). ``base``:
    every seed's starting parameters (:func:`train_base`; None: a random initialisation)."""
    K, t0 = data["train"]["tokens"].shape[0], time.perf_counter()
    J = data["eval"]["tokens"].shape[0]
    E = cfg["train"]["steps_per_task"] // cfg["train"]["eval_every"]
    at = lambda t: {**data, "t": jnp.int32(t)}  # noqa: E731
    c = calls(prog, cfg)
    state = c["init"](keys, base, at(0))
    b, kb = map(np.asarray, c["evaluate"](state, at(0)))
    traces = {}  # every quantity of the in-loop evaluation: S x K x E x J
    know = np.zeros((len(keys), K, J), np.float32)
    for t in range(K):
        if fresh and t:
            state = c["init"](keys, base, at(t))
        state, tr = c["task"](state, at(t))
        for k, v in tr.items():
            if k in ("acc", "reason", "final"):
                traces.setdefault(k, np.zeros((len(keys), K, E, J), np.float32))[:, t] = np.asarray(v)
            elif k in ("reward", "kl"):  # an RL row's mean rollout reward and KL per chunk
                traces.setdefault(k, np.zeros((len(keys), K, E), np.float32))[:, t] = np.asarray(v)
        know[:, t] = np.asarray(c["evaluate"](state, at(t))[1])
        if t < K - 1 and "end" in c:
            state = c["end"](state, at(t))
        bar.update(1)
    out = {"trace": traces["acc"], "know": know, "b": b, "kb": kb, "seconds": time.perf_counter() - t0}
    out |= {k: traces[k] for k in ("reward", "kl") if k in traces}
    return out | ({"reason": traces["reason"], "final": traces["final"]} if "reason" in traces else {})


def column_forgetting(R: np.ndarray, cols) -> float:
    """:func:`jaxcl.metrics.forgetting` of the tasks ``cols`` of ``R`` (K x K): the mean over those
    before the last of the drop from their best earlier accuracy to the final one."""
    K = R.shape[0]
    drops = [R[: K - 1, j].max() - R[-1, j] for j in cols if j < K - 1]
    return float(np.mean(drops)) if drops else 0.0


def model_of(cfg: dict, image_shape: tuple):
    """The scratch VLM of the config (byte-level text; with an RL row, room for a left-padded
    prompt and ``grpo.max_new_tokens`` sampled tokens)."""
    vocab = text.tokenizer("byte").vocab_size
    T = cfg["data"]["seq_len"]
    if any(m.split("+")[0] == "grpo" for m in cfg["methods"]):
        T += cfg["grpo"]["max_new_tokens"]
    return vlm.from_section(cfg["model"], image_shape, vocab, T)


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``), per row: :func:`calls` on the config's
    tasks (built on the host, abstract on the mesh) and one training step of every seed."""
    from .. import compile as C

    train, ev = build_tasks(cfg)
    model = model_of(cfg, train["image"].shape[2:])
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, C.seeds_spec(mesh))
    data = C.abstract({"train": train, "eval": ev, "t": jnp.int32(0)}, mesh)
    out = []
    for method in cfg["methods"]:
        prog = make_program(cfg, model, method, mesh)
        c = calls(prog, cfg)
        state = C.abstract(jax.eval_shape(c["init"], keys, None, data), mesh, C.seeds_spec(mesh))
        steps = cfg["train"]["steps_per_task"]
        step = jit_seeds(prog.one_step, (0, None, None), mesh)
        out += [
            C.Program(f"{method}: init", c["init"], (keys, None, data)),
            C.Program(f"{method}: evaluate", c["evaluate"], (state, data)),
            C.Program(f"{method}: a task ({steps} steps)", c["task"], (state, data)),
            *([C.Program(f"{method}: task end", c["end"], (state, data))] if "end" in c else []),
            C.Program(
                f"{method}: one step", step, (state, C.abstract(prog.hp, mesh), data), steps=1, called=False
            ),
        ]
    return out


def body(cfg: dict, run: Run) -> Report:
    train, ev = build_tasks(cfg)
    data = {"train": train, "eval": ev}
    K, S, d = len(cfg["data"]["tasks"]), cfg["seeds"], cfg["data"]
    model = model_of(cfg, train["image"].shape[2:])
    keys = seeds_keys(cfg["seed"], S)
    rows, timing, base, extra = {}, {}, None, {}
    if cfg["train"]["base_steps"]:
        t0 = time.perf_counter()
        # the base model is trained in full; with model.lora the rows adapt it (SEFE's LoRA on a
        # pretrained model)
        full = model_of({**cfg, "model": {**cfg["model"], "lora": lora.section()}}, train["image"].shape[2:])
        base, base_trace = train_base(cfg, full, data, keys, run.mesh)
        base_trace = np.asarray(base_trace)  # S x E x K
        extra["base_seconds"] = time.perf_counter() - t0
        extra["base_acc_mean"] = base_trace[:, -1].mean(0).tolist()
        extra["base_acc_per_seed"] = base_trace[:, -1].tolist()
        accs = ", ".join(
            f"{t} {100 * a:.1f}%" for t, a in zip(d["tasks"], extra["base_acc_mean"], strict=True)
        )
        run.say(
            f"base model ({cfg['train']['base_steps']} steps on every task): answer accuracy {accs}"
            f" ({extra['base_seconds']:.0f} s)"
        )
    with run.progress(len(cfg["methods"]) * K, "task") as bar:
        for method in cfg["methods"]:
            r = run_row(cfg, make_program(cfg, model, method, run.mesh), data, keys, bar, base=base)
            A, Kn = r["trace"][:, :, -1, :], r["know"]  # S x K x K
            per = {
                "acc": [M.acc(a) for a in A],
                "bwt": [M.bwt(a) for a in A],
                "forgetting": [M.forgetting(a) for a in A],
                "just_trained": [float(np.mean(np.diag(a))) for a in A],
                "k_acc": [M.acc(a) for a in Kn],
                "k_forgetting": [M.forgetting(a) for a in Kn],
                "superficial": [M.forgetting(a) - M.forgetting(k) for a, k in zip(A, Kn, strict=True)],
                "time_s": [r["seconds"]],
            }
            more = {}
            if "reason" in r:
                cols = [j for j, task in enumerate(d["tasks"]) if task in ("attributes", "counting")]
                R, F = r["reason"][:, :, -1, :], r["final"][:, :, -1, :]
                per |= {
                    "r_acc": R[:, -1, cols].mean(-1),
                    "r_forgetting": [column_forgetting(a, cols) for a in R],
                    "f_acc": F[:, -1, cols].mean(-1),
                    "f_forgetting": [column_forgetting(a, cols) for a in F],
                }
                # the matrices of the tasks with steps (columns: results' extra.reasoning_tasks)
                R, F = R[:, :, cols], F[:, :, cols]
                more = {"R_mean": R.mean(0).tolist(), "R_per_seed": R.tolist(), "F_mean": F.mean(0).tolist()}
                more["F_per_seed"] = F.tolist()
            more |= {f"{k}_trace_mean": r[k].mean(0).tolist() for k in ("reward", "kl") if k in r}
            timing[method] = r["seconds"]
            rows[method] = results.row(
                per,
                A_mean=A.mean(0).tolist(),
                A_per_seed=A.tolist(),
                b_mean=r["b"].mean(0).tolist(),
                K_mean=Kn.mean(0).tolist(),
                K_per_seed=Kn.tolist(),
                kb_mean=r["kb"].mean(0).tolist(),
                acc_trace_mean=r["trace"].mean(0).tolist(),
                **more,
            )
    columns = COLUMNS[:-1] + (REASONING_COLUMNS if d["reasoning"] else []) + COLUMNS[-1:]
    res = results.make(
        "mm-cit",
        cfg,
        rows,
        columns,
        timing=timing,
        extra={
            "tasks": list(d["tasks"]),
            "model": model.name,
            **extra,
            **({"reasoning_tasks": [t for t in d["tasks"] if t != "captions"]} if d["reasoning"] else {}),
        },
    )
    header = (
        f"\n{cfg['name']}: {model.name} on {d['dataset']} image-text tasks {', '.join(d['tasks'])}; "
        f"{S} seeds, {cfg['train']['steps_per_task']} steps per task of {cfg['train']['batch_size']}; "
        "answer accuracy (every answer token greedy-correct), mean ± std\n"
    )
    return Report(res, header, every=cfg["train"]["eval_every"], axis="task", memory={"data": data})


STUDY = Study(
    "mm-cit",
    kinds=("cl", "rl"),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    methods=CIT_METHODS,
    mesh_batches=("train.batch_size",),
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
