"""Models in flax NNX, each turned into a :class:`PureModel` (``init``/``apply``) once."""

from .base import PureModel, check_input_shape, pure, to_float
from .cnn import cnn
from .mlp import mlp
from .precision import DTYPES
from .resnet import resnet18
from .vit import vit

MODELS = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18, "vit": vit}


def model_config(name: str, compute_dtype: str = "float32", **overrides) -> dict:
    """A config's ``model`` section: ``name``, ``compute_dtype`` (:data:`DTYPES`, see
    :mod:`jaxcl.models.precision`; ``--set model.compute_dtype=bfloat16``), ``lora``
    (:func:`jaxcl.models.lora.section`; ``--set model.lora.rank=8``: the phases that start from
    given weights train low-rank adapters, :class:`jaxcl.loops.Phase`) and one sub-section per
    model holding the keyword arguments of its builder with their defaults (``--set
    model.cnn.hidden=16``); ``overrides`` (e.g. ``{"mlp": {"hidden": (64,)}}``) are merged in."""
    import inspect

    from .lora import section

    out = {"name": name, "compute_dtype": compute_dtype, "lora": section()}
    for n, fn in MODELS.items():
        params = list(inspect.signature(fn).parameters.values())[2:]  # after input_shape, n_classes
        out[n] = {
            p.name: p.default
            for p in params
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.KEYWORD_ONLY
        }
        out[n].update(overrides.get(n, {}))
    return out


def check_section(section: dict) -> None:
    """A :class:`jaxcl.config.ConfigError` (one line) for a ``model`` section naming no model or
    an unknown compute dtype; every study calls it before loading data."""
    from ..config import ConfigError
    from .precision import check_dtype

    if section["name"] not in MODELS:
        raise ConfigError(f"model.name={section['name']!r}; valid: {', '.join(sorted(MODELS))}")
    check_dtype(section.get("compute_dtype", "float32"))


def from_config(section: dict, input_shape: tuple, n_classes: int) -> PureModel:
    """The model a config's ``model`` section names, with its sub-section's arguments and its
    ``compute_dtype`` (float32 when the section has none)."""
    from .lora import from_section

    check_section(section)
    model = make_model(
        section["name"],
        input_shape,
        n_classes,
        compute_dtype=section.get("compute_dtype", "float32"),
        **section.get(section["name"], {}),
    )
    spec = from_section(section.get("lora"), model)
    if spec is None:
        return model
    out = model._replace(lora=spec)
    for k, v in getattr(model, "__dict__", {}).items():  # a ResNet's apply_train and recalibrate
        setattr(out, k, v)
    return out


def make_model(name: str, input_shape: tuple, n_classes: int, **kwargs) -> PureModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), n_classes, **kwargs)


__all__ = [
    "DTYPES",
    "check_section",
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
