"""`least_squares`: scipy.optimize.least_squares' contract on top of `jaxlsq.solve`.

See `jaxlsq.scipy` for the overview (JAX path vs host path, float64 semantics). This
module maps scipy's options onto `solve` (bounds, robust losses, scaling, tolerances),
differentiates numpy functions on the host with scipy's finite-difference schemes, and
assembles scipy's `OptimizeResult` (status codes, messages, optimality measure, the
loss-modified Jacobian).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..core.losses import loss_scaled_jacobian, robust_cost_of
from ..core.status import MESSAGES, Status
from . import host as _host
from .differences import _Difference, _UserCall
from .lsq_functions import _Bound, _check_jac_shape, _Padded, _split_static, _trace_jac
from .lsq_result import (
    _OWN_MESSAGE,
    STATUS_FROM_JAXLSQ,
    TERMINATION_MESSAGES,
    _check_tolerances,
    _check_x_scale,
    _optimality,
    _optimize_result,
)
from .plan import _plan, _warn_host
from .run import run_fit

EPS = float(np.finfo(float).eps)

#: scipy's ``least_squares`` messages, word for word (-2, callbacks, cannot happen).

#: jaxlsq `Status` (MINPACK's info) -> ``least_squares`` status. 1-5 as scipy's own
#: ``FROM_MINPACK_TO_COMMON``; 6-8 ("tolerance too small": the test's machine-precision
#: floor was reached, possible only for a tolerance below eps, which scipy warns
#: about) count as that test; jaxlsq's NONFINITE is a failure (-1, its own message).

_METHODS = ("trf", "dogbox", "lm")
_LOSSES = ("linear", "huber", "soft_l1", "cauchy", "arctan")  # scipy's order
_JAC_SCHEMES = ("2-point", "3-point", "cs")
_JAC_DESC = {
    "2-point": "scipy's 2-point (forward) differences",
    "3-point": "scipy's 3-point (central) differences",
    "cs": "complex-step differences",
}
#: Initial trust-region radius: MINPACK's (and scipy 'lm''s) 100 for "lm";
#: `jaxlsq.solve`'s default (10, more robust, see its docstring) for trf/dogbox.
_FACTOR = {"lm": 100.0, "trf": 10.0, "dogbox": 10.0}


# ----------------------------------------------------------------------------------
# least_squares


def least_squares(
    fun: Callable[..., Any],
    x0: Any,
    jac: str | Callable[..., Any] = "2-point",
    bounds: Any = (-np.inf, np.inf),
    method: str = "trf",
    ftol: float | None = 1e-08,
    xtol: float | None = 1e-08,
    gtol: float | None = 1e-08,
    x_scale: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    diff_step: Any = None,
    tr_solver: str | None = None,
    tr_options: dict | None = None,
    jac_sparsity: Any = None,
    max_nfev: int | None = None,
    verbose: int = 0,
    args: tuple = (),
    kwargs: dict | None = None,
    callback: Callable[..., Any] | None = None,
    workers: Any = None,
):
    """Solve a nonlinear least-squares problem with bounds: scipy's ``least_squares``.

    Same signature, defaults, result fields, status codes, messages and errors as
    ``scipy.optimize.least_squares`` (scipy 1.17); the minimisation is `jaxlsq.solve`
    (MINPACK's Levenberg-Marquardt, with an active-set projection for bounds). It
    minimises ``F(x) = 0.5 * sum(rho(f_i(x)**2))`` subject to ``lb <= x <= ub`` with
    scipy's definitions of ``rho`` and ``f_scale``.

    A ``fun`` written with ``jax.numpy`` is compiled once per problem shape and
    differentiated exactly; a numpy ``fun`` runs on the host through callbacks,
    differentiated by scipy's finite-difference schemes (see `HostFallbackWarning`).
    Everything is computed in float64; results are numpy.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` with ``x`` of shape (n,), returning ``m``
        residuals (a 1-D array or a scalar).
    x0 : array_like, shape (n,), or float
        Starting point; must lie within ``bounds`` (on a bound is fine: unlike
        scipy's trf, ``x0`` is not moved to the interior).
    jac : {"2-point", "3-point", "cs"} or callable, default "2-point"
        Callable: ``jac(x, *args, **kwargs)`` returning the (m, n) Jacobian (a JAX
        array on the JAX path; a numpy or scipy.sparse array on the host path). A
        string picks scipy's finite-difference scheme *on the host path only*: with
        a JAX-traceable ``fun`` the exact Jacobian (``jax.jacfwd``) is used whatever
        the string -- more accurate than differences and the same solution.
    bounds : 2-tuple of array_like or `scipy.optimize.Bounds`, default no bounds
        Lower and upper bounds, scalars or shape (n,), ``±inf`` for open sides.
    method : {"trf", "dogbox", "lm"}, default "trf"
        ``"lm"``: MINPACK's lmder exactly as scipy's ``method='lm'`` (same factor
        100, scaling, tolerance tests and status codes), so the same iterates up to
        the Jacobian (exact here, differences in scipy). ``"trf"``/``"dogbox"``:
        jaxlsq's projected LM, which supports bounds and robust losses; it reaches
        the same solution within tolerance, not by the same iterates as scipy's
        trust-region-reflective or dogleg algorithms.
    ftol, xtol, gtol : float or None, default 1e-8
        MINPACK's tests for every method, with scipy's values passed unchanged
        (``None`` disables a test, not allowed for "lm"): ``ftol`` -- relative
        reduction of the cost, actual and predicted (scipy's trf/dogbox test the
        actual one, ``dF < ftol * F``); ``xtol`` -- trust-region radius relative to
        the scaled ``x`` (trf/dogbox: ``||dx|| < xtol * (xtol + ||x||)``); ``gtol``
        -- largest cosine between the residuals and the (free) Jacobian columns,
        scale-free, as scipy's "lm" (trf/dogbox test an absolute, scaled gradient
        norm instead; this is the one real difference of meaning). As scipy, a
        tolerance below machine epsilon warns, and all three (any one, for "lm")
        below epsilon is an error.
    x_scale : None, array_like or "jac", default None
        Variable scales: an array of positive values is MINPACK's fixed ``diag =
        1 / x_scale``; "jac" is MINPACK's automatic scaling (running maximum of the
        Jacobian's column norms). ``None`` is "jac" for every method (scipy: "jac"
        for "lm", 1 for trf/dogbox; MINPACK's loop is designed around its scaling).
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"}, default "linear"
        Robust loss, scipy's definitions (see `jaxlsq.core.losses`); callables are not
        supported. Not with "lm" (as scipy).
    f_scale : float, default 1.0
        Soft margin between inlier and outlier residuals; must be > 0 for a robust
        loss (scipy does not check it).
    diff_step : None or array_like
        Relative finite-difference step (host path with a string ``jac``), scipy's
        rule: ``x * diff_step``, default ``eps**(1/2)`` (2-point, cs) or
        ``eps**(1/3)`` (3-point) times ``max(1, |x|)``.
    tr_solver : {None, "exact"}
        Dense solves only; "lsmr" raises NotImplementedError.
    tr_options : dict, optional
        Must be empty (they configure lsmr).
    jac_sparsity : None
        Not supported (NotImplementedError); "lm" rejects it as scipy.
    max_nfev : int, optional
        Maximum number of evaluations of ``fun`` by the iterations (finite-difference
        calls not included, as scipy >= 1.16); default ``100 * n`` for every method.
    verbose : {0, 1, 2}, default 0
        1: scipy's termination report. 2: the same, after a note -- the iterations
        run inside one compiled loop, so there is no per-iteration table.
    args, kwargs : tuple and dict, optional
        Extra arguments of ``fun`` and ``jac``: ``fun(x, *args, **kwargs)``.
    callback : None
        Per-iteration callbacks are not possible inside the compiled loop:
        NotImplementedError for trf/dogbox; for "lm" scipy's warning and ignored.
    workers : map-like callable, optional
        Maps finite-difference evaluations on the host path (``workers(f, points)``).

    Returns
    -------
    OptimizeResult
        ``x`` (n,), ``cost`` (the robust cost with a loss), ``fun`` (m,) residuals,
        ``jac`` (m, n) (loss-modified as scipy's: rows scaled by
        ``sqrt(rho' + 2 rho'' f**2)``), ``grad`` (n,) gradient of the cost,
        ``optimality`` (as scipy per method: ``||grad||_inf`` for "lm" and unbounded
        trf, ``||v * grad||_inf`` with Coleman-Li's ``v`` for bounded trf, the free
        gradient for dogbox), ``active_mask`` (n,) int (-1 lower, 1 upper, 0 free;
        exact: bounds are reached exactly), ``nfev`` (evaluations of ``fun`` by the
        iterations), ``njev`` (Jacobian evaluations, None for "lm" without a
        callable ``jac``, as scipy; may exceed scipy's by one, as the Jacobian at the
        returned ``x`` is always evaluated), ``status`` (-1 improper input or
        non-finite residuals/Jacobian during the fit, 0 max_nfev, 1 gtol, 2 ftol,
        3 xtol, 4 ftol and xtol), ``message`` (scipy's), ``success`` (status > 0).
        A scipy ``OptimizeResult`` when scipy is installed, else a dict with
        attribute access.

    Raises
    ------
    ValueError
        scipy's checks, with its messages: unknown ``method``/``jac``/``loss``/
        ``tr_solver``/``verbose``; a robust loss, bounds, or ``m < n`` with "lm";
        ``max_nfev <= 0``; complex or >1-D ``x0``; bounds of the wrong length or
        shape, ``lb >= ub``, ``x0`` outside them; bad ``x_scale``; tolerances
        below eps; ``fun`` not 1-D or not finite at ``x0``; ``jac`` of the wrong
        shape. Also ``f_scale <= 0`` with a robust loss.
    NotImplementedError
        ``jac_sparsity``, ``tr_solver="lsmr"``, non-empty ``tr_options``, a callable
        ``loss``, ``callback`` with trf/dogbox, an integer ``workers``, a
        LinearOperator from ``jac``.

    Warns
    -----
    UserWarning
        A tolerance below machine epsilon; ``callback`` with "lm" (as scipy).
    HostFallbackWarning
        Once per function that JAX cannot trace.

    Examples
    --------
    >>> import numpy as np
    >>> import jax.numpy as jnp
    >>> from jaxlsq.scipy import least_squares
    >>> t = np.linspace(0.0, 3.0, 30)
    >>> y = 2.0 * np.exp(-1.5 * t) + 0.5
    >>> def fun(p, t, y):
    ...     return p[0] * jnp.exp(-p[1] * t) + p[2] - y
    >>> res = least_squares(fun, [1.0, 1.0, 0.0], args=(t, y))
    >>> res.x.round(6), bool(res.success), res.status in (1, 2, 3, 4)
    (array([2. , 1.5, 0.5]), True, True)

    With bounds, the rate pinned at its upper bound:

    >>> res = least_squares(fun, [1.0, 1.0, 0.0], bounds=([0, 0, 0], [10, 1.2, 10]),
    ...                     args=(t, y))
    >>> float(res.x[1]), res.active_mask.tolist()
    (1.2, [0, 1, 0])
    """
    return _least_squares(
        fun, x0, jac, bounds, method, ftol, xtol, gtol, x_scale, loss, f_scale,
        diff_step, tr_solver, tr_options, jac_sparsity, max_nfev, verbose, args,
        kwargs, callback, workers, stacklevel=3,
    )  # fmt: skip


def _least_squares(
    fun, x0, jac, bounds, method, ftol, xtol, gtol, x_scale, loss, f_scale,
    diff_step, tr_solver, tr_options, jac_sparsity, max_nfev, verbose, args, kwargs,
    callback, workers, *, stacklevel: int,
):  # fmt: skip
    # -- scipy's checks, in scipy's order, with its messages ---------------------------
    if method not in _METHODS:
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if not callable(jac) and jac not in _JAC_SCHEMES:
        raise ValueError("`jac` must be '2-point', '3-point', 'cs' or callable.")
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    if not callable(loss) and loss not in _LOSSES:
        raise ValueError(
            f"`loss` must be one of {dict.fromkeys(_LOSSES).keys()} or a callable."
        )
    if method == "lm" and loss != "linear":
        raise ValueError("method='lm' supports only 'linear' loss function.")
    if verbose not in (0, 1, 2):
        raise ValueError("`verbose` must be in [0, 1, 2].")
    if max_nfev is not None and max_nfev <= 0:
        raise ValueError("`max_nfev` must be None or positive integer.")
    if np.iscomplexobj(x0):
        raise ValueError("`x0` must be real.")
    x0 = np.atleast_1d(x0).astype(float)
    if x0.ndim > 1:
        raise ValueError("`x0` must have at most 1 dimension.")
    n = x0.shape[0]

    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
        bounds = (bounds.lb, bounds.ub)
    if len(bounds) != 2:
        raise ValueError("`bounds` must contain 2 elements.")
    lb, ub = (np.asarray(b, dtype=float) for b in bounds)
    if lb.ndim == 0:
        lb = np.resize(lb, n)
    if ub.ndim == 0:
        ub = np.resize(ub, n)
    if method == "lm" and not np.all((lb == -np.inf) & (ub == np.inf)):
        raise ValueError("Method 'lm' doesn't support bounds.")
    if lb.shape != x0.shape or ub.shape != x0.shape:
        raise ValueError("Inconsistent shapes between bounds and `x0`.")
    if np.any(lb >= ub):
        raise ValueError(
            "Each lower bound must be strictly less than each upper bound."
        )
    if not np.all((x0 >= lb) & (x0 <= ub)):
        raise ValueError("Initial guess is outside of provided bounds")

    diag = _check_x_scale(x_scale, x0)
    ftol, xtol, gtol = _check_tolerances(ftol, xtol, gtol, method, stacklevel + 1)

    # -- what jaxlsq does not do -------------------------------------------------------
    if callable(loss):
        raise NotImplementedError(
            "jaxlsq.least_squares: a callable `loss` is not supported; use one of "
            f"{_LOSSES} (or scipy.optimize.least_squares)."
        )
    if loss != "linear" and not float(f_scale) > 0:
        raise ValueError(f"`f_scale` must be positive, got {f_scale!r}.")
    if jac_sparsity is not None:
        if method == "lm" and not callable(jac):
            raise ValueError("method='lm' does not support `jac_sparsity`.")
        raise NotImplementedError(
            "jaxlsq.least_squares: `jac_sparsity` is not supported (dense Jacobians "
            "only); drop it -- a JAX-traceable `fun` gets its exact Jacobian anyway."
        )
    if tr_solver == "lsmr":
        raise NotImplementedError(
            "jaxlsq.least_squares: tr_solver='lsmr' is not supported; use None or "
            "'exact' (dense trust-region solves)."
        )
    if tr_options:
        raise NotImplementedError(
            "jaxlsq.least_squares: `tr_options` are not supported (they configure "
            f"'lsmr'); pass None or {{}}, got {tr_options!r}."
        )
    if callback is not None:
        if method != "lm":
            raise NotImplementedError(
                "jaxlsq.least_squares: `callback` is not supported: the iterations "
                "run inside one compiled loop. Drop it, or use method='lm' (where "
                "scipy ignores it too)."
            )
        warnings.warn(
            "Callback function specified, but not supported with `lm` method.",
            stacklevel=stacklevel,
        )
    if workers is not None and not callable(workers):
        raise NotImplementedError(
            "jaxlsq.least_squares: `workers` must be None or a map-like callable "
            f"(e.g. multiprocessing.Pool(k).map), got {workers!r}."
        )
    if max_nfev is None:
        max_nfev = 100 * n
    if diff_step is not None:
        diff_step = np.asarray(diff_step, dtype=float)

    user_args = (tuple(args), dict(kwargs or {}))
    *call_args, static = _split_static(*user_args)
    call_args = tuple(call_args)
    fun_w = _Bound(fun, "fun", static)
    jac_w = _Bound(jac, "jac", static) if callable(jac) else None
    jac_desc = "your jac" if callable(jac) else _JAC_DESC[jac]

    with jax.enable_x64(True):
        plan = _plan(
            fun_w, None, False, x0, call_args, stacklevel=stacklevel + 1,
            jac_desc=jac_desc,
        )  # fmt: skip
        m = plan.m
        if plan.f0 is not None and not np.all(np.isfinite(plan.f0)):
            raise ValueError("Residuals are not finite in the initial point.")
        if method == "lm" and m < n:
            raise ValueError(
                "Method 'lm' doesn't work when the number of residuals is less "
                "than the number of variables."
            )
        host = plan.host is not None
        loop_jac: Any = "auto"
        if jac_w is not None and not host:
            shape, err = _trace_jac(jac_w, x0, call_args)
            if shape is None:
                host = True
                _warn_host(jac_w, jac_w, err, stacklevel=stacklevel + 1,
                           jac_desc="your jac")  # fmt: skip
            else:
                _check_jac_shape(shape, m, n)
                loop_jac = jac_w
        if jac_w is not None and host:  # scipy evaluates J0 too; check its shape
            j0 = jac_w(x0.copy(), *call_args)
            _check_jac_shape(np.shape(j0), m, n)

        pad = max(n - m, 0)
        loop_fun: Any = fun_w if not pad else _Padded(fun_w, pad, n)
        if pad and isinstance(loop_jac, _Bound):
            loop_jac = _Padded(jac_w, pad, n)
        bounded = bool(np.any((lb > -np.inf) | (ub < np.inf)))
        options = dict(
            ftol=float(ftol), xtol=float(xtol), gtol=float(gtol),
            max_nfev=int(max_nfev), factor=_FACTOR[method], diag=diag,
            bounds=(lb, ub) if bounded else None, f_scale=float(f_scale),
        )  # fmt: skip
        if not host:
            out = run_fit(
                loop_fun,
                x0,
                call_args,
                m + pad,
                "least_squares",
                jac=loop_jac,
                loss=loss,
                **options,
            )._asdict()
            nfev, njev = out["nfev"], out["njev"]
        else:
            difference = None
            host_jac = None
            if jac_w is not None:
                host_jac = jac_w if not pad else _Padded(jac_w, pad, n)
            else:
                difference = _Difference(
                    _UserCall(fun, *user_args), jac, diff_step, lb, ub,
                    plan.out_dtype, workers, m, pad,
                )  # fmt: skip
            problem = _host.HostProblem.get(loop_fun, host_jac, False, m + pad, n)
            token, ctx = _host.HostProblem.open(call_args, EPS, difference)
            try:
                out = run_fit(
                    problem.fun, x0, (np.int32(token),), m + pad, "least_squares",
                    jac=problem.jac, loss=loss, **options,
                )._asdict()  # fmt: skip
            finally:
                _host.HostProblem.close(token)
            nfev = ctx.nfev
            njev = ctx.njev if difference is None else difference.njev

    status_j = Status(out["status"])
    f, jac_x = out["fun"][:m], out["jac"][:m]
    if status_j == Status.NONFINITE and out["nfev"] <= 1 and not np.all(np.isfinite(f)):
        raise ValueError("Residuals are not finite in the initial point.")
    status = STATUS_FROM_JAXLSQ[status_j]
    message = MESSAGES[status_j] if status_j in _OWN_MESSAGE else (
        TERMINATION_MESSAGES[status]
    )  # fmt: skip
    x, grad, active_mask = out["x"], out["grad"], out["active_mask"]
    optimality = _optimality(method, x, grad, lb, ub, active_mask, bounded)
    if method == "lm" and not callable(jac):
        njev = None
    result = _optimize_result(
        x=x,
        cost=out["cost"],
        fun=f,
        jac=loss_scaled_jacobian(jac_x, f, loss, float(f_scale), xp=np),
        grad=grad,
        optimality=optimality,
        active_mask=active_mask,
        nfev=int(nfev),
        njev=None if njev is None else int(njev),
        status=status,
        message=message,
        success=status > 0,
    )
    if verbose >= 1:
        if verbose == 2:
            print(
                "jaxlsq: no per-iteration report (verbose=2): the iterations run "
                "inside one compiled loop. Termination report:"
            )
        f0 = plan.f0
        if f0 is None:
            with jax.enable_x64(True):
                f0 = np.ravel(np.asarray(fun_w(x0, *call_args), dtype=float))
        initial_cost = float(robust_cost_of(f0, loss, float(f_scale), xp=np))
        print(result.message)
        print(
            f"Function evaluations {result.nfev}, initial cost {initial_cost:.4e}, "
            f"final cost {result.cost:.4e}, "
            f"first-order optimality {result.optimality:.2e}."
        )
    return result
