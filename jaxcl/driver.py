"""The one study driver: a study is its defaults plus a body on this driver.

A :class:`Study` is the runner contract as a type: its name, the method kinds (and methods) it
runs, its config sections' defaults, the batch sizes a mesh's ``data`` axis splits, its
validation, whether it checkpoints (and so supports ``--resume``), its body and, where it has one,
its sweep. :meth:`Study.run` / :meth:`Study.sweep` (what ``jaxcl run`` / ``jaxcl sweep`` call)
own everything studies share:

* validation and the mesh check before anything is loaded or compiled; a verb the study does not
  support (``sweep``, ``--resume``, ``--mesh``) refused with one line;
* the output folder: checked, locked for the run or the sweep (a second process into the same
  ``--out`` is refused), results written atomically (:mod:`jaxcl.results`);
* checkpoints under ``<out>/checkpoints``: a rerun into a folder that holds an *interrupted* run's
  checkpoints is refused, naming ``--resume`` and ``--fresh`` (never deleted silently); a finished
  run's are replaced; ``Ctrl-C`` ends with one line saying how to continue;
* the printed header, table and notes; plots drawn guarded (a plotting error never loses
  results); TensorBoard event files of every row's figures (``--tensorboard``, every study).

The body, ``body(cfg, run) -> Report``, holds only what is specific to the study: its data, its
schedule of segments on :func:`jaxcl.loops.run_chunks` (a task of a stream, an unlearning phase, a
GRPO stage, an injection schedule), its rows and its plots. A sweep body,
``sweep_body(cfg, method, run) -> SweepPlan``, gives one cell's program and how to read a cell as a
row; :func:`jaxcl.sweep.run_plan` runs every cell and writes the rows, results and plot.
Avalanche's ``BaseSGDTemplate`` and Mammoth's ``train()`` keep one interpreted loop with plugins;
here the loop is compiled and the driver only runs what lies around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import report, results
from .config import ConfigError, get
from .engine import check_finite

DONE = ".checkpoints-complete"  # marker beside <out>/checkpoints once the run that wrote them finished


class Interrupted(RuntimeError):
    """A run stopped by Ctrl-C; the message says how to continue it."""


@dataclasses.dataclass
class Report:
    """What a study's body returns: the results object (:func:`jaxcl.results.make`), what to
    print around its table, plot functions ``fn(res, out_dir) -> [paths]``, the spacing of the
    rows' curves over training for TensorBoard (``every``, ``axis``, ``first_step``) and
    ``memory``: host-side entries added to the results the Python caller gets (never written)."""

    res: dict
    header: str = ""
    notes: tuple[str, ...] = ()
    plots: tuple[Callable, ...] = ()
    every: int = 0  # training steps between the entries of the rows' ``*_trace_mean`` curves
    axis: str = "task"  # what the last axis of a 3-D curve indexes (its TensorBoard tag)
    first_step: int | None = None  # the first entry's step (default: ``every``)
    memory: dict | None = None


@dataclasses.dataclass
class Run:
    """One run's settings as the body sees them."""

    cfg: dict
    out: str | None = None
    resume: bool = False
    fresh: bool = False
    verbose: bool = True
    mesh: object = None
    checkpoint: bool = False

    @property
    def ckpt_dir(self) -> str | None:
        """``<out>/checkpoints`` when the study checkpoints and the config lets it, else None."""
        return os.path.join(self.out, "checkpoints") if (self.out and self.checkpoint) else None

    def say(self, *args) -> None:
        if self.verbose:
            print(*args, flush=True)

    def progress(self, total: int, unit: str, desc: str | None = None):
        """A progress bar (tqdm) over ``total`` units; silent when not verbose."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc or self.cfg["name"], unit=unit, disable=not self.verbose)


@dataclasses.dataclass(frozen=True)
class Study:
    """The runner contract (see the module docstring)."""

    name: str
    kinds: tuple[str, ...]
    defaults: dict
    validate: Callable[[dict], None]
    body: Callable[[dict, Run], Report]
    sweep_body: Callable | None = None  # (cfg, method, run) -> jaxcl.sweep.SweepPlan
    no_sweep: str = "compare settings with jaxcl run ... --set"
    no_resume: str = "its phases are short; run it again"
    methods: tuple[str, ...] | None = None  # the methods it can run (None: every method of its kinds)
    mesh_batches: tuple[str, ...] = ()
    takes_mesh: bool = True
    checkpoint_key: str | None = None  # the config key that switches checkpoints (and --resume) on
    # the compiled calls of a run, abstract (jaxcl.compile.Program): ``programs(cfg, mesh)``
    programs: Callable | None = None
    # registry edit methods (``trains=False``) it applies after training, listed in the config's
    # ``edits`` (each with its section, e.g. ``curvature.keep``)
    edits: tuple[str, ...] = ()

    @property
    def verbs(self) -> tuple[str, ...]:
        return (
            ("run",)
            + (("sweep",) if self.sweep_body else ())
            + (("resume",) if self.checkpoint_key else ())
            + (("compile",) if self.programs else ())
        )

    def runnable(self) -> tuple[str, ...]:
        """The registered methods this study can run (its config has a section for each)."""
        from .methods import METHODS

        names = self.methods if self.methods is not None else tuple(METHODS)
        return tuple(n for n in names if n in METHODS and any(METHODS[n].applies_to(k) for k in self.kinds))

    def sections(self) -> tuple[str, ...]:
        """The methods with a config section: :meth:`runnable` and the modifiers that join one of
        them in a chain ``base+modifier`` (:mod:`jaxcl.methods.compose`)."""
        from .methods import METHODS
        from .methods.compose import modifiers

        runnable = self.runnable()
        joinable = modifiers({METHODS[n].kind for n in runnable})
        out = runnable + tuple(n for n in joinable if n not in runnable)
        return out + tuple(n for n in self.edits if n not in out)

    def refuse(self, verb: str) -> None:
        """A :class:`ConfigError` (exit 2, one line) when ``verb`` is not one the study supports."""
        if verb == "sweep" and not self.sweep_body:
            raise ConfigError(f"the {self.name} study has no sweep: {self.no_sweep}")
        if verb == "resume" and not self.checkpoint_key:
            raise ConfigError(f"--resume: the {self.name} study writes no checkpoints ({self.no_resume})")
        if verb == "compile" and not self.programs:
            raise ConfigError(
                f"the {self.name} study does not declare its programs for jaxcl compile yet; studies that "
                f"do: {', '.join(compilable())}"
            )
        if verb == "mesh" and not self.takes_mesh:
            raise ConfigError(f"--mesh: the {self.name} study does not take a mesh")

    def checks(self, cfg: dict, mesh=None) -> None:
        """The study's validation and the mesh check, before anything is loaded or compiled."""
        from .studies import meshing

        self.validate(cfg)
        if mesh is not None:
            self.refuse("mesh")
            meshing.check(mesh, cfg, paths=self.mesh_batches)

    def run(
        self,
        cfg: dict,
        out: str | None = None,
        *,
        resume: bool = False,
        fresh: bool = False,
        tensorboard: bool = False,
        verbose: bool = True,
        mesh=None,
    ) -> dict:
        """Run the study; with ``out``, results.json, the plots and (``tensorboard``) event files
        there, checkpoints under ``out/checkpoints`` where the study has them; ``resume``
        continues an interrupted run from them; ``fresh`` starts over (discarding checkpoints
        and cached models)."""
        if resume:
            self.refuse("resume")
        self.checks(cfg, mesh)
        if self.programs and (jax.default_backend() != "cpu" or os.environ.get("JAXCL_PREFLIGHT")):
            # on an accelerator: every program compiled and checked against the device's memory
            # before anything runs (a program that does not fit is an error naming it)
            self.compile(cfg, "local", mesh=mesh)
        ckpt = bool(self.checkpoint_key) and get(cfg, self.checkpoint_key)
        run = Run(cfg, out or None, resume, fresh, verbose, mesh, ckpt)
        if not run.out:
            return _finish(self._body(cfg, run), run, tensorboard)
        with _locked(run.out):
            _claim_checkpoints(run, self)
            res = _finish(self._body(cfg, run), run, tensorboard)
            if os.path.isdir(os.path.join(run.out, "checkpoints")):
                open(os.path.join(run.out, DONE), "w").close()
            return res

    def sweep(
        self, cfg: dict, grid: dict, *, chunk: int | None = None, out: str | None = None, verbose: bool = True
    ) -> dict:
        """Every cell of ``grid`` x every seed as one program: the grid checked against the
        methods the study can run, the study's sweep body's :class:`jaxcl.sweep.SweepPlan` run by
        :func:`jaxcl.sweep.run_plan` (rows, results, table, plot); the output folder locked as a
        run's is."""
        from . import sweep as sweep_mod

        self.refuse("sweep")
        self.validate(cfg)
        method = sweep_mod.cells_of(grid, self.runnable())[0]
        with _locked(out) if out else contextlib.nullcontext():
            plan = self.sweep_body(cfg, method, Run(cfg, out or None, verbose=verbose))
            return sweep_mod.run_plan(plan, cfg, method, grid, chunk, out or None, verbose)

    def compile(
        self,
        cfg: dict,
        target: str,
        *,
        mesh: str | None = "auto",
        out: str | None = None,
        check: bool = True,
        called_only: bool = False,
        seen: dict | None = None,
    ) -> dict:
        """Compile every program a run of ``cfg`` makes for ``target`` (:mod:`jaxcl.compile`)
        on the mesh ``mesh`` of the target's devices, without running anything: the results
        (a row per program: memory per device against its HBM, FLOPs, the compiler's estimate),
        printed and written to ``out``; ``check``: a ConfigError naming the first program that
        does not fit; ``called_only``: leave out the programs declared for their figures only
        (the one-step programs, whose step the whole-run program holds: the fit check of CI);
        ``seen``: programs compiled before are not compiled again (:func:`jaxcl.compile.analyse`)."""
        from . import compile as C

        self.refuse("compile")
        t = C.target(target)
        devs = C.devices(t)
        m = None if isinstance(mesh, str) else mesh  # a spec, or the run's own mesh
        if isinstance(mesh, str) and self.takes_mesh and mesh not in ("", "none"):
            from .studies import meshing

            m = meshing.study_mesh(cfg, mesh, devices=devs)
        self.checks(cfg, m)
        progs = [p for p in self.programs(cfg, m) if p.called or not called_only]
        analysed = [C.analyse(p, t, len(devs), seen) for p in progs]
        res = results.make(
            "compile",
            cfg,
            C.result_rows(analysed),
            C.COLUMNS,
            first="program",
            extra={
                "target": dataclasses.asdict(t),
                "devices": len(devs),
                "device_kind": devs[0].device_kind,
                "mesh": None if m is None else dict(m.shape),
                "figures": "the compiler's (XLA memory and cost analyses), not a run",
            },
        )
        shape = "no mesh" if m is None else " x ".join(f"{k}={v}" for k, v in m.shape.items())
        print(
            f"\n{cfg['name']} compiled for {t.name} ({len(devs)} x {devs[0].device_kind}, {shape}); "
            "the compiler's figures, not a run:\n" + res["table"]
        )
        if out:
            with _locked(out):
                results.write(out, res)
        if check:
            C.check_fits(analysed, t)
        return res

    def _body(self, cfg: dict, run: Run) -> Report:
        try:
            return self.body(cfg, run)
        except KeyboardInterrupt:
            if run.ckpt_dir and os.path.isdir(run.ckpt_dir):
                raise Interrupted(
                    f"interrupted; the checkpoints in {run.ckpt_dir} are kept: continue with "
                    f"jaxcl run {cfg['name']}{' --tiny' if cfg.get('tiny') else ''} --resume {run.out}"
                ) from None
            why = "checkpoints are off in this run" if self.checkpoint_key else self.no_resume
            raise Interrupted(f"interrupted; the {self.name} study kept no checkpoints ({why})") from None


# -- the schedule: segments with a checkpoint after each ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of a study's schedule: ``state, outputs = fn(state, outputs)`` (one compiled call:
    a task of a stream, ``checkpoint_every`` steps of it, a task end's consolidation, a domain, a
    GRPO stage; ``outputs`` are host arrays the call writes its traces into), ``units`` of the
    progress bar, and ``where`` it is, for the non-finite error."""

    fn: Callable
    units: int = 0
    where: str = ""


def run_segments(
    segments: list[Segment],
    state,
    outputs: dict,
    *,
    ckpt_dir: str | None = None,
    conf: dict | None = None,
    resume: bool = False,
    progress=None,
    stop_nonfinite: bool = True,
    t0: float | None = None,
):
    """Run a schedule: every segment in order, the run stopped with the step range when a step was
    non-finite (``stop_nonfinite``), and a checkpoint of ``{state, outputs}`` after each segment
    when ``ckpt_dir`` (``conf``: what the run depends on, checked on restore). With ``resume`` the
    newest good checkpoint is restored and the segments it covers are skipped: batches depend only
    on the run key and the step counter, so the result equals an uninterrupted run's (tested for
    every study that checkpoints). Returns ``(state, outputs, seconds)``, seconds counted from
    ``t0`` plus the restored run's."""
    from .checkpoint import Checkpointer

    t0 = time.perf_counter() if t0 is None else t0
    start, elapsed, ckpt = 0, 0.0, None
    if ckpt_dir and segments:
        ckpt = Checkpointer(ckpt_dir, conf or {})
        got = ckpt.restore_latest({"state": state, "outputs": outputs}) if resume else None
        if got is not None:
            payload, meta = got
            state, outputs = uncommitted(payload["state"]), jax.tree.map(np.array, payload["outputs"])
            start, elapsed = meta["segment"], meta.get("seconds", 0.0)
            if progress is not None:
                progress.update(sum(s.units for s in segments[:start]))
    for pos in range(start, len(segments)):
        seg = segments[pos]
        state, outputs = seg.fn(state, outputs)
        if stop_nonfinite and state is not None:  # None: a schedule of independent programs
            check_finite(state.nonfinite_step, where=seg.where)
        if ckpt is not None:
            seconds = elapsed + time.perf_counter() - t0
            ckpt.save(pos + 1, {"state": state, "outputs": outputs}, {"segment": pos + 1, "seconds": seconds})
        if progress is not None and seg.units:
            progress.update(seg.units)
    return state, outputs, elapsed + time.perf_counter() - t0


def uncommitted(tree):
    """Restored arrays as fresh (uncommitted) device arrays, like the initial state: the
    compiled call is then reused, not compiled again for committed arguments."""

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.asarray(np.asarray(jax.random.key_data(x))))
        return jnp.asarray(np.asarray(x))

    return jax.tree.map(one, tree)


def train_calls(
    prog, keys, data, cfg: dict, defaults: dict, *, initial=False, ckpt_dir=None, resume=False, progress=None
):
    """Every seed (vmapped) of ``prog`` (:class:`jaxcl.lmprogram.LMProgram`, on ``data``) through
    ``train.steps`` steps in calls of ``train.checkpoint_every`` steps (0: one call), a checkpoint
    after each (the lm-memory and sort schedules): ``(state, traces, seconds)``, every trace
    ``(S, evaluations, ...)``; ``initial``: the evaluation of the initial model first (its step
    metrics only ``loss``, NaN there). The checkpoint depends on the config's sections of
    ``defaults`` and the method's (not every registered method's section: adding a method to the
    registry must not invalidate a checkpoint)."""
    t = cfg["train"]
    E, S = t["eval_every"], len(keys)
    n_chunks = t["steps"] // E
    C = max((t["checkpoint_every"] or t["steps"]) // E, 1)
    init, ev, call = prog.programs(C)
    t0 = time.perf_counter()
    state = init(keys, prog.pretrained, prog.hp)
    if initial:
        first = jax.tree.map(np.asarray, ev(state, data))
        traces = {k: np.zeros((S, 1 + n_chunks) + v.shape[1:], np.float32) for k, v in first.items()}
        for k, v in first.items():
            traces[k][:, 0] = v
        traces["loss"] = np.full((S, 1 + n_chunks), np.nan, np.float32)
    else:
        shapes = jax.eval_shape(call, state, prog.hp, data)[1]  # evaluation and step metrics
        traces = {k: np.zeros((S, n_chunks) + v.shape[2:], np.float32) for k, v in shapes.items()}
    conf = report.to_jsonable({k: cfg[k] for k in (*defaults, prog.spec.name) if k != "methods"})
    steps, off = C * E, int(initial)

    def one(i):
        def fn(state, out):
            state, tr = call(state, prog.hp, data)
            for k in out:
                out[k][:, off + i * C : off + (i + 1) * C] = np.asarray(tr[k])
            return state, out

        return Segment(fn, steps, f"(steps {i * steps} to {(i + 1) * steps})")

    segments = [one(i) for i in range(n_chunks // C)]
    return run_segments(
        segments, state, traces, ckpt_dir=ckpt_dir, conf=conf, resume=resume, progress=progress, t0=t0
    )


def compilable() -> tuple[str, ...]:
    """The studies that declare their programs (``jaxcl compile``)."""
    from .studies import STUDIES, get_study

    return tuple(n for n in STUDIES if get_study(n).programs)


class _locked:
    """The output folder prepared (a bad ``--out`` fails before any compilation) and locked."""

    def __init__(self, out: str):
        self.out = out

    def __enter__(self):
        report.prepare_out_dir(self.out)
        self.lock = report.lock_out_dir(self.out)
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def _claim_checkpoints(run: Run, study: Study) -> None:
    """Checkpoints already in the folder: a finished run's are replaced; an interrupted run's are
    resumed (``--resume``), discarded (``--fresh``) or the run is refused naming both."""
    d, marker = os.path.join(run.out, "checkpoints"), os.path.join(run.out, DONE)
    done = os.path.exists(marker)
    if done:
        os.unlink(marker)  # the folder's checkpoints belong to this run from now on
    if not os.path.isdir(d) or run.resume:
        return
    if done or run.fresh or not os.listdir(d):
        shutil.rmtree(d)
        return
    cfg = run.cfg
    again = f"jaxcl run {cfg['name']}{' --tiny' if cfg.get('tiny') else ''}"
    raise report.OutputDirError(
        f"{run.out} holds the checkpoints of an interrupted {study.name} run; continue it with "
        f"{again} --resume {run.out}, or start over with {again} --out {run.out} --fresh"
    )


def _finish(rep: Report, run: Run, tensorboard: bool) -> dict:
    """Print the header, table and notes; with an output folder, draw the plots (guarded), write
    TensorBoard files and results.json."""
    res = rep.res
    if rep.header:
        run.say(rep.header)
    run.say(res["table"])
    for note in rep.notes:
        run.say(note)
    if run.out:
        files = []
        for plot in rep.plots:
            try:
                got = plot(res, run.out)
                files.extend([got] if isinstance(got, str) else got)
            except Exception as err:  # a plotting problem must not lose the results
                run.say(f"warning: a plot could not be drawn ({type(err).__name__}: {err}); results are kept")
        if tensorboard:
            logdir = os.path.join(run.out, "tensorboard")
            first = rep.every if rep.first_step is None else rep.first_step
            res["extra"]["tensorboard"] = write_tensorboard(res, logdir, rep.every, rep.axis, first)
        results.write(run.out, res, files)
        run.say(f"\nwrote {run.out}/results.json" + "".join(f", {os.path.basename(f)}" for f in files))
    res.update(rep.memory or {})
    return res


def write_tensorboard(res: dict, logdir: str, every: int = 0, axis: str = "task", first: int = 0) -> str:
    """Every row's figures as TensorBoard scalars (run ``<row>/final``, ``final/<key>`` at each
    seed's index) and, when ``every``, its curves over training (run ``<row>``): each
    ``<key>_trace_mean`` of the row, 1-D (evaluations), 2-D (tasks x evaluations) or 3-D (tasks x
    evaluations x ``axis``), as ``<key>`` or ``<key>/<axis>_<j>`` at step ``first + i * every``."""
    from tensorboardX import SummaryWriter

    for name, row in res["rows"].items():
        with SummaryWriter(os.path.join(logdir, _safe(name), "final")) as w:
            for key, values in row.get("per_seed", {}).items():
                for i, v in enumerate(values if isinstance(values, list | tuple) else [values]):
                    if isinstance(v, int | float):
                        w.add_scalar(f"final/{key}", float(v), i)
        curves = {k[: -len("_trace_mean")]: v for k, v in row.items() if k.endswith("_trace_mean")}
        if not every or not curves:
            continue
        with SummaryWriter(os.path.join(logdir, _safe(name))) as w:
            for tag, v in curves.items():
                a = np.asarray(v, np.float64)
                a = a.reshape((-1, a.shape[-1]) if a.ndim == 3 else (-1, 1))
                for i, vals in enumerate(a):
                    for j, x in enumerate(vals):
                        w.add_scalar(
                            tag if a.shape[1] == 1 else f"{tag}/{axis}_{j}", float(x), first + i * every
                        )
    return logdir


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(name))
