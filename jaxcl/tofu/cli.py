"""`jaxcl run tofu` / `python experiments/tofu.py`: argument parsing and the run (see the
experiment script's header for commands, runtimes and expected results)."""

from __future__ import annotations

import argparse
import sys

from jaxcl.tofu import study
from jaxcl.tofu.unlearn import METHODS


def parse(argv):
    p = argparse.ArgumentParser(
        prog="jaxcl run tofu",
        description="TOFU unlearning: GA / GradDiff / NPO / IDK, each with and without GU",
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="smollm2-135m | tiny | path to a .gguf file or HF checkpoint dir | hub id",
    )
    p.add_argument("--split", default="forget01", choices=["forget01", "forget05", "forget10"])
    p.add_argument("--method", default="all", help=f"all or comma list of {','.join(METHODS)}")
    p.add_argument("--gu", action="store_true", help="with --method: also run each method with GU")
    p.add_argument("--gu-only", action="store_true", help="run only the GU variants")
    p.add_argument("--tiny", action="store_true", help="tiny random model and data (seconds, CPU)")
    p.add_argument("--out", default="runs/tofu")
    p.add_argument("--data-dir", default=None, help="folder with TOFU jsonl files")
    p.add_argument("--ft-epochs", type=float, default=None)
    p.add_argument("--unlearn-epochs", type=float, default=None)
    p.add_argument("--unlearn-lr", type=float, default=None)
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="compute dtype (default: bfloat16 for SmolLM2; use float32 on a CPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def config_from_args(a) -> study.TofuConfig:
    tc = study.tiny_config() if (a.tiny or a.model == "tiny") else study.TofuConfig(model=a.model)
    methods = tuple(METHODS) if a.method == "all" else tuple(m.strip() for m in a.method.split(","))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    if a.gu_only:
        gu = (True,)
    elif a.method == "all" or a.gu:
        gu = (False, True)
    else:
        gu = (False,)
    over = dict(split=a.split, methods=methods, gu=gu, seed=a.seed)
    if a.dtype is not None:
        over["compute_dtype"] = a.dtype
    for k in ("ft_epochs", "unlearn_epochs", "unlearn_lr"):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    return tc.replace(**over)


def main(argv=None) -> dict:
    a = parse(sys.argv[1:] if argv is None else argv)
    tc = config_from_args(a)
    results = study.run_study(tc, root=a.data_dir)
    print(study.format_table(results))
    paths = study.save(results, a.out, title=f"TOFU {tc.split}, {tc.model}")
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    return results
