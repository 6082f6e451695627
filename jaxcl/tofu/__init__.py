"""TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024): the data
(:mod:`.data`, shipped in ``jaxcl/datasets/tofu``), the problem of a config (:mod:`.problem`: the
model, the encoded forget / retain / refusal rows and the evaluation sets), the metrics
(:mod:`.metrics`: probability, truth ratio, ROUGE-L, forget quality, model utility) and the
evaluation of a run's models against the reference (:mod:`.eval`). The study itself is the
runner :mod:`jaxcl.studies.tofu` (``jaxcl run tofu``); its methods are the registry's
(:mod:`jaxcl.methods`)."""
