"""The README's compile tables from results/compile/*.json (scripts/compile_check.py --record):
the numbers are the files', the doc test checks them.

    python scripts/compile_tables.py
"""

import json
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLES = {
    "split-cifar100-resnet18": "Main job at its accelerator size (Split CIFAR-100, ResNet-18 width 64, 64 seeds, ER; `--mesh auto`: seeds over 8 chips)",
    "tofu-1b-replicated": "TOFU, 1B Llama, NPO, parameters replicated (`--mesh seeds=1,data=8`): refused by the compiler, out of HBM",
    "tofu-1b-sharded": "TOFU, 1B Llama, NPO, FSDP over 8 chips (`--mesh seeds=1,data=1,model=8`; every layer rematerialised, `model.remat=true`)",
    "tofu-1b-gu-sharded": "TOFU, 1B Llama, GU-NPO with rank 4 (the 1B config's), FSDP over 8 chips (`--mesh seeds=1,data=1,model=8`, `model.remat=true`): GU's history of retain gradients is sharded as its parameters are",
    "tofu-1b-gu-rank8-sharded": "The same with GU's default rank 8 (`--set gu-npo.rank=8`): one step fits, the 125-step phase does not (its loop's temporaries are over three times the step's; not solved)",
}
out = []
for name, title in TITLES.items():
    path = f"results/compile/{name}-tpu-v5e-8.json"
    if not os.path.exists(os.path.join(ROOT, path)):
        continue
    s = json.load(open(os.path.join(ROOT, path)))
    rows = s["rows"]
    refused = all(not math.isfinite(r["columns"]["gflop"]["mean"]) for r in rows.values())
    cols = ["total_mib", "hbm_frac"] + ([] if refused else ["gflop", "roofline_ms"])
    head = ["program", "MiB per chip", "% of its 16 GiB"] + (
        [] if refused else ["GFLOP per call", "roofline bound (ms)"]
    )
    out.append(f"{title}:")
    out.append("")
    out.append(f"<!-- results: {path} cols={','.join(cols)} -->")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for prog, r in rows.items():
        c = r["columns"]
        cells = [f"{c['total_mib']['mean']:.1f}", f"{100 * c['hbm_frac']['mean']:.1f}"]
        if not refused:
            g, r = c["gflop"]["mean"], c["roofline_ms"]["mean"]
            ok = math.isfinite(g)
            cells += [f"{g:.1f}" if ok else "refused: out of HBM", f"{r:.2f}" if ok else "-"]
        out.append(f"| {prog} | " + " | ".join(cells) + " |")
    out.append("")
text = "\n".join(out).rstrip()
p = os.path.join(ROOT, "README.md")
s = open(p).read()
start, end = "<!-- compile tables: scripts/compile_check.py --record -->", "<!-- end of compile tables -->"
block = f"{start}\n{text}\n{end}"
if "COMPILE_TABLES" in s:
    s = s.replace("COMPILE_TABLES", block)
else:
    i, j = s.index(start), s.index(end) + len(end)
    s = s[:i] + block + s[j:]
open(p, "w").write(s)
print(text)
