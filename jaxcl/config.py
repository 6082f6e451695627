"""The one config system: a config file per experiment, ``--set key=value`` for anything in it.

A config file is ``experiments/<name>.py`` (the command and the measured result in its header)
with ``get_config(tiny: bool) -> dict``: the seconds-long variant the tests run is inside it, as
big_vision's ``configs/*.py`` do. A config is a nested dict of plain values:

* ``study``: which runner runs it (``cl``, ``unlearn-class``, ``tofu``; :mod:`jaxcl.studies`),
* the runner's sections (``data``, ``model``, ``loop`` ...; every key and its type is declared by
  the runner's ``DEFAULTS``),
* ``methods``: the methods to run, and one section per registered method the study can run,
  holding its traced hyperparameters and static options (defaults from the registry, overridden
  by the file's own section of that name, then by ``--set``).

One key convention for learning rates and optimizers: a method's are in its section
(``<method>.lr``, ``<method>.optim``, ``<method>.weight_decay`` ...), whatever the study; a fixed
phase of a study's schedule that is not the method under study has its own in the phase's section
(``train.lr``: the original / target model's training in unlearning studies; ``base.lr``: the base
pre-training of rft-continual and lm-junk).

:func:`load` reads a file (by name, from ``experiments/``, or by path), :func:`resolve` fills in
the defaults, applies ``--set`` overrides (``er.replay_fraction=0.3``, ``ssd.alpha=5``,
``loop.eval_every=5``, ``methods=er,ewc``) parsing each value with the type of the key it sets,
and validates every value before anything is compiled. Unknown keys and bad values raise
:class:`ConfigError` naming the key and the valid ones.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import inspect
import os
from typing import Any

from .methods import METHODS

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# the config files: inside the package in an installed copy (the wheel ships ``experiments/`` as
# ``jaxcl.experiments``: ``setup.py``), beside it in a checkout (and in an editable install)
_IN_PACKAGE = os.path.join(_PACKAGE_DIR, "experiments")
EXPERIMENTS_DIR = (
    _IN_PACKAGE if os.path.isdir(_IN_PACKAGE) else os.path.join(os.path.dirname(_PACKAGE_DIR), "experiments")
)


class ConfigError(ValueError):
    """A config key that does not exist or a value that is not valid."""


def available() -> list[str]:
    """Names of the config files in ``experiments/`` (``split_fashion_mnist.py`` ->
    ``split-fashion-mnist``), from the checkout or the installed package."""
    if not os.path.isdir(EXPERIMENTS_DIR):
        return []
    return sorted(
        f[:-3].replace("_", "-")
        for f in os.listdir(EXPERIMENTS_DIR)
        if f.endswith(".py") and not f.startswith("_")
    )


def config_path(name: str) -> str:
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise ConfigError(f"config file {name!r} does not exist")
        return name
    path = os.path.join(EXPERIMENTS_DIR, name.replace("-", "_") + ".py")
    if not os.path.isfile(path):
        close = difflib.get_close_matches(name, available(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown config {name!r}{hint}; valid: {', '.join(available())}, or a path to a config file"
        )
    return path


SIZES = ("tiny", "default", "accel")


def load(name: str, *, tiny: bool = False, size: str | None = None) -> dict:
    """The config of ``experiments/<name>.py`` (or of the file at ``name``) at ``size``: ``tiny``
    (seconds on a CPU, what the tests run; ``tiny=True``), ``default``, or ``accel`` (the scale of
    the papers, for an accelerator: ``get_config(size="accel")`` where the config has one)."""
    size = size or ("tiny" if tiny else "default")
    if size not in SIZES:
        raise ConfigError(f"--size {size!r} is not valid; valid: {', '.join(SIZES)}")
    tiny = size == "tiny"
    path = config_path(name)
    spec = importlib.util.spec_from_file_location(f"jaxcl_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"{path} has no get_config(tiny) function")
    if size == "accel":
        if "size" not in inspect.signature(mod.get_config).parameters:
            raise ConfigError(
                f"config {name!r} has no accelerator size (get_config(size='accel')); use --size default"
            )
        cfg = mod.get_config(size="accel")
    else:
        cfg = mod.get_config(tiny=tiny)
    cfg.setdefault("name", os.path.basename(path)[:-3].replace("_", "-"))
    cfg["tiny"] = bool(tiny)
    return cfg


def _merge(defaults: dict, given: dict, where: str) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        if k not in defaults:
            raise ConfigError(_unknown(f"{where}{k}", defaults, where))
        if isinstance(defaults[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}{k} is a section; give a dict, got {v!r}")
            out[k] = _merge(defaults[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def _unknown(key: str, level: dict, where: str) -> str:
    valid = sorted(level)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3)
    hint = f" (did you mean {', '.join(where + c for c in close)}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(valid)}"


def parse_value(key: str, text: str, like: Any):
    """``text`` as a value of the type of ``like`` (the key's current value)."""
    t = text.strip()
    try:
        if isinstance(like, bool):
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(t)
        if isinstance(like, float):
            return float(t)
        if isinstance(like, tuple | list):
            if t in ("", "()", "[]"):
                return ()
            items = [s.strip() for s in t.strip("()[]").split(",") if s.strip()]
            elem = like[0] if like else ""
            return tuple(parse_value(key, s, elem) for s in items)
        if like is None:
            if t.lower() == "none":
                return None
            try:
                return ast.literal_eval(t)
            except (ValueError, SyntaxError):
                return t
        return t
    except ValueError:
        raise ConfigError(
            f"--set {key}={text}: expected a value of type {type(like).__name__} (now {like!r})"
        ) from None


def set_value(cfg: dict, item: str) -> dict:
    """Apply one ``key=value`` override (dotted key) to ``cfg`` in place; returns ``cfg``."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. loop.eval_every=5")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    level, where = cfg, ""
    for p in parts[:-1]:
        if p not in level or not isinstance(level[p], dict):
            raise ConfigError(
                _unknown(where + p, {k: v for k, v in level.items() if isinstance(v, dict)}, where)
            )
        level, where = level[p], where + p + "."
    last = parts[-1]
    if last not in level or isinstance(level[last], dict):
        raise ConfigError(_unknown(key, {k: v for k, v in level.items() if not isinstance(v, dict)}, where))
    level[last] = parse_value(key, text, level[last])
    return cfg


def resolve(cfg: dict, sets: list[str] | tuple = (), *, study=None) -> dict:
    """Fill in defaults (the study's ``defaults`` and a section per method it can run, from the
    registry), apply the ``--set`` overrides and validate the method sections; a ``--set`` on a
    method that is not in the run is refused. The study validates its own sections."""
    if study is None:
        from .studies import get_study

        study = get_study(cfg.get("study", ""))
    runnable = study.runnable()
    sections = study.sections() if hasattr(study, "sections") else runnable
    full_defaults = {
        **copy.deepcopy(study.defaults),
        "study": cfg.get("study"),
        "name": cfg.get("name", ""),
        "tiny": False,
    }
    full_defaults.update({n: METHODS[n].defaults() for n in sections})
    for name in cfg:
        if name in METHODS and name not in sections:
            raise ConfigError(
                f"config section {name!r}: the {study.name} study does not run {name}; "
                f"it runs: {', '.join(runnable)}"
            )
    out = _merge(full_defaults, cfg, "")
    for item in sets:
        head = item.split("=", 1)[0].strip().split(".", 1)[0]
        if head in METHODS and head not in sections:
            raise ConfigError(
                f"--set {item}: the {study.name} study does not run {head}; it runs: {', '.join(runnable)}"
            )
        set_value(out, item)
    out["methods"] = tuple(out["methods"])
    check_methods(out, runnable)
    used = {p for m in out["methods"] for p in m.split("+")} | set(out.get("edits", ()))
    for item in sets:
        head = item.split("=", 1)[0].strip().split(".", 1)[0]
        if head in METHODS and head not in used:
            raise ConfigError(
                f"--set {item}: {head} is not in this run (methods: {', '.join(out['methods'])}); "
                f"add it with --set methods=... or drop the --set"
            )
    return out


def check_methods(cfg: dict, runnable) -> None:
    """Every listed method is one the study can run; every method section's values are valid (a
    study that runs no method, such as a probe of a pretrained model, has no ``runnable``)."""
    if not cfg["methods"] and runnable:
        raise ConfigError("no methods to run; set methods=<name>[,<name>...]")
    from .methods.compose import alone_error, compose, settings_section

    for m in cfg["methods"]:
        if "+" in m:
            try:
                spec = compose(m)
            except ValueError as e:
                raise ConfigError(f"methods: {e}") from None
            if spec.pieces[0] not in runnable:
                raise ConfigError(
                    f"methods: the base of {m!r}, {spec.pieces[0]!r}, is not a method of a {cfg['study']} "
                    f"study; valid bases: {', '.join(runnable)}"
                )
        elif m in METHODS and not METHODS[m].alone:
            raise ConfigError(f"methods: {alone_error(m)}")
        elif m not in runnable:
            raise ConfigError(
                f"unknown method {m!r} for a {cfg['study']} study; valid: {', '.join(runnable)}, or a chain "
                "base+modifier (e.g. finetune+kl)"
            )
    for name, spec in METHODS.items():
        if name in cfg:
            try:
                spec.split(cfg[name])
            except ValueError as e:
                raise ConfigError(str(e)) from None
    for m in cfg["methods"]:
        if "+" in m:
            try:
                compose(m).split(settings_section(cfg, m))
            except ValueError as e:
                raise ConfigError(str(e)) from None


def method_settings(cfg: dict, name: str) -> tuple[dict, dict]:
    """``(hparams, options)`` of method ``name`` in a resolved config (a chain ``a+b``: gathered
    from its pieces' sections, :func:`jaxcl.methods.compose.settings_section`)."""
    if "+" in name:
        from .methods.compose import compose, settings_section

        return compose(name).split(settings_section(cfg, name))
    return METHODS[name].split(cfg[name])


def method_section(cfg: dict, name: str) -> dict:
    """The raw settings of method ``name`` in a resolved config: its section, or a chain's
    gathered from its pieces' sections (``kl.beta``: :func:`jaxcl.methods.compose.settings_section`)."""
    if "+" in name:
        from .methods.compose import settings_section

        return settings_section(cfg, name)
    return cfg[name]


def get(cfg: dict, key: str):
    """The value at a dotted key (``get(cfg, "loop.eval_every")``)."""
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


# -- declarative checks for a study's ``validate``: each raises a one-line ConfigError naming the
# key, its value and the fix -------------------------------------------------------------------


def check_positive(cfg: dict, keys: list[str]) -> None:
    """Each dotted key must hold a positive number."""
    for key in keys:
        v = get(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ConfigError(f"{key}={v!r} must be a positive number")


def check_nonnegative(cfg: dict, keys: list[str], zero: str = "") -> None:
    """Each dotted key must hold a number >= 0; ``zero`` says what 0 means (``"every row"``)."""
    for key in keys:
        v = get(cfg, key)
        if v < 0:
            raise ConfigError(f"{key}={v!r} must be >= 0" + (f" (0: {zero})" if zero else ""))


def check_choice(cfg: dict, key: str, valid) -> None:
    """The value at ``key`` must be one of ``valid``."""
    v = get(cfg, key)
    if v not in valid:
        raise ConfigError(f"{key}={v!r} is not valid; valid: {', '.join(valid)}")


def check_each(cfg: dict, key: str, valid, what: str = "value", *, unknown=None, nonempty: bool = True):
    """Each item of the list at ``key`` must be in ``valid`` (``unknown(item)``: the message for
    one that is not, where ``valid`` is too long to list), and the list non-empty (``nonempty``)."""
    items = get(cfg, key)
    if nonempty and not items:
        listed = f" ({', '.join(valid)})" if unknown is None else ""
        raise ConfigError(f"{key} is empty; give at least one {what}{listed}")
    for x in items:
        if x not in valid:
            why = unknown(x) if unknown else f"unknown {what} {x!r}; valid: {', '.join(valid)}"
            raise ConfigError(f"{key}: {why}")


def check_nonempty(cfg: dict, keys: list[str], fix: str = "give at least one value") -> None:
    """Each dotted key must hold a non-empty list."""
    for key in keys:
        if not get(cfg, key):
            raise ConfigError(f"{key} is empty; {fix}")


def check_multiple(cfg: dict, key: str, of: str) -> None:
    """The value at ``key`` must be a multiple of the value at ``of`` (0 is)."""
    a, b = get(cfg, key), get(cfg, of)
    if a and a % b:
        raise ConfigError(f"{key}={a} must be a multiple of {of}={b}")


def check_checkpoint_every(cfg: dict, key: str, every: str, steps: str, zero: str = "") -> None:
    """A schedule's checkpoint spacing: 0 (``zero``: what 0 means) or a multiple of the
    evaluation spacing ``every`` that divides the steps ``steps``."""
    ce, e, n = get(cfg, key), get(cfg, every), get(cfg, steps)
    if ce < 0 or (ce and (ce % e or n % ce)):
        zero = f" ({zero})" if zero else ""
        raise ConfigError(f"{key}={ce} must be 0{zero} or a multiple of {every}={e} that divides {steps}={n}")


def flat(cfg: dict, prefix: str = "") -> dict:
    """``{'loop.eval_every': 2, ...}``: every leaf under its dotted key."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
