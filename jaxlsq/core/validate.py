"""Checks and conversions of `jaxlsq.solve`'s inputs, in Python before tracing.

A concrete bad value raises an error that names the argument; a traced one is
skipped here and reported by the loop as ``Status.IMPROPER_INPUT``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .caches import OUTPUT_SHAPES as _OUTPUTS
from .caches import RESIDUAL_SIZES as _RESIDUAL_SIZES


def as_float_pytree(x0: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("x0 must contain at least one parameter, got an empty pytree")

    def to_float(leaf):
        # arrays pass through untouched (an eager jnp.asarray costs ~40 us per call)
        if not isinstance(leaf, jax.Array | np.ndarray):
            leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(f"x0 must be real floating point, got dtype {leaf.dtype}")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = leaf.astype(jnp.result_type(float))
        return leaf

    x0 = jax.tree_util.tree_map(to_float, x0)
    if sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(x0)) == 0:
        raise ValueError("x0 must contain at least one parameter, got size 0")
    return x0


def _abstract_signature(tree: Any) -> tuple:
    """Hashable (structure, shapes, dtypes) of a pytree: what tracing depends on."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(_leaf_signature(leaf) for leaf in leaves)


def _leaf_signature(leaf) -> tuple:
    # arrays: their shape and canonical dtype, read directly (jnp.result_type
    # costs ~10 us a leaf, a tenth of a warm fit's Python); the same values
    if isinstance(leaf, jax.Array | np.ndarray):
        return leaf.shape, jax.dtypes.canonicalize_dtype(leaf.dtype)
    return jnp.shape(leaf), jnp.result_type(leaf)


def residual_size(fun, x0, args) -> int:
    """Number of residuals ``m``; cached so a warm call does not re-trace ``fun``."""
    try:
        key = (fun, _abstract_signature(x0), _abstract_signature(args))
        hash(key)
    except TypeError:  # unhashable leaf (e.g. a Python object): no caching
        return _trace_residual_size(fun, x0, args)
    m = _RESIDUAL_SIZES.get(key)
    if m is None:
        m = _trace_residual_size(fun, x0, args)
        _RESIDUAL_SIZES.put(key, m)
    return m


def one_output(fn, args: tuple, call: str, what: str, context: str = ""):
    """The shape and dtype (``jax.ShapeDtypeStruct``) of ``fn(*args)``, traced
    without running it; ``fn`` must return one array. ``call`` (e.g.
    ``"fun(x0, *args)"``) and ``what`` name the call and its output in errors,
    ``context`` describes the arguments. Cached per (``fn``, ``call``, the
    arguments' structure, shapes and dtypes), as `residual_size` is: a warm `fit`
    does not trace its model again (~0.2 ms a call)."""
    try:
        key = (fn, call, _abstract_signature(args))
        hash(key)
    except TypeError:  # unhashable leaf (e.g. a Python object): no caching
        key = None
    out = None if key is None else _OUTPUTS.get(key)
    if out is None:
        out = _one_output(fn, args, call, what, context)
        if key is not None:
            _OUTPUTS.put(key, out)
    return out


def _one_output(fn, args: tuple, call: str, what: str, context: str):
    try:
        out = jax.eval_shape(fn, *args)
    except Exception as err:  # the user's function failed: say where, keep the cause
        raise ValueError(f"{call} could not be evaluated{context}: {err}") from err
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) != 1:
        raise ValueError(
            f"{call.split('(')[0]} must return one array{what}, got a pytree with "
            f"{len(leaves)} leaves"
        )
    return leaves[0]


def _trace_residual_size(fun, x0, args) -> int:
    shapes = [getattr(a, "shape", type(a).__name__) for a in args]
    out = one_output(
        fun,
        (x0, *args),
        "fun(x0, *args)",
        " of residuals",
        f" with x0 of structure {jax.tree_util.tree_structure(x0)} and "
        f"{len(args)} args (shapes {shapes})",
    )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"fun must return floating-point residuals, got dtype {out.dtype}"
        )
    return int(np.prod(out.shape))


def check_concrete(value, name: str, predicate, requirement: str) -> None:
    """Raise ValueError if a concrete ``value`` fails ``predicate``; skip tracers."""
    if isinstance(value, jax.core.Tracer):
        return  # checked inside the loop, reported as Status.IMPROPER_INPUT
    if not predicate(np.asarray(value)):
        raise ValueError(f"{name} {requirement}, got {np.asarray(value)!r}")


def flat_like(tree: Any, x0: Any, n: int, dtype, name: str) -> jax.Array:
    """Flatten a per-parameter option to (n,) in ``ravel_pytree(x0)`` order.

    ``tree`` is a scalar (same value for every parameter), a flat (n,) array, or a
    pytree with the structure of ``x0`` whose leaves broadcast to the matching leaves
    of ``x0``. Its leaves must be booleans for a bool ``dtype`` (a mask: ``1.0`` or
    ``"no"`` is not one) and real numbers otherwise; anything else raises
    ``ValueError`` naming ``name``.
    """
    if not jax.tree_util.tree_leaves(tree):
        raise ValueError(f"{name} must not be empty")
    leaves_in = jax.tree_util.tree_leaves(tree)
    for leaf in leaves_in:
        _check_leaf_kind(leaf, dtype, name)
    # numpy for concrete values: eager jnp ops cost ~10 us each on every call
    traced = any(isinstance(v, jax.core.Tracer) for v in leaves_in)
    xp = jnp if traced else np
    x0_def = jax.tree_util.tree_structure(x0)
    if isinstance(tree, (list, tuple)) and jax.tree_util.treedef_is_leaf(x0_def):
        try:  # an array x0: a list is one array
            tree = xp.stack([xp.asarray(v) for v in tree])
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name}: a list for an array x0 must be one flat array of the n={n} "
                f"parameters (or a scalar), got {tree!r:.80}"
            ) from err
        leaves_in = [tree]
    if not _is_container(tree):
        if np.ndim(tree) == 0:
            return xp.full((n,), tree, dtype)
        if np.shape(tree) == (n,):  # already flat, in ravel_pytree order
            return xp.asarray(tree, dtype)
    tree_def = jax.tree_util.tree_structure(tree)
    if tree_def != x0_def:
        raise ValueError(
            f"{name} must be a scalar, a flat array of the n={n} parameters or have "
            f"the structure of x0 ({x0_def}), got {tree_def}"
        )
    flat = []
    for leaf, ref in zip(leaves_in, jax.tree_util.tree_leaves(x0), strict=True):
        try:
            flat.append(xp.ravel(xp.broadcast_to(xp.asarray(leaf, dtype), ref.shape)))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name}: a leaf of shape {np.shape(leaf)} does not broadcast to the "
                f"matching x0 leaf of shape {ref.shape}"
            ) from err
    return xp.concatenate(flat)


def _check_leaf_kind(leaf: Any, dtype, name: str) -> None:
    """Raise naming ``name`` unless ``leaf`` holds booleans (for a bool ``dtype``)
    or real numbers (otherwise)."""
    kind = getattr(leaf, "dtype", None)
    kind = np.asarray(leaf).dtype.kind if kind is None else np.dtype(kind).kind
    want_bool = np.dtype(dtype) == np.bool_
    allowed = "b" if want_bool else "biuf"
    if kind not in allowed:
        what = "booleans (True = fixed)" if want_bool else "real numbers"
        raise ValueError(
            f"{name} must hold {what}, got a leaf {leaf!r:.60}"
            if kind in "OSU"
            else f"{name} must hold {what}, got a leaf of dtype "
            f"{getattr(leaf, 'dtype', np.asarray(leaf).dtype)}"
        )


def _is_container(tree: Any) -> bool:
    return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))


def flat_bounds(bounds, x0, n, dtype):
    """``bounds`` -> (lower, upper) flat (n,) arrays, or (None, None)."""
    if bounds is None:
        return None, None
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError(
            "bounds must be a pair (lower, upper) of scalars or pytrees like x0, got "
            f"{type(bounds).__name__}"
            + (f" of length {len(bounds)}" if isinstance(bounds, tuple | list) else "")
        )
    return (
        flat_like(bounds[0], x0, n, dtype, "bounds[0] (lower)"),
        flat_like(bounds[1], x0, n, dtype, "bounds[1] (upper)"),
    )


def check_bounds(lower, upper, x0, name: str = "x0") -> None:
    """scipy's rules: ``lower < upper`` strictly (n,), and the starting point(s)
    ``x0`` inside the closed box: a pytree like the parameters, or an array of
    starting points (K, n) (``name`` names them in the message)."""
    if any(isinstance(v, jax.core.Tracer) for v in (lower, upper)):
        return  # reported as Status.IMPROPER_INPUT inside the loop
    lo, hi = np.asarray(lower), np.asarray(upper)
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
        raise ValueError("bounds must not contain NaN")
    bad = np.flatnonzero(~(lo < hi))
    if bad.size:
        raise ValueError(
            f"bounds: each lower bound must be strictly less than its upper bound "
            f"(lower < upper); violated at flat parameter index {bad.tolist()} "
            f"(lower {lo[bad]}, upper {hi[bad]}). Use fixed= to hold a parameter "
            "constant."
        )
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves or any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    x = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    x = x.reshape(-1, lo.size)  # one row per starting point
    rows, cols = np.nonzero((x < lo) | (x > hi))
    if rows.size:
        first = rows == rows[0]
        where = "" if x.shape[0] == 1 else f" (starting point {int(rows[0])})"
        bad, vals = cols[first], x[rows[0]][cols[first]]
        raise ValueError(
            f"{name} is infeasible: outside bounds{where} at flat parameter index "
            f"{bad.tolist()} ({name} {vals}, lower {lo[bad]}, upper {hi[bad]})"
        )
