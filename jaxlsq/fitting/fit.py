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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.compiler import jit
from ..core.options import SolveOptions
from ..core.solve import prepare, solve, solve_prepared
from ..core.validate import check_bounds, check_concrete, flat_bounds
from .checks import (
    as_data,
    as_flat_starts,
    check_counts,
    check_estimator,
    check_fit_call,
    check_model_shape,
    flat_fixed,
    float_params,
    param_names,
    unflatten,
)
from .degeneracy import warn_if_degenerate
from .result import FitResult
from .statistics import fit_result
from .weights import Residuals, sigma_transform

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
    estimator: str = "least_squares",
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
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"} or callable
        Robust loss of scipy ``least_squares`` applied to the weighted residuals
        (default "linear"); a callable ``loss(z) -> (3, m)`` rows ``rho, rho',
        rho''`` as scipy's, traceable by JAX.
        With a robust loss the covariance is curve_fit's (``method="trf"``): the
        loss-rescaled Jacobian, scaled by ``2 * cost / dof``.
    f_scale : float, default 1.0
        Soft margin of the robust loss, in units of the weighted residuals.
    estimator : {"least_squares", "poisson"}, default "least_squares"
        ``"poisson"``: maximum likelihood for counts ``y ~ Poisson(model(x, p))``
        (no ``sigma``, no robust ``loss``). Minimises the deviance ``2 sum(mu - y +
        y log(y / mu))`` through its deviance residuals
        (`jaxlsq.poisson_deviance_residuals`): ``chisq`` is the deviance,
        ``pearson_chisq`` Pearson's statistic, ``covariance`` the inverse Fisher
        information (the Cramer-Rao bound; never scaled, ``absolute_sigma`` does
        not apply), ``aic``/``bic`` from the Poisson log-likelihood and
        ``r_squared`` the deviance pseudo-R^2 ``1 - D / D_0``. ``y`` must be >= 0
        and ``model(x, p0)`` > 0; a trial step where the model is not positive is
        rejected.
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
        ``dof``, ``r_squared``, ``aic``, ``bic``, residuals, ``best_fit``, status,
        ``degeneracy``; ``.report()`` and ``.message`` on the host; bands
        (``.eval_uncertainty(x)``, ``.prediction_band(x)``) and ``.eval(x)``.

    Warns
    -----
    DegenerateFitWarning
        A successful eager fit that is degenerate (a parameter that cannot be
        estimated, ``|correlation| > 0.999``, ``R^2 < 0.05``; Poisson: a model at 0
        on a zero-count point): the warning names the parameters and suggests
        ``starts`` (or, at 0, a bound); ``result.degeneracy`` holds the flags (also
        under ``jit``/``vmap``, which do not warn).

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
    setup = fit_setup(
        model, x, y, p0, sigma, bounds, fixed, loss, f_scale, estimator,
        solve_options,
    )  # fmt: skip
    p0, y, transform, fixed_mask = setup.p0, setup.y, setup.transform, setup.fixed
    residual_fn, args, options = setup.residual_fn, setup.args, setup.options
    leaves, treedef, shapes = setup.leaves, setup.treedef, setup.shapes
    flat_starts = None
    if starts is not None:
        flat_starts = as_flat_starts(starts, p0, setup.n, setup.dtype)
        if setup.bounds is not None:
            check_bounds(*setup.bounds, flat_starts, "starts")
    statics = dict(
        residual_fn=residual_fn,
        fixed=tuple(bool(b) for b in fixed_mask),
        loss=loss,
        absolute_sigma=bool(absolute_sigma),
        names=setup.names,
    )
    if flat_starts is None and options.monitor is None and not fixed_mask.any():
        # The lean path: checks done, one compiled program (solve + statistics),
        # one dispatch, the solution never leaves the device in between. Not with
        # fixed parameters: the statistics are compiled per fixed set, and a
        # notebook that fixes another parameter then recompiles them alone (0.4
        # s), not the loop (which takes the mask traced) with them.
        x0, args, resolved = prepare(residual_fn, p0, args, options)
        result = _fit_program(x0, args, resolved, **statics)
        warn_if_degenerate(result, "fit")
        return result
    if flat_starts is None:  # a monitor: solve raises its exception as itself
        sol = solve(residual_fn, p0, args, options=options)
        n_success = sol.success.astype(jnp.int32)
        n_starts = 1
    else:
        if fixed_mask.any():  # fixed entries always come from p0
            flat_p0 = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
            flat_starts = jnp.where(fixed_mask, flat_p0, flat_starts)
        sol, n_success = _multistart(
            flat_starts,
            args,
            options,
            residual_fn=residual_fn,
            treedef=treedef,
            shapes=shapes,
        )
        n_starts = int(flat_starts.shape[0])

    result = fit_result(
        sol,
        x,
        y,
        transform,
        jnp.asarray(f_scale, setup.dtype),
        n_success,
        n_starts=n_starts,
        **statics,
    )
    warn_if_degenerate(result, "fit")
    return result


@jit(static_argnames=("residual_fn", "fixed", "loss", "absolute_sigma", "names"))
def _fit_program(x0, args, options, *, residual_fn, fixed, loss, absolute_sigma, names):
    """One fit, from `prepare`'s checked arguments to its `FitResult`, as one
    program: `solve`'s loop and `fit_result`'s statistics (both inlined here)."""
    sol = solve_prepared(residual_fn, x0, args, options)
    x, y, transform = args
    return fit_result(
        sol,
        x,
        y,
        transform,
        options.f_scale,
        sol.success.astype(jnp.int32),
        residual_fn=residual_fn,
        fixed=fixed,
        loss=loss,
        absolute_sigma=absolute_sigma,
        names=names,
        n_starts=1,
    )


class FitSetup(NamedTuple):
    """What `fit` hands to `solve`, checked and flattened (`fit_setup`); shared by
    the profile fits of `jaxlsq.fitting.profile`."""

    p0: Any  # pytree of dtype arrays
    dtype: Any
    leaves: list
    treedef: Any
    shapes: tuple
    n: int
    names: tuple
    y: jax.Array | np.ndarray  # (host data stays numpy until the compiled fit)
    kind: str | None  # `Residuals.kind`
    transform: Any  # the weights (None, 1/sigma or a Cholesky factor)
    fixed: np.ndarray  # flat (n,) bool
    bounds: tuple | None  # flat (lower, upper), (n,) each
    options: SolveOptions  # defaults filled in for n and dtype
    residual_fn: Residuals
    args: tuple  # (x, y, transform)


def fit_setup(
    model, x, y, p0, sigma, bounds, fixed, loss, f_scale, estimator, solve_options
) -> FitSetup:
    """Check `fit`'s arguments (eagerly where they are concrete) and build the
    residual function, its arguments and the `SolveOptions` of the fit."""
    check_fit_call(model, loss, f_scale, solve_options)
    check_estimator(estimator, sigma, loss)
    p0, dtype = float_params(p0, y)
    leaves, treedef = jax.tree_util.tree_flatten(p0)
    shapes = tuple(np.shape(leaf) for leaf in leaves)
    n = sum(int(np.prod(s)) for s in shapes)

    y = as_data(y, dtype)
    check_concrete(y, "y", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)")
    for leaf in jax.tree_util.tree_leaves(x):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            check_concrete(
                leaf, "x", lambda v: np.all(np.isfinite(v)), "must be finite"
            )
    check_model_shape(model, x, p0, y)
    if estimator == "poisson":
        check_counts(model, x, p0, y)
        kind, transform = "poisson", None
    else:
        kind, transform = sigma_transform(sigma, y, dtype)

    if isinstance(y, np.ndarray) and y.size > 4096:
        # Where a fit runs as two programs (a monitor, starts, fixed parameters;
        # the profile fits) host data goes to both: sent once when large; a small
        # y is cheaper sent twice than converted eagerly (one dispatch, ~30 us).
        y = jnp.asarray(y)
    fixed_mask = flat_fixed(fixed, p0, n)
    bound_arrays = None
    if bounds is not None:
        bound_arrays = flat_bounds(bounds, p0, n, dtype)
        check_bounds(*bound_arrays, p0, "p0")
    options = fit_solve_options(
        solve_options, bound_arrays, fixed_mask, loss, f_scale, where="fit"
    ).with_defaults(n, dtype)  # given or default: the same compiled multi-start
    residual_fn = Residuals(model, kind)
    return FitSetup(
        p0, dtype, leaves, treedef, shapes, n, param_names(p0), y, kind, transform,
        fixed_mask, bound_arrays, options, residual_fn, (x, y, transform),
    )  # fmt: skip


def fit_solve_options(
    solve_options: dict, bound_arrays, fixed_mask, loss, f_scale, *, where: str
) -> SolveOptions:
    """The `SolveOptions` of a fit: the user's solve options (keywords, and/or an
    ``options=`` value), plus the flat bounds ``(lower, upper)`` (n,) (or None), the
    fixed mask (n,) (None when nothing is fixed), the loss and ``f_scale``.
    ``where`` names the entry point in errors."""
    solve_options = dict(solve_options)
    base = solve_options.pop("options", None)
    if base is not None:
        own = SolveOptions.build(base, where=where)
        if own.bounds is not None or own.fixed is not None or own.loss != "linear":
            raise TypeError(
                f"{where}: give bounds, fixed, loss and f_scale to {where} itself, "
                "not inside options= (they shape the fit's statistics)"
            )
    built = SolveOptions.build(
        base,
        where=where,
        **solve_options,
        bounds=bound_arrays,
        fixed=np.asarray(fixed_mask) if fixed_mask.any() else None,
        loss=loss,
        f_scale=f_scale,
    )
    if not built.keep_jac:
        raise ValueError(
            f"{where}: keep_jac=False returns no Jacobian, and a fit's statistics "
            "(covariance, errors) need it: use jaxlsq.solve or the scipy shims"
        )
    if built.linear_solver == "cg":
        raise ValueError(
            f"{where}: linear_solver='cg' forms no Jacobian, and a fit's statistics "
            "(covariance, errors) need it: use jaxlsq.solve or least_squares for a "
            "matrix-free fit (jac_sparsity alone works here)"
        )
    return built


@jit(static_argnames=("residual_fn", "treedef", "shapes"))
def _multistart(flat_starts, args, options, *, residual_fn, treedef, shapes):
    """All starts in one vmapped `solve` (compiled once per shape and static
    options: new tolerances or bounds reuse it), then the best."""

    def one(start):
        return solve(
            residual_fn, unflatten(start, treedef, shapes), args, options=options
        )

    return _best_start(jax.vmap(one)(flat_starts))


def _best_start(sols):
    """The successful start with the lowest cost (lowest cost if none succeeded)."""
    cost = jnp.where(jnp.isfinite(sols.cost), sols.cost, jnp.inf)
    ok_cost = jnp.where(sols.success, cost, jnp.inf)
    idx = jnp.where(jnp.any(sols.success), jnp.argmin(ok_cost), jnp.argmin(cost))
    best = jax.tree_util.tree_map(lambda a: a[idx], sols)
    return best, jnp.sum(sols.success).astype(jnp.int32)
