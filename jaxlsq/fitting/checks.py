"""`fit`'s checks and conversions of its inputs (Python, before tracing).

Concrete bad values raise errors that name the argument; under ``jit``/``vmap``
value checks are skipped and bad values show up in the fit's ``status``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from ..core.losses import check_loss
from ..core.validate import check_concrete, flat_like, one_output


def check_fit_call(model, loss, f_scale, solve_options) -> None:
    """The checks of `fit`'s arguments that do not depend on the data."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    check_loss("loss", loss)
    check_concrete(f_scale, "f_scale", lambda v: np.all(v > 0), "must be > 0")
    if callable(solve_options.get("jac")):
        raise TypeError(
            "fit does not take a callable jac (it would be the Jacobian of the "
            "weighted residuals); use jac='fwd' or jac='rev', or jaxlsq.solve."
        )


#: `fit`'s estimators: weighted least squares, or Poisson maximum likelihood.
ESTIMATORS = ("least_squares", "poisson")


def check_estimator(estimator, sigma, loss) -> None:
    """``estimator`` is one of `ESTIMATORS`; the Poisson one takes no ``sigma`` (the
    variance of a count is its mean) and no robust ``loss``."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator != "poisson":
        return
    if sigma is not None:
        raise ValueError(
            "sigma must be None with estimator='poisson': the variance of a Poisson "
            "count is its mean, so the model sets the weights"
        )
    if not (isinstance(loss, str) and loss == "linear"):
        raise ValueError(
            "loss must be 'linear' with estimator='poisson' (the deviance is the "
            f"likelihood's own loss), got {loss!r}"
        )


def check_counts(model, x, p0, y) -> None:
    """Poisson data: ``y >= 0``, and ``model(x, p0) > 0`` where it can be evaluated
    eagerly (concrete inputs). Under ``jit``/``vmap`` a negative count is reported
    as ``IMPROPER_INPUT`` and a non-positive model at ``p0`` as ``NONFINITE``."""
    check_concrete(
        y, "y", lambda v: np.all(v >= 0), "must be counts >= 0 for estimator='poisson'"
    )
    leaves = jax.tree_util.tree_leaves((x, p0, y))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    mu = np.asarray(model(x, jax.tree_util.tree_map(jnp.asarray, p0)))
    bad = ~((mu > 0) | ((mu == 0) & (np.asarray(y) == 0)))
    if np.any(bad):
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ValueError(
            f"model(x, p0) must be > 0 for estimator='poisson' (a Poisson mean); "
            f"it is {mu.reshape(-1)[i]!r} at flat index {i} ({int(bad.sum())} of "
            f"{bad.size} points <= 0)"
        )


def _array(value, dtype=None):
    """``value`` as an array of ``dtype`` (default: its own, canonicalised as JAX
    would): a `jax.Array` (or tracer) stays one; anything else becomes a numpy
    array, which the compiled fit takes as it is. Eager ``jnp`` conversions of
    host data each dispatched an XLA op: 5 per warm `fit`, a quarter of its
    Python time."""
    if isinstance(value, jax.Array):
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    try:
        value = np.asarray(value)
    except jax.errors.TracerArrayConversionError:  # a list holding tracers
        value = jnp.asarray(value)
        return value if dtype is None else value.astype(dtype)
    target = jax.dtypes.canonicalize_dtype(value.dtype if dtype is None else dtype)
    return value if value.dtype == target else value.astype(target)


def as_data(y, dtype) -> jax.Array | np.ndarray:
    """``y`` as a non-empty array of real numbers in ``dtype``."""
    y = _array(y)
    if not jnp.issubdtype(y.dtype, jnp.number) or jnp.issubdtype(
        y.dtype, jnp.complexfloating
    ):
        raise TypeError(f"y must be real numbers, got dtype {y.dtype}")
    if y.size == 0:
        raise ValueError("y must not be empty")
    return _array(y, dtype)


def float_params(p0, y):
    leaves = jax.tree_util.tree_leaves(p0)
    if not leaves:
        raise ValueError("p0 must contain at least one parameter, got an empty pytree")
    arrays = [_array(leaf) for leaf in leaves]
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.complexfloating) or not jnp.issubdtype(
            a.dtype, jnp.number
        ):
            raise TypeError(f"p0 must be real numbers, got dtype {a.dtype}")
    floats = [a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    y_dtype = _array(y).dtype
    if jnp.issubdtype(y_dtype, jnp.floating):
        floats.append(y_dtype)
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    # numpy leaves (no eager XLA dispatch, ~30 us each): the compiled fit takes
    # them as they are; an eager model call (`check_counts`) gets JAX arrays
    p0 = jax.tree_util.tree_map(lambda leaf: _array(leaf, dtype), p0)
    if sum(leaf.size for leaf in jax.tree_util.tree_leaves(p0)) == 0:
        raise ValueError("p0 must contain at least one parameter, got size 0")
    return p0, dtype


def _key_name(key) -> str:
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, SequenceKey):
        return f"[{key.idx}]"
    if isinstance(key, FlattenedIndexKey):
        return f"[{key.key}]"
    return str(key)


def param_names(p0) -> tuple[str, ...]:
    """One name per flat parameter: pytree path, ``[i, j]`` suffix for array leaves
    (``p`` for a bare array or sequence root)."""
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(p0)[0]:
        base = ""
        for key in path:
            part = _key_name(key)
            if part.startswith("["):
                base = (base or "p") + part
            else:
                base = f"{base}.{part}" if base else part
        shape = np.shape(leaf)
        if shape == ():
            names.append(base or "p")
        else:
            for idx in np.ndindex(*shape):
                names.append(f"{base or 'p'}[{','.join(map(str, idx))}]")
    return tuple(names)


def unflatten(flat, treedef, shapes):
    """Flat (n,) -> pytree of ``shapes`` (keeps ``flat``'s dtype, bool included)."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def check_model_shape(model, x, p0, y) -> None:
    """``model(x, p0)`` returns one array of ``y``'s shape (traced, not run)."""
    out = one_output(
        model,
        (x, p0),
        "model(x, p0)",
        "",
        f" (p0 structure {jax.tree_util.tree_structure(p0)})",
    )
    if tuple(out.shape) != tuple(y.shape):
        raise ValueError(
            f"model(x, p0) returns shape {tuple(out.shape)} but y has shape "
            f"{tuple(y.shape)}: x and y do not match (or the model broadcasts)"
        )


def flat_fixed(fixed, p0, n) -> np.ndarray:
    if fixed is None:
        return np.zeros(n, bool)
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(fixed)):
        raise TypeError(
            "fixed must be concrete (Python bools or numpy arrays): it sets the number "
            "of free parameters, so it cannot be traced by jit/vmap"
        )
    return np.asarray(flat_like(fixed, p0, n, bool, "fixed"))


def as_flat_starts(starts, p0, n, dtype):
    """Starting points -> flat (K, n): an array (K, n), or a pytree like ``p0`` whose
    leaves have a leading K axis."""
    p0_def = jax.tree_util.tree_structure(p0)
    p0_leaves = jax.tree_util.tree_leaves(p0)
    leaves = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(starts)]
    as_tree = jax.tree_util.tree_structure(starts) == p0_def and (
        len(p0_leaves) > 1 or leaves[0].ndim == p0_leaves[0].ndim + 1
    )
    if as_tree:
        for leaf, ref in zip(leaves, p0_leaves, strict=True):
            if leaf.ndim != ref.ndim + 1 or leaf.shape[1:] != ref.shape:
                raise ValueError(
                    f"starts: a leaf of shape {tuple(leaf.shape)} is not (K,) + the "
                    f"parameter shape {tuple(ref.shape)}"
                )
        ks = {leaf.shape[0] for leaf in leaves}
        if len(ks) != 1:
            raise ValueError(f"starts: leaves have different leading sizes {ks}")
        flat = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], 1)
    elif len(leaves) == 1 and leaves[0].ndim == 2 and leaves[0].shape[1] == n:
        flat = leaves[0]
    else:
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(
            f"starts must be an array of shape (K, {n}) (n = {n} parameters) or a "
            f"pytree like p0 with a leading K axis; got leaf shapes {shapes}"
        )
    if flat.shape[0] == 0:
        raise ValueError("starts must contain at least one starting point (K >= 1)")
    flat = flat.astype(dtype)
    check_concrete(flat, "starts", lambda v: np.all(np.isfinite(v)), "must be finite")
    return flat
