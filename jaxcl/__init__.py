"""jaxcl: continual learning and machine unlearning as pure, compiled JAX training steps.

The public API in one place: the step, the building blocks of the four levels (loss wrappers,
gradient transforms, data transforms, edits), the method registry, the loop and the config.

    import jaxcl
    step = jaxcl.make_step(loss_fn, tx, data)                       # (state, batch) -> (state, metrics)
    spec = jaxcl.get_method("er")                                   # the registry
    exp = jaxcl.Experiment(model, spec, jaxcl.LoopConfig())         # the loop (lax.scan inside)
    cfg = jaxcl.config.resolve(jaxcl.config.load("split-fashion-mnist", tiny=True), ["er.lr=3e-3"])
"""

from . import config, edits, losses, transforms
from .data import context, replay
from .engine import DataTransform, TrainState, init_state, make_step
from .loops import Experiment, LoopConfig, Phase, PhaseConfig, run_chunks, run_grid, run_seeds, seeds_keys
from .methods import METHODS, Hparam, Method, MethodSpec, get_method, register

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "DataTransform",
    "Experiment",
    "Hparam",
    "LoopConfig",
    "Method",
    "MethodSpec",
    "Phase",
    "PhaseConfig",
    "TrainState",
    "config",
    "context",
    "edits",
    "get_method",
    "init_state",
    "losses",
    "make_step",
    "register",
    "replay",
    "run_chunks",
    "run_grid",
    "run_seeds",
    "seeds_keys",
    "transforms",
]
