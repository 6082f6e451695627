"""What an ``unlearn-class`` run keeps on disk, so that a rerun or an interrupted run loses nothing.

Under ``<out>/cache/``:

* ``models-<key>/``: the original model and the oracle (all seeds), an orbax checkpoint
  (:class:`jaxcl.checkpoint.Checkpointer`: atomic, a corrupt one is reported and retrained).
  ``<key>`` hashes everything they depend on (model, scenario, forget class, data sizes, seeds,
  the training recipe), so runs with other options never load the wrong models and
  ``--method ssd`` after a full run reuses the same original, as the issue's protocol wants.
* ``methods-<key>/<method>.json``: each method's finished metrics, written atomically as soon as
  the method is evaluated. ``<key>`` adds the whole unlearning configuration, so a run killed
  after five methods restarts at the sixth with the same results.

``--fresh`` ignores both and overwrites them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

from ..checkpoint import Checkpointer
from ..report import write_json


def fingerprint(key: dict) -> str:
    """A short stable hash of a JSON-able dict."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_numeric_list(v: Any) -> bool:
    """A non-empty list of numbers, or of such lists (per seed, per step)."""
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(_is_number(x) or (isinstance(x, list) and _is_numeric_list(x)) for x in v)
    )


def method_entry_problems(entry: Any) -> list[str]:
    """What is missing or malformed in one cached method result (empty when it is usable).

    A result holds ``metrics`` (a dict of lists of numbers, one per seed), ``relearn_curve``
    (a list of lists of numbers) and ``timing`` (a dict with a numeric ``time_s``).
    """
    if not isinstance(entry, dict):
        return [f"expected a JSON object, got {type(entry).__name__}"]
    problems = []
    metrics = entry.get("metrics")
    if "metrics" not in entry:
        problems.append("no 'metrics'")
    elif not isinstance(metrics, dict) or not metrics:
        problems.append(f"'metrics' must be a non-empty object, got {type(metrics).__name__}")
    else:
        bad = sorted(k for k, v in metrics.items() if not _is_numeric_list(v))
        if bad:
            problems.append(f"'metrics' entries {bad} are not lists of numbers")
    if "relearn_curve" not in entry:
        problems.append("no 'relearn_curve'")
    elif not (
        _is_numeric_list(entry["relearn_curve"]) and all(isinstance(c, list) for c in entry["relearn_curve"])
    ):
        problems.append("'relearn_curve' is not a list (one per seed) of lists of numbers")
    timing = entry.get("timing")
    if "timing" not in entry:
        problems.append("no 'timing'")
    elif not isinstance(timing, dict) or not _is_number(timing.get("time_s")):
        problems.append("'timing' must be an object with a numeric 'time_s'")
    return problems


class RunStore:
    def __init__(self, out_dir: str, models_key: dict, run_key: dict, *, fresh: bool = False):
        root = os.path.join(out_dir, "cache")
        self.models_key = json.loads(json.dumps(models_key, default=str))
        self.models_dir = os.path.join(root, f"models-{fingerprint(models_key)}")
        self.methods_dir = os.path.join(root, f"methods-{fingerprint({**models_key, **run_key})}")
        self.fresh = fresh

    def load_models(self, like: Any) -> tuple[Any, dict] | None:
        """``(payload, meta)`` of the cached original/oracle, or None (none yet, or ``fresh``)."""
        if self.fresh or not os.path.isdir(self.models_dir):
            return None
        return Checkpointer(self.models_dir, self.models_key, max_to_keep=1).restore_latest(like)

    def save_models(self, payload: Any, meta: dict) -> None:
        Checkpointer(self.models_dir, self.models_key, max_to_keep=1).save(0, payload, meta)

    def _method_path(self, name: str) -> str:
        return os.path.join(self.methods_dir, f"{name}.json")

    def load_method(self, name: str) -> dict | None:
        """The cached result of method ``name``, or None: none yet, ``fresh``, or a file that is
        unreadable or not a method result (a warning names the file and what is wrong, and the
        caller runs the method again)."""
        path = self._method_path(name)
        if self.fresh or not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError) as e:
            warnings.warn(f"cached result {path} is unreadable ({e}); running {name} again", stacklevel=2)
            return None
        problems = method_entry_problems(entry)
        if problems:
            warnings.warn(
                f"cached result {path} is not a method result ({'; '.join(problems)}); running {name} again",
                stacklevel=2,
            )
            return None
        return entry

    def save_method(self, name: str, result: dict) -> None:
        os.makedirs(self.methods_dir, exist_ok=True)
        # atomic, under a unique temporary name: a kill or a concurrent run leaves the old file
        # or a whole new one, never half a file
        write_json(self._method_path(name), result)
