"""scipy ``least_squares``' result contract: its messages and status codes, its
option checks and warnings, its optimality measure and `OptimizeResult`."""

from __future__ import annotations

import warnings

import numpy as np

from ..core.status import Status

EPS = float(np.finfo(float).eps)


#: scipy's ``least_squares`` messages, word for word.
TERMINATION_MESSAGES = {
    -2: "Stopped because `callback` function raised `StopIteration` or returned `True`",
    -1: "Improper input parameters status returned from `leastsq`",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}

#: jaxlsq `Status` (MINPACK's info) -> ``least_squares`` status. 1-5 as scipy's own
#: ``FROM_MINPACK_TO_COMMON``; 6-8 ("tolerance too small": the test's machine-precision
#: floor was reached, possible only for a tolerance below eps, which scipy warns
#: about) count as that test; jaxlsq's NONFINITE is a failure (-1, its own message);
#: STOPPED (the callback stopped the fit) is scipy's -2.
STATUS_FROM_JAXLSQ = {
    Status.IMPROPER_INPUT: -1,
    Status.FTOL: 2,
    Status.XTOL: 3,
    Status.FTOL_AND_XTOL: 4,
    Status.GTOL: 1,
    Status.MAX_NFEV: 0,
    Status.FTOL_TOO_SMALL: 2,
    Status.XTOL_TOO_SMALL: 3,
    Status.GTOL_TOO_SMALL: 1,
    Status.NONFINITE: -1,
    Status.STOPPED: -2,
}


_OWN_MESSAGE = (
    Status.FTOL_TOO_SMALL,
    Status.XTOL_TOO_SMALL,
    Status.GTOL_TOO_SMALL,
    Status.NONFINITE,
)


def _check_x_scale(x_scale, x0):
    """MINPACK's ``diag`` for ``x_scale`` (None: automatic), with scipy's checks."""
    if x_scale is None or (isinstance(x_scale, str) and x_scale == "jac"):
        return None
    try:
        x_scale = np.asarray(x_scale, dtype=float)
        valid = bool(np.all(np.isfinite(x_scale)) and np.all(x_scale > 0))
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise ValueError("`x_scale` must be 'jac' or array_like with positive numbers.")
    if x_scale.ndim == 0:
        x_scale = np.resize(x_scale, x0.shape)
    if x_scale.shape != x0.shape:
        raise ValueError("Inconsistent shapes between `x_scale` and `x0`.")
    return 1.0 / x_scale


def _check_tolerances(ftol, xtol, gtol, method, stacklevel):
    """scipy's ``check_tolerance``: None -> 0, warn below eps, raise if unusable."""

    def check(tol, name):
        if tol is None:
            return 0.0
        if tol < EPS:
            warnings.warn(
                f"Setting `{name}` below the machine epsilon ({EPS:.2e}) effectively "
                "disables the corresponding termination condition.",
                stacklevel=stacklevel + 1,
            )
        return tol

    ftol, xtol, gtol = check(ftol, "ftol"), check(xtol, "xtol"), check(gtol, "gtol")
    if method == "lm" and (ftol < EPS or xtol < EPS or gtol < EPS):
        raise ValueError(
            "All tolerances must be higher than machine epsilon "
            f"({EPS:.2e}) for method 'lm'."
        )
    if ftol < EPS and xtol < EPS and gtol < EPS:
        raise ValueError(
            "At least one of the tolerances must be higher than "
            f"machine epsilon ({EPS:.2e})."
        )
    return ftol, xtol, gtol


def _optimality(method, x, grad, lb, ub, active_mask, bounded) -> float:
    """scipy's first-order optimality measure, per method."""
    if method == "lm" or not bounded:
        return float(np.linalg.norm(grad, ord=np.inf))
    if method == "trf":  # Coleman-Li scaling: distance to the bound grad points at
        v = np.ones_like(x)
        mask = (grad < 0) & np.isfinite(ub)
        v[mask] = ub[mask] - x[mask]
        mask = (grad > 0) & np.isfinite(lb)
        v[mask] = x[mask] - lb[mask]
        return float(np.linalg.norm(grad * v, ord=np.inf))
    free = np.where(active_mask * grad < 0, 0.0, grad)  # dogbox: the free gradient
    return float(np.linalg.norm(free, ord=np.inf))


def _optimize_result(**fields):
    try:
        from scipy.optimize import OptimizeResult
    except ImportError:  # scipy is optional: the same thing, a dict with attributes
        OptimizeResult = _OptimizeResult
    return OptimizeResult(**fields)


class _OptimizeResult(dict):
    """scipy's ``OptimizeResult`` where scipy is not installed."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    __setattr__ = dict.__setitem__  # type: ignore[assignment]
    __delattr__ = dict.__delitem__  # type: ignore[assignment]
