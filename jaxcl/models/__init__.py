"""Models in flax NNX, each turned into a :class:`PureModel` (``init``/``apply``) once."""

from .base import PureModel, check_input_shape, pure, to_float
from .cnn import cnn
from .mlp import mlp
from .resnet import resnet18
from .vit import vit

MODELS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "vit": vit}


def model_config(name: str, **overrides) -> dict:
    """A config's ``model`` section: ``name`` and one sub-section per model holding the keyword
    arguments of its builder with their defaults (``--set model.cnn.hidden=16``); ``overrides``
    (e.g. ``{"mlp": {"hidden": (64,)}}``) are merged in."""
    import inspect

    out = {"name": name}
    for n, fn in MODELS.items():
        params = list(inspect.signature(fn).parameters.values())[2:]  # after input_shape, n_classes
        out[n] = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        out[n].update(overrides.get(n, {}))
    return out


def from_config(section: dict, input_shape: tuple, n_classes: int) -> PureModel:
    """The model a config's ``model`` section names, with its sub-section's arguments."""
    name = section["name"]
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a model; valid: {', '.join(sorted(MODELS))}")
    return make_model(name, input_shape, n_classes, **section.get(name, {}))


def make_model(name: str, input_shape: tuple, n_classes: int, **kwargs) -> PureModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), n_classes, **kwargs)


__all__ = [
    "model_config",
    "from_config",
    "PureModel",
    "check_input_shape",
    "pure",
    "to_float",
    "mlp",
    "cnn",
    "make_model",
    "MODELS",
]
