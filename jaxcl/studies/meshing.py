"""A device mesh for a study's config: ``jaxcl run CONFIG --mesh auto`` (or ``--mesh seeds=2,data=4``)
and the notebooks build it here, and every runner checks it against its seeds and batch sizes.

A runner's batches that are sharded over the mesh's ``data`` axis are named by config paths: the
study's ``mesh_batches`` (:class:`jaxcl.driver.Study`). ``auto``
is :func:`jaxcl.parallel.auto_mesh` for the config's seeds and the greatest common divisor of
those batch sizes: the seeds axis takes the largest share of the devices that divides the seeds,
the data axis the largest share of the rest that divides every batch.
"""

from __future__ import annotations

import math

from ..config import ConfigError
from ..parallel import auto_mesh, axis_size, make_mesh


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
                f"{d} or a smaller data axis (--mesh seeds=S,data=D, or --mesh auto)"
            )
    n = cfg.get("seeds", 1) if n_seeds is None else n_seeds
    if n % s:
        raise ConfigError(
            f"seeds={n} is not divisible by the mesh's seeds axis of {s} devices; use a multiple of {s} "
            f"seeds or a smaller seeds axis (--mesh seeds=S,data=D, or --mesh auto)"
        )


def parse(spec: str) -> dict[str, int]:
    """``"seeds=2,data=4"`` -> ``{"seeds": 2, "data": 4}`` (either may be left out)."""
    out = {}
    for item in spec.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or name not in ("seeds", "data") or name in out or not value.strip().isdigit():
            raise ConfigError(
                f"--mesh {spec!r}: give 'auto' or axis sizes like 'seeds=2,data=4' (axes: seeds, data; "
                "positive integers)"
            )
        out[name] = int(value)
        if out[name] < 1:
            raise ConfigError(f"--mesh {spec!r}: axis {name} must be at least 1")
    return out


def study_mesh(cfg: dict, spec: str | None = "auto", devices=None):
    """The mesh ``spec`` asks for (``"auto"``, ``"seeds=2,data=4"``; ``None`` / ``"none"``: no
    mesh), checked against the config (:func:`check`). ``auto`` on one device is ``None``."""
    if spec is None or spec in ("", "none", "off"):
        return None
    if spec == "auto":
        sizes = list(batch_sizes(cfg).values())
        mesh = auto_mesh(cfg.get("seeds", 1), math.gcd(*sizes) if sizes else None, devices=devices)
    else:
        axes = parse(spec)
        try:
            mesh = make_mesh(data=axes.get("data"), seeds=axes.get("seeds", 1), devices=devices)
        except ValueError as e:
            raise ConfigError(f"--mesh {spec!r}: {e}") from None
    check(mesh, cfg)
    return mesh
