"""`least_squares`' implementation: scipy's options mapped onto `jaxlsq.solve`
(bounds, robust losses, scaling, tolerances, the JAX or host path), and scipy's
`OptimizeResult` assembled from the fit (see `jaxlsq.scipy._least_squares` for the
public contract)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..core.losses import loss_scaled_jacobian, robust_cost
from ..core.sparsity import SparsityPattern, as_pattern
from ..core.status import MESSAGES, Status
from . import host as _host
from .differences import _Difference, _UserCall, check_workers, worker_map
from .lsq_functions import (
    _Bound,
    _check_jac_shape,
    _loop_loss,
    _Padded,
    _split_static,
    _trace_jac,
)
from .lsq_monitor import Watch, watching
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
from .x64 import float64

EPS = float(np.finfo(float).eps)

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


def _least_squares(
    fun, x0, jac, bounds, method, ftol, xtol, gtol, x_scale, loss, f_scale,
    diff_step, tr_solver, tr_options, jac_sparsity, max_nfev, verbose, args, kwargs,
    callback, workers, *, stacklevel: int, compress: bool = False,
):  # fmt: skip
    """``least_squares`` (the public shim's body). ``compress`` (`curve_fit`
    without ``full_output``): the caller needs ``jac`` only through ``J^T J``, so
    a large chunked fit returns R (n, n) as ``jac`` (`jaxlsq.scipy.run.run_fit`)."""
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
    # scipy warns about a tolerance below eps and uses it as given: a negative one
    # then never fires, exactly as 0 (our options refuse negative tolerances).
    ftol, xtol, gtol = (max(float(t), 0.0) for t in (ftol, xtol, gtol))

    # -- what jaxlsq does not do -------------------------------------------------------
    if loss != "linear" and not float(f_scale) > 0:
        raise ValueError(f"`f_scale` must be positive, got {f_scale!r}.")
    if callable(jac):  # scipy: the pattern only serves finite differences
        jac_sparsity = None
    elif method == "lm" and jac_sparsity is not None:
        raise ValueError("method='lm' does not support `jac_sparsity`.")
    if callback is not None and method == "lm":
        warnings.warn(
            "Callback function specified, but not supported with `lm` method.",
            stacklevel=stacklevel,
        )
    check_workers(workers)  # an int: a process pool for the host path's differences
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

    with float64():
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
        jac_kind = "dense"
        if jac_w is not None and host:  # scipy evaluates J0 too; check its shape
            j0 = jac_w.raw(x0.copy(), *call_args)
            _check_jac_shape(np.shape(j0), m, n)
            jac_kind = _check_jac_kind(j0, method, tr_solver, x_scale)
            if jac_kind != "dense" and tr_solver is None:
                tr_solver = "lsmr"  # scipy: LSMR for a sparse J or an operator

        # scipy's sparse choices: a pattern means LSMR unless 'exact' is asked for
        # (an error); LSMR maps onto jaxlsq's matrix-free CG steps (JAX path).
        if jac_sparsity is not None:
            jac_sparsity = _check_sparsity(jac_sparsity, m, n, tr_solver)
        host_pattern = jac_sparsity if host else None  # (m, n), for the differences
        lsmr = method != "lm" and (
            tr_solver == "lsmr" or (tr_solver is None and jac_sparsity is not None)
        )
        cg_options = _lsmr_options(tr_options, method, stacklevel + 1) if lsmr else {}
        pad = max(n - m, 0)
        if pad and jac_sparsity is not None:  # no nonzeros in the padded rows
            jac_sparsity = SparsityPattern(
                jac_sparsity.rows, jac_sparsity.cols, (m + pad, n)
            )
        loop_fun: Any = fun_w if not pad else _Padded(fun_w, pad, n)
        if pad and isinstance(loop_jac, _Bound):
            loop_jac = _Padded(jac_w, pad, n)
        bounded = bool(np.any((lb > -np.inf) | (ub < np.inf)))
        loop_loss = _loop_loss(loss, m + pad)
        watch = None  # trf/dogbox: callback and verbose=2 through the monitor
        halt = method != "lm" and max_nfev == 1  # scipy: x0, no step (see Watch)
        if method != "lm" and (callback is not None or verbose == 2 or halt):
            watch = Watch(callback, verbose, method, lb, ub, bounded, m, halt)
        # trf/dogbox without bounds run the bounded program with lb, ub = +-inf
        # (the same iterates): adding bounds later compiles nothing (not for lm,
        # MINPACK's own program, nor the matrix-free steps, where bounds cost a
        # product per trial)
        same_program = method != "lm" and not lsmr
        options = dict(
            ftol=float(ftol), xtol=float(xtol), gtol=float(gtol),
            max_nfev=int(max_nfev), factor=_FACTOR[method], diag=diag,
            bounds=(lb, ub) if bounded or same_program else None,
            f_scale=float(f_scale),
        )  # fmt: skip
        if lsmr and not host and not callable(loop_jac):
            options.update(linear_solver="cg", jac_sparsity=jac_sparsity, **cg_options)
        if not host:
            with watching(watch) as monitor:
                out = run_fit(
                    loop_fun, x0, call_args, m + pad, "least_squares",
                    compress_jac=compress, jac=loop_jac, loss=loop_loss,
                    monitor=monitor, **options,
                )._asdict()  # fmt: skip
            nfev, njev = out["nfev"], out["njev"]
        else:
            with worker_map(workers) as mapper:
                difference = None
                host_jac = None
                if jac_w is not None:
                    host_jac = jac_w if not pad else _Padded(jac_w, pad, n)
                else:
                    difference = _Difference(
                        _UserCall(fun, *user_args), jac, diff_step, lb, ub,
                        plan.out_dtype, mapper, m, pad, host_pattern,
                    )  # fmt: skip
                problem = _host.HostProblem.get(loop_fun, host_jac, False, m + pad, n)
                call = _host.HostProblem.call(call_args, EPS, difference)
                with call as (token, ctx), watching(watch) as monitor:
                    out = run_fit(
                        problem.fun, x0, (np.int32(token),), m + pad, "least_squares",
                        jac=problem.jac, loss=loop_loss, monitor=monitor, **options,
                    )._asdict()  # fmt: skip
                nfev = ctx.nfev
                njev = ctx.njev if difference is None else difference.njev

    status_j = Status(out["status"])
    if halt and status_j == Status.STOPPED:  # stopped at x0: the budget was spent
        status_j = Status.MAX_NFEV
    f, jac_x = out["fun"][:m], out["jac"][:m]
    if pad and not isinstance(jac_x, np.ndarray):  # CSR: drop the padded rows
        jac_x = jac_x[:m]
    jac_x = _as_users_kind(jac_x, host_pattern, jac_kind)
    # scipy evaluates fun(x0) first and raises if that is not finite (a non-finite
    # x0 included: the loop reports that as improper input, with f = fun(x0)).
    at_start = (
        status_j in (Status.NONFINITE, Status.IMPROPER_INPUT) and out["nfev"] <= 1
    )
    if at_start and not np.all(np.isfinite(f)):
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
        jac=_scaled_jacobian(jac_x, f, loss, float(f_scale), jac_kind),
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
        f0 = plan.f0
        if f0 is None:
            with float64():
                f0 = np.ravel(np.asarray(fun_w(x0, *call_args), dtype=float))
        initial_cost = float(robust_cost(f0, loss, float(f_scale), xp=np))
        print(result.message)
        print(
            f"Function evaluations {result.nfev}, initial cost {initial_cost:.4e}, "
            f"final cost {result.cost:.4e}, "
            f"first-order optimality {result.optimality:.2e}."
        )
    return result


#: ``scipy.sparse.linalg.lsmr``'s keywords (what scipy passes ``tr_options`` to).
_LSMR_KEYWORDS = ("damp", "atol", "btol", "conlim", "maxiter", "show", "x0")


def _check_sparsity(jac_sparsity, m, n, tr_solver):
    """scipy's checks of ``jac_sparsity`` (shape, then 'exact'), as a pattern."""
    try:
        pattern = as_pattern(jac_sparsity)
    except ValueError:  # scipy: np.atleast_2d, then the shape test
        pattern = as_pattern(np.atleast_2d(jac_sparsity))
    if pattern.shape != (m, n):
        raise ValueError("`jac_sparsity` has wrong shape.")
    if tr_solver == "exact":
        raise ValueError("tr_solver='exact' is incompatible with `jac_sparsity`.")
    return pattern


def _check_jac_kind(j0, method, tr_solver, x_scale) -> str:
    """ "dense", "sparse" or "operator": what a host ``jac`` returned at x0, with
    scipy's errors for the methods that need a dense J. (The loop densifies the
    other two: `_Bound`; the result gives them back in the user's kind.)"""
    if isinstance(j0, np.ndarray) or not hasattr(j0, "shape"):
        return "dense"
    if method == "lm":
        raise ValueError("method='lm' works only with dense Jacobian matrices.")
    if tr_solver == "exact":
        raise ValueError("tr_solver='exact' works only with dense Jacobian matrices.")
    if hasattr(j0, "toarray"):
        return "sparse"
    if isinstance(x_scale, str) and x_scale == "jac":
        raise ValueError(
            "x_scale='jac' can't be used when `jac` returns LinearOperator."
        )
    return "operator"


def _as_users_kind(jac, pattern, kind):
    """The final J (m, n) as scipy returns it: CSR with a pattern or for a sparse
    ``jac``, as it came otherwise (a LinearOperator is made in `_scaled_jacobian`,
    after the loss scaling)."""
    if not isinstance(jac, np.ndarray) or (pattern is None and kind != "sparse"):
        return jac
    from scipy.sparse import csr_array

    if pattern is None:
        return csr_array(jac)
    rows, cols = pattern.rows, pattern.cols
    return csr_array((jac[rows, cols], (rows, cols)), shape=jac.shape)


def _lsmr_options(tr_options, method, stacklevel):
    """``tr_options`` for ``tr_solver='lsmr'`` as `jaxlsq.solve`'s CG options.

    ``atol`` -> ``cg_tol`` (CG stops when the model's gradient is ``cg_tol`` times
    its start; lsmr's ``atol`` is the same kind of relative test) and ``maxiter``
    -> ``cg_maxiter``. The other lsmr keywords are accepted and have no effect:
    ``damp`` and trf's ``regularize`` (the trust region itself regularises the
    step), ``btol``, ``conlim``, ``show``, ``x0``. An unknown keyword raises
    scipy's ``TypeError``; 'dogbox' warns about ``regularize`` as scipy does."""
    opts = dict(tr_options or {})
    if method == "dogbox" and "regularize" in opts:
        warnings.warn(
            "The keyword 'regularize' in `tr_options` is not relevant for 'dogbox' "
            "method.",
            stacklevel=stacklevel,
        )
    opts.pop("regularize", None)
    for key in opts:
        if key not in _LSMR_KEYWORDS:
            raise TypeError(f"lsmr() got an unexpected keyword argument '{key}'")
    out = {}
    if opts.get("atol") is not None:
        out["cg_tol"] = float(opts["atol"])
    if opts.get("maxiter") is not None:
        out["cg_maxiter"] = int(opts["maxiter"])
    return out


def _scaled_jacobian(jac, f, loss, f_scale, kind="dense"):
    """scipy's reported ``jac``: `loss_scaled_jacobian`, dense, CSR, or (a ``jac``
    that returned a LinearOperator) a LinearOperator of the dense values."""
    if isinstance(jac, np.ndarray) or loss == "linear":
        jac = loss_scaled_jacobian(jac, f, loss, f_scale, xp=np)
    else:
        rows = loss_scaled_jacobian(np.ones((f.size, 1)), f, loss, f_scale, xp=np)
        jac = jac.multiply(rows).tocsr()
    if kind == "operator":
        from scipy.sparse.linalg import aslinearoperator

        return aslinearoperator(jac)
    return jac
