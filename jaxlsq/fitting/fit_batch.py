"""`fit_batch`: `fit` for many curves at once, on `solve_batch`'s schedules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..batch.sharding import batch_sharding, first_fit, vmap_over_shards
from ..batch.solve_batch import axes_per_leaf, batch_size, broadcast_axes, solve_batch
from ..core.validate import check_bounds, flat_bounds
from .checks import (
    as_data,
    check_estimator,
    check_fit_call,
    check_model_shape,
    flat_fixed,
    float_params,
    param_names,
)
from .degeneracy import warn_if_degenerate
from .fit import fit_solve_options
from .result import FitResult
from .statistics import fit_result
from .weights import Residuals, sigma_kind, sigma_transform

#: Default ``in_axes`` for ``(x, y, p0, sigma)``: one abscissa, one curve per row of
#: ``y``, one starting point and one ``sigma`` for all.
DEFAULT_IN_AXES = (None, 0, None, None)


def fit_batch(
    model: Callable[[Any, Any], Any],
    x: Any,
    y: Any,
    p0: Any,
    *,
    sigma: Any = None,
    in_axes: Any = DEFAULT_IN_AXES,
    chunk_size: int | None = 1024,
    schedule: str = "auto",
    slots: int | None = None,
    devices: Any = None,
    progress: bool = False,
    absolute_sigma: bool = False,
    bounds: tuple[Any, Any] | None = None,
    fixed: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    estimator: str = "least_squares",
    **solve_options: Any,
) -> FitResult:
    """Fit ``model(x, params)`` to many curves: `fit`, batched like `solve_batch`.

    The same fits as ``jax.vmap(lambda x, y, p0, sigma: fit(model, x, y, p0,
    sigma=sigma, ...), in_axes)``, but the solves run on `solve_batch`'s schedules
    (lock-step chunks or a refilled pool of ``chunk_size`` fits, optionally sharded
    over ``devices``), then the covariances and statistics of every fit are computed
    in one vectorised pass.

    Parameters
    ----------
    model, x, y, p0, sigma
        As for `fit`, with a batch axis on the inputs that ``in_axes`` says are
        batched: ``y`` (B, ...) for B curves, and any of ``x`` (B, ...), ``p0``
        (leaves (B, ...)) and ``sigma`` ((B,), (B, *y.shape) or (B, m, m)).
    in_axes : int, None or 4-tuple, default ``(None, 0, None, None)``
        ``jax.vmap``'s convention for ``(x, y, p0, sigma)``: the default shares x,
        p0 and sigma and batches y along axis 0; ``(None, 0, 0, 0)`` also gives each
        curve its own start and sigma. Entries may be pytrees (for pytree ``x`` or
        ``p0``).
    chunk_size, schedule, slots, devices, progress
        As for `solve_batch` (fits in flight at once, lock-step ``"vmap"`` chunks or
        a ``"refill"`` pool, sharding over devices, a tqdm bar).
    absolute_sigma, bounds, fixed, loss, f_scale, estimator, **solve_options
        As for `fit`, shared by every curve (``starts`` is not supported here:
        ``jax.vmap(fit)`` handles multi-start batches).

    Returns
    -------
    FitResult
        Every array field with a leading batch axis of size B; each fit has its own
        ``status``. ``result.report()`` summarises the batch, ``result[i]`` is fit
        ``i``.

    Raises
    ------
    ValueError, TypeError
        For what applies to every curve: ``in_axes`` that do not match the inputs,
        batched inputs that disagree on B, ``model(x, p0)`` not of a curve's shape,
        ``sigma`` of a wrong shape, bad ``bounds``/``fixed``/``loss``/options.
        Values are not checked curve by curve: a curve with NaN data (or a start
        outside the bounds) gets its own failing ``status`` and leaves every other
        fit unchanged.

    Examples
    --------
    >>> import jax.numpy as jnp, jaxlsq
    >>> x = jnp.linspace(0.0, 4.0, 40)
    >>> ys = jnp.stack([a * jnp.exp(-1.3 * x) for a in (1.0, 2.0, 3.0)])
    >>> def model(x, p):
    ...     return p["a"] * jnp.exp(-p["k"] * x)
    >>> res = jaxlsq.fit_batch(model, x, ys, {"a": 1.0, "k": 1.0})
    >>> [round(float(a), 3) for a in res.params["a"]], bool(res.success.all())
    ([1.0, 2.0, 3.0], True)
    """
    check_fit_call(model, loss, f_scale, solve_options)
    check_estimator(estimator, sigma, loss)
    if "starts" in solve_options:
        raise TypeError(
            "fit_batch does not take starts; use jax.vmap(fit) for multi-start batches"
        )
    inputs = (x, y, p0, sigma)
    axes = broadcast_axes(in_axes, inputs, "(x, y, p0, sigma)")
    n_batch = batch_size(inputs, axes)
    x_axes, y_axis, p0_axes, sigma_axis = axes

    # One curve's inputs fix what every curve shares: dtype, parameter structure and
    # names, the kind of weights, the options.
    x1, y1, p1, sigma1 = _first_problem(inputs, axes)
    p1, dtype = float_params(p1, y1)
    leaves, treedef = jax.tree_util.tree_flatten(p1)
    shapes = tuple(np.shape(leaf) for leaf in leaves)
    n = sum(int(np.prod(s)) for s in shapes)
    y1 = as_data(y1, dtype)
    check_model_shape(model, x1, p1, y1)
    kind = "poisson" if estimator == "poisson" else sigma_kind(sigma1, y1)
    fixed_mask = flat_fixed(fixed, p1, n)
    bound_arrays = None
    if bounds is not None:  # lower < upper here; each curve's p0: its status
        bound_arrays = flat_bounds(bounds, p1, n, dtype)
        check_bounds(*bound_arrays, ())
    options = fit_solve_options(
        solve_options, bound_arrays, fixed_mask, loss, f_scale, where="fit_batch"
    )

    y = jnp.moveaxis(as_data(y, dtype), y_axis, 0)
    p0 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), p0)
    if sigma_axis is None and kind in ("1d", "2d"):  # shared: fit's checks, eagerly
        sigma_transform(sigma, y1, dtype)
    transform, transform_axis = _transforms(kind, sigma, sigma_axis, y1, dtype)
    residual_fn = Residuals(model, kind)
    sols = solve_batch(
        residual_fn,
        p0,
        (x, y, transform),
        in_axes=(p0_axes, (x_axes, 0, transform_axis)),
        chunk_size=chunk_size,
        schedule=schedule,
        slots=slots,
        devices=devices,
        progress=progress,
        options=options,
    )
    finish = functools.partial(
        fit_result,
        residual_fn=residual_fn,
        fixed=tuple(bool(b) for b in fixed_mask),
        loss=loss,
        absolute_sigma=bool(absolute_sigma),
        names=param_names(p1),
        n_starts=1,
    )
    f_scale = jnp.asarray(f_scale, dtype)
    n_success = sols.success.astype(jnp.int32)
    in_axes_finish = (0, x_axes, 0, transform_axis, None, 0)
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    sharding = batch_sharding(devices, leaves, axes_per_leaf(treedef, axes))
    results = vmap_over_shards(finish, sharding, in_axes_finish, n_batch)(
        sols, x, y, transform, f_scale, n_success
    )
    warn_if_degenerate(results, "fit_batch")
    return results


def _first_problem(inputs, axes):
    """Problem 0 of the batch: batched leaves indexed at 0 along their axis, shared
    leaves as they are."""
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    axis_leaves = axes_per_leaf(treedef, axes)
    first = [
        leaf if axis is None else first_fit(leaf, axis)
        for leaf, axis in zip(leaves, axis_leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, first)


def _transforms(kind, sigma, sigma_axis, y1, dtype):
    """``(transform, axis)``: `fit`'s weights for every curve and their batch axis
    (0, or None when shared). No value checks: a bad sigma (zero, NaN, not positive
    definite) makes that curve's residuals non-finite, which its status reports."""

    def one(s):
        s = jnp.asarray(s, dtype)
        if kind == "1d":  # the weights of `whiten`: 1 / sigma
            return jnp.broadcast_to(1 / s, y1.shape)
        return jnp.linalg.cholesky(s)

    if kind in (None, "poisson"):
        return None, None
    if sigma_axis is None:
        return one(sigma), None
    return jax.vmap(one, in_axes=sigma_axis)(sigma), 0
