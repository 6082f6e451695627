"""TOFU unlearning benchmark: data, unlearning methods (GA, GradDiff, NPO, IDK, each +/- GU),
metrics (probability, truth ratio, ROUGE-L, forget quality, model utility) and the study."""

from .study import TofuConfig, format_table, run_study, save, tiny_config

__all__ = ["TofuConfig", "tiny_config", "run_study", "format_table", "save"]
