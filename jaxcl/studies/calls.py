"""The host side of a study whose compiled program covers ``chunks_per_call`` evaluation chunks
(:func:`jaxcl.loops.run_chunks` inside, seeds vmapped) and is called until the run is done, with
a checkpoint after every call: what the lm-memory and sort runners share.

One call's traces ``tr[k]`` (``(S, chunks_per_call, ...)``) are written into the host arrays
``traces[k]`` from column ``offset``; a checkpoint holds the train state and the traces so far, so
an interrupted run resumes at its last call and finishes with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ConfigError
from ..engine import check_finite


def check_schedule(t: dict) -> None:
    """The ``train`` section's schedule that :func:`run_calls` runs: ``steps`` a multiple of
    ``eval_every``; ``checkpoint_every`` 0 (one call) or a multiple of ``eval_every`` dividing
    ``steps``. A ConfigError naming the keys otherwise."""
    if t["steps"] % t["eval_every"]:
        raise ConfigError(
            f"train.steps={t['steps']} must be a multiple of train.eval_every={t['eval_every']}"
        )
    ce = t["checkpoint_every"]
    if ce < 0 or (ce and (ce % t["eval_every"] or t["steps"] % ce)):
        raise ConfigError(
            f"train.checkpoint_every={ce} must be 0 or a multiple of train.eval_every={t['eval_every']} "
            f"that divides train.steps={t['steps']}"
        )


def uncommitted(tree):
    """Restored arrays as fresh (uncommitted) device arrays, like the initial state: the
    compiled call is then reused, not compiled again for committed arguments."""

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.asarray(np.asarray(jax.random.key_data(x))))
        return jnp.asarray(np.asarray(x))

    return jax.tree.map(one, tree)


def run_calls(
    call,
    state,
    traces: dict,
    *,
    n_calls: int,
    chunks_per_call: int,
    steps_per_chunk: int,
    offset: int = 0,
    ckpt_dir: str | None = None,
    conf: dict | None = None,
    resume: bool = False,
    progress=None,
    t0: float | None = None,
):
    """``state, tr = call(state)`` ``n_calls`` times (after those a restored checkpoint already
    covers, with ``resume``); a checkpoint (``conf``: what the run depends on, checked on restore)
    after each call when ``ckpt_dir``. Stops with the step range when a step was non-finite.
    Returns ``(state, traces, seconds)``, seconds counted from ``t0`` plus the restored run's."""
    from ..checkpoint import Checkpointer

    t0 = time.perf_counter() if t0 is None else t0
    C, steps = chunks_per_call, chunks_per_call * steps_per_chunk
    start, elapsed, ckpt = 0, 0.0, None
    if ckpt_dir and n_calls:
        ckpt = Checkpointer(ckpt_dir, conf or {})
        if resume:
            got = ckpt.restore_latest({"state": state, "traces": traces})
            if got is not None:
                payload, meta = got
                state = uncommitted(payload["state"])
                traces = jax.tree.map(np.array, payload["traces"])
                start, elapsed = meta["call"], meta.get("seconds", 0.0)
                if progress is not None:
                    progress.update(start * steps)
    for pos in range(start, n_calls):
        state, tr = call(state)
        check_finite(state.nonfinite_step, where=f"(steps {pos * steps} to {(pos + 1) * steps})")
        cols = slice(offset + pos * C, offset + (pos + 1) * C)
        for k in traces:
            traces[k][:, cols] = np.asarray(tr[k])
        if ckpt is not None:
            ckpt.save(
                pos + 1,
                {"state": state, "traces": traces},
                {"call": pos + 1, "seconds": elapsed + time.perf_counter() - t0},
            )
        if progress is not None:
            progress.update(steps)
    return state, traces, elapsed + time.perf_counter() - t0
