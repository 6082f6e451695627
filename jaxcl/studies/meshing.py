"""A device mesh for a study's config: ``jaxcl run CONFIG --mesh auto`` (or ``--mesh seeds=2,data=4``,
``--mesh seeds=2,data=2,model=2``) and the notebooks build it here, and every runner checks it
against its seeds and batch sizes.

The ``model`` axis shards the train state FSDP-style (:mod:`jaxcl.parallel`): each array's largest
dimension that the axis divides is split over it, and an array with none (or under
:data:`jaxcl.parallel.MIN_SHARD_SIZE` elements) is replicated, so any size divides the model;
``auto`` never shards the model.

A runner's batches that are sharded over the mesh's ``data`` axis are named by config paths: the
study's ``mesh_batches`` (:class:`jaxcl.driver.Study`). ``auto``
is :func:`jaxcl.parallel.auto_mesh` for the config's seeds and the greatest common divisor of
those batch sizes: the seeds axis takes the largest share of the devices that divides the seeds,
the data axis the largest share of the rest that divides every batch.
"""

from __future__ import annotations

import math

import jax

from ..config import ConfigError
from ..parallel import AXES, auto_mesh, axis_size, make_mesh


def batch_paths(cfg: dict) -> tuple[str, ...]:
    from . import get_study

    return get_study(cfg.get("study", "")).mesh_batches


def batch_sizes(cfg: dict, paths=None) -> dict[str, int]:
    """``{path: value}`` of the batch sizes the mesh's ``data`` axis splits."""
    out = {}
    for path in batch_paths(cfg) if paths is None else paths:
        d = cfg
        for k in path.split("."):
            d = d[k]
        out[path] = int(d)
    return out


def check(mesh, cfg: dict, *, paths=None, n_seeds: int | None = None) -> None:
    """A :class:`jaxcl.config.ConfigError` naming the key when the seeds or a batch size do not
    divide the mesh (before anything is loaded or compiled). No mesh: nothing to check."""
    if mesh is None:
        return
    d, s = axis_size(mesh, "data"), axis_size(mesh, "seeds")
    for path, b in batch_sizes(cfg, paths).items():
        if b % d:
            raise ConfigError(
                f"{path}={b} is not divisible by the mesh's data axis of {d} devices; use a multiple of "
                f"{d} or a smaller data axis (--mesh seeds=S,data=D,model=M, or --mesh auto)"
            )
    n = cfg.get("seeds", 1) if n_seeds is None else n_seeds
    if n % s:
        raise ConfigError(
            f"seeds={n} is not divisible by the mesh's seeds axis of {s} devices; use a multiple of {s} "
            f"seeds or a smaller seeds axis (--mesh seeds=S,data=D,model=M, or --mesh auto)"
        )


def parse(spec: str) -> dict[str, int]:
    """``"seeds=2,data=2,model=2"`` -> ``{"seeds": 2, "data": 2, "model": 2}`` (any may be left out)."""
    out = {}
    for item in spec.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or name not in AXES or name in out or not value.strip().isdigit():
            raise ConfigError(
                f"--mesh {spec!r}: give 'auto' or axis sizes like 'seeds=2,data=2,model=2' (axes: "
                f"{', '.join(AXES)}; positive integers)"
            )
        out[name] = int(value)
        if out[name] < 1:
            raise ConfigError(f"--mesh {spec!r}: axis {name} must be at least 1")
    return out


def complete(axes: dict[str, int], n: int, spec: str = "") -> dict[str, int]:
    """Every axis's size for ``n`` devices: ``seeds`` and ``model`` left out are 1, ``data`` left
    out takes the devices the others leave; the product must be ``n``."""
    out = {"seeds": 1, "model": 1, **axes}
    if "data" not in out:
        out["data"] = max(n // (out["seeds"] * out["model"]), 1)
    total = math.prod(out.values())
    if total != n:
        shown = ",".join(f"{a}={out[a]}" for a in AXES)
        raise ConfigError(
            f"--mesh {spec!r}: {shown} needs {total} devices and this process sees {n}; give axis sizes "
            f"whose product is {n}"
        )
    return out


def study_mesh(cfg: dict, spec: str | None = "auto", devices=None):
    """The mesh ``spec`` asks for (``"auto"``, ``"seeds=2,data=4"``, ``"seeds=1,data=2,model=4"``;
    ``None`` / ``"none"``: no mesh), checked against the config (:func:`check`). ``auto`` on one
    device is ``None``. The sizes must multiply to the device count (:func:`complete`)."""
    if spec is None or spec in ("", "none", "off"):
        return None
    if spec == "auto":
        sizes = list(batch_sizes(cfg).values())
        mesh = auto_mesh(cfg.get("seeds", 1), math.gcd(*sizes) if sizes else None, devices=devices)
    else:
        axes = complete(parse(spec), len(devices if devices is not None else jax.devices()), spec)
        mesh = make_mesh(data=axes["data"], seeds=axes["seeds"], model=axes["model"], devices=devices)
    check(mesh, cfg)
    return mesh
