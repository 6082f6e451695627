"""Retention of injected items: their probes scored inside the compiled loop, and per condition
the gain, its peak, what is retained and a power-law fit of the forgetting (host).

Papers: Chang et al., "How Do Large Language Models Acquire Factual Knowledge During
Pretraining?" (2024: the log-probability of a fact jumps at its exposure and decays after it, as
a power law of the steps since; retention = end / peak), "Recognition, recall, and retention of
few-shot memories in large language models" (2025: recognition AUC and cued recall) and "The
Memorization Problem" (2025). For a condition with baseline evaluation ``b`` (before its first
exposure) and ``a`` (the first evaluation after its last exposure, at step ``t_last``):

    gain(i) = r(i) - r(b),   r = log p(true value) - log p(never-seen value)  (facts, numeric)
                              r = -NLL(seen) + NLL(novel)                       (few-shot)
    retained = gain(end) / max_{i >= a} gain(i)
    gain(i) ~ c * t_i ** -alpha,   t_i = steps since t_last, from the peak on,

``alpha`` and ``R^2`` by least squares in log-log space (:func:`jaxcl.probes.power_law_fit`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from . import probes
from .data import text
from .data.injection import Condition


def probe_scores(model, params, data: dict, cue_len: int, auc_rows: list) -> dict:
    """Every probe set's scores (per item) and the domains' held-out NLL, inside the loop:
    ``data["probes"]["spans"]`` (facts, numeric: teacher-forced log-probability per target token
    and exact match), ``data["probes"]["fewshot"]`` (per-sequence NLL, greedy recall from a cue of
    ``cue_len`` tokens, the recognition AUC of every group of ``auc_rows``,
    :func:`jaxcl.data.injection.auc_groups`) and ``data["stream"]`` (each domain's NLL)."""
    apply, out = model.apply, {}
    for key, p in data["probes"].items():
        if key == "fewshot":
            toks = p["tokens"]
            nll = probes.sequence_nll(apply, params, toks)
            rec = probes.greedy_recall(model.cfg, params, toks[:, :cue_len], toks[:, cue_len:])
            out["fewshot_nll"] = nll
            out["fewshot_recall_exact"], out["fewshot_recall_tok"] = rec["exact"], rec["tok_acc"]
            if auc_rows:  # recognition: each exposure group's sequences vs the novel ones
                out["fewshot_auc"] = jnp.stack([probes.auc(-nll[rows], labels) for rows, labels in auc_rows])
        else:
            sc = probes.span_scores(apply, params, p)
            out["spans_logp"], out["spans_exact"] = sc["logp_tok"], sc["exact"]
    out["domain_nll"] = text.domain_losses(model.nll, params, data["stream"])
    return out


def event_indices(cfg: dict, c: Condition, conds: list[Condition]) -> tuple[int, int, int]:
    """(baseline eval index: before the first exposure, after-index: the first evaluation after
    the last exposure, last exposure step). Never-injected conditions use the injected ones of
    their kind (the control at the same times)."""
    E = cfg["train"]["eval_every"]
    steps = [s for item in c.steps for s in item]
    if not steps:
        same = [s for o in conds if o.kind == c.kind for item in o.steps for s in item]
        steps = same or [cfg["inject"]["last_step"]]
    first, last = min(steps), max(steps)
    # evaluation i follows step (i + 1) * E - 1: the last one before step `first`, the first after `last`
    return first // E - 1, last // E, last


def control_of(c: Condition, conds: list[Condition]) -> Condition | None:
    """The never-injected condition an injected one is compared with (same kind and probes)."""
    if not c.rows:
        return None
    for o in conds:
        if not o.rows and o.kind == c.kind and set(o.probe_rows) == set(c.probe_rows):
            return o
    return None


def condition_metrics(cfg: dict, c: Condition, conds, traces: dict) -> tuple[dict, dict]:
    """Per-seed metrics of one condition (one row per probe kind for facts). The gain of a fact
    or numeric / entity probe is paired: its target's log-probability per token minus that of a
    never-seen value in the same context (:func:`jaxcl.probes.counterfactual`; what the stream
    and the templates teach lifts both), relative to that difference before the first exposure.
    A few-shot condition's gain is its sequences' log-likelihood per token minus the novel
    sequences' (the novel row: its own change)."""
    E = cfg["train"]["eval_every"]
    b, a, last = event_indices(cfg, c, conds)
    n_eval = next(iter(traces.values())).shape[1]
    t_all = (np.arange(n_eval) + 1) * E - last  # steps since the last exposure
    ctrl = control_of(c, conds)
    out = {}

    def fit(curves_SxI, prefix=""):
        """Power law of each seed's curve from its peak after the last exposure on (Adam's
        momentum keeps applying an exposure's gradient for ~10 steps, so the peak can come later
        than the first evaluation); ``t``: steps since the last exposure."""
        fits = []
        for g in curves_SxI:
            p = a + int(np.nanargmax(g[a:])) if np.isfinite(g[a:]).any() else a
            fits.append(probes.power_law_fit(t_all[p:], g[p:]))
        return {f"alpha{prefix}": [f["alpha"] for f in fits], f"r2{prefix}": [f["r2"] for f in fits]}

    def gains(curve_SxI, ctrl_SxI):
        rel = curve_SxI if ctrl_SxI is None else curve_SxI - ctrl_SxI
        gain = rel - rel[:, b : b + 1]
        peak = np.nanmax(gain[:, a:], axis=1)
        per = {
            "gain_after": gain[:, a],
            "gain_peak": peak,
            "gain_final": gain[:, -1],
            "retained": gain[:, -1] / np.where(np.abs(peak) > 1e-9, peak, np.nan),
            **fit(gain),
        }
        return per, gain

    if c.kind in ("facts", "numeric"):
        for key, idx in c.probe_rows.items():
            lp = traces[f"{key}_logp"][:, :, idx].mean(-1)
            ex = traces[f"{key}_exact"][:, :, idx].mean(-1)
            if f"{key}_cf_logp" in traces:  # paired: the true value vs a never-seen one, same context
                per, gain = gains(lp - traces[f"{key}_cf_logp"][:, :, idx].mean(-1), None)
            else:
                lp_c = None if ctrl is None else traces[f"{key}_logp"][:, :, ctrl.probe_rows[key]].mean(-1)
                per, gain = gains(lp, lp_c)
            per.update(exact_before=ex[:, b], exact_after=ex[:, a], exact_final=ex[:, -1])
            label = key.split("_", 1)[1] if c.kind == "facts" else ""
            out[f"{c.name} / {label}" if label else c.name] = (per, {"gain": gain, "exact": ex, "logp": lp})
    else:
        tr = {k: traces[f"fewshot_{k}"] for k in ("nll", "recall_tok", "recall_exact")}
        mean = lambda k, cond: tr[k][:, :, cond.probe_rows["fewshot"]].mean(-1)  # noqa: E731
        tok, exact, nll = mean("recall_tok", c), mean("recall_exact", c), mean("nll", c)
        per, gain = gains(-nll, None if ctrl is None else -mean("nll", ctrl))
        per.update(
            recall_exact_before=exact[:, b],
            recall_exact_after=exact[:, a],
            recall_exact_final=exact[:, -1],
            recall_tok_after=tok[:, a],
            recall_tok_final=tok[:, -1],
        )
        curves = {"gain": gain, "recall_tok": tok, "recall_exact": exact}
        if ctrl is not None:  # recall retention: token accuracy above the novel sequences'
            curves["recall_tok_novel"] = tok_novel = mean("recall_tok", ctrl)
            per.update(fit(tok - tok_novel, "_recall"))
        if c.group >= 0:
            auc = traces["fewshot_auc"][:, :, c.group]
            per.update(auc_before=auc[:, b], auc_after=auc[:, a], auc_final=auc[:, -1])
            curves["auc"] = auc
        out[c.name] = (per, curves)
    return out, {"baseline_index": b, "after_index": a, "last_exposure": last}


def most_exposed(conds: list[Condition]) -> list[Condition]:
    """The conditions a sweep reports: the most-exposed injected condition of each kind."""
    out = []
    for kind in ("facts", "fewshot", "numeric"):
        injected = [c for c in conds if c.kind == kind and c.rows]
        if injected:
            out.append(max(injected, key=lambda c: c.exposures))
    return out


def headline(cfg: dict, conds: list[Condition], traces: dict) -> dict:
    """The metrics of the most-exposed condition of each kind (:func:`most_exposed`; a fact's:
    its memorisation probe) as ``"<condition>: <metric>"``, and the first one's also as
    ``<metric>`` (a sweep's cell row)."""
    per = {}
    for cond in most_exposed(conds):
        got, _ = condition_metrics(cfg, cond, conds, traces)
        name, (p, _) = next(iter(got.items()))
        per.update({f"{k}": v for k, v in p.items()} if not per else {})
        per.update({f"{name}: {k}": v for k, v in p.items()})
    return per
