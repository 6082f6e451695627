"""The README's compile tables, and the tables in the config headers, from results/compile/*.json
(scripts/compile_check.py --record): the numbers are the files', the doc test checks them.

    python scripts/compile_tables.py

A config header (``experiments/*.py``) holds its check's table after a marker line
``<!-- results: results/compile/<check>-tpu-v5e-8.json cols=... -->``; the table below such a
marker is rewritten from the file.
"""

import glob
import json
import math
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLES = {
    "split-cifar100-resnet18": "Main job at its accelerator size (Split CIFAR-100, ResNet-18 width 64, 64 seeds, ER; `--mesh auto`: seeds over 8 chips)",
    "tofu-1b-replicated": "TOFU, 1B Llama, NPO, parameters replicated (`--mesh seeds=1,data=8`): refused by the compiler, out of HBM",
    "tofu-1b-sharded": "TOFU, 1B Llama, NPO, FSDP over 8 chips (`--mesh seeds=1,data=1,model=8`; every layer rematerialised, `model.remat=true`)",
    "tofu-1b-gu-sharded": "TOFU, 1B Llama, GU-NPO with rank 4 (the 1B config's), FSDP over 8 chips (`--mesh seeds=1,data=1,model=8`, `model.remat=true`): GU's history of retain gradients is sharded as its parameters are",
    "tofu-1b-gu-rank8-sharded": "The same with GU's default rank 8 (`--set gu-npo.rank=8`): one step fits, the 125-step phase does not (its loop's temporaries are over three times the step's; not solved)",
    "tofu-1b-gu-rank8-lora8-sharded": "The same on LoRA adapters (`--set model.lora.rank=8`: rank 8, alpha 8 on the Llama's `wq` and `wv`, the 1B base frozen; every phase trains adapters and GU's history holds adapter gradients; `python scripts/compile_check.py --only tofu-1b-gu-rank8-lora8-sharded`): the 125-step GU-NPO phase that needed 135 % of a chip above fits in a quarter of one, and the fine-tuning phases need 70 % of their full-weight memory",
    "unlearn-class-cifar10-resnet18": "unlearn-class at its accelerator size (CIFAR-10 shapes, ResNet-18 width 64, bf16, batch 256, 8 seeds, GA; `--mesh auto`: a seed per chip)",
    "lm-cpt-smollm2-135m": "lm-cpt, SmolLM2-135M, 16 x 256 tokens a step, 8 seeds, ER row (`--mesh auto`: a seed per chip)",
    "lm-facts-smollm2-135m": "lm-facts, SmolLM2-135M, 32 x 128 tokens a step, 8 seeds (`--mesh auto`: a seed per chip)",
    "sort-smollm2-135m": "sort, SmolLM2-135M, natural prompts, 256-token excerpts, batch 16, 8 seeds (`--mesh auto`: a seed per chip)",
    "lm-junk-135m-scratch": "lm-junk, a scratch Llama of SmolLM2-135M's shape over bytes, 128-byte windows, junk batch 8, 5 junk ratios x 2 seeds (`--mesh seeds=2,data=2,model=2`: a seed's five models on four chips, their states sharded over two)",
    "restor-135m-scratch": "restor, a scratch Llama of SmolLM2-135M's shape, 32 x 128 tokens a step, 8 seeds, NPO (`--mesh auto`: a seed per chip)",
    "rft-continual-smollm2-135m": "rft-continual, SmolLM2-135M-Instruct, a 200-step base SFT (zero-shot it earns no reward), then 16 prompts x 8 rollouts a GRPO iteration, 4 seeds, sft and rft (`--mesh seeds=4,data=2`: a seed on two chips)",
    "mm-cit-vlm-135m-fashion": "mm-cit, a VLM with SmolLM2-135M's decoder shape (from scratch, byte tokens, bf16) and a 6-layer ViT encoder, Fashion-MNIST image-text tasks, batch 16, 2000 steps a task, 8 seeds, ER (`--mesh auto`: a seed per chip)",
}


def table(path: str, indent: str = "") -> list[str]:
    """The marker and the table of one results/compile file (``path`` relative to the root)."""
    s = json.load(open(os.path.join(ROOT, path)))
    rows = s["rows"]
    refused = all("refused" in r["info"]["analysis"] for r in rows.values())
    cols = ["total_mib", "hbm_frac"] + ([] if refused else ["gflop", "roofline_ms"])
    head = ["program", "MiB per chip", "% of its 16 GiB"] + (
        [] if refused else ["GFLOP per call", "roofline bound (ms)"]
    )
    out = [f"<!-- results: {path} cols={','.join(cols)} -->"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for prog, r in rows.items():
        c = r["columns"]
        cells = [f"{c['total_mib']['mean']:.1f}", f"{100 * c['hbm_frac']['mean']:.1f}"]
        if not refused:
            g, ms = c["gflop"]["mean"], c["roofline_ms"]["mean"]
            if "refused" in r["info"]["analysis"]:
                cells += ["refused: out of HBM", "-"]
            else:  # no FLOPs: a program of no arithmetic (ER's task end returns its state)
                cells += [f"{g:.1f}" if math.isfinite(g) else "-", f"{ms:.2f}" if math.isfinite(ms) else "-"]
        out.append(f"| {prog} | " + " | ".join(cells) + " |")
    return [indent + line for line in out]


out = []
for name, title in TITLES.items():
    path = f"results/compile/{name}-tpu-v5e-8.json"
    if not os.path.exists(os.path.join(ROOT, path)):
        continue
    out += [f"{title}:", "", *table(path), ""]
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

# the config headers: the table after each results/compile marker, rewritten
MARKER = re.compile(r"^(\s*)<!-- results: (results/compile/[\w.-]+\.json)[^>]*-->\s*$")
for cfg in sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py"))):
    lines, new, i, changed = open(cfg).read().split("\n"), [], 0, False
    while i < len(lines):
        m = MARKER.match(lines[i])
        if not m or not os.path.exists(os.path.join(ROOT, m.group(2))):
            new.append(lines[i])
            i += 1
            continue
        new += table(m.group(2), m.group(1))
        i += 1
        while i < len(lines) and lines[i].strip().startswith("|"):
            i += 1
        changed = True
    if changed:
        open(cfg, "w").write("\n".join(new))
        print(f"rewrote the compile tables of {os.path.relpath(cfg, ROOT)}")
