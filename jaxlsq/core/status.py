"""Status codes, their messages, and the `Solution` pytree returned by `solve`.

Status codes 0-8 mean exactly what MINPACK's ``info`` / scipy's ``ier`` mean, so a
status read from a jaxlsq fit and an ``ier`` read from ``scipy.optimize.leastsq`` can
be compared directly. Codes 9 and 10 are jaxlsq's own: MINPACK has no way to say
"the residuals are not finite" and reports such fits as converged (ier 4), and 10
means the ``monitor`` option asked to stop (`jaxlsq.core.monitor`); -1 marks a fit
still in progress inside the loop and never appears in a returned Solution.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np


class Status(enum.IntEnum):
    """Why the Levenberg-Marquardt loop stopped.

    ``1 <= status <= 4`` is success (the same rule as scipy's ``ier``).

    Examples
    --------
    >>> from jaxlsq import Status
    >>> Status(2).name, Status(2).success
    ('XTOL', True)
    >>> Status.MAX_NFEV.message
    'The number of residual evaluations has reached max_nfev.'
    """

    RUNNING = -1
    IMPROPER_INPUT = 0
    FTOL = 1
    XTOL = 2
    FTOL_AND_XTOL = 3
    GTOL = 4
    MAX_NFEV = 5
    FTOL_TOO_SMALL = 6
    XTOL_TOO_SMALL = 7
    GTOL_TOO_SMALL = 8
    NONFINITE = 9
    STOPPED = 10

    @property
    def success(self) -> bool:
        return 1 <= self.value <= 4

    @property
    def message(self) -> str:
        return MESSAGES[self]


#: One table: status -> human message. The texts of 0-8 follow MINPACK's lmder.
MESSAGES: dict[Status, str] = {
    Status.RUNNING: "The solver has not finished.",
    Status.IMPROPER_INPUT: "Improper input parameters (non-finite x0 or options).",
    Status.FTOL: (
        "Both actual and predicted relative reductions in the sum of squares are at "
        "most ftol."
    ),
    Status.XTOL: "The relative error between two consecutive iterates is at most xtol.",
    Status.FTOL_AND_XTOL: (
        "Both actual and predicted relative reductions in the sum of squares are at "
        "most ftol, and the relative error between two consecutive iterates is at most "
        "xtol."
    ),
    Status.GTOL: (
        "The cosine of the angle between the residuals and any column of the Jacobian "
        "is at most gtol in absolute value."
    ),
    Status.MAX_NFEV: "The number of residual evaluations has reached max_nfev.",
    Status.FTOL_TOO_SMALL: (
        "ftol is too small. No further reduction in the sum of squares is possible."
    ),
    Status.XTOL_TOO_SMALL: (
        "xtol is too small. No further improvement in the approximate solution is "
        "possible."
    ),
    Status.GTOL_TOO_SMALL: (
        "gtol is too small. The residuals are orthogonal to the columns of the "
        "Jacobian to machine precision."
    ),
    Status.NONFINITE: (
        "The residuals or the Jacobian are not finite (NaN or inf) at the current "
        "point; the fit cannot proceed."
    ),
    Status.STOPPED: "Stopped by the monitor (it returned True or raised).",
}


def status_message(status: Any) -> str | np.ndarray:
    """Message(s) for a concrete status: a str for a scalar, else an array of str."""
    codes = np.asarray(status)
    if codes.ndim == 0:
        return MESSAGES[Status(int(codes))]
    table = np.vectorize(lambda c: MESSAGES[Status(int(c))], otypes=[object])
    return table(codes)


class Solution(NamedTuple):
    """Result of `jaxlsq.solve`: a pytree of arrays, so it passes through jit and vmap.

    Under ``jax.vmap`` every field gains a leading batch axis.

    Attributes
    ----------
    params : pytree
        The solution, with the structure and dtype of ``x0``.
    residuals : Array, shape (m,)
        ``fun(params, *args)`` flattened, at the solution.
    cost : Array, shape ()
        ``0.5 * sum(residuals**2)``.
    jac : Array, shape (m, n)
        Exact Jacobian of the flattened residuals with respect to the flattened
        parameters (``jax.flatten_util.ravel_pytree`` order), at the solution.
    grad : Array, shape (n,)
        ``jac.T @ residuals``, the gradient of ``cost``.
    status : Array, int32, shape ()
        A `Status` code; see `Status` and `MESSAGES`.
    success : Array, bool, shape ()
        ``1 <= status <= 4``.
    nfev : Array, int32, shape ()
        Number of residual evaluations (Jacobian evaluations not included).
    njev : Array, int32, shape ()
        Number of Jacobian evaluations.
    n_iter : Array, int32, shape ()
        Number of accepted steps.
    active_mask : Array, int32, shape (n,)
        Per parameter (``ravel_pytree`` order), as scipy ``least_squares``: -1 if it
        ended on its lower bound, +1 on its upper bound, 0 otherwise (always 0
        without ``bounds``).

    With a robust ``loss``, ``cost`` is the robust cost (scipy's), while
    ``residuals`` and ``jac`` are those of ``fun`` itself and ``grad`` is the
    gradient of the robust cost.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, jaxlsq
    >>> x = jnp.linspace(0.0, 1.0, 10)
    >>> sol = jaxlsq.solve(lambda p, x: p[0] + p[1] * x - (1 + 2 * x), jnp.zeros(2),
    ...                    args=(x,))
    >>> sol.jac.shape, bool(sol.success), int(sol.status) in (1, 2, 3, 4)
    ((10, 2), True, True)
    >>> batch = jax.vmap(lambda c: jaxlsq.solve(
    ...     lambda p, x: p[0] + p[1] * x - (c + 2 * x), jnp.zeros(2), args=(x,)))(
    ...     jnp.arange(4.0))
    >>> batch.params.shape, batch.status.shape   # one status per fit
    ((4, 2), (4,))
    """

    params: Any
    residuals: Any
    cost: Any
    jac: Any
    grad: Any
    status: Any
    success: Any
    nfev: Any
    njev: Any
    n_iter: Any
    active_mask: Any

    @property
    def message(self) -> str | np.ndarray:
        """Human-readable reason for stopping (host side; needs a concrete status)."""
        return status_message(self.status)
