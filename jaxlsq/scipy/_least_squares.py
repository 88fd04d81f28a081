"""`least_squares`: scipy.optimize.least_squares' contract on top of `jaxlsq.solve`.

See `jaxlsq.scipy` for the overview (JAX path vs host path, float64 semantics). This
module maps scipy's options onto `solve` (bounds, robust losses, scaling, tolerances),
differentiates numpy functions on the host with scipy's finite-difference schemes, and
assembles scipy's `OptimizeResult` (status codes, messages, optimality measure, the
loss-modified Jacobian).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .lsq_solve import _least_squares


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
        array on the JAX path; on the host path a numpy array, a scipy.sparse
        matrix or a ``scipy.sparse.linalg.LinearOperator``, the last two densified
        for the steps (a LinearOperator by ``n`` products with unit vectors: fine
        for moderate ``n``) and returned in ``res.jac`` in the user's kind). A
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
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"} or callable
        Robust loss, scipy's definitions (see `jaxlsq.core.losses`); default
        "linear". A callable ``loss(z)`` (z (m,)) returns rows ``rho, rho', rho''``
        (3, m), as scipy's: traced by JAX when it can be, else (numpy, rows filled
        in place) run on the host, its derivatives taken from its own rows. A
        traceable loss may return ``rho`` (m,) alone: its derivatives by autodiff
        (a jaxlsq extension). Not with "lm" (as scipy).
    f_scale : float, default 1.0
        Soft margin between inlier and outlier residuals; must be > 0 for a robust
        loss (scipy does not check it).
    diff_step : None or array_like
        Relative finite-difference step (host path with a string ``jac``), scipy's
        rule: ``x * diff_step``, default ``eps**(1/2)`` (2-point, cs) or
        ``eps**(1/3)`` (3-point) times ``max(1, |x|)``.
    tr_solver : {None, "exact", "lsmr"}
        None: "lsmr" with ``jac_sparsity``, "exact" otherwise (scipy's rule).
        "exact": dense SVD steps. "lsmr" (trf/dogbox, JAX path, no callable
        ``jac``): jaxlsq's matrix-free steps, ``linear_solver="cg"`` (Steihaug CG
        on the trust-region subproblem, J by jvp/vjp; scipy's LSMR solves the same
        least-squares subproblem); on the host path or with a callable ``jac``,
        dense steps (the same minimum within tolerance). Ignored by "lm".
    tr_options : dict, optional
        Ignored unless the solver is "lsmr" (as scipy). For "lsmr", lsmr's
        keywords: ``atol`` -> ``cg_tol``, ``maxiter`` -> ``cg_maxiter``;
        ``damp``, ``btol``, ``conlim``, ``show``, ``x0`` and trf's
        ``regularize`` are accepted and have no effect (the trust region
        regularises the step); another key raises lsmr's ``TypeError``; dogbox
        warns about ``regularize`` as scipy does.
    jac_sparsity : array_like (m, n) or scipy.sparse matrix, optional
        The Jacobian's structural nonzeros (trf/dogbox, string ``jac``; ignored
        with a callable ``jac``, as scipy): J by one jvp per group of columns
        that share no row, exact, and steps by "lsmr" (above); ``res.jac`` is
        then CSR, as scipy's. On the host path (a numpy ``fun``): scipy's sparse
        differences (one evaluation of ``fun`` per group, two for "3-point"),
        entries equal to the dense scheme's, and dense steps. Wrong shape,
        "exact" or "lm" raise scipy's errors.
    max_nfev : int, optional
        Maximum number of evaluations of ``fun`` by the iterations (finite-difference
        calls not included, as scipy >= 1.16); default ``100 * n`` for every method.
        trf/dogbox count ``fun(x0)`` against it, so with 1 they return ``x0``
        (status 0) as scipy's do; "lm" takes one step, as MINPACK.
    verbose : {0, 1, 2}, default 0
        1: scipy's termination report. 2: also scipy's per-iteration table
        (trf/dogbox; a line per accepted step, printed from inside the compiled
        loop by a host callback; "lm" prints the report only, as scipy).
    args, kwargs : tuple and dict, optional
        Extra arguments of ``fun`` and ``jac``: ``fun(x, *args, **kwargs)``.
    callback : callable, optional
        trf/dogbox: ``callback(intermediate_result)`` (an ``OptimizeResult``
        with ``x``, ``fun``, ``nit``, ``nfev``, ``cost``) or ``callback(x)``,
        chosen by introspection as scipy does, after every accepted step (a
        host callback from inside the compiled loop, `jaxlsq.core.monitor`:
        one device round trip per step). Raising ``StopIteration`` stops the
        fit there with status -2; another exception propagates. "lm": scipy's
        warning, and ignored.
    workers : int or map-like callable, optional
        Maps finite-difference evaluations on the host path (``workers(f,
        points)``); an int as scipy's: 1 serial, k > 1 a pool of k processes, -1
        one per CPU (``fun`` must then be picklable). Unused on the JAX path
        (exact Jacobians, no differences).

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
        shape; ``jac_sparsity`` of the wrong shape, with "exact" or "lm"; a
        ``jac`` returning a sparse matrix or LinearOperator with "lm" or "exact",
        or a LinearOperator with ``x_scale="jac"``. Also ``f_scale <= 0`` with a
        robust loss.
    TypeError
        An unknown ``tr_options`` key with "lsmr" (lsmr's own error).

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
