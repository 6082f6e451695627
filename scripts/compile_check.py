"""Compile the studies' accelerator-size configs for a TPU without one (``jaxcl compile``): the CI
check and the README's compile tables.

    python scripts/compile_check.py --target tpu-v5e-8              # check (CI)
    python scripts/compile_check.py --target tpu-v5e-8 --record     # and write results/compile/
    python scripts/compile_check.py --only tofu-1b-sharded
    python scripts/compile_check.py --target tpu-v5e-8 --update-cache  # refresh the fit cache

Each check is a config at a size, ``--set`` items and a mesh of the target's devices. A check
that must fit fails (exit 1, one line naming it) when a program does not compile or does not fit
a device; a check marked ``fits=False`` shows a program that does not fit (the replicated 1B
model) and fails if it does. The check compiles the programs a run calls; ``--record`` and
``--only`` also the one-step programs declared for their per-step figures (a run never calls them;
the whole-run program holds their step).

A program whose figures are in the committed cache (``results/compile/fit-cache-<target>.json``:
keyed by the sha256 of its lowered text with its shardings, the target, the device count and the
jax / jaxlib / libtpu versions) is not compiled again: the compiler is deterministic, so the same
key gives the same figures, and a program that changed is compiled. The ``VERIFY`` checks are
compiled afresh on every run and must equal the cache. After changing a program, refresh the cache
(``--update-cache``) and commit it, or CI compiles what changed. Needs ``libtpu`` (``pip install 'jax[tpu]'``, Python 3.12). The
figures are the compiler's (memory and cost analyses), not a run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# (name, config, size, sets, mesh, fits: True / False / None = a record only: compiled with --all or
# --only NAME, not in the default (CI) run)
CHECKS = [
    ("split-cifar100-resnet18", "split-fashion-mnist", "accel", ["methods=er"], "auto", True),
    ("tofu-1b-replicated", "tofu", "accel", ["methods=npo"], "seeds=1,data=8", False),
    ("tofu-1b-sharded", "tofu", "accel", ["methods=npo"], "seeds=1,data=1,model=8", True),
    ("tofu-1b-gu-sharded", "tofu", "accel", ["methods=gu-npo"], "seeds=1,data=1,model=8", True),
    (
        "tofu-1b-gu-rank8-sharded",
        "tofu",
        "accel",
        ["methods=gu-npo", "gu-npo.rank=8"],
        "seeds=1,data=1,model=8",
        None,
    ),
    (
        "tofu-1b-gu-rank8-lora8-sharded",
        "tofu",
        "accel",
        ["methods=gu-npo", "gu-npo.rank=8", "model.lora.rank=8"],
        "seeds=1,data=1,model=8",
        None,
    ),
    # the other studies at their accelerator sizes: 8 seeds, one per chip (--mesh auto)
    ("unlearn-class-cifar10-resnet18", "unlearn-class", "accel", ["methods=ga"], "auto", True),
    ("lm-cpt-smollm2-135m", "lm-cpt", "accel", ["rows=er", "methods=er"], "auto", True),
    ("lm-facts-smollm2-135m", "lm-facts", "accel", [], "auto", True),
    ("sort-smollm2-135m", "sort", "accel", [], "auto", True),
    ("lm-junk-135m-scratch", "lm-junk", "accel", [], "seeds=2,data=2,model=2", True),
    ("restor-135m-scratch", "restor", "accel", ["methods=npo"], "auto", True),
    ("rft-continual-smollm2-135m", "rft-continual", "accel", ["rows=sft,rft"], "seeds=4,data=2", True),
    ("mm-cit-vlm-135m-fashion", "mm-cit", "accel", ["methods=er"], "auto", True),
]
# compiled afresh on every run and compared with the cache: the cache's soundness, checked in CI
VERIFY = ("lm-cpt-smollm2-135m",)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="tpu-v5e-8")
    p.add_argument("--record", action="store_true", help="write results/compile/<check>-<target>.json")
    p.add_argument("--only", nargs="*", default=None, help="names of checks to run")
    p.add_argument("--all", action="store_true", help="also the record-only checks (fits=None)")
    p.add_argument(
        "--cache",
        default=None,
        help="figures of programs compiled before (default results/compile/fit-cache-<target>.json; 'none': compile all)",
    )
    p.add_argument(
        "--update-cache", action="store_true", help="write the figures of this run's programs to --cache"
    )
    p.add_argument(
        "--verify",
        nargs="*",
        default=list(VERIFY),
        help="checks compiled afresh whatever the cache holds; a cached figure that differs fails the check",
    )
    args = p.parse_args(argv)
    from jaxcl import compile as C
    from jaxcl import config, results
    from jaxcl.studies import get_study

    cache = args.cache or os.path.join(ROOT, "results", "compile", f"fit-cache-{args.target}.json")
    # seen: a program two checks share is compiled once; a program whose lowered text, target, devices
    # and compiler versions are in the cache is not compiled at all (the compiler is deterministic)
    failed = []
    cached = {} if cache == "none" else C.load_fit_cache(cache)
    seen, used, verified, t_all = dict(cached), [], set(), time.perf_counter()
    for name, cfg_name, size, sets, mesh, fits in CHECKS:
        if args.only and name not in args.only:
            continue
        if fits is None and not (args.all or args.only):
            continue
        t0, load0 = time.perf_counter(), list(os.getloadavg())
        cfg = config.load(cfg_name, size=size)
        study = get_study(cfg["study"])
        cfg = config.resolve(cfg, sets, study=study)
        try:
            # the fit check (CI) compiles the programs a run calls; --record and --only also the
            # one-step programs (the per-step figures of the README's tables)
            called_only = not (args.record or args.only)
            fresh = {} if name in args.verify else seen  # compiled whatever the cache holds
            res = study.compile(cfg, args.target, mesh=mesh, check=False, called_only=called_only, seen=fresh)
        except Exception as e:  # a program that does not compile: one line, the check fails
            failed.append(f"{name}: does not compile: {str(e).splitlines()[0][:300]}")
            continue
        for r in res["rows"].values():
            a = r["analysis"]
            if "key" not in a:  # refused by the compiler (out of HBM): nothing to cache
                continue
            used.append(a["key"])
            if fresh is not seen:
                verified.add(a["key"])
                differ = C.stale(seen.setdefault(a["key"], a), a)
                if differ:
                    failed.append(
                        f"{name}: {a['program']}: the cache's {', '.join(differ)} differ from a fresh compile of the "
                        f"same program text: the cache is stale; rerun with --cache none --update-cache"
                    )
        all_fit = all(r["analysis"]["fits"] for r in res["rows"].values())
        if fits is not None and all_fit != fits:
            worst = max(res["rows"].values(), key=lambda r: r["analysis"]["total_bytes"])["analysis"]
            failed.append(
                f"{name}: expected {'every program to fit' if fits else 'a program not to fit'}; the largest, "
                f"{worst['program']}, needs {worst['total_bytes'] / 2**30:.2f} GiB of {worst['hbm_bytes'] / 2**30:.2f}"
            )
        if args.record:
            command = (
                f"jaxcl compile {cfg_name} --size {size} --target {args.target} --mesh {mesh}"
                + "".join(f" --set {s}" for s in sets)
            )
            path = os.path.join(ROOT, "results", "compile", f"{name}-{args.target}.json")
            results.write_summary(
                path,
                res,
                command=command,
                seconds=time.perf_counter() - t0,
                loadavg={"start": load0, "end": list(os.getloadavg())},
            )
            print(f"wrote {os.path.relpath(path, ROOT)}")
    keys = set(used)
    n_verified = len(keys & verified & set(cached))  # compiled afresh and equal to the cache
    n_cached = len(keys & set(cached)) - n_verified
    print(
        f"\n{len(keys) - n_cached} programs compiled ({n_verified} of them checked against the cache), {n_cached} "
        f"found in {os.path.relpath(cache, ROOT)} (the same lowered text, target, devices and "
        f"{C.compiler_versions()}); {time.perf_counter() - t_all:.0f} s"
    )
    if args.update_cache and cache != "none":
        # a whole check run keeps what it used; --only adds its programs to what the cache held
        C.save_fit_cache(cache, seen, used + (list(cached) if args.only else []))
        print(f"wrote {os.path.relpath(cache, ROOT)} ({len(set(used))} programs)")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
