"""``jaxcl`` command line: ``jaxcl list``, ``jaxcl run <study> [options]``, ``jaxcl sweep``."""

from __future__ import annotations

import argparse
import sys


def _list() -> int:
    from .methods import METHODS
    from .studies import load_all

    studies = load_all()
    print("studies:")
    for name in sorted(studies):
        print(f"  {name:28s} {studies[name].summary}")
    print("\ncontinual-learning methods (--method):")
    for name in sorted(METHODS):
        spec = METHODS[name]
        hp = ", ".join(f"{k}={v}" for k, v in spec.hparams.items())
        print(f"  {name:10s} {spec.summary}  [{hp}]")
    for name in sorted(studies):
        st = studies[name]
        extra = sorted(set(st.methods) - set(METHODS))
        if extra:
            print(f"\nmethods of {name}: {', '.join(extra)}")
    return 0


def _run(argv: list[str]) -> int:
    from .studies import get_study, load_all

    if not argv or argv[0].startswith("-"):
        names = ", ".join(sorted(load_all()))
        print(f"usage: jaxcl run <study> [options]; studies: {names}", file=sys.stderr)
        return 2
    try:
        study = get_study(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if study.main is not None:  # the study parses its own arguments
        study.main(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog=f"jaxcl run {study.name}", description=study.summary)
    p.add_argument(
        "--method",
        action="append",
        default=None,
        help=f"method to run (repeatable; default: the study's set); one of: {', '.join(study.methods)}",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds (batched into one program: vmap, or a compiled loop for conv models on CPU)",
    )
    p.add_argument("--tiny", action="store_true", help="the seconds-long version the tests run")
    p.add_argument("--out", default=None, help="output directory (default runs/<study>)")
    if study.add_args:
        study.add_args(p)
    args = p.parse_args(argv[1:])
    if args.method and study.methods:
        bad = [m for m in args.method if m not in study.methods]
        if bad:
            p.error(f"unknown method(s) {bad}; valid methods: {', '.join(study.methods)}")
    if args.seeds is not None and args.seeds <= 0:
        p.error("--seeds must be positive")
    study.run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            __doc__.strip()
            + "\n\n  jaxcl list\n  jaxcl run <study> [--method M ...] [--seeds N] [--tiny] [--out DIR]"
            "\n  jaxcl sweep <study> --method M --grid name=v1,v2 [--grid ...] [--seeds N] [--chunk K]"
        )
        return 0
    if argv[0] == "list":
        return _list()
    if argv[0] == "run":
        return _run(argv[1:])
    if argv[0] == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(argv[1:])
    print(
        f"error: unknown command {argv[0]!r}; use 'jaxcl list', 'jaxcl run <study>' or 'jaxcl sweep <study>'",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
