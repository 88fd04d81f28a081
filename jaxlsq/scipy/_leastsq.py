"""`leastsq`: scipy.optimize.leastsq's contract on top of `jaxlsq.solve`.

See `jaxlsq.scipy` for the overview (JAX path vs host path, float64 semantics).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..core.status import MESSAGES, Status
from . import host as _host
from .errors import HostFallbackWarning  # noqa: F401
from .plan import _plan
from .run import run_fit
from .x64 import float64

_LEASTSQ_SUCCESS = (1, 2, 3, 4)
_LEASTSQ_FAILURE = (5, 6, 7, 8)
#: ``ier`` reported when jaxlsq stops on non-finite residuals or Jacobian
#: (``Status.NONFINITE``), which MINPACK cannot detect: a failure code, with its own
#: message, so that ``ier in (1, 2, 3, 4)`` is never true for a NaN result.
NONFINITE_IER = 6


def _messages(ftol, xtol, gtol, maxfev) -> dict[int, str]:
    """scipy's ``leastsq`` message table, word for word."""
    return {ier: _message(ier, ftol, xtol, gtol, maxfev) for ier in range(9)}


def _message(ier: int, ftol, xtol, gtol, maxfev) -> str:
    """scipy's ``leastsq`` message for ``ier`` (0-8), word for word."""
    if ier == 0:
        return "Improper input parameters."
    if ier == 1:
        return (
            "Both actual and predicted relative reductions "
            f"in the sum of squares\n  are at most {ftol:f}"
        )
    if ier == 2:
        return (
            f"The relative error between two consecutive iterates is at most {xtol:f}"
        )
    if ier == 3:
        return (
            "Both actual and predicted relative reductions in "
            f"the sum of squares\n  are at most {ftol:f} and the "
            "relative error between two consecutive "
            f"iterates is at \n  most {xtol:f}"
        )
    if ier == 4:
        return (
            "The cosine of the angle between func(x) and any "
            f"column of the\n  Jacobian is at most {gtol:f} in "
            "absolute value"
        )
    if ier == 5:
        return f"Number of calls to function has reached maxfev = {maxfev}."
    if ier == 6:
        return (
            f"ftol={ftol:f} is too small, no further reduction "
            "in the sum of squares\n  is possible."
        )
    if ier == 7:
        return (
            f"xtol={xtol:f} is too small, no further improvement in "
            "the approximate\n  solution is possible."
        )
    if ier == 8:
        return (
            f"gtol={gtol:f} is too small, func(x) is orthogonal to the "
            "columns of\n  the Jacobian to machine precision."
        )
    raise KeyError(ier)


# ----------------------------------------------------------------------------------
# leastsq


def leastsq(
    func: Callable[..., Any],
    x0: Any,
    args: Any = (),
    Dfun: Callable[..., Any] | None = None,
    full_output: bool = False,
    col_deriv: bool = False,
    ftol: float = 1.49012e-08,
    xtol: float = 1.49012e-08,
    gtol: float = 0.0,
    maxfev: int = 0,
    epsfcn: float | None = None,
    factor: float = 100,
    diag: Any = None,
):
    """Minimise the sum of squares of ``func(x, *args)``: ``scipy.optimize.leastsq``.

    Same signature, defaults and results as scipy's; the fit is `jaxlsq.solve`
    (MINPACK's lmder). A ``func`` written with ``jax.numpy`` is compiled once and
    differentiated exactly; a numpy ``func`` runs on the host with MINPACK's forward
    differences (see the module docstring and `HostFallbackWarning`).

    Parameters
    ----------
    func : callable
        ``func(x, *args)`` with ``x`` of shape (n,), returning ``m >= n`` residuals
        (any shape; flattened).
    x0 : array_like
        Starting point; flattened to shape (n,) and cast to float64.
    args : tuple, default ()
        Extra arguments of ``func`` and ``Dfun``; a non-tuple is wrapped in a tuple.
    Dfun : callable, optional
        ``Dfun(x, *args)``: the Jacobian, (m, n) (derivatives across the rows), or
        (n, m) when ``col_deriv`` is true. Default: exact (``jax.jacfwd``) on the JAX
        path, forward differences on the host path.
    full_output : bool, default False
        Return ``(x, cov_x, infodict, mesg, ier)`` instead of ``(x, ier)``.
    col_deriv : bool, default False
        ``Dfun`` returns the transposed Jacobian, shape (n, m).
    ftol, xtol : float, default 1.49012e-08
        Relative tolerances on the sum of squares and on the parameters (MINPACK's).
    gtol : float, default 0.0
        Tolerance on the cosine between the residuals and the Jacobian's columns.
    maxfev : int, default 0
        Maximum number of calls of ``func``; ``<= 0`` means ``200 * (n + 1)`` without
        ``Dfun`` and ``100 * (n + 1)`` with it. On the JAX path only residual
        evaluations exist (the Jacobian is exact); on the host path the n
        forward-difference calls per Jacobian count against it, as in MINPACK's
        ``lmdif``.
    epsfcn : float, optional
        Forward-difference step: ``sqrt(max(epsfcn, eps)) * |x_j|`` (host path
        without ``Dfun`` only). Default: machine epsilon of ``func``'s output dtype.
    factor : float, default 100
        Initial trust-region radius, relative to ``||diag * x0||``.
    diag : array_like (n,), optional
        Positive variable scale factors; default: MINPACK's automatic scaling.

    Returns
    -------
    x : ndarray, shape (n,), float64
        The solution (the last iterate if the fit failed).
    cov_x : ndarray, shape (n, n), or None
        ``inv(J^T J)`` from the pivoted R factor of the final Jacobian, as scipy
        computes it; ``None`` if ``R`` is singular or ``ier`` is not in 1-4. Only with
        ``full_output``.
    infodict : dict
        ``fvec`` (m,) residuals at ``x``; ``nfev`` (int) calls of ``func``; ``njev``
        (int, only with ``Dfun``) calls of ``Dfun``; ``fjac`` (n, m) MINPACK's
        transposed QR storage of the final Jacobian (R in the upper triangle of
        ``fjac.T[:n]``); ``ipvt`` (n,) int32, 0-based column pivots
        (``J[:, ipvt] = Q R``); ``qtf`` (n,) the first n entries of ``Q^T fvec``.
        Only with ``full_output``.
    mesg : str
        Why the fit stopped (scipy's texts). Only with ``full_output``.
    ier : int
        1-4 success; 5-8 failure; 0 improper input (with ``full_output`` only;
        otherwise an error is raised). ``6`` is also used when the residuals or the
        Jacobian become non-finite (jaxlsq's ``Status.NONFINITE``), with a message
        saying so: MINPACK has no such code and would report NaN results as
        converged.

    Raises
    ------
    TypeError
        ``m < n`` (scipy's message); ``Dfun`` of the wrong shape (scipy's message);
        improper input (negative tolerance, ``factor <= 0``, ``diag`` entries
        ``<= 0``) without ``full_output``.
    ValueError
        ``diag`` whose length is not n (scipy silently accepts it).

    Warns
    -----
    RuntimeWarning
        Without ``full_output``, when ``ier`` is not in 1-4 (as scipy).
    HostFallbackWarning
        Once per function that JAX cannot trace.

    Notes
    -----
    Deviations from scipy, all deliberate:

    * On the JAX path the Jacobian is exact, so ``nfev`` counts residual evaluations
      only and is typically several times smaller than scipy's (which includes n
      forward-difference calls per Jacobian). The final Jacobian is evaluated at the
      returned ``x`` (MINPACK's ``fjac`` belongs to the last point at which it
      computed a Jacobian, usually the one before), so ``njev`` may exceed scipy's by
      one and the host path's ``nfev`` by ``n``.
    * Non-finite residuals never yield ``ier`` 1-4 (see ``ier``); a non-finite ``x0``
      returns ``x0`` with ``ier = 6`` without running the fit.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxlsq.scipy import leastsq
    >>> def func(x):
    ...     return 2 * (x - 3) ** 2 + 1
    >>> x, ier = leastsq(func, 0)
    >>> x.round(4), ier in (1, 2, 3, 4)
    (array([3.]), True)
    """
    res = _leastsq(
        func, x0, args, Dfun, full_output, col_deriv, ftol, xtol, gtol, maxfev,
        epsfcn, factor, diag, stacklevel=3,
    )  # fmt: skip
    ier, mesg = res["ier"], res["mesg"]
    if full_output:
        return res["x"], res["cov_x"], res["infodict"], mesg, ier
    if ier in _LEASTSQ_FAILURE:
        warnings.warn(mesg, RuntimeWarning, stacklevel=2)
    elif ier == 0:
        raise TypeError(mesg)
    return res["x"], ier


def _leastsq(
    func, x0, args, Dfun, full_output, col_deriv, ftol, xtol, gtol, maxfev, epsfcn,
    factor, diag, *, stacklevel: int, factors: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """``leastsq`` without the warnings/raising; returns a dict of results.

    ``factors=False`` (`curve_fit` without ``full_output``): with ``full_output``
    only ``cov_x`` and the infodict's ``fvec``/``nfev`` are needed, not MINPACK's
    ``fjac``/``ipvt``/``qtf``; a large (chunked) fit then never forms the (m, n)
    J, and ``cov_x`` comes from R (n, n) of the same J, and ``jac`` is None.
    """
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    if Dfun is not None and not callable(Dfun):
        raise TypeError(f"Dfun must be callable or None, got {type(Dfun).__name__}")
    x0 = np.asarray(x0).flatten()
    if np.iscomplexobj(x0):
        raise TypeError(f"x0 must be real, got dtype {x0.dtype}")
    x0 = x0.astype(np.float64)
    n = x0.size
    if n == 0:
        raise ValueError("x0 must contain at least one parameter, got size 0")
    if not isinstance(args, tuple):
        args = (args,)

    with float64():
        plan = _plan(func, Dfun, col_deriv, x0, args, stacklevel=stacklevel + 1)
        m = plan.m
        if n > m:
            raise TypeError(
                f"Improper input: func input vector length N={n} must"
                f" not exceed func output vector length M={m}"
            )
        if maxfev <= 0:
            maxfev = 200 * (n + 1) if Dfun is None else 100 * (n + 1)
        maxfev = int(maxfev)
        if epsfcn is None:
            epsfcn = float(np.finfo(plan.out_dtype).eps)
        if diag is not None:
            diag = np.asarray(diag, dtype=np.float64).ravel()
            if diag.size != n:
                raise ValueError(f"diag must have n={n} entries, got {diag.size}")

        improper = ftol < 0 or xtol < 0 or gtol < 0 or factor <= 0
        improper = improper or (diag is not None and bool(np.any(diag <= 0)))
        if improper or not np.isfinite(x0).all():
            fvec = plan.f0 if plan.f0 is not None else _eval_jax(func, x0, args)
            ier = 0 if improper else NONFINITE_IER
            mesg = _message(0, 0, 0, 0, 0) if improper else MESSAGES[Status.NONFINITE]
            fill = 0.0 if improper else np.nan
            infodict = {"fvec": fvec, "nfev": 0}
            if Dfun is not None:
                infodict["njev"] = 0
            infodict["fjac"] = np.full((n, m), fill)
            infodict["ipvt"] = np.arange(n, dtype=np.int32)
            infodict["qtf"] = np.full(n, fill)
            jac = np.full((m, n), np.nan)
            return dict(x=x0, cov_x=None, infodict=infodict, mesg=mesg, ier=ier,
                        jac=jac)  # fmt: skip

        options = dict(
            ftol=float(ftol),
            xtol=float(xtol),
            gtol=float(gtol),
            max_nfev=maxfev,
            factor=float(factor),
            diag=diag,
        )
        if plan.host is None:
            fit = run_fit(
                func, x0, args, m, "leastsq", compress_jac=not factors,
                jac=plan.jac, **options,
            )  # fmt: skip
            nfev, njev = fit.nfev, fit.njev
        else:
            if Dfun is None:  # lmdif counts its n difference calls per Jacobian
                options["nfev_per_jac"] = n
            with _host.HostProblem.call(args, epsfcn) as (token, ctx):
                fit = run_fit(
                    plan.host.fun, x0, (np.int32(token),), m, "leastsq",
                    jac=plan.host.jac, **options,
                )  # fmt: skip
            nfev, njev = ctx.nfev, ctx.njev

    status = fit.status
    if status == Status.NONFINITE:
        ier, mesg = NONFINITE_IER, MESSAGES[Status.NONFINITE]
    else:
        ier, mesg = status, _message(status, ftol, xtol, gtol, maxfev)
    x, fvec, jac = fit.x, fit.fun, fit.jac
    out = dict(x=x, cov_x=None, infodict=None, mesg=mesg, ier=ier, jac=jac)
    if full_output:
        infodict = {"fvec": fvec, "nfev": nfev}
        if Dfun is not None:
            infodict["njev"] = njev
        if fit.jac_is_r:  # R itself (no pivoting): cov_x = inv(R^T R), trtri's rule
            fjac, ipvt = jac.T, np.arange(n)
            out["jac"] = None
        else:
            fjac, ipvt, qtf = _host.minpack_qr(jac, fvec)
            infodict.update(fjac=fjac, ipvt=ipvt, qtf=qtf)
        out["infodict"] = infodict
        if ier in _LEASTSQ_SUCCESS:
            out["cov_x"] = _host.covariance_from_r(fjac, ipvt)
    return out


def _eval_jax(func, x0, args) -> np.ndarray:
    return np.asarray(jnp.ravel(func(jnp.asarray(x0), *args)), dtype=np.float64)
