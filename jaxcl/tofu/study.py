"""The TOFU study: fine-tune, unlearn with every method (with and without GU), evaluate.

1. `target`: fine-tune on forget + retain (the full set for the chosen split).
2. `retain`: fine-tune on the retain set only (the reference for forget quality).
3. For each method in GA / GradDiff / NPO / IDK, with and without GU: unlearn from `target`.
4. Evaluate every model on forget / retain / real authors / world facts; forget quality against
   the retain model's forget-set truth ratios; model utility.

Each training phase is one jitted `lax.scan` over steps; all unlearning runs share one compiled
program (the method is data, see `jaxcl.tofu.unlearn`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcl.models import llama
from jaxcl.tofu import data as tdata
from jaxcl.tofu import metrics as tmetrics
from jaxcl.tofu import unlearn as tun


@dataclasses.dataclass(frozen=True)
class TofuConfig:
    model: str = "smollm2-135m"  # or "tiny" (random init, byte tokenizer)
    split: str = "forget01"
    methods: tuple[str, ...] = ("ga", "graddiff", "npo", "idk")
    gu: tuple[bool, ...] = (False, True)
    compute_dtype: str = "bfloat16"
    max_len: int = 192  # tokens per QA sequence (SmolLM2 BPE; longest TOFU QA ~160)
    ft_epochs: float = 5.0  # TOFU: 5 epochs, lr 1e-5, batch 32
    ft_batch: int = 32
    ft_lr: float = 1e-5
    unlearn_epochs: float = 10.0  # open-unlearning: 10 epochs, lr 1e-5
    unlearn_batch: int = 32
    unlearn_lr: float = 1e-5
    npo_beta: float = 0.1
    gu_rank: int = 8
    n_forget: int | None = None  # subsets (tiny runs); None = whole split
    n_retain: int | None = None
    n_eval: int | None = None  # rows per evaluation set
    eval_batch: int = 64
    max_new_tokens: int = 128
    prompt_len: int = 96
    seed: int = 0

    def replace(self, **kw) -> TofuConfig:
        return dataclasses.replace(self, **kw)


def tiny_config(**kw) -> TofuConfig:
    """Seconds on a CPU: 2-layer random model, byte tokenizer, 10 forget / 30 retain questions."""
    base = dict(
        model="tiny",
        compute_dtype="float32",
        max_len=192,
        ft_epochs=12,
        ft_batch=8,
        ft_lr=3e-3,
        unlearn_epochs=6,
        unlearn_batch=5,
        unlearn_lr=1e-3,
        gu_rank=2,
        n_forget=10,
        n_retain=30,
        n_eval=8,
        eval_batch=8,
        max_new_tokens=24,
        prompt_len=128,
    )
    return TofuConfig(**{**base, **kw})


def load_model(tc: TofuConfig):
    """(cfg, params, tokenizer): SmolLM2-135M-Instruct from GGUF, or a tiny random model."""
    from jaxcl import hf

    if tc.model == "tiny":
        tok = hf.ByteTokenizer()
        cfg = llama.tiny(vocab_size=tok.vocab_size, compute_dtype=tc.compute_dtype)
        return cfg, llama.init_params(cfg, seed=tc.seed), tok
    if tc.model == "smollm2-135m":
        return hf.load_gguf(compute_dtype=tc.compute_dtype)
    if os.path.exists(tc.model) and tc.model.endswith(".gguf"):
        return hf.load_gguf(tc.model, compute_dtype=tc.compute_dtype)
    return hf.load_hf(tc.model, compute_dtype=tc.compute_dtype)


def _epoch_indices(n: int, batch: int, epochs: float, rng) -> np.ndarray:
    steps = max(1, int(round(epochs * n / batch)))
    order = np.concatenate([rng.permutation(n) for _ in range(int(np.ceil(steps * batch / n)) + 1)])
    return order[: steps * batch].reshape(steps, batch).astype(np.int32)


def load_data(tc: TofuConfig, root: str | None = None) -> dict:
    n_f = tdata.FORGET_SIZES[tc.split]
    forget = tdata.load_split(tc.split, root)[: tc.n_forget or n_f]
    retain = tdata.load_split(tdata.retain_for(tc.split), root)[: tc.n_retain]
    sub = lambda rows: rows[: tc.n_eval]
    evals = {
        "forget": sub(tdata.load_split(tc.split + "_perturbed", root))[: len(forget)],
        "retain": sub(tdata.load_split("retain_perturbed", root)),
        "real_authors": sub(tdata.load_split("real_authors_perturbed", root)),
        "world_facts": sub(tdata.load_split("world_facts_perturbed", root)),
    }
    return dict(forget=forget, retain=retain, idk=tdata.idk_answers(root), evals=evals)


def _enc(tok, rows, max_len, answers=None):
    t, m = tdata.encode_qa(
        tok, [r["question"] for r in rows], answers or [r["answer"] for r in rows], max_len
    )
    return {"tokens": jnp.asarray(t), "mask": jnp.asarray(m)}


def run_study(tc: TofuConfig, *, root: str | None = None, log=print) -> dict:
    t0 = time.time()
    cfg, params0, tok = load_model(tc)
    d = load_data(tc, root)
    rng = np.random.default_rng(tc.seed)
    key = jax.random.key(tc.seed)
    eval_kw = dict(
        max_len=tc.max_len,
        batch_size=tc.eval_batch,
        max_new_tokens=tc.max_new_tokens,
        prompt_len=tc.prompt_len,
    )
    log(
        f"[tofu] model {tc.model} ({llama.param_count(params0) / 1e6:.1f}M params), split "
        f"{tc.split}: {len(d['forget'])} forget / {len(d['retain'])} retain QA"
    )

    # 1-2. fine-tune target (forget + retain) and retain-only model: one compiled program
    full = _enc(tok, d["forget"] + d["retain"], tc.max_len)
    ret = _enc(tok, d["retain"], tc.max_len)
    n_ret = len(d["retain"])
    ret_padded = jax.tree.map(
        lambda a: jnp.concatenate(  # same shapes as `full`: no recompile
            [a, jnp.zeros((len(full["tokens"]) - n_ret, *a.shape[1:]), a.dtype)]
        ),
        ret,
    )
    steps = max(1, int(round(tc.ft_epochs * len(d["forget"] + d["retain"]) / tc.ft_batch)))
    ft_run = tun.make_finetune_run(cfg, tun.finetune_tx(tc.ft_lr, steps))
    idx_full = _epoch_indices(len(full["tokens"]), tc.ft_batch, tc.ft_epochs, rng)
    idx_ret = rng.integers(0, n_ret, idx_full.shape).astype(np.int32)  # same number of steps
    target, m_t = ft_run(params0, full, idx_full, jax.random.fold_in(key, 1))
    retain_model, m_r = ft_run(params0, ret_padded, idx_ret, jax.random.fold_in(key, 2))
    log(
        f"[tofu] fine-tuned {steps} steps: target loss {float(m_t['loss'][0]):.3f} -> "
        f"{float(m_t['loss'][-1]):.3f}, retain model -> {float(m_r['loss'][-1]):.3f} "
        f"({time.time() - t0:.1f}s)"
    )

    results = {}
    evaluate = lambda p: tmetrics.evaluate(cfg, p, tok, d["evals"], **eval_kw)
    ref = evaluate(retain_model)
    ref_tr = ref["forget"]["truth_ratios"]

    def record(name, res):
        res["forget_quality"] = tmetrics.forget_quality(res["forget"]["truth_ratios"], ref_tr)
        results[name] = res

    record("retain (reference)", ref)
    record("target (before unlearning)", evaluate(target))

    # 3. unlearning: every method and GU setting through one compiled program
    forget = _enc(tok, d["forget"], tc.max_len)
    s, n = jax.jit(lambda p, t, m: llama.masked_nll(cfg, p, t, m))(target, forget["tokens"], forget["mask"])
    forget["ref_logp"] = -s
    idk_answers = [d["idk"][i % len(d["idk"])] for i in rng.permutation(len(d["forget"]))]
    forget_idk = _enc(tok, d["forget"], tc.max_len, answers=idk_answers)
    forget_idk["ref_logp"] = jnp.zeros_like(forget["ref_logp"])
    u_steps = max(1, int(round(tc.unlearn_epochs * len(d["forget"]) / tc.unlearn_batch)))
    un_run = tun.make_unlearn_run(cfg, tun.unlearn_tx(tc.unlearn_lr, rank=tc.gu_rank), tc.npo_beta)
    f_idx = _epoch_indices(len(d["forget"]), tc.unlearn_batch, tc.unlearn_epochs, rng)[:u_steps]
    r_idx = rng.integers(0, len(ret["tokens"]), f_idx.shape).astype(np.int32)
    for method in tc.methods:
        for use_gu in tc.gu:
            name = method + ("+gu" if use_gu else "")
            t1 = time.time()
            data = {"forget": forget_idk if method == "idk" else forget, "retain": ret}
            p, m = un_run(target, data, f_idx, r_idx, tun.hparams(method, use_gu), jax.random.fold_in(key, 3))
            record(name, evaluate(p))
            log(
                f"[tofu] {name:12s} {u_steps} steps, forget NLL {float(m['forget_nll'][0]):.3f} -> "
                f"{float(m['forget_nll'][-1]):.3f}  ({time.time() - t1:.1f}s)"
            )
    log(f"[tofu] total {time.time() - t0:.1f}s")
    return results


COLUMNS = (
    ("forget_quality", None, "FQ"),
    ("model_utility", None, "MU"),
    ("forget", "prob", "F.prob"),
    ("forget", "rouge", "F.rouge"),
    ("forget", "truth_ratio", "F.TR"),
    ("retain", "prob", "R.prob"),
    ("retain", "rouge", "R.rouge"),
    ("real_authors", "rouge", "RA.rouge"),
    ("world_facts", "rouge", "WF.rouge"),
)


def summary(results: dict) -> dict[str, dict[str, float]]:
    return {
        name: {label: float(res[a] if b is None else res[a][b]) for a, b, label in COLUMNS}
        for name, res in results.items()
    }


def format_table(results: dict) -> str:
    rows = summary(results)
    w = max(len(n) for n in rows) + 2
    head = "method".ljust(w) + "".join(f"{c[2]:>10s}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, vals in rows.items():
        lines.append(
            name.ljust(w)
            + "".join(f"{vals[c[2]]:>10.2e}" if c[2] == "FQ" else f"{vals[c[2]]:>10.3f}" for c in COLUMNS)
        )
    return "\n".join(lines)


def plot(results: dict, path: str, title: str = "TOFU") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(results)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, v in rows.items():
        marker = "*" if name.startswith(("retain", "target")) else ("o" if "+gu" in name else "x")
        ax.scatter(v["MU"], max(v["FQ"], 1e-30), marker=marker, s=60)
        ax.annotate(
            name, (v["MU"], max(v["FQ"], 1e-30)), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(results: dict, out_dir: str, title: str = "TOFU") -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    clean = {
        n: {
            k: (
                v
                if not isinstance(v, dict)
                else {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
            )
            for k, v in r.items()
        }
        for n, r in results.items()
    }
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "table": os.path.join(out_dir, "table.txt"),
        "plot": os.path.join(out_dir, "fq_vs_mu.png"),
    }
    with open(paths["json"], "w") as f:
        json.dump(clean, f, indent=1)
    with open(paths["table"], "w") as f:
        f.write(format_table(results) + "\n")
    plot(results, paths["plot"], title)
    return paths
