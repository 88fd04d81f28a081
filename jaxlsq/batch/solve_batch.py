"""`solve_batch`: many independent fits in one compiled call, processed in chunks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.options import SolveOptions
from ..core.solve import solve
from ..core.status import Solution
from .pool import DEFAULT_REFILL, DEFAULT_SLOTS, solve_refill
from .progress import progress_ticks, tick, with_progress_bar
from .sharding import batch_sharding, pad_rows, shard_fits

#: Values of solve_batch's ``schedule``.
SCHEDULES = ("auto", "vmap", "refill")


def solve_batch(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    *,
    in_axes: Any = 0,
    chunk_size: int | None = 1024,
    schedule: str = "auto",
    slots: int | None = None,
    devices: Any = None,
    progress: bool = False,
    options: SolveOptions | None = None,
    **solve_options: Any,
) -> Solution:
    """Solve many independent least-squares problems at once.

    Equivalent to ``jax.vmap(lambda x0, *args: solve(fun, x0, args), in_axes)`` but
    run ``chunk_size`` fits at a time inside one compiled program, which keeps the
    working set in cache (1.5x faster than one big ``vmap`` for 20,000 exponential
    decays on a 2-core CPU). Two schedules: lock-step chunks (``lax.map`` over
    chunks, ``vmap`` within a chunk; each chunk runs until its slowest fit stops),
    or a pool of ``chunk_size`` slots that take the next pending fit as soon as
    theirs finishes (no lane waits for a slower one: 1.1-1.5x the fits/s of
    lock-step chunks on exponential decays and 2-D Gaussians, N = 10^4-2*10^4,
    float32 and float64, 2-core CPU). Batches are padded to fixed shapes, so every
    call with the same shapes reuses one compiled program.

    Parameters
    ----------
    fun : callable
        ``fun(params, *args) -> residuals``, as for `solve`.
    x0 : pytree of arrays
        Starting point(s): batched along the axis given by ``in_axes`` or shared.
    args : tuple, default ()
        Extra arguments of ``fun``, batched or shared according to ``in_axes``.
    in_axes : int, None or pytree, default 0
        ``jax.vmap``'s convention for the pair ``(x0, args)``: ``0`` batches every
        leaf along axis 0; ``(None, (None, 0))`` shares ``x0`` and the first argument
        (say the abscissa) and batches the second (the curves).
    chunk_size : int or None, default 1024
        Fits in flight at once: the chunk of ``"vmap"``, the default pool size of
        ``"refill"`` (where it is also the batch size of the final assembly of the
        solutions). ``None`` vmaps the whole batch at once.
    schedule : {"auto", "vmap", "refill"}, default "auto"
        ``"vmap"``: chunks of fits run in lock-step, each chunk until its slowest fit
        stops. ``"refill"``: a fixed pool of ``slots`` fits in progress; as fits
        finish, their slots take the next problems of the batch (see
        `jaxlsq.batch.pool`). ``"auto"``: ``"refill"`` when the batch (per device) has
        more than ``chunk_size`` fits and no ``progress`` bar is asked for, else
        ``"vmap"`` (one chunk: nothing to refill, and a faster compile). Same
        results per fit, to rounding: XLA may round a vmapped step differently at a
        different width, and the pool's last ``slots // 8`` (at most 64) fits
        finish in a narrower pool, so a few fits in 10^4 differ in the last bits
        (and then, rarely, by an iteration). Bounds, fixed parameters, losses and
        implicit differentiation work alike.
    slots : int, optional
        Size of the pool for ``"refill"`` (default ``chunk_size``, or 1024; at most
        N; per device with ``devices``).
    devices : None, int, list of jax.Device or jax.sharding.Mesh, default None
        Shard the batch over these devices (an int takes the first ``devices`` of
        ``jax.devices()``; a Mesh splits the batch over all its axes) with
        ``jax.shard_map``, each device fitting its shard in chunks, results left
        sharded on the devices. The batch is padded to a multiple of the shard
        count. ``None``: where the inputs are -- a batched `jax.Array` sharded
        along its batch axis (over a mesh of any axis type, Explicit included, or
        across hosts: see `jaxlsq.batch.sharding`) keeps its sharding; else the
        default device.
    progress : bool, default False
        Show a tqdm progress bar (needs ``tqdm``; a plain text bar where
        ``ipywidgets`` is missing): one tick per chunk on ``"vmap"`` (what
        ``"auto"`` picks with a bar: 1.03-1.15x the time without one), one per
        finished fit on ``schedule="refill"`` (its loop then runs 1.6-2.3x
        slower: measured on 2e4 decays, 2-core CPU). The call then waits for
        the results instead of returning at once.
    options : SolveOptions, optional
        The options of every fit as one value, as for `solve`.
    **solve_options
        Any option of `solve` (``ftol``, ``xtol``, ``gtol``, ``max_nfev``,
        ``factor``, ``diag``, ``jac``, ``linear_solver``, ``bounds``, ``fixed``,
        ``loss``, ``f_scale``, ``adjoint``), shared by all fits. The refill pool
        supports ``adjoint="implicit"`` only (``"auto"`` then picks ``"vmap"``).

    Returns
    -------
    Solution
        Every field with a leading batch axis of size N (the batch size); each fit has
        its own ``status`` and ``success``.

    Raises
    ------
    ValueError
        If no leaf is batched, batched leaves disagree on N, ``chunk_size`` is not a
        positive integer, or an option is unknown.

    Notes
    -----
    Ragged batches (curves of different lengths): pad every curve to the longest
    and pass a 0/1 mask (or per-point weights) as an argument that multiplies the
    residuals, ``fun = lambda p, x, y, mask: mask * (model(p, x) - y)``. Padded
    points then contribute nothing, and each fit equals the fit of its unpadded
    curve (tested). ``residuals`` and ``jac`` of a padded fit have zeros there.

    Examples
    --------
    >>> import jax.numpy as jnp, jaxlsq
    >>> x = jnp.linspace(0.0, 1.0, 20)
    >>> ys = jnp.stack([a * jnp.exp(-3.0 * x) for a in (1.0, 2.0, 3.0)])
    >>> sols = jaxlsq.solve_batch(lambda p, x, y: p[0] * jnp.exp(-p[1] * x) - y,
    ...                           jnp.ones(2), (x, ys), in_axes=(None, (None, 0)))
    >>> [round(float(a), 4) for a in sols.params[:, 0]], bool(sols.success.all())
    ([1.0, 2.0, 3.0], True)
    """
    if not isinstance(args, tuple):
        args = (args,)
    options = SolveOptions.build(options, where="solve_batch", **solve_options)
    if options.monitor is not None:
        raise ValueError(
            "monitor reports the iterations of one fit: use it with solve, fit or "
            "least_squares, not solve_batch/fit_batch"
        )
    if chunk_size is not None and (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive int or None, got {chunk_size!r}"
        )
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if slots is not None and (
        not isinstance(slots, int) or isinstance(slots, bool) or slots < 1
    ):
        raise ValueError(f"slots must be a positive int, got {slots!r}")
    axes = broadcast_axes(in_axes, (x0, args))
    n_batch = batch_size((x0, args), axes)
    options = options.with_defaults(*_parameters_per_fit(x0, axes[0]))
    leaves, treedef = jax.tree_util.tree_flatten((x0, args))
    axes_leaves = tuple(axes_per_leaf(treedef, axes))
    mesh = batch_sharding(devices, leaves, axes_leaves)
    n_dev = 1 if mesh is None else mesh.n_shards
    pool = pool_shape(schedule, n_batch, chunk_size, slots, n_dev, progress, options)
    chunk = None if chunk_size is None or chunk_size >= n_batch else chunk_size
    run = functools.partial(
        _solve_batch_jit, fun, treedef, axes_leaves, chunk, n_batch, mesh, pool
    )
    if not progress:
        return run(False, (x0, args), options, None)
    if pool is None:  # a tick per chunk
        n_bars, unit = progress_ticks(n_batch, chunk, n_dev), "chunk"
    else:  # a tick per finished fit (the padding of a sharded batch included)
        n_bars, unit = -(-n_batch // n_dev) * n_dev, "fit"
    return with_progress_bar(
        lambda token: run(True, (x0, args), options, token),
        n_bars=n_bars,
        desc=f"{n_batch} fits",
        unit=unit,
    )


# Plain jax.jit, not `core.compiler.jit`: XLA's classic CPU emitters ran the batched
# loop 8-15% slower (expdecay, 2e4 curves, 4 interleaved pairs) for no faster
# first call, so batches keep XLA's defaults.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7))
def _solve_batch_jit(
    fun,
    treedef,
    axes_leaves,
    chunk,
    n_batch,
    mesh,
    pool,
    progress,
    inputs,
    options,
    token,
):
    leaves = treedef.flatten_up_to(inputs)
    # Batched leaves get their batch axis in front; shared leaves stay as they are.
    batched = [axis is not None for axis in axes_leaves]
    per_fit = [
        jnp.moveaxis(jnp.asarray(leaf), axis, 0)
        for leaf, axis in zip(leaves, axes_leaves, strict=True)
        if axis is not None
    ]
    shared = [leaf for leaf, b in zip(leaves, batched, strict=True) if not b]

    def combine(shared, batched_leaves):
        per, common = iter(batched_leaves), iter(shared)
        full = [next(per) if b else next(common) for b in batched]
        return jax.tree_util.tree_unflatten(treedef, full)

    def one(shared, batched_leaves):
        x0, args = combine(shared, batched_leaves)
        return solve(fun, x0, args, options=options)

    def pooled(shared, per_fit):
        """Fit the leading axis of ``per_fit`` through a pool of refilled slots."""
        n_slots, refill_size = pool
        return solve_refill(
            fun, shared, per_fit, combine, n_slots, refill_size, chunk, options,
            token if progress else None,
        )  # fmt: skip

    def one_chunk(shared, per_fit):
        sols = jax.vmap(one, in_axes=(None, 0))(shared, per_fit)
        if progress:  # after the chunk's fits: the tick depends on their result
            tick(token, sols.nfev[0])
        return sols

    def chunked(shared, per_fit):
        """Fit the leading axis of ``per_fit`` in chunks (vmap in, lax.map over)."""
        n = per_fit[0].shape[0]
        if chunk is None or chunk >= n:
            return one_chunk(shared, per_fit)
        n_chunks = -(-n // chunk)
        padded = [pad_rows(leaf, n_chunks * chunk) for leaf in per_fit]
        split = [leaf.reshape((n_chunks, chunk) + leaf.shape[1:]) for leaf in padded]
        sols = jax.lax.map(lambda c: one_chunk(shared, c), split)
        return jax.tree_util.tree_map(
            lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:n], sols
        )

    run = chunked if pool is None else pooled
    if mesh is None:
        return run(shared, per_fit)
    # One shard of the batch per device; each device fits its shard in chunks (or
    # runs its own pool).
    return shard_fits(run, mesh, shared, per_fit, n_batch)


def pool_shape(
    schedule: str,
    n_batch: int,
    chunk_size: int | None,
    slots: int | None,
    n_devices: int,
    progress: bool,
    options: SolveOptions,
) -> tuple[int, int] | None:
    """The schedule `solve_batch` runs: ``(slots, refill size)`` of a refill pool,
    or None for lock-step vmap chunks.

    ``"auto"`` takes the pool when a device has more fits than one pool width
    (``slots``, else ``chunk_size``) and neither a progress bar (cheaper on
    chunks, see below) nor what the pool does not support (the unrolled
    adjoint, ``linear_solver="cg"``, ``keep_jac=False``: ``options``) is asked for.
    """
    if schedule == "auto":
        per_device = -(-n_batch // n_devices)
        width = chunk_size if slots is None else slots
        several = width is not None and per_device > width
        # A bar ticks from inside the loop: the pool's programme then ran 1.6-2.3x
        # slower (any effect in its loop; 2e4 decays, expdecay, 2-core CPU) where
        # lock-step chunks tick between chunks for 1.03-1.15x, so "auto" takes those.
        poolable = not progress and options.adjoint == "implicit"
        poolable = poolable and options.linear_solver != "cg" and options.keep_jac
        schedule = "refill" if several and poolable else "vmap"
    if schedule != "refill":
        return None
    if slots is None:
        slots = DEFAULT_SLOTS if chunk_size is None else chunk_size
    return slots, max(1, min(DEFAULT_REFILL, slots // 8))


def _parameters_per_fit(x0: Any, x0_axes: Any) -> tuple[int, Any]:
    """``(n, dtype)`` of one fit's parameters: ``x0``'s leaves without their batch
    axis (``x0_axes``: one int or None per leaf), in the working float dtype."""
    leaves = jax.tree_util.tree_leaves(x0)
    axes = jax.tree_util.tree_structure(x0).flatten_up_to(x0_axes)
    n = sum(
        int(np.size(leaf)) // (1 if axis is None else int(np.shape(leaf)[axis]))
        for leaf, axis in zip(leaves, axes, strict=True)
    )
    dtypes = [jnp.result_type(leaf) for leaf in leaves]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return n, (jnp.result_type(*floats) if floats else jnp.result_type(float))


def broadcast_axes(in_axes: Any, tree: Any, names: str = "(x0, args)") -> Any:
    """``in_axes`` expanded to one entry (int or None) per leaf of ``tree`` (whose
    parts ``names`` names, for the error message)."""
    for entry in jax.tree_util.tree_leaves(in_axes):  # (None entries are no leaves)
        if isinstance(entry, bool) or not isinstance(entry, (int, np.integer)):
            raise ValueError(
                f"in_axes entries must be integers (an axis) or None, got {entry!r} "
                f"in in_axes={in_axes!r}"
            )
    if in_axes is None or isinstance(in_axes, (int, np.integer)):
        axis = None if in_axes is None else int(in_axes)
        return jax.tree_util.tree_map(lambda _: axis, tree)
    try:
        return jax.tree_util.tree_map(
            lambda axis, sub: jax.tree_util.tree_map(lambda _: axis, sub),
            in_axes,
            tree,
            is_leaf=lambda a: a is None,
        )
    except ValueError as err:
        raise ValueError(
            f"in_axes {in_axes!r} does not match the structure of {names}: {err}"
        ) from err


def axes_per_leaf(treedef, axes: Any) -> list:
    """One axis (int or None) per leaf of the tree ``treedef`` from the expanded
    ``axes`` (`broadcast_axes`); a None *input* (no leaves) takes no entry."""
    return treedef.flatten_up_to(axes)


def batch_size(tree: Any, axes: Any) -> int:
    """The common size of the batched axes of ``tree``'s leaves (``axes``: one int
    or None per leaf, as from `broadcast_axes`)."""
    sizes = set()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    axis_leaves = axes_per_leaf(treedef, axes)
    for leaf, axis in zip(leaves, axis_leaves, strict=True):
        if axis is not None:
            shape = jnp.shape(leaf)
            if not -len(shape) <= axis < len(shape):
                raise ValueError(
                    f"in_axes entry {axis} is out of range for a leaf of shape {shape}"
                )
            sizes.add(shape[axis])
    if not sizes:
        raise ValueError("in_axes must batch at least one input (all are None)")
    if len(sizes) > 1:
        raise ValueError(f"batched leaves disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()
