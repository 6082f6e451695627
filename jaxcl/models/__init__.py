"""Models in flax NNX, each turned into a :class:`PureModel` (``init``/``apply``) once."""

from .base import PureModel, check_input_shape, pure, to_float
from .cnn import cnn
from .mlp import mlp
from .resnet import resnet18
from .vit import vit

MODELS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "vit": vit}


def make_model(name: str, input_shape: tuple, n_classes: int, **kwargs) -> PureModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), n_classes, **kwargs)


__all__ = ["PureModel", "check_input_shape", "pure", "to_float", "mlp", "cnn", "make_model", "MODELS"]
