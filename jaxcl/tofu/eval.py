"""TOFU's evaluation of a language model's parameters against a reference (Maini et al., "TOFU:
A Task of Fictitious Unlearning for LLMs", 2024; metric definitions as open-unlearning).

An :class:`Evaluator` holds the evaluation sets (rows with paraphrased / perturbed answers) and
the settings of :func:`jaxcl.tofu.metrics.evaluate`; it scores every model of a run on the four
sets of :data:`EVAL_SETS` and adds forget quality,
``FQ = p-value of KS(TR_model(D_f), TR_reference(D_f))``, against the forget-set truth ratios of
the reference (the retain model, "never saw D_f"), which :meth:`Evaluator.reference` scores
first. :func:`scores` flattens one model's result to the per-seed values of a results row.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import metrics as tmetrics

EVAL_SETS = ("forget", "retain", "real_authors", "world_facts")


@dataclasses.dataclass
class Evaluator:
    """TOFU's metrics of parameters of ``model_cfg`` (a Llama config) on ``sets``
    (``{set name: rows}``); forget quality against the reference's truth ratios ``ref_tr``."""

    model_cfg: object
    tok: object
    sets: dict
    max_len: int
    batch_size: int
    max_new_tokens: int
    prompt_len: int
    ref_tr: np.ndarray | None = None  # (n_forget,) the reference's forget-set truth ratios
    idk: tuple = ()  # TOFU's refusal sentences, for the refusal rates (tmetrics.is_refusal)

    @classmethod
    def from_config(cls, cfg: dict, model_cfg, tok, sets: dict, idk=()) -> Evaluator:
        """The evaluator of a TOFU config: its ``eval`` section and ``data.max_len``; ``idk``
        the refusal sentences the refusal rates also match."""
        e = cfg["eval"]
        return cls(
            model_cfg,
            tok,
            sets,
            max_len=cfg["data"]["max_len"],
            batch_size=e["batch_size"],
            max_new_tokens=e["max_new_tokens"],
            prompt_len=e["prompt_len"],
            idk=tuple(idk),
        )

    def reference(self, params) -> dict:
        """The reference model's metrics; keeps its forget-set truth ratios for forget quality
        (its own forget quality is 1 by definition: KS of a sample against itself)."""
        res = self.metrics(params)
        self.ref_tr = res["forget"]["truth_ratios"]
        res["forget_quality"] = tmetrics.forget_quality(self.ref_tr, self.ref_tr)
        return res

    def evaluate(self, params) -> dict:
        """TOFU's metrics of ``params``; forget quality against the reference's truth ratios."""
        if self.ref_tr is None:
            raise RuntimeError("evaluate the reference model first (Evaluator.reference)")
        res = self.metrics(params)
        res["forget_quality"] = tmetrics.forget_quality(res["forget"]["truth_ratios"], self.ref_tr)
        return res

    def metrics(self, params) -> dict:
        """``{set: {prob, truth_ratio, rouge, truth_ratios, generations, refusal},
        model_utility, sarr}`` (:func:`jaxcl.tofu.metrics.evaluate`), without forget quality:
        ``refusal`` the fraction of a set's greedy answers that refuse, ``sarr`` that fraction
        over the harmless sets' answers pooled (retain, real authors, world facts:
        :data:`jaxcl.tofu.metrics.UTILITY_SETS`; SafeEraser's safe answer refusal rate)."""
        res = tmetrics.evaluate(
            self.model_cfg,
            params,
            self.tok,
            self.sets,
            max_len=self.max_len,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            prompt_len=self.prompt_len,
        )
        for name in self.sets:
            res[name]["refusal"] = tmetrics.refusal_rate(res[name]["generations"], self.idk)
        harmless = [
            g for name in tmetrics.UTILITY_SETS if name in self.sets for g in res[name]["generations"]
        ]
        res["sarr"] = tmetrics.refusal_rate(harmless, self.idk)
        return res


def scores(res: dict) -> dict:
    """One model's per-seed values: FQ, MU, (prob, rouge, truth ratio) of every set, the forget
    set's refusal rate and SARR."""
    out = {"forget_quality": res["forget_quality"], "model_utility": res["model_utility"]}
    out.update(forget_refusal=res["forget"]["refusal"], sarr=res["sarr"])
    out.update({f"{s}_{m}": res[s][m] for s in EVAL_SETS for m in ("prob", "rouge", "truth_ratio")})
    return out
