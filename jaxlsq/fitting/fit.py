"""`fit`: curve fitting on top of `solve` -- model, sigma, covariance, statistics.

``fit(model, x, y, p0)`` minimises the weighted residuals ``W (model(x, p) - y)``
with `solve` and returns a `FitResult`: parameters with standard errors, covariance
and correlation, goodness-of-fit statistics, and a text/HTML report
(`jaxlsq.fitting.report`).

Weighting follows ``scipy.optimize.curve_fit`` exactly: ``W`` is ``1 / sigma`` for a
scalar or per-point ``sigma`` and ``L^-1`` (``L`` the lower Cholesky factor) for a
data covariance matrix; without ``absolute_sigma`` the covariance is scaled by
``chisq / dof``. The covariance is the pseudo-inverse of ``J^T J`` at the solution,
``J`` the exact weighted Jacobian, with curve_fit's rank cutoff; what cannot be
estimated is reported as ``inf``, never as a number.

Everything after the solve is plain JAX: a `FitResult` passes through ``jit`` and
``vmap`` (the report of a batched result is a summary over the batch), and standard
errors are differentiable with respect to the data (``Solution.jac`` carries the
implicit-function tangents).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import (
    DictKey,
    FlattenedIndexKey,
    GetAttrKey,
    SequenceKey,
    register_pytree_node_class,
)

from ..core.solve import (
    _flat_like,  # per-parameter option -> flat (n,), as solve()
    solve,
)
from ..core.status import Status, status_message
from ..core.steps import right_svd

#: Values accepted by ``loss=`` (scipy ``least_squares``' names).
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


# ----------------------------------------------------------------------------------
# the result


@register_pytree_node_class
class FitResult:
    """Result of `fit`: a pytree, so it passes through ``jit`` and ``vmap``.

    Under ``jax.vmap`` every array field gains leading batch axes; `report` then
    summarises the batch. Parameter names, the fixed mask and the counts (``ndata``,
    ``nfree``, ``dof``) are static (part of the tree structure).

    Attributes
    ----------
    params : pytree
        Best-fit parameters, structure and dtype of ``p0``.
    stderr : pytree
        Standard errors ``sqrt(diag(covariance))`` in the structure of ``p0``: 0 for
        fixed parameters, ``inf`` for parameters that cannot be estimated (rank-
        deficient Jacobian, or ``dof <= 0`` without ``absolute_sigma``).
    covariance : Array, shape (n, n)
        Covariance of the flat parameters (``jax.flatten_util.ravel_pytree`` order),
        as ``scipy.optimize.curve_fit``'s ``pcov``. Rows/columns of fixed parameters
        are 0; those of parameters that cannot be estimated are ``inf``.
    correlation : Array, shape (n, n)
        ``cov_ij / sqrt(cov_ii cov_jj)`` (independent of the ``chisq / dof`` scaling).
        Rows/columns of fixed parameters are 0, those of non-estimable ones NaN.
    chisq : Array, shape ()
        ``sum(residuals**2)``, the weighted sum of squares (also with a robust loss).
    redchi : Array, shape ()
        ``chisq / dof`` (``inf`` when ``dof <= 0``).
    r_squared : Array, shape ()
        ``1 - chisq / chisq_0`` with ``chisq_0`` the weighted sum of squares of the
        best constant model (``y``'s mean, weighted by ``sigma`` as the fit is); NaN
        for constant data.
    aic, bic : Array, shape ()
        lmfit's definitions: ``m log(chisq / m) + 2 nfree`` and
        ``m log(chisq / m) + log(m) nfree`` (``m = ndata``).
    cost : Array, shape ()
        The minimised cost: ``chisq / 2``, or scipy's robust cost with a ``loss``.
    residuals : Array, shape of ``y``
        Weighted residuals at the solution (``(model - y) / sigma``, or
        ``L^-1 (model - y)`` reshaped for a covariance ``sigma``).
    best_fit : Array, shape of ``y``
        ``model(x, params)``.
    status, success, nfev, njev, n_iter : Array, shape ()
        From `jaxlsq.solve` (of the best start, with ``starts``).
    active_mask : Array, int32, shape (n,)
        -1 where a parameter ended on its lower bound, +1 on its upper, else 0.
    n_success : Array, int32, shape ()
        How many of the ``n_starts`` fits succeeded.
    names : tuple of str
        Parameter names (flat order): dict keys / pytree paths, ``[i]`` suffixes for
        array leaves.
    fixed : tuple of bool
        Which flat parameters were held fixed.
    ndata, nfree, dof : int
        Number of residuals ``m``, free parameters, and ``m - nfree``.
    n_starts : int
        Number of starting points fitted (1 without ``starts``).
    loss : str
        The loss used.
    """

    _DATA = (
        "params", "stderr", "covariance", "correlation", "chisq", "redchi",
        "r_squared", "aic", "bic", "cost", "residuals", "best_fit", "status",
        "success", "nfev", "njev", "n_iter", "active_mask", "n_success",
    )  # fmt: skip
    _META = ("names", "fixed", "ndata", "nfree", "dof", "n_starts", "loss")

    def __init__(self, **fields: Any):
        missing = set(self._DATA + self._META) - set(fields)
        if missing:
            raise TypeError(f"FitResult missing fields {sorted(missing)}")
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key, value):
        raise AttributeError("FitResult is immutable; use .replace(...)")

    def replace(self, **changes: Any) -> FitResult:
        """A copy with some fields replaced."""
        fields = {k: getattr(self, k) for k in self._DATA + self._META}
        fields.update(changes)
        return FitResult(**fields)

    def tree_flatten(self):
        data = tuple(getattr(self, k) for k in self._DATA)
        meta = tuple(getattr(self, k) for k in self._META)
        return data, meta

    @classmethod
    def tree_unflatten(cls, meta, data):
        return cls(
            **dict(zip(cls._DATA, data, strict=True)),
            **dict(zip(cls._META, meta, strict=True)),
        )

    def __getitem__(self, index) -> FitResult:
        """One fit (or a sub-batch) of a batched result: ``fits[i]``, ``fits[:10]``.

        Indexes the leading batch axes of every array field.
        """
        if not self.batch_shape:
            raise IndexError("a single FitResult cannot be indexed (no batch axis)")
        return jax.tree_util.tree_map(lambda v: v[index], self)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (``()`` for a single fit)."""
        return tuple(np.shape(self.status))

    @property
    def message(self) -> str | np.ndarray:
        """Why the (best) fit stopped (host side; needs a concrete status)."""
        return status_message(self.status)

    def report(self, correl_threshold: float = 0.1) -> str:
        """Text report in the spirit of lmfit's ``fit_report``.

        A single fit: fit statistics, values with standard errors (and percent),
        fixed/at-bound marks, correlations with ``|C| > correl_threshold``, status
        and message. A batched result: counts by status and, per parameter, mean,
        std, min, median and max over the successful fits.
        """
        from .report import batch_report, fit_report

        if self.batch_shape:
            return batch_report(self)
        return fit_report(self, correl_threshold)

    def __str__(self) -> str:
        if _is_traced(self):
            return repr(self)
        return self.report()

    def __repr__(self) -> str:
        if _is_traced(self):
            return f"FitResult(<traced>, names={self.names})"
        if self.batch_shape:
            return (
                f"FitResult(batch_shape={self.batch_shape}, names={self.names}, "
                f"n_success={int(np.sum(np.asarray(self.success)))})"
            )
        values = ", ".join(
            f"{name}={value:.6g}"
            for name, value in zip(
                self.names, np.asarray(flat_params(self)), strict=True
            )
        )
        return (
            f"FitResult({values}, chisq={float(self.chisq):.6g}, "
            f"status={int(self.status)})"
        )

    def _repr_html_(self) -> str:
        from .report import batch_report_html, fit_report_html

        if _is_traced(self):
            return f"<pre>{repr(self)}</pre>"
        if self.batch_shape:
            return batch_report_html(self)
        return fit_report_html(self)


def _is_traced(result: FitResult) -> bool:
    return isinstance(result.status, jax.core.Tracer)


def flat_params(result: FitResult, field: str = "params") -> jax.Array:
    """``result.params`` (or ``stderr``) flattened: shape ``batch_shape + (n,)``."""
    tree = getattr(result, field)
    batch = result.batch_shape
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate(
        [jnp.reshape(leaf, batch + (-1,)) for leaf in leaves], axis=-1
    )


# ----------------------------------------------------------------------------------
# fit


def fit(
    model: Callable[[Any, Any], Any],
    x: Any,
    y: Any,
    p0: Any,
    *,
    sigma: Any = None,
    absolute_sigma: bool = False,
    bounds: tuple[Any, Any] | None = None,
    fixed: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    starts: Any = None,
    **solve_options: Any,
) -> FitResult:
    """Fit ``model(x, params)`` to data ``y`` by Levenberg-Marquardt.

    Minimises ``0.5 * sum((W (model(x, params) - y))**2)`` (or a robust ``loss`` of the
    weighted residuals) with `jaxlsq.solve`, then computes the covariance of the
    parameters and fit statistics from the exact Jacobian at the solution. Works under
    ``jax.jit``, ``jax.vmap`` (for example over ``y``: a batch of fits) and
    ``jax.grad`` (implicit differentiation of the parameters and standard errors
    with respect to ``x``, ``y`` and ``sigma``).

    Parameters
    ----------
    model : callable
        ``model(x, params) -> predictions`` with the shape of ``y``, traceable by JAX.
    x : pytree of arrays
        Independent variable(s), passed to ``model`` unchanged.
    y : array_like, shape (...)
        Data (any shape; ``m = y.size`` residuals). Must be finite.
    p0 : pytree of floats
        Starting point; its structure is that of ``params`` (a dict of scalars is the
        usual case; names for the report come from the dict keys / pytree paths,
        with ``[i]`` suffixes for array leaves). ``n`` is its number of entries.
    sigma : None, scalar, array of ``y``'s shape, or array (m, m), optional
        scipy ``curve_fit``'s rules. Scalar or ``y``-shaped: standard deviations of
        ``y``, residuals ``(model - y) / sigma`` (must be finite and > 0). (m, m):
        covariance matrix of ``y`` (flattened), residuals ``L^-1 (model - y)`` with
        ``L = cholesky(sigma)`` (must be positive definite). Default: unit weights.
    absolute_sigma : bool, default False
        If False, ``sigma`` gives only relative weights: the covariance is scaled by
        ``chisq / dof`` (and is ``inf`` when ``dof <= 0``), as in ``curve_fit``.
    bounds : (lower, upper), optional
        Box constraints, passed to `solve`: scalars, pytrees like ``p0`` (leaves
        broadcast) or flat arrays of shape (n,); ``-inf``/``inf`` for open sides.
        Requires ``lower < upper`` and ``p0`` inside.
    fixed : pytree of bool like ``p0``, or flat bool array (n,), optional
        ``True`` holds a parameter at its ``p0`` value (standard error 0; it does not
        count in ``nfree``). Must be concrete (it sets the number of free parameters).
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"}, default "linear"
        Robust loss of scipy ``least_squares`` applied to the weighted residuals.
        With a robust loss the covariance is curve_fit's (``method="trf"``): the
        loss-rescaled Jacobian, scaled by ``2 * cost / dof``.
    f_scale : float, default 1.0
        Soft margin of the robust loss, in units of the weighted residuals.
    starts : array (K, n) or pytree like ``p0`` with a leading K axis, optional
        Multi-start: fit from each of the K starting points (flat in
        ``ravel_pytree`` order, or as pytrees) in one ``jax.vmap``-ed solve and keep
        the successful fit with the lowest cost (the lowest cost overall if none
        succeeded; its status tells). ``p0`` then only gives the structure (include
        it in ``starts`` to fit from it too). ``n_success`` counts the successes.
    **solve_options
        Passed to `jaxlsq.solve` (``ftol``, ``xtol``, ``gtol``, ``max_nfev``,
        ``factor``, ``diag``, ``linear_solver``, ``adjoint``, ``jac`` as a string).

    Returns
    -------
    FitResult
        Parameters, standard errors, covariance, correlation, ``chisq``, ``redchi``,
        ``dof``, ``r_squared``, ``aic``, ``bic``, residuals, ``best_fit``, status;
        ``.report()`` and ``.message`` on the host.

    Raises
    ------
    ValueError
        For concrete inputs: ``y`` empty or not finite, ``x`` not finite,
        ``model(x, p0)`` not of ``y``'s shape, ``sigma`` of a wrong shape, not
        finite, not positive (definite), an unknown ``loss``, ``f_scale <= 0``,
        ``bounds`` malformed, ``lower >= upper`` or ``p0`` outside them, ``starts``
        of a wrong shape, not finite or outside the bounds. Under ``jit``/``vmap``
        value checks are skipped and bad values show up in ``status``
        (``IMPROPER_INPUT`` or ``NONFINITE``).
    TypeError
        ``model`` not callable, a non-concrete ``fixed``, a callable ``jac``.

    Examples
    --------
    >>> import jax.numpy as jnp, jaxlsq
    >>> x = jnp.linspace(0.0, 4.0, 40)
    >>> y = 3.0 * jnp.exp(-1.3 * x) + 0.5 + 0.01 * jnp.sin(37.0 * x)
    >>> def model(x, p):
    ...     return p["a"] * jnp.exp(-p["k"] * x) + p["c"]
    >>> res = jaxlsq.fit(model, x, y, {"a": 1.0, "k": 1.0, "c": 0.0})
    >>> bool(res.success), round(float(res.params["k"]), 2), res.dof
    (True, 1.3, 37)
    >>> float(res.stderr["k"]) < 0.01
    True
    >>> print(res.report())  # doctest: +ELLIPSIS
    [[Fit Statistics]]
    ...
    [[Variables]]
        a: ...
    """
    check_fit_call(model, loss, f_scale, solve_options)
    p0, dtype = _float_params(p0, y)
    leaves, treedef = jax.tree_util.tree_flatten(p0)
    shapes = tuple(np.shape(leaf) for leaf in leaves)
    n = sum(int(np.prod(s)) for s in shapes)
    names = _param_names(p0)

    y = as_data(y, dtype)
    _check_concrete(
        y, "y", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
    )
    for leaf in jax.tree_util.tree_leaves(x):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            _check_concrete(
                leaf, "x", lambda v: np.all(np.isfinite(v)), "must be finite"
            )
    _check_model_shape(model, x, p0, y)
    kind, transform = _weights(sigma, y, dtype)

    fixed_mask = _flat_fixed(fixed, p0, n)
    bound_arrays = None
    if bounds is not None:
        bound_arrays = _flat_bounds(bounds, p0, n, dtype)
        flat_p0 = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
        _check_box(*bound_arrays, flat_p0, "p0")
    flat_starts = None
    if starts is not None:
        flat_starts = _flat_starts(starts, p0, n, dtype)
        if bound_arrays is not None:
            _check_box(*bound_arrays, flat_starts, "starts")

    options = fit_solve_options(
        solve_options, bound_arrays, fixed_mask, loss, f_scale, treedef, shapes
    )

    residual_fn = _Residuals(model, kind)
    args = (x, y, transform)
    if flat_starts is None:
        sol = solve(residual_fn, p0, args, **_solve_kwargs(options, treedef, shapes))
        n_success = sol.success.astype(jnp.int32)
        n_starts = 1
    else:
        if fixed_mask.any():  # fixed entries always come from p0
            flat_p0 = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
            flat_starts = jnp.where(fixed_mask, flat_p0, flat_starts)
        static = {k: v for k, v in options.items() if _is_static_option(v)}
        dynamic = {k: v for k, v in options.items() if k not in static}
        sol, n_success = _multistart(
            flat_starts,
            args,
            dynamic,
            residual_fn=residual_fn,
            treedef=treedef,
            shapes=shapes,
            static=tuple(sorted(static.items())),
        )
        n_starts = int(flat_starts.shape[0])

    return _finish(
        sol,
        x,
        y,
        transform,
        jnp.asarray(f_scale, dtype),
        n_success,
        residual_fn=residual_fn,
        fixed=tuple(bool(b) for b in fixed_mask),
        loss=loss,
        absolute_sigma=bool(absolute_sigma),
        names=names,
        n_starts=n_starts,
    )


def check_fit_call(model, loss, f_scale, solve_options) -> None:
    """The checks of `fit`'s arguments that do not depend on the data."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _check_concrete(f_scale, "f_scale", lambda v: np.all(v > 0), "must be > 0")
    if callable(solve_options.get("jac")):
        raise TypeError(
            "fit does not take a callable jac (it would be the Jacobian of the "
            "weighted residuals); use jac='fwd' or jac='rev', or jaxlsq.solve."
        )


def as_data(y, dtype) -> jax.Array:
    """``y`` as a non-empty array of real numbers in ``dtype``."""
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.number) or jnp.issubdtype(
        y.dtype, jnp.complexfloating
    ):
        raise TypeError(f"y must be real numbers, got dtype {y.dtype}")
    if y.size == 0:
        raise ValueError("y must not be empty")
    return y.astype(dtype)


def fit_solve_options(
    solve_options, bound_arrays, fixed_mask, loss, f_scale, treedef, shapes
) -> dict:
    """`solve`'s options for a fit: the user's, plus bounds (flat (lower, upper) ->
    pytrees like ``p0``), the fixed mask (a static tuple; see `_solve_kwargs`) and
    the loss."""
    options = dict(solve_options)
    if bound_arrays is not None:
        options["bounds"] = tuple(_unflatten(b, treedef, shapes) for b in bound_arrays)
    if fixed_mask.any():
        options["fixed"] = tuple(bool(b) for b in fixed_mask)
    if loss != "linear":
        options["loss"] = loss
        options["f_scale"] = f_scale
    return options


class _Residuals:
    """Weighted residuals ``W (model(x, params) - y)`` in the calling convention of
    `solve`. Instances compare equal per ``(model, kind)``, so compiled loops are
    reused across calls."""

    def __init__(self, model, kind):
        self.model = model
        self.kind = kind

    def __call__(self, params, x, y, transform):
        predicted = jnp.asarray(self.model(x, params)).astype(y.dtype)
        return _whiten(predicted - y, transform, self.kind)

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and other.model == self.model
            and other.kind == self.kind
        )

    def __hash__(self):
        return hash((type(self), self.model, self.kind))


def _whiten(r, transform, kind):
    """``W r``: ``r`` itself, ``r / sigma``, or ``L^-1 r`` (flattened)."""
    if kind is None:
        return r
    if kind == "1d":
        return r / transform
    return jax.scipy.linalg.solve_triangular(transform, jnp.ravel(r), lower=True)


def _is_static_option(value) -> bool:
    """Python scalars, strings and tuples of them select code (hashable, static)."""
    if isinstance(value, tuple):
        return all(_is_static_option(v) for v in value)
    return value is None or isinstance(value, (str, bool, int, float))


def _solve_kwargs(options, treedef, shapes):
    """`solve`'s keyword arguments: the fixed mask as a pytree like ``p0``."""
    options = dict(options)
    if "fixed" in options:
        mask = np.asarray(options["fixed"], bool)
        options["fixed"] = _unflatten(mask, treedef, shapes)
    return options


@functools.partial(
    jax.jit, static_argnames=("residual_fn", "treedef", "shapes", "static")
)
def _multistart(flat_starts, args, dynamic, *, residual_fn, treedef, shapes, static):
    """All starts in one vmapped `solve` (compiled once per shape), then the best."""
    options = _solve_kwargs({**dict(static), **dynamic}, treedef, shapes)

    def one(start):
        return solve(residual_fn, _unflatten(start, treedef, shapes), args, **options)

    return _best_start(jax.vmap(one)(flat_starts))


def _best_start(sols):
    """The successful start with the lowest cost (lowest cost if none succeeded)."""
    cost = jnp.where(jnp.isfinite(sols.cost), sols.cost, jnp.inf)
    ok_cost = jnp.where(sols.success, cost, jnp.inf)
    idx = jnp.where(jnp.any(sols.success), jnp.argmin(ok_cost), jnp.argmin(cost))
    best = jax.tree_util.tree_map(lambda a: a[idx], sols)
    return best, jnp.sum(sols.success).astype(jnp.int32)


# ----------------------------------------------------------------------------------
# covariance and statistics (jitted; every shape compiles once)


@functools.partial(
    jax.jit,
    static_argnames=(
        "residual_fn", "fixed", "loss", "absolute_sigma", "names", "n_starts"
    ),
)  # fmt: skip
def _finish(
    sol,
    x,
    y,
    transform,
    f_scale,
    n_success,
    *,
    residual_fn,
    fixed,
    loss,
    absolute_sigma,
    names,
    n_starts,
) -> FitResult:
    f, jac = sol.residuals, sol.jac
    m, n = jac.shape
    fixed_np = np.asarray(fixed, bool)
    nfree = int(np.sum(~fixed_np))
    dof = m - nfree
    chisq = jnp.sum(f * f)
    if loss == "linear":
        cov_jac, cov_chisq = jac, chisq
    else:  # curve_fit(method="trf", loss=...): loss-rescaled J, 2 * robust cost
        cov_jac, cov_chisq = _robust_jacobian(jac, f, loss, f_scale), 2 * sol.cost
    cov, corr = covariance(cov_jac, cov_chisq, fixed_np, absolute_sigma)
    stderr_flat = _safe_sqrt(jnp.diagonal(cov))
    _, unravel = jax.flatten_util.ravel_pytree(sol.params)

    dtype = f.dtype
    redchi = chisq / dof if dof > 0 else jnp.asarray(jnp.inf, dtype)
    tiny = jnp.finfo(dtype).tiny
    neg2_log_like = m * jnp.log(jnp.maximum(chisq, tiny * m) / m)
    aic = neg2_log_like + 2 * nfree
    bic = neg2_log_like + np.log(m) * nfree
    # R^2 against the best constant model under the same weights
    w1 = jnp.ravel(_whiten(jnp.ones_like(y), transform, residual_fn.kind))
    wy = jnp.ravel(_whiten(y, transform, residual_fn.kind))
    ybar = jnp.dot(w1, wy) / jnp.dot(w1, w1)
    sst = jnp.sum((wy - ybar * w1) ** 2)
    pos = sst > 0
    r_squared = jnp.where(pos, 1 - chisq / jnp.where(pos, sst, 1), jnp.nan)

    best_fit = jnp.asarray(residual_fn.model(x, sol.params)).astype(dtype)
    active = getattr(sol, "active_mask", None)
    if active is None:
        active = jnp.zeros((n,), jnp.int32)
    return FitResult(
        params=sol.params,
        stderr=unravel(stderr_flat),
        covariance=cov,
        correlation=corr,
        chisq=chisq,
        redchi=redchi,
        r_squared=r_squared,
        aic=aic,
        bic=bic,
        cost=sol.cost,
        residuals=jnp.reshape(f, y.shape),
        best_fit=jnp.reshape(best_fit, y.shape),
        status=sol.status,
        success=sol.success,
        nfev=sol.nfev,
        njev=sol.njev,
        n_iter=sol.n_iter,
        active_mask=active,
        n_success=n_success,
        names=names,
        fixed=fixed,
        ndata=m,
        nfree=nfree,
        dof=dof,
        n_starts=n_starts,
        loss=loss,
    )


def covariance(
    jac: jax.Array,
    chisq: jax.Array,
    fixed: np.ndarray,
    absolute_sigma: bool,
) -> tuple[jax.Array, jax.Array]:
    """Parameter covariance and correlation from the weighted Jacobian.

    Parameters
    ----------
    jac : Array, shape (m, n)
        Jacobian of the weighted residuals at the solution.
    chisq : Array, shape ()
        Weighted sum of squares used for the ``chisq / dof`` scaling.
    fixed : ndarray of bool, shape (n,)
        Fixed parameters (static): excluded from the fit, rows/columns 0.
    absolute_sigma : bool
        If False, scale by ``chisq / dof`` (``inf`` everywhere when ``dof <= 0``).

    Returns
    -------
    covariance, correlation : Array, shape (n, n)

    Notes
    -----
    ``(J^T J)^+`` from one SVD of ``J`` (`_gram_pinv`) with scipy ``curve_fit``'s
    cutoff: singular values ``<= max(m, n) * eps * s_max`` are dropped. A dropped
    direction has infinite variance: every free parameter with a component in it
    (diagonal of the null-space projector above ``eps``; a projector, so
    independent of the SVD's choice of basis) gets ``inf`` rows and columns; the
    other entries are those of the estimable block.
    """
    m, n = jac.shape
    dtype = jac.dtype
    eps = jnp.finfo(dtype).eps
    free = ~fixed
    dof = m - int(np.sum(free))
    jac_free = jnp.where(free[None, :], jac, 0)
    finite = jnp.all(jnp.isfinite(jac_free))
    jac_free = jnp.where(finite, jac_free, 0)
    cov0, null_diag = _gram_pinv(jac_free)
    bad = free & ((null_diag > eps) | ~finite)

    if absolute_sigma:
        cov = cov0
    elif dof > 0:
        cov = cov0 * (chisq / dof)
    else:  # scipy: the covariance cannot be estimated
        cov = jnp.full((n, n), jnp.inf, dtype)
    either_bad = bad[:, None] | bad[None, :]
    either_fixed = fixed[:, None] | fixed[None, :]
    cov = jnp.where(either_bad, jnp.inf, cov)
    cov = jnp.where(either_fixed, 0, cov)

    var0 = jnp.diagonal(cov0)
    good = free & ~bad & (var0 > 0)
    sd = jnp.where(good, jnp.sqrt(jnp.where(good, var0, 1)), 1)
    corr = cov0 / (sd[:, None] * sd[None, :])
    both_good = good[:, None] & good[None, :]
    corr = jnp.where(jnp.eye(n, dtype=bool), 1, corr)
    corr = jnp.where(both_good, corr, jnp.nan)
    corr = jnp.where(either_fixed, 0, corr)
    return cov, corr


def _gram_pinv_parts(jac):
    """``(J^T J)^+`` (n, n) and the null-space projector ``I - (J^T J)^+ J^T J``."""
    m, n = jac.shape
    eps = jnp.finfo(jac.dtype).eps
    # solve's SVD helper: LAPACK for one matrix, vectorised code under vmap (a Jacobi
    # eigen-decomposition of J^T J when well conditioned, else QR + Jacobi SVD)
    v, s = right_svd(jac, jnp.ones((n,), jac.dtype))
    keep = s > max(m, n) * eps * jnp.max(s)
    inv_s2 = jnp.where(keep, 1 / jnp.where(keep, s, 1) ** 2, 0)
    return (v * inv_s2) @ v.T, (v * ~keep) @ v.T


@jax.custom_jvp
def _gram_pinv(jac: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``C = (J^T J)^+`` (n, n) with curve_fit's rank cutoff, and the diagonal of
    the null-space projector ``N`` (n,) (no derivative).

    The derivative is that of a pseudo-inverse of constant rank (Golub & Pereyra
    1973), with ``A = J^T J`` symmetric and ``dA = dJ^T J + J^T dJ``:
    ``dC = -C dA C + C C dA N + N dA C C``. It is linear in ``dJ`` (so JAX transposes
    it for reverse mode) and has no ``1 / (s_i^2 - s_j^2)`` terms: it stays finite
    for repeated singular values, unlike differentiating through the SVD.
    """
    cov0, null = _gram_pinv_parts(jac)
    return cov0, jnp.diagonal(null)


@_gram_pinv.defjvp
def _gram_pinv_jvp(primals, tangents):
    (jac,), (djac,) = primals, tangents
    cov0, null = _gram_pinv_parts(jac)
    da = djac.T @ jac + jac.T @ djac
    cc = cov0 @ cov0
    dcov = -cov0 @ da @ cov0 + cc @ da @ null + null @ da @ cc
    null_diag = jnp.diagonal(null)
    return (cov0, null_diag), (dcov, jnp.zeros_like(null_diag))


def _safe_sqrt(v):
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1)), 0)


def _rho_derivatives(z, loss):
    """``rho'(z)`` and ``rho''(z)`` of scipy's losses (``z >= 0``)."""
    if loss == "soft_l1":
        t = 1 + z
        return t**-0.5, -0.5 * t**-1.5
    if loss == "huber":
        big = z > 1
        zb = jnp.where(big, z, 1)
        return jnp.where(big, zb**-0.5, 1), jnp.where(big, -0.5 * zb**-1.5, 0)
    if loss == "cauchy":
        t = 1 + z
        return 1 / t, -1 / t**2
    if loss == "arctan":
        t = 1 + z * z
        return 1 / t, -2 * z / t**2
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _robust_jacobian(jac, f, loss, f_scale):
    """scipy least_squares' ``scale_for_robust_loss_function``: ``J`` times
    ``sqrt(max(rho' + 2 rho'' f^2, eps))`` per row (rho for ``f / f_scale``)."""
    z = (f / f_scale) ** 2
    rho1, rho2 = _rho_derivatives(z, loss)
    rho2 = rho2 / f_scale**2
    scale = rho1 + 2 * rho2 * f**2
    scale = jnp.where(scale < np.finfo(float).eps, np.finfo(float).eps, scale)
    return jac * jnp.sqrt(scale)[:, None]


# ----------------------------------------------------------------------------------
# validation and conversions (Python, before tracing)


def _check_concrete(value, name: str, predicate, requirement: str) -> None:
    """Raise ValueError if a concrete ``value`` fails ``predicate``; skip tracers."""
    if isinstance(value, jax.core.Tracer):
        return
    if not predicate(np.asarray(value)):
        raise ValueError(f"{name} {requirement}, got {np.asarray(value)!r}")


def _float_params(p0, y):
    leaves = jax.tree_util.tree_leaves(p0)
    if not leaves:
        raise ValueError("p0 must contain at least one parameter, got an empty pytree")
    arrays = [jnp.asarray(leaf) for leaf in leaves]
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.complexfloating) or not jnp.issubdtype(
            a.dtype, jnp.number
        ):
            raise TypeError(f"p0 must be real numbers, got dtype {a.dtype}")
    floats = [a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    y_dtype = jnp.asarray(y).dtype
    if jnp.issubdtype(y_dtype, jnp.floating):
        floats.append(y_dtype)
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    p0 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), p0)
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


def _param_names(p0) -> tuple[str, ...]:
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


def _unflatten(flat, treedef, shapes):
    """Flat (n,) -> pytree of ``shapes`` (keeps ``flat``'s dtype, bool included)."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_model_shape(model, x, p0, y) -> None:
    try:
        out = jax.eval_shape(model, x, p0)
    except Exception as err:  # the user's model failed: say where, keep the cause
        raise ValueError(
            f"model(x, p0) could not be evaluated (p0 structure "
            f"{jax.tree_util.tree_structure(p0)}): {err}"
        ) from err
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) != 1:
        raise ValueError(
            f"model(x, params) must return one array, got a pytree with "
            f"{len(leaves)} leaves"
        )
    if tuple(leaves[0].shape) != tuple(y.shape):
        raise ValueError(
            f"model(x, p0) returns shape {tuple(leaves[0].shape)} but y has shape "
            f"{tuple(y.shape)}: x and y do not match (or the model broadcasts)"
        )


def sigma_kind(sigma, y) -> str | None:
    """How ``sigma`` weights ``y``: None (no sigma), ``"1d"`` (standard deviations:
    a scalar or ``y``'s shape) or ``"2d"`` (an (m, m) covariance matrix). Looks at
    dtypes and shapes only."""
    if sigma is None:
        return None
    s = jnp.asarray(sigma) if not hasattr(sigma, "shape") else sigma
    if not jnp.issubdtype(s.dtype, jnp.number) or jnp.issubdtype(
        s.dtype, jnp.complexfloating
    ):
        raise TypeError(f"sigma must be real numbers, got dtype {s.dtype}")
    m = int(np.prod(y.shape))
    if s.ndim == 0 or tuple(s.shape) == tuple(y.shape):
        return "1d"
    if tuple(s.shape) == (m, m):
        return "2d"
    raise ValueError(
        f"sigma must be a scalar, an array of y's shape {tuple(y.shape)}, or an "
        f"({m}, {m}) covariance matrix; got shape {tuple(s.shape)}"
    )


def _weights(sigma, y, dtype):
    """``(kind, transform)``: None, ``("1d", sigma)`` or ``("2d", cholesky(sigma))``."""
    kind = sigma_kind(sigma, y)
    if kind is None:
        return None, None
    s = jnp.asarray(sigma).astype(dtype)
    if kind == "1d":
        _check_concrete(
            s, "sigma", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
        )
        _check_concrete(s, "sigma", lambda v: np.all(v > 0), "must be > 0")
        return "1d", jnp.broadcast_to(s, y.shape)
    _check_concrete(
        s, "sigma", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
    )
    chol = jnp.linalg.cholesky(s)
    _check_concrete(
        chol,
        "sigma (a covariance matrix)",
        lambda v: np.all(np.isfinite(v)),
        "must be symmetric positive definite (its Cholesky factorisation failed)",
    )
    return "2d", chol


def _flat_fixed(fixed, p0, n) -> np.ndarray:
    if fixed is None:
        return np.zeros(n, bool)
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(fixed)):
        raise TypeError(
            "fixed must be concrete (Python bools or numpy arrays): it sets the number "
            "of free parameters, so it cannot be traced by jit/vmap"
        )
    return np.asarray(_flat_like(fixed, p0, n, bool, "fixed"))


def _flat_bounds(bounds, p0, n, dtype):
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(
            f"bounds must be a pair (lower, upper), got {type(bounds).__name__}"
        )
    lower = _flat_like(bounds[0], p0, n, dtype, "bounds[0] (lower)")
    upper = _flat_like(bounds[1], p0, n, dtype, "bounds[1] (upper)")
    if not _traced(lower, upper):
        lo, hi = np.asarray(lower), np.asarray(upper)
        bad = ~(lo < hi)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"bounds must satisfy lower < upper for every parameter; at flat "
                f"index {i}: lower={lo[i]!r}, upper={hi[i]!r}"
            )
    return lower, upper


def _traced(*values) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in values)


def _check_box(lower, upper, points, name) -> None:
    if _traced(lower, upper, points):
        return
    lo, hi, p = np.asarray(lower), np.asarray(upper), np.asarray(points)
    outside = (p < lo) | (p > hi)
    if outside.any():
        raise ValueError(
            f"{name} must lie within bounds: {int(outside.sum())} value(s) outside "
            f"(first at flat index {int(np.argwhere(outside)[0][-1])})"
        )


def _flat_starts(starts, p0, n, dtype):
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
    _check_concrete(flat, "starts", lambda v: np.all(np.isfinite(v)), "must be finite")
    return flat


__all__ = ["LOSSES", "FitResult", "Status", "covariance", "fit", "flat_params"]
