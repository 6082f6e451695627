"""TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024): the data
(:mod:`.data`, shipped in ``jaxcl/datasets/tofu``) and the metrics (:mod:`.metrics`: probability,
truth ratio, ROUGE-L, forget quality, model utility). The study itself is the runner
:mod:`jaxcl.studies.tofu` (``jaxcl run tofu``); its methods are the registry's
(:mod:`jaxcl.methods`)."""
