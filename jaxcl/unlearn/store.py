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


def fingerprint(key: dict) -> str:
    """A short stable hash of a JSON-able dict."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
        path = self._method_path(name)
        if self.fresh or not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            warnings.warn(f"cached result {path} is unreadable ({e}); running {name} again", stacklevel=2)
            return None

    def save_method(self, name: str, result: dict) -> None:
        os.makedirs(self.methods_dir, exist_ok=True)
        path = self._method_path(name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, path)  # atomic: a kill leaves the old file or none, never half a file
