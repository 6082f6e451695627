"""``jaxcl`` command line: the one parser.

    jaxcl list
    jaxcl run CONFIG [--tiny] [--set key=value ...] [--method M ...] [--seeds N] [--out DIR]
                     [--resume DIR] [--fresh] [--tensorboard] [--mesh auto|seeds=S,data=D,model=M]
    jaxcl sweep CONFIG --grid <method>.<hparam>=v1,v2 [--grid ...] [--tiny] [--set ...] [--seeds N] [--chunk K]
    jaxcl compile CONFIG --target tpu-v5e-8|cpu|... [--size tiny|default|accel] [--mesh ...] [--set ...]
    jaxcl repro CONFIG --vary <key>=v1,v2 [--devices 1,8] [--mesh auto] [--out DIR] [--fresh] [run flags]

CONFIG is a config file's name in ``experiments/`` (``split-fashion-mnist``, ``unlearn-class``,
``tofu`` ...) or a path. ``--set`` reaches any key of the config (``er.replay_fraction=0.3``,
``ssd.alpha=5``, ``loop.eval_every=5``, ``methods=er,ewc``); the short flags ``--lr``,
``--steps-per-task``, ``--skip-nonfinite``, ``--checkpoint-every``, ``--no-checkpoint`` and
``--model`` are spellings of such keys. Every value is checked before anything is compiled;
errors name the key and the valid values and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

USAGE = __doc__.split("\n\n")[1]


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"jaxcl {cmd}", description="see `jaxcl list` for the configs and methods"
    )
    p.add_argument("config", help="a config name from experiments/ (see `jaxcl list`) or a path to one")
    p.add_argument(
        "--tiny", action="store_true", help="the seconds-long variant the tests run (= --size tiny)"
    )
    p.add_argument(
        "--size", default=None, help="tiny | default | accel (the papers' scale, for an accelerator)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument(
        "--method", action="append", default=None, help="method(s) to run (repeatable or comma list)"
    )
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, batched into one program")
    p.add_argument("--out", default=None, help="output folder (default runs/<config>[-tiny])")
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate of every method run (= --set <m>.lr=)"
    )
    p.add_argument("--steps-per-task", type=int, default=None, help="= --set loop.steps_per_task=N")
    p.add_argument("--skip-nonfinite", action="store_true", help="= --set loop.skip_nonfinite=true")
    p.add_argument("--model", default=None, help="= --set model.name=NAME")
    if cmd == "compile":
        from .compile import TARGETS

        p.add_argument("--target", required=True, help=f"the device to compile for: {', '.join(TARGETS)}")
        p.add_argument(
            "--mesh", default="auto", help="auto | none | seeds=S,data=D over the target's devices (auto)"
        )
    elif cmd == "run":
        p.add_argument(
            "--checkpoint-every",
            type=int,
            default=None,
            help="= --set <section>.checkpoint_every=N (the study's checkpoint section)",
        )
        p.add_argument(
            "--no-checkpoint",
            action="store_true",
            help="= --set <section>.checkpoint=false (none to switch off: no-op)",
        )
        p.add_argument("--resume", default=None, metavar="DIR", help="continue the run whose --out was DIR")
        p.add_argument("--fresh", action="store_true", help="ignore cached results under the output folder")
        p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
        p.add_argument(
            "--mesh",
            default=None,
            metavar="auto|seeds=S,data=D,model=M",
            help="run on a (seeds, data, model) mesh over the devices: seeds sharded over 'seeds', batches "
            "over 'data', the train state FSDP-style over 'model' (auto: the largest seeds and data axes "
            "that divide the seeds and batch sizes, no model axis)",
        )
    else:
        p.add_argument("--grid", action="append", default=[], help="<method>.<hparam>=v1,v2,... (repeatable)")
        p.add_argument(
            "--chunk", type=int, default=None, help="cells vmapped at a time (default: from memory)"
        )
    p.add_argument(
        "--no-xla-cache",
        action="store_true",
        help="do not use the persistent compilation cache (jaxcl.cache)",
    )
    return p


def _sets(args, cfg: dict, study=None) -> list[str]:
    """The short flags as ``--set`` items (applied before the explicit ``--set``s)."""
    sets = []
    if args.method:
        sets.append("methods=" + ",".join(m for a in args.method for m in a.split(",") if m))
    if args.seeds is not None:
        sets.append(f"seeds={args.seeds}")
    if args.steps_per_task is not None:
        sets.append(f"loop.steps_per_task={args.steps_per_task}")
    if args.skip_nonfinite:
        sets.append("loop.skip_nonfinite=true")
    if args.model is not None:
        sets.append(f"model.name={args.model}")
    # the checkpoint flags set the study's own checkpoint switch (``Study.checkpoint_key``)
    key = getattr(study, "checkpoint_key", None)
    if getattr(args, "checkpoint_every", None) is not None:
        if not key:
            from .config import ConfigError

            raise ConfigError(
                f"--checkpoint-every: the {cfg.get('study')!r} study writes no checkpoints; drop the flag"
            )
        every = key.rsplit(".", 1)[0] + ".checkpoint_every"
        sets.append(f"{every}={args.checkpoint_every}")
    if getattr(args, "no_checkpoint", False) and key:
        sets.append(f"{key}=false")
    if args.lr is not None:
        methods = cfg.get("methods", ())
        for item in sets:  # --method given: the learning rate of those
            if item.startswith("methods="):
                methods = item.split("=", 1)[1].split(",")
        from .methods import METHODS

        sets.extend(
            f"{m}.lr={args.lr!r}"
            for m in dict.fromkeys(x.split("+")[0] for x in methods)
            if m in METHODS and "lr" in METHODS[m].hparams
        )
    return sets + list(args.set)


def _prepare(cmd: str, argv: list[str]):
    from . import cache, config
    from .studies import get_study

    args = _parser(cmd).parse_args(argv)
    cache.enable(False if args.no_xla_cache else None)
    cfg = config.load(args.config, tiny=args.tiny, size=args.size)
    study = get_study(cfg.get("study", ""))
    # a verb the study does not support is refused before anything is resolved or loaded
    study.refuse(cmd)
    if getattr(args, "resume", None):
        study.refuse("resume")
    if getattr(args, "mesh", None) and cmd != "compile":
        study.refuse("mesh")
    cfg = config.resolve(cfg, _sets(args, cfg, study), study=study)
    study.validate(cfg)
    return args, cfg, study


def _run(argv: list[str]) -> int:
    from .cache import CompileStats

    args, cfg, study = _prepare("run", argv)
    if args.resume and not os.path.isdir(args.resume):
        raise FileNotFoundError(
            f"--resume {args.resume}: no such folder; pass the --out folder of the run to continue"
        )
    size = args.size or ("tiny" if args.tiny else "default")
    out = (
        args.resume
        or args.out
        or os.path.join("runs", cfg["name"] + ("" if size == "default" else f"-{size}"))
    )
    mesh = None
    if args.mesh:
        from .studies.meshing import study_mesh

        mesh = study_mesh(cfg, args.mesh)
        print("mesh:", None if mesh is None else dict(mesh.shape))
    with CompileStats() as stats:
        study.run(
            cfg, out, resume=bool(args.resume), fresh=args.fresh, tensorboard=args.tensorboard, mesh=mesh
        )
    _record_compiles(out, stats)
    return 0


def _sweep(argv: list[str]) -> int:
    from .cache import CompileStats
    from .sweep import parse_grid

    args, cfg, study = _prepare("sweep", argv)
    grid = parse_grid(args.grid)
    out = args.out or os.path.join("runs", f"sweep-{cfg['name']}" + ("-tiny" if args.tiny else ""))
    with CompileStats() as stats:
        study.sweep(cfg, grid, chunk=args.chunk, out=out)
    _record_compiles(out, stats)
    return 0


def _compile(argv: list[str]) -> int:
    args, cfg, study = _prepare("compile", argv)
    size = args.size or ("tiny" if args.tiny else "default")
    out = args.out or os.path.join("runs", f"compile-{cfg['name']}-{size}-{args.target}")
    study.compile(cfg, args.target, mesh=args.mesh, out=out)
    return 0


def _repro(argv: list[str]) -> int:
    """``jaxcl repro``: the study at every value of ``--vary`` x every device count (``jaxcl.repro``);
    every other flag is passed to each cell's ``jaxcl run``, checked here first."""
    from . import repro

    p = argparse.ArgumentParser(
        prog="jaxcl repro",
        description="how much a study's numbers move with a config value (the batch size) and the "
        "device count; other flags go to each cell's `jaxcl run` (see `jaxcl run --help`)",
    )
    p.add_argument("config", help="a config name from experiments/ or a path to one")
    p.add_argument("--vary", required=True, help="<key>=v1,v2,... e.g. unlearn.batch_size=32,64,128")
    p.add_argument("--devices", default="1,8", help="forced host device counts, 1 first (default 1,8)")
    p.add_argument("--mesh", default="auto", help="the mesh of the cells with more than one device")
    p.add_argument("--out", default=None, help="output folder (default runs/repro-<config>)")
    p.add_argument("--fresh", action="store_true", help="rerun cells whose results.json exists")
    args, rest = p.parse_known_args(argv)
    for flag in ("--resume", "--mesh", "--out", "--checkpoint-every"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise ValueError(f"jaxcl repro: {flag} is not a flag of a cell's run; drop it")
    key, values = repro.parse_vary(args.vary)
    devices = repro.parse_devices(args.devices)
    for v in values:  # every cell's config checked before any runs (errors name the key, exit 2)
        _prepare("run", [args.config, *rest, "--set", f"{key}={v}"])
    name = os.path.splitext(os.path.basename(args.config))[0]
    out = args.out or os.path.join("runs", f"repro-{name}")
    try:
        repro.run(args.config, rest, key, values, devices, out, mesh=args.mesh, fresh=args.fresh)
    except RuntimeError as e:  # a cell's run failed: its own error is printed above
        print(f"error: {e}; the finished cells are kept, rerun to continue", file=sys.stderr)
        return 1
    return 0


def _record_compiles(out: str, stats) -> None:
    """Print what the run compiled and add it to ``results.json`` under ``timing.xla``."""
    import json

    from .report import write_json

    print(stats.line())
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        res.setdefault("timing", {})["xla"] = stats.summary()
        write_json(path, res)


def _list() -> int:
    from . import config
    from .methods import METHODS

    print("configs (jaxcl run CONFIG):")
    for name in config.available():
        try:
            study = config.load(name).get("study", "?")
        except Exception as e:  # a broken config file is listed, not fatal
            study = f"unreadable: {e}"
        print(f"  {name:28s} ({study})")
    for kind, title in (("cl", "continual-learning"), ("unlearn", "unlearning")):
        print(f"\n{title} methods (traced hyperparameters with defaults):")
        for name, spec in sorted(METHODS.items()):
            if spec.applies_to(kind):
                hp = ", ".join(f"{k}={h.default:g}" for k, h in spec.hparams.items())
                print(f"  {name:13s} {spec.summary}  [{hp}]")
    print("\nmodifiers (after a base in a chain, methods=base+modifier, e.g. ewc+gu; see README):")
    for name, spec in sorted(METHODS.items()):
        if spec.joins is not None:
            hp = ", ".join(f"{k}={h.default:g}" for k, h in spec.hparams.items() if k != "lr")
            print(f"  {name:13s} joins {', '.join(spec.joins.kinds)} bases  [{hp}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    commands = {"list": lambda a: _list(), "run": _run, "sweep": _sweep, "compile": _compile, "repro": _repro}
    if argv[0] not in commands:
        print(
            f"error: unknown command {argv[0]!r}; use one of: {', '.join(commands)}\n{USAGE}", file=sys.stderr
        )
        return 2
    from .driver import Interrupted
    from .engine import NonFiniteLossError
    from .report import OutputDirError

    try:
        return commands[argv[0]](argv[1:])
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OutputDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
