"""Checkpoints that survive a kill: orbax's ``CheckpointManager`` behind one small class.

A checkpoint holds everything needed to continue a run exactly: the vmapped train state (params,
optimizer and method state, replay buffer, RNG key, step, non-finite marker), the outputs so far
(accuracy rows, evaluation traces), the position in the stream (task, chunk) and the config.

* ``save`` writes atomically (orbax commits a finished checkpoint with a marker file), so a
  SIGKILL mid-save leaves the previous checkpoint as the latest good one.
* ``restore_latest`` tries checkpoints newest first; a truncated or corrupted one is reported
  (``CheckpointCorruptWarning``, naming the folder) and the previous good one is used; nothing is
  deleted.
* A checkpoint written under a different config is refused with :class:`ConfigMismatchError`
  naming the field that differs.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax


class ConfigMismatchError(ValueError):
    """The checkpoint was written by a run with another configuration."""


class CheckpointCorruptWarning(UserWarning):
    """A checkpoint could not be read and an older one was used."""


def _diff(saved: Any, current: Any, path: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(set(saved) | set(current)):
            if k not in saved or k not in current:
                return f"{path}{k}"
            d = _diff(saved[k], current[k], f"{path}{k}.")
            if d:
                return d
        return None
    return None if saved == current else path.rstrip(".")


def _lookup(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return "<absent>"
    return tree


def _to_host(tree):
    """Typed PRNG keys become their raw uint32 data (orbax stores plain arrays)."""

    def conv(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return {"__prng_key__": jax.random.key_data(a)}
        return a

    return jax.tree.map(conv, tree)


def _from_host(tree, like):
    def conv(saved, ref):
        if isinstance(ref, jax.Array) and jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(saved["__prng_key__"])
        return saved

    return jax.tree.map(conv, tree, like, is_leaf=lambda x: isinstance(x, dict) and "__prng_key__" in x)


class Checkpointer:
    """``Checkpointer(directory, config)``; ``config`` is a JSON-able dict checked on restore."""

    def __init__(self, directory: str, config: dict, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self.config = json.loads(json.dumps(config))
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, index: int, payload: Any, meta: dict) -> None:
        ocp = self._ocp
        if index in self.manager.all_steps():  # a corrupt checkpoint we fell back from: replace it
            self.manager.delete(index)
        self.manager.save(
            index,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_host(payload)),
                meta=ocp.args.JsonSave({**meta, "config": self.config}),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """Newest readable checkpoint as ``(payload, meta)``, or None when there is none."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_host(like))
        for index in reversed(self.steps()):
            try:
                meta = self.manager.restore(index, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                    "meta"
                ]
            except Exception as e:  # unreadable metadata: a corrupt checkpoint
                self._warn(index, e)
                continue
            field = _diff(meta.get("config"), self.config)
            if field:
                raise ConfigMismatchError(
                    f"the checkpoint in {self.directory}/{index} was written with a different "
                    f"configuration: field '{field}' is {_lookup(meta.get('config'), field)!r} there "
                    f"and {_lookup(self.config, field)!r} now. Resume with the same options, or "
                    f"start a new run in another --out directory."
                )
            try:
                out = self.manager.restore(
                    index, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )["state"]
            except Exception as e:
                self._warn(index, e)
                continue
            return _from_host(out, like), meta
        return None

    def _warn(self, index: int, err: Exception) -> None:
        msg = (
            f"checkpoint {self.directory}/{index} is truncated or corrupted "
            f"({type(err).__name__}: {str(err)[:200]}); falling back to the previous one"
        )
        warnings.warn(msg, CheckpointCorruptWarning, stacklevel=3)
        print("warning:", msg, flush=True)
