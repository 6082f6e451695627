"""Unlearning problems for classifiers: the forgetting problem (``common.UnlearnData``), its
scenarios, the forgetting metrics (``eval``) and the run cache (``store``). The methods are in
the one registry (:mod:`jaxcl.methods`); the study is :mod:`jaxcl.studies.unlearn_class`."""
