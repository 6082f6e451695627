"""Execute notebooks' code cells (all but those tagged ``install``) in one process, each notebook in
its own folder and namespace; prints one JSON line per notebook. Run with forced host devices.

With ``JAXCL_SOURCE`` in the environment the install cells run too, with their ``JAXCL_SOURCE``
field set to it (a wheel, a git URL or a checkout), as a user fills it in on Colab."""

import json
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")


FIELD = 'JAXCL_SOURCE = ""\n'


def run(path: str, workdir: str) -> dict:
    nb = json.load(open(path))
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    ns: dict = {"__name__": "__main__"}
    t0, n = time.perf_counter(), 0
    source = os.environ.get("JAXCL_SOURCE")
    for cell in nb["cells"]:
        code = "".join(cell["source"])
        if "install" in cell.get("metadata", {}).get("tags", []):
            if not source:
                continue
            assert FIELD in code, f"{path}: the install cell has no {FIELD.strip()!r} line"
            code = code.replace(FIELD, f"JAXCL_SOURCE = {source!r}\n")
        elif cell["cell_type"] != "code":
            continue
        exec(compile(code, f"{os.path.basename(path)}[cell {n}]", "exec"), ns)
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
        "runtime": ns.get("RUNTIME"),
        "jaxcl": sys.modules["jaxcl"].__file__ if "jaxcl" in sys.modules else None,
    }


if __name__ == "__main__":
    out_root = sys.argv[1]
    for p in sys.argv[2:]:
        name = os.path.splitext(os.path.basename(p))[0]
        print(json.dumps(run(os.path.abspath(p), os.path.join(out_root, name))), flush=True)
