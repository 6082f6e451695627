"""Execute notebooks' code cells (all but those tagged ``install``) in one process, each notebook in
its own folder and namespace; prints one JSON line per notebook. Run with forced host devices."""

import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")


def run(path: str, workdir: str) -> dict:
    nb = json.load(open(path))
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    ns: dict = {"__name__": "__main__"}
    t0, n = time.perf_counter(), 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "install" in cell.get("metadata", {}).get("tags", []):
            continue
        exec(compile("".join(cell["source"]), f"{os.path.basename(path)}[cell {n}]", "exec"), ns)
        n += 1
    res = ns.get("res") or ns.get("results") or {}
    return {
        "notebook": os.path.basename(path),
        "cells": n,
        "seconds": time.perf_counter() - t0,
        "rows": list(res.get("rows", {})),
        "plots": res.get("plots", []),
        "cwd": workdir,
        "mesh": None if ns.get("mesh") is None else dict(ns["mesh"].shape),
        "losses_shape": list(ns["losses"].shape) if "losses" in ns else None,
    }


if __name__ == "__main__":
    out_root = sys.argv[1]
    for p in sys.argv[2:]:
        name = os.path.splitext(os.path.basename(p))[0]
        print(json.dumps(run(os.path.abspath(p), os.path.join(out_root, name))), flush=True)
