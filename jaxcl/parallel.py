"""Scale without touching method code: a device mesh with ``seeds``, ``data`` and ``model`` axes.

* Data parallelism is ``jax.jit`` with ``NamedSharding``: every batch drawn inside the compiled
  loop is constrained to be sharded over ``data`` (its leading axis), while the train state
  (params, optimizer state, replay buffer, teacher, EWC anchor) is replicated. XLA's SPMD
  partitioner inserts the gradient all-reduce; the replay buffer, written from the *global*
  batch, is the same array on every device by construction (the failure mode of DDP rehearsal,
  a buffer per rank, cannot happen).
* The ``model`` axis shards the train state FSDP-style (ZeRO-3): every array of the parameters,
  gradients, optimizer state and method states (GU's history, EWC's anchor, a replay buffer) that
  is large enough is split over ``model`` along one dimension (:func:`fsdp_spec`), and batches are
  split over ``data`` x ``model`` where they divide it, so each device computes on its own examples
  with weights the compiler all-gathers layer by layer. Placement outside a program is
  :func:`state_sharding` / :func:`place_seeds`; inside, :func:`shard_state` constrains the loop's
  carry (:func:`jaxcl.loops.run_chunks`), so the state lives sharded from step to step.
* Seeds fill the first axis: ``vmap(..., spmd_axis_name="seeds")`` shards the seed dimension of
  every vmapped value over ``seeds``, so 8 devices x 8 seeds or 2 x 4 mixes both.
* ``shard_map`` where a computation wants explicit collectives: :func:`sharded_empirical_fisher`
  sums per-example squared gradients on each device's shard and ``psum``s them.

``jax.pmap`` is not used: it is in maintenance mode and since JAX 0.10 wraps ``jit(shard_map)``.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .engine import LossFn

AXES = ("seeds", "data", "model")


def make_mesh(data: int | None = None, seeds: int = 1, devices=None, *, model: int = 1) -> jax.sharding.Mesh:
    """A ``(seeds, data, model)`` mesh; ``data`` defaults to every device left after ``seeds`` and
    ``model``. A mesh smaller than the device list takes its first devices."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data is None:
        if n % (seeds * model):
            raise ValueError(
                f"{n} devices cannot be split into a seeds axis of {seeds} x a model axis of {model}"
            )
        data = n // (seeds * model)
    size = data * seeds * model
    if size > n:
        raise ValueError(
            f"a mesh of seeds={seeds} x data={data} x model={model} needs {size} devices; this process sees {n}"
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((seeds, data, model), AXES, axis_types=(auto,) * 3, devices=devices[:size])


def axis_size(mesh: jax.sharding.Mesh | None, name: str) -> int:
    """The size of axis ``name`` (1 without a mesh or where the mesh has no such axis)."""
    return 1 if mesh is None else int(dict(mesh.shape).get(name, 1))


# -- FSDP placement of a state over the ``model`` axis --------------------------------------------

# arrays with fewer elements (per seed) than this stay replicated: biases, norms, scalars, keys;
# what sharding them would save is less than the all-gathers cost (MaxText and the JAX scaling
# book shard every weight matrix and leave vectors replicated)
MIN_SHARD_SIZE = 2**12


def fsdp_spec(shape, model: int, *, leading: str | None = None, min_size: int = MIN_SHARD_SIZE) -> P:
    """The ``PartitionSpec`` of one array of a state on a ``model`` axis of ``model`` devices.

    The rule (FSDP, as MaxText's ``fsdp`` axis and the JAX scaling book's ZeRO-3 place weights):
    the array's largest dimension that ``model`` divides is sharded over ``model`` (ties: the
    first such); an array with fewer than ``min_size`` elements, or with no dimension ``model``
    divides, is replicated. ``leading="seeds"``: the first dimension is the seed dimension and stays
    on the ``seeds`` axis; the rule applies to the rest."""
    lead = (leading,) if leading else ()
    dims = tuple(shape)[len(lead) :]
    size = 1
    for n in dims:
        size *= int(n)
    fits = [i for i, n in enumerate(dims) if n % model == 0]
    if model <= 1 or size < min_size or not fits:
        return P(*lead)
    i = max(fits, key=lambda i: (dims[i], -i))
    return P(*lead, *(["model" if j == i else None for j in range(len(dims))]))


def _shape(a) -> tuple:
    return tuple(getattr(a, "shape", ()))


def state_sharding(tree, mesh: jax.sharding.Mesh, *, seeds: bool = False, min_size: int = MIN_SHARD_SIZE):
    """A pytree of ``NamedSharding`` for ``tree`` (arrays, or ``jax.ShapeDtypeStruct``s: the
    compile check builds its abstract arguments with them) on ``mesh``, by :func:`fsdp_spec`:
    each large array sharded over ``model`` along its largest dimension that divides it, the
    rest replicated; ``seeds=True``: every leaf's leading dimension is the seed dimension, on the
    ``seeds`` axis. Without a ``model`` axis (or of size 1) this is plain replication /
    ``P('seeds')``."""
    m = axis_size(mesh, "model")
    lead = "seeds" if seeds else None
    return jax.tree.map(
        lambda a: NamedSharding(mesh, fsdp_spec(_shape(a), m, leading=lead, min_size=min_size)), tree
    )


def shard_state(tree, mesh: jax.sharding.Mesh | None):
    """``tree`` (a train state, inside a jitted program, possibly under the seeds ``vmap``)
    constrained to :func:`fsdp_spec`'s placement on ``mesh``'s ``model`` axis; the compiler inserts
    the all-gathers where a step needs a whole array. Unchanged without a ``model`` axis > 1. Under
    ``vmap(..., spmd_axis_name='seeds')`` the seed dimension is added on ``seeds`` by the vmap."""
    m = axis_size(mesh, "model")
    if m == 1:
        return tree

    def one(a):
        spec = fsdp_spec(_shape(a), m)
        return a if spec == P() else jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))

    return jax.tree.map(one, tree)


def batch_spec(n: int, mesh) -> P:
    """Batches of ``n`` rows: over ``data`` x ``model`` where ``n`` divides it (FSDP: every device
    computes its own rows), else over ``data`` alone (the ``model`` devices of a data shard then
    compute the same rows)."""
    d, m = axis_size(mesh, "data"), axis_size(mesh, "model")
    return P(("data", "model")) if m > 1 and n % (d * m) == 0 else P("data")


def check_divides(mesh, *, batch_size: int, n_seeds: int | None = None) -> None:
    """Clear errors, before compiling, for a mesh that does not divide the work."""
    if mesh is None:
        return
    d, s = axis_size(mesh, "data"), axis_size(mesh, "seeds")
    if batch_size % d:
        raise ValueError(
            f"the batch size {batch_size} is not divisible by the mesh's data axis of "
            f"{d} devices; use a batch size that is a multiple of {d}"
        )
    if n_seeds is not None and n_seeds % s:
        raise ValueError(
            f"{n_seeds} seeds are not divisible by the mesh's seeds axis of {s}; "
            f"use a multiple of {s} seeds or a smaller seeds axis"
        )


def shard_batch(batch, mesh):
    """Constrain every leaf of a batch to be sharded along its leading axis over ``data`` (and
    ``model``, :func:`batch_spec`)."""
    if mesh is None or axis_size(mesh, "data") * axis_size(mesh, "model") == 1:
        return batch
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, batch_spec(a.shape[0], mesh))),
        batch,
    )


def replicated(mesh):
    return NamedSharding(mesh, P())


def sharded_empirical_fisher(loss_fn: LossFn, params, batch: dict, key, mesh) -> dict:
    """Diagonal empirical Fisher with explicit collectives: each device takes its slice of the
    examples (``data`` axis), sums squared per-example gradients, and the sums are ``psum``-ed.
    Equals :func:`jaxcl.losses.empirical_fisher` on one device."""
    n = jax.tree.leaves(batch)[0].shape[0]
    d = axis_size(mesh, "data")
    if n % d:
        raise ValueError(f"{n} examples do not split over a data axis of {d} devices")

    def local(p, b):
        def per_example(ex):
            one = jax.tree.map(lambda a: a[None], ex)
            return jax.grad(lambda q: loss_fn(q, one, key)[0])(p)

        g = jax.vmap(per_example)(b)
        sq = jax.tree.map(lambda x: (x**2).sum(0), g)
        return jax.tree.map(lambda x: jax.lax.psum(x, "data") / n, sq)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False)
    return fn(params, batch)


def initialize_multihost(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    timeout_s: int = 60,
    cpu_collectives: str | None = "gloo",
) -> None:
    """Join a multi-controller JAX run (``jax.distributed.initialize``), as TPU pods and GPU
    clusters run it. Every process then sees the global device list and the same jitted program
    runs on all of them. ``cpu_collectives="gloo"`` makes collectives work between CPU processes
    (tests on one machine). A coordinator that does not answer within ``timeout_s`` raises a
    ``TimeoutError`` naming it instead of hanging."""
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if process_id != 0:  # the runtime aborts the process on a missing coordinator: check first
        _wait_for_coordinator(coordinator_address, timeout_s, process_id, num_processes)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except Exception as e:  # the runtime raises various errors on a missing coordinator
        raise TimeoutError(
            f"process {process_id} of {num_processes} could not join the coordinator at "
            f"{coordinator_address} within {timeout_s} s ({type(e).__name__}: {str(e)[:300]}). Start "
            f"process 0 (it hosts the coordinator), check the address and port, or raise the timeout."
        ) from e


def global_array(local, mesh, spec=P()):
    """A global ``jax.Array`` from data every process holds in full (replicated) or in part."""
    import numpy as np

    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local)


def _wait_for_coordinator(address: str, timeout_s: float, process_id: int, num_processes: int) -> None:
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"process {process_id} of {num_processes}: no coordinator answered at {address} "
                    f"within {timeout_s} s ({e}). Start process 0 (it hosts the coordinator), check "
                    f"the address and port, or raise the timeout."
                ) from None
            time.sleep(0.2)


def auto_mesh(n_seeds: int = 1, batch_size: int | None = None, devices=None) -> jax.sharding.Mesh | None:
    """A mesh over every device for a study of ``n_seeds`` seeds and batches of ``batch_size``:
    the seeds axis takes the largest share of the devices that divides the seeds, the data axis
    the largest share of the rest that divides the batch (what a notebook on a TPU v2-8 / v5e-8,
    a multi-GPU machine or a CPU with forced host devices wants). None on one device."""
    import math

    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if n == 1:
        return None
    s = math.gcd(n, max(int(n_seeds), 1))
    rest = n // s
    d = max(k for k in range(1, rest + 1) if rest % k == 0 and (batch_size is None or batch_size % k == 0))
    return make_mesh(data=d, seeds=s, devices=devices)


# -- seeds over a mesh: what the study runners use ---------------------------------------------


def seeds_map(fn, in_axes, mesh=None, *, model=None):
    """``fn`` over a leading seed axis of the arguments whose ``in_axes`` entry is 0. No mesh:
    exactly :func:`jaxcl.batching.over_seeds` (``vmap``, or a compiled ``lax.map`` for
    convolutional models on the CPU). A mesh: ``vmap(..., spmd_axis_name="seeds")``, so the seed
    dimension of every vmapped value (and of every batch :func:`shard_batch` constrains inside) is
    sharded over the mesh's ``seeds`` axis."""
    if mesh is None:
        from .batching import over_seeds

        return over_seeds(fn, in_axes, model=model)
    return jax.vmap(fn, in_axes=tuple(in_axes), spmd_axis_name="seeds")


def place_seeds(args, in_axes, mesh=None) -> tuple:
    """``args`` on the mesh: those whose ``in_axes`` entry is 0 sharded over ``seeds`` (leading
    axis), the others (the train state's starting point, data, hyperparameters) replicated; on a
    ``model`` axis every large array also sharded over it (:func:`state_sharding`). Unchanged
    without a mesh."""
    if mesh is None:
        return tuple(args)
    return tuple(
        jax.device_put(a, state_sharding(a, mesh, seeds=ax == 0)) for a, ax in zip(args, in_axes, strict=True)
    )


class _Placed:
    """A jitted function whose calls first place their arguments on the mesh (:func:`place_seeds`)."""

    def __init__(self, jitted, in_axes, mesh):
        self.jitted, self.in_axes, self.mesh = jitted, tuple(in_axes), mesh

    def __call__(self, *args):
        return self.jitted(*place_seeds(args, self.in_axes, self.mesh))

    def lower(self, *args):
        """Lowered for ``args``; abstract ones (``jax.ShapeDtypeStruct`` with their shardings: the
        compile check, :mod:`jaxcl.compile`) are taken as they are."""
        if all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(args)):
            return self.jitted.lower(*args)
        return self.jitted.lower(*place_seeds(args, self.in_axes, self.mesh))


def jit_seeds(fn, in_axes, mesh=None, *, model=None, state=False, **jit_kwargs):
    """``jax.jit(seeds_map(fn, in_axes, mesh))``; with a mesh, every call places its arguments
    (:func:`place_seeds`: seeds sharded over ``seeds``, the rest replicated) first. Without one it
    is the plain ``jax.jit`` of :func:`jaxcl.batching.over_seeds`. ``state``: ``fn`` makes a train
    state, placed as a run keeps it (:func:`state_sharding`: seeds over ``seeds``, large arrays
    over ``model``); an initialisation needs it, as its outputs are otherwise free to come out
    replicated (a broadcast of pretrained weights to every seed put every seed's state on every
    device: 12.6 GB per chip for SmolLM2-135M at 8 seeds, where the train call holds 1.5 GB)."""
    mapped = seeds_map(fn, in_axes, mesh, model=model)
    if state and mesh is not None:
        inner = mapped

        def mapped(*args):
            out = inner(*args)
            return jax.lax.with_sharding_constraint(out, state_sharding(out, mesh, seeds=True))

    jitted = jax.jit(mapped, **jit_kwargs)
    return jitted if mesh is None else _Placed(jitted, in_axes, mesh)
