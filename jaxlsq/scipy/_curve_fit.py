"""`curve_fit`: scipy.optimize.curve_fit's contract on top of the `leastsq` shim."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..fitting.statistics import gram_pseudo_inverse
from ..fitting.weights import Residuals, WeightedJacobian
from ._leastsq import _LEASTSQ_SUCCESS, _leastsq
from .errors import optimize_warning
from .lsq_solve import _least_squares
from .x64 import float64

# ----------------------------------------------------------------------------------
# curve_fit


def _n_params_from_signature(f) -> int:
    sig = inspect.signature(f)
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        raise ValueError("Unable to determine number of fit parameters.")
    return len(positional) - 1


def _contains_nan(a, nan_policy: str) -> bool:
    a = np.asarray(a)
    if a.size == 0:
        return False
    if np.issubdtype(a.dtype, np.inexact):
        contains = bool(np.isnan(a).any())
    elif a.dtype == object:
        contains = any(
            np.issubdtype(type(el), np.number) and np.isnan(el) for el in a.ravel()
        )
    else:
        return False
    if nan_policy == "raise" and contains:
        raise ValueError("The input contains nan values")
    return contains


def _initialize_feasible(lb, ub):
    """scipy's default ``p0`` with bounds: mid-box, or 1 inside a one-sided bound."""
    p0 = np.ones_like(lb)
    lb_finite, ub_finite = np.isfinite(lb), np.isfinite(ub)
    mask = lb_finite & ub_finite
    p0[mask] = 0.5 * (lb[mask] + ub[mask])
    mask = lb_finite & ~ub_finite
    p0[mask] = lb[mask] + 1
    mask = ~lb_finite & ub_finite
    p0[mask] = ub[mask] - 1
    return p0


def curve_fit(
    f: Callable[..., Any],
    xdata: Any,
    ydata: Any,
    p0: Any = None,
    sigma: Any = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: Any = (-np.inf, np.inf),
    method: str | None = None,
    jac: Callable[..., Any] | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    **kwargs: Any,
):
    """Fit ``f(xdata, *params)`` to ``ydata``: ``scipy.optimize.curve_fit``.

    Same signature, defaults and results as scipy's, on top of `leastsq` (method
    "lm") or `least_squares` (methods "trf"/"dogbox", which bounds select). ``f`` may
    be written with ``jax.numpy`` (compiled, exact Jacobian) or plain numpy (host
    path, finite differences; see `HostFallbackWarning`).

    Parameters
    ----------
    f : callable
        ``f(xdata, *params)``: the model, returning M values.
    xdata : array_like or object
        Independent variable, passed to ``f`` unchanged (lists, tuples and arrays are
        converted to float64 arrays, as scipy does).
    ydata : array_like, shape (M,)
        Data; converted to float64.
    p0 : array_like (N,), optional
        Starting point; N read from ``f``'s signature when omitted. Default: all
        ones, or with bounds scipy's feasible start (mid-box; 1 inside a one-sided
        bound).
    sigma : None, scalar, array (M,) or array (M, M), optional
        Scalar or 1-D: standard deviations of ``ydata`` (residuals are divided by
        them). 2-D: covariance of ``ydata``; residuals are multiplied by ``L^-1``
        with ``L`` its lower Cholesky factor.
    absolute_sigma : bool, default False
        If False, ``pcov`` is scaled by the reduced chi-square ``sum(r**2)/(M - N)``.
    check_finite : bool, optional
        Raise ValueError on NaN/inf in ``xdata``/``ydata``. Default True unless
        ``nan_policy`` is given.
    bounds : 2-tuple or object with ``lb``/``ub``, default (-inf, inf)
        Lower and upper bounds on the parameters (scalars or shape (N,)); finite
        bounds select method "trf", as in scipy.
    method : {None, "lm", "trf", "dogbox"}, optional
        Default "lm" without bounds, "trf" with bounds (as scipy). "trf"/"dogbox"
        run `least_squares` (jaxlsq's projected LM: scipy's solution within
        tolerance, not its iterates) and return its contract: status codes and
        messages, ``pcov`` from the SVD pseudo-inverse of the final (loss-modified)
        Jacobian, ``infodict`` with ``nfev`` and ``fvec`` only.
    jac : callable or {"2-point", "3-point", "cs"}, optional
        ``jac(xdata, *params)`` -> (M, N), scaled by ``sigma`` like the residuals.
        The strings (trf/dogbox) are `least_squares`' finite-difference schemes,
        used on the host path only (a JAX model is differentiated exactly).
    full_output : bool, default False
        Also return ``infodict``, ``mesg`` and ``ier``.
    nan_policy : {None, "raise", "omit"}, optional
        ``"raise"``: error on NaN in the data; ``"omit"``: drop those points (and the
        matching ``sigma`` entries). ``"propagate"`` is rejected, as in scipy.
    **kwargs
        Passed to `leastsq` for "lm" (e.g. ``maxfev``, ``ftol``, ``epsfcn``) or to
        `least_squares` for "trf"/"dogbox" (e.g. ``loss``, ``f_scale``, ``x_scale``,
        ``max_nfev``; ``maxfev`` is renamed ``max_nfev``, as scipy does).

    Returns
    -------
    popt : ndarray, shape (N,)
        Best-fit parameters.
    pcov : ndarray, shape (N, N)
        Their estimated covariance (``cov_x`` of `leastsq`, or the SVD
        pseudo-inverse of ``J^T J`` for trf/dogbox; scaled unless
        ``absolute_sigma``); filled with ``inf`` (and an `OptimizeWarning`) when it
        cannot be estimated.
    infodict, mesg, ier
        As from `leastsq`, or ``least_squares``' ``nfev``/``fvec``, ``message`` and
        ``status`` (only with ``full_output``).

    Raises
    ------
    ValueError
        NaN/inf data with ``check_finite``; NaN data with ``nan_policy="raise"``; bad
        ``nan_policy``; ``sigma`` of a wrong shape or not positive definite; empty
        ``ydata``; ``args`` in ``kwargs``; ``method="lm"`` with finite bounds; an
        unknown ``method``; `least_squares`' own checks (e.g. ``p0`` outside the
        bounds).
    TypeError
        More parameters than data points (method "lm"); an unknown keyword.
    RuntimeError
        The fit failed (``ier`` not in 1-4, or ``least_squares``' ``success``
        false): "Optimal parameters not found: ...".
    NotImplementedError
        `least_squares` options jaxlsq does not support (see there).

    Warns
    -----
    OptimizeWarning
        The covariance could not be estimated.

    Examples
    --------
    >>> import numpy as np
    >>> import jax.numpy as jnp
    >>> from jaxlsq.scipy import curve_fit
    >>> def model(x, a, b):
    ...     return a * jnp.exp(-b * x)
    >>> x = np.linspace(0.0, 2.0, 20)
    >>> y = 3.0 * np.exp(-1.5 * x)
    >>> popt, pcov = curve_fit(model, x, y, absolute_sigma=True)
    >>> popt.round(6), pcov.shape
    (array([3. , 1.5]), (2, 2))
    """
    if p0 is None:
        n = _n_params_from_signature(f)
    else:
        p0 = np.atleast_1d(p0)
        n = p0.size

    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lb, ub = bounds.lb, bounds.ub
    else:
        lb, ub = (np.asarray(b, dtype=float) for b in bounds)
    lb, ub = np.asarray(lb, dtype=float), np.asarray(ub, dtype=float)
    if lb.ndim == 0:
        lb = np.resize(lb, n)
    if ub.ndim == 0:
        ub = np.resize(ub, n)
    if p0 is None:
        p0 = _initialize_feasible(lb, ub)

    bounded_problem = bool(((lb > -np.inf) | (ub < np.inf)).any())
    if method is not None and method not in ("lm", "trf", "dogbox"):
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if method is None:
        method = "trf" if bounded_problem else "lm"
    if method == "lm" and bounded_problem:
        raise ValueError(
            "Method 'lm' only works for unconstrained problems. "
            "Use 'trf' or 'dogbox' instead."
        )

    if check_finite is None:
        check_finite = nan_policy is None

    if check_finite:
        ydata = np.asarray_chkfinite(ydata, float)
    else:
        ydata = np.asarray(ydata, float)

    if isinstance(xdata, (list, tuple, np.ndarray)):
        if check_finite:
            xdata = np.asarray_chkfinite(xdata, float)
        else:
            xdata = np.asarray(xdata, float)

    if ydata.size == 0:
        raise ValueError("`ydata` must not be empty!")

    if not check_finite and nan_policy is not None:
        if nan_policy == "propagate":
            raise ValueError(
                "`nan_policy='propagate'` is not supported by this function."
            )
        if nan_policy not in ("raise", "omit"):
            raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
        x_contains_nan = _contains_nan(xdata, nan_policy)
        y_contains_nan = _contains_nan(ydata, nan_policy)
        if (x_contains_nan or y_contains_nan) and nan_policy == "omit":
            has_nan = np.isnan(xdata)
            has_nan = has_nan.any(axis=tuple(range(has_nan.ndim - 1)))
            has_nan |= np.isnan(ydata)
            xdata = xdata[..., ~has_nan]
            ydata = ydata[~has_nan]
            if sigma is not None:
                sigma = np.asarray(sigma)
                if sigma.ndim == 1:
                    sigma = sigma[~has_nan]
                elif sigma.ndim == 2:
                    sigma = sigma[~has_nan, :]
                    sigma = sigma[:, ~has_nan]

    kind = None
    transform = None
    if sigma is not None:
        sigma = np.asarray(sigma)
        if sigma.size == 1 or sigma.shape == (ydata.size,):
            transform = 1.0 / np.asarray(sigma, dtype=float)
            kind = "1d"
        elif sigma.shape == (ydata.size, ydata.size):
            sigma = np.asarray(sigma, dtype=float)
            if not np.all(np.isfinite(sigma)):
                raise ValueError("array must not contain infs or NaNs")
            try:
                transform = np.linalg.cholesky(sigma)
            except np.linalg.LinAlgError as e:
                raise ValueError("`sigma` must be positive definite.") from e
            kind = "2d"
        else:
            raise ValueError("`sigma` has incorrect shape.")

    # xdata (k, M) -- k independent variables, points last -- is held as (M, k),
    # points first, so that a large fit's Jacobian can be built in blocks of points
    # (`jaxlsq.core.chunked`); the model still receives (k, M).
    move = (
        isinstance(xdata, np.ndarray)
        and xdata.ndim >= 2
        and xdata.shape[-1] == ydata.size
        and ydata.ndim == 1
        and ydata.size > 1
        and kind != "2d"
    )
    if move:
        xdata = np.moveaxis(xdata, -1, 0)
    func = Residuals(f, kind, unpack=True, points_last=move)  # scipy's call
    if callable(jac):
        dfun = WeightedJacobian(jac, kind, points_last=move)
    elif method != "lm":
        dfun = "2-point" if jac is None else jac  # least_squares' scheme names
    elif jac is None:
        dfun = None
    else:
        raise TypeError(f"jac must be callable or None for method 'lm', got {jac!r}")

    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")

    fit_args = (xdata, ydata, transform)

    if method == "lm":
        if ydata.size != 1 and n > ydata.size:
            raise TypeError(
                f"The number of func parameters={n} must not"
                f" exceed the number of data points={ydata.size}"
            )
        res = _leastsq(
            func, p0, fit_args, dfun, True, False,
            kwargs.pop("ftol", 1.49012e-08), kwargs.pop("xtol", 1.49012e-08),
            kwargs.pop("gtol", 0.0), kwargs.pop("maxfev", 0),
            kwargs.pop("epsfcn", None), kwargs.pop("factor", 100),
            kwargs.pop("diag", None), stacklevel=3, factors=full_output,
        )  # fmt: skip
        if kwargs:
            raise TypeError(
                f"leastsq() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        popt, pcov, infodict = res["x"], res["cov_x"], res["infodict"]
        errmsg, ier = res["mesg"], res["ier"]
        ysize = len(infodict["fvec"])
        cost = np.sum(infodict["fvec"] ** 2)
        if ier not in _LEASTSQ_SUCCESS:
            raise RuntimeError("Optimal parameters not found: " + errmsg)
    else:
        if "max_nfev" not in kwargs:
            kwargs["max_nfev"] = kwargs.pop("maxfev", None)
        res = _least_squares_kwargs(
            func, p0, dfun, (lb, ub), method, fit_args, kwargs, not full_output
        )
        if not res.success:
            raise RuntimeError("Optimal parameters not found: " + res.message)
        infodict = dict(nfev=res.nfev, fvec=res.fun)
        ier = res.status
        errmsg = res.message
        ysize = len(res.fun)
        cost = 2 * res.cost  # res.cost is half the (robust) sum of squares
        popt = res.x
        # scipy's pseudo-inverse of J^T J from the SVD of the (loss-modified)
        # Jacobian: the fitting layer's, with the same cutoff. A sparse J (from
        # ``jac_sparsity``) is densified for it: (m, n) floats, where scipy's own
        # curve_fit raises ("object arrays are not supported").
        jac = res.jac.toarray() if hasattr(res.jac, "toarray") else res.jac
        with float64():
            pcov = np.array(
                gram_pseudo_inverse(jnp.asarray(jac, jnp.float64), rows=ysize)
            )

    warn_cov = False
    if pcov is None or np.isnan(pcov).any():
        pcov = np.zeros((len(popt), len(popt)), dtype=float)
        pcov.fill(np.inf)
        warn_cov = True
    elif not absolute_sigma:
        if ysize > p0.size:
            s_sq = cost / (ysize - p0.size)
            pcov = pcov * s_sq
        else:
            pcov.fill(np.inf)
            warn_cov = True

    if warn_cov:
        warnings.warn(
            "Covariance of the parameters could not be estimated",
            category=optimize_warning(),
            stacklevel=2,
        )

    if full_output:
        return popt, pcov, infodict, errmsg, ier
    return popt, pcov


_LSQ_DEFAULTS = dict(
    ftol=1e-08, xtol=1e-08, gtol=1e-08, x_scale=None, loss="linear", f_scale=1.0,
    diff_step=None, tr_solver=None, tr_options=None, jac_sparsity=None,
    max_nfev=None, verbose=0, kwargs=None, callback=None, workers=None,
)  # fmt: skip


def _least_squares_kwargs(
    func, p0, jac, bounds, method, fit_args, kwargs, compress=False
):
    """``least_squares(func, p0, jac=jac, bounds=bounds, method=method, **kwargs)``
    (``compress``: see `_least_squares`)."""
    unknown = sorted(set(kwargs) - set(_LSQ_DEFAULTS))
    if unknown:
        raise TypeError(
            f"least_squares() got an unexpected keyword argument {unknown[0]!r}"
        )
    o = {**_LSQ_DEFAULTS, **kwargs}
    return _least_squares(
        func, p0, jac, bounds, method, o["ftol"], o["xtol"], o["gtol"],
        o["x_scale"], o["loss"], o["f_scale"], o["diff_step"], o["tr_solver"],
        o["tr_options"], o["jac_sparsity"], o["max_nfev"], o["verbose"], fit_args,
        o["kwargs"], o["callback"], o["workers"], stacklevel=4, compress=compress,
    )  # fmt: skip
