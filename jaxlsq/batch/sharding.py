"""Sharding a batch of fits over devices and hosts, with JAX's own engine.

A batch is split along its batch axis over the axes of a `jax.sharding.Mesh`;
each device fits its rows with `jax.shard_map` (independent fits: no collectives
inside the solver). The mesh comes from, in this order:

* ``devices=`` of `solve_batch`/`fit_batch`: an int (the first devices of
  ``jax.devices()``), a list of devices, or a `Mesh` (the batch split over all of
  its axes);
* the inputs themselves: a batched input that is a `jax.Array` sharded along its
  batch axis by a `NamedSharding` (a mesh of either axis type, including the
  ``Explicit`` axes that ``jax.make_mesh`` creates by default) keeps that sharding:
  the fits run where the rows are and the results come back sharded the same way,
  with no host round trip.

Multi-host (``jax.distributed``): every process calls `shard_batch` on its own rows
(the same number on every process), calls `solve_batch`/`fit_batch` on the global
arrays it returns (shared inputs, such as a common abscissa, must be equal on every
process), and reads its own results with `local_batch` or everyone's with
`gather_batch`. Why not ``jax.vmap(solve)`` under ``jax.set_mesh``: JAX refuses to
vmap the solver's ``while_loop`` over an ``Explicit``-sharded axis ("Mapped away
dimension of inputs passed to vmap should be sharded the same"), since the loop's
carry starts unsharded; `solve_batch` is the supported way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The mesh axis name `solve_batch` gives the meshes it builds.
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class BatchSharding:
    """Where a batch runs: ``mesh`` and the mesh axes (``axes``, a tuple of names)
    its batch axis is split over. Hashable: a static argument of the compiled batch."""

    mesh: Mesh
    axes: tuple[str, ...]

    @property
    def n_shards(self) -> int:
        """Number of pieces the batch is cut into (the product of ``axes``' sizes)."""
        return math.prod(self.mesh.shape[a] for a in self.axes)

    @property
    def spec(self) -> PartitionSpec:
        """The batch axis split over ``axes``, the rest of each leaf whole."""
        return PartitionSpec(self.axes if len(self.axes) > 1 else self.axes[0])


def batch_sharding(
    devices: Any, leaves: list, axes_leaves: tuple
) -> BatchSharding | None:
    """The `BatchSharding` of a batch, or None to run it on the default device.

    ``devices``: `solve_batch`'s argument (None, int, list of `jax.Device` or
    `Mesh`); when None, the sharding of the batched ``leaves`` (``axes_leaves``:
    each leaf's batch axis or None) along their batch axis, if any is sharded.
    Raises ValueError for bad ``devices`` or batched inputs sharded differently.
    """
    if devices is not None:
        return _from_devices(devices)
    found = {}
    for i, (leaf, axis) in enumerate(zip(leaves, axes_leaves, strict=True)):
        sharding = getattr(leaf, "sharding", None)
        if axis is None or not isinstance(sharding, NamedSharding):
            continue
        spec = tuple(sharding.spec) + (None,) * (leaf.ndim - len(sharding.spec))
        entry = spec[axis % leaf.ndim]
        if entry is None:
            continue
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        found.setdefault(BatchSharding(sharding.mesh, names), []).append(i)
    if len(found) > 1:
        described = "; ".join(
            f"inputs {ids} over {s.axes} of a mesh {dict(s.mesh.shape)}"
            for s, ids in found.items()
        )
        raise ValueError(
            "batched inputs are sharded differently along the batch axis "
            f"({described}): shard them alike (e.g. with jaxlsq.shard_batch) or "
            "pass devices="
        )
    return next(iter(found), None)


def _from_devices(devices: Any) -> BatchSharding:
    if isinstance(devices, Mesh):
        return BatchSharding(devices, tuple(devices.axis_names))
    if isinstance(devices, int) and not isinstance(devices, bool):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices} but {len(available)} device(s) are available"
            )
        devices = available[:devices]
    try:
        devices = list(devices)
    except TypeError:
        devices = [devices]
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(
            "devices must be None, a positive int, a list of jax.Device or a "
            f"jax.sharding.Mesh, got {devices!r}"
        )
    return BatchSharding(Mesh(np.array(devices), (BATCH_AXIS,)), (BATCH_AXIS,))


def shard_fits(
    run: Callable, sharding: BatchSharding, shared: Any, per_fit: list, n_batch: int
) -> Any:
    """``run(shared, per_fit)`` on each shard of ``per_fit`` (leaves with the batch
    axis in front, N = ``n_batch``), ``shared`` replicated; results sharded alike.

    Traced inside the batch's jit. A batch that does not divide into the shards is
    padded with copies of its last fit (dropped from the results).
    """
    n_padded = -(-n_batch // sharding.n_shards) * sharding.n_shards
    if n_padded != n_batch:
        per_fit = [pad_rows(leaf, n_padded) for leaf in per_fit]
    spec = sharding.spec
    if jax.sharding.AxisType.Explicit in sharding.mesh.axis_types:
        # shard_map takes Explicit-sharded inputs only as specified: inputs not yet
        # where they run (host arrays, another layout) move there first (on Auto
        # meshes shard_map does that itself).
        def place(tree, spec):
            where = NamedSharding(sharding.mesh, spec)
            return jax.tree_util.tree_map(lambda a: jax.reshard(a, where), tree)

        per_fit, shared = place(per_fit, spec), place(shared, PartitionSpec())
    sols = jax.shard_map(
        run,
        mesh=sharding.mesh,
        in_specs=(PartitionSpec(), spec),
        out_specs=spec,
        # Each device runs independent fits, no collectives: skip the varying-axes
        # type check, which the solver's while_loops (constant initial carries) trip.
        check_vma=False,
    )(shared, per_fit)
    if n_padded == n_batch:
        return sols
    return jax.tree_util.tree_map(lambda a: a[:n_batch], sols)


def pad_rows(leaf: jax.Array, size: int) -> jax.Array:
    """Pad the leading axis to ``size`` with copies of the last problem (a valid fit,
    never NaN), so every call with the same shapes reuses one compiled program."""
    missing = size - leaf.shape[0]
    if missing == 0:
        return leaf
    return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], missing, axis=0)])


def shard_batch(local: Any, mesh: Mesh | None = None) -> Any:
    """Global arrays of a batch whose rows are spread over processes.

    Parameters
    ----------
    local : pytree of arrays
        This process's rows: every leaf with the batch axis first, the same number
        of rows on every process (a multiple of its local device count).
    mesh : Mesh, optional
        Default: a 1-D mesh named ``"batch"`` over all devices of all processes
        (``jax.make_mesh``, so its axis is ``Explicit``).

    Returns
    -------
    pytree of jax.Array
        Leaves of shape (processes x rows, ...), sharded over the mesh along the
        batch axis: pass them to `solve_batch`/`fit_batch` as batched inputs. In one
        process this is a plain device_put of the batch over the mesh.
    """
    if mesh is None:
        mesh = jax.make_mesh((jax.device_count(),), (BATCH_AXIS,))
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))

    def one(leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim == 0:
            raise ValueError("shard_batch: every leaf needs a batch axis, got a scalar")
        return jax.make_array_from_process_local_data(sharding, leaf)

    return jax.tree_util.tree_map(one, local)


def local_batch(tree: Any) -> Any:
    """This process's rows of a batch result, as numpy arrays (no communication).

    Each leaf's addressable shards, in batch order, without repeats (a shard held
    by several local devices counts once). Leaves that are not jax.Arrays pass
    through ``np.asarray``.
    """

    def one(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        pieces = {}
        for shard in leaf.addressable_shards:
            start = shard.index[0].start if leaf.ndim else None
            pieces.setdefault(start or 0, np.asarray(shard.data))
        return np.concatenate([pieces[k] for k in sorted(pieces)])

    return jax.tree_util.tree_map(one, tree)


def gather_batch(tree: Any) -> Any:
    """Every process's rows of a batch result, as numpy arrays on every process.

    ``jax.experimental.multihost_utils.process_allgather`` (every process must call
    it); in one process, ``np.asarray`` of each leaf.
    """
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def first_fit(leaf: Any, axis: int) -> Any:
    """Problem 0 of this process's rows of ``leaf`` along its batch ``axis``.

    For checks that hold for every fit (shapes, dtypes, the kind of weights): a
    sharded `jax.Array` gives the first row of its first local shard, with no
    communication (``jnp.take`` on an Explicit-sharded or multi-host array needs
    an output sharding or collectives).
    """
    concrete = isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    if concrete and len(leaf.sharding.device_set) > 1:
        block = leaf.addressable_shards[0].data
        axis = axis % leaf.ndim
        others = [i for i in range(leaf.ndim) if i != axis]
        if all(block.shape[i] == leaf.shape[i] for i in others):
            return jnp.take(block, 0, axis=axis)
        if not leaf.is_fully_addressable:
            raise ValueError(
                "a batched input spread over hosts must be sharded along its batch "
                f"axis only, got {leaf.sharding}"
            )
        leaf = np.asarray(leaf)
    return jnp.take(jnp.asarray(leaf), 0, axis=axis)


def vmap_over_shards(
    fn: Callable, sharding: BatchSharding | None, in_axes: tuple, n_batch: int
) -> Callable:
    """``jax.vmap(fn, in_axes)`` for a batch that may be sharded.

    With ``sharding``, each device maps ``fn`` over its own rows (``jax.shard_map``
    under jit: a plain vmap cannot map over an ``Explicit``-sharded axis), the
    outputs sharded alike (batch axis 0). Without, or when ``n_batch`` does not
    divide into the shards, the plain vmap.
    """
    mapped = jax.vmap(fn, in_axes=in_axes, axis_size=n_batch)
    if sharding is None or n_batch % sharding.n_shards:
        return mapped
    names = sharding.spec[0]

    def spec(axis):
        return PartitionSpec() if axis is None else PartitionSpec(*[None] * axis, names)

    specs = jax.tree_util.tree_map(spec, in_axes, is_leaf=lambda a: a is None)
    local = jax.vmap(fn, in_axes=in_axes)
    return jax.jit(
        jax.shard_map(
            local,
            mesh=sharding.mesh,
            in_specs=specs,
            out_specs=sharding.spec,
            check_vma=False,
        )
    )
