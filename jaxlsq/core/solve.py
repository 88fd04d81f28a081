"""`solve`: the JAX-native entry point. Checks in Python, runs the jitted loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .chunked import resolve_chunk_points
from .compiler import jit
from .krylov import MATRIX_FREE_SOLVERS
from .loop import run_lm
from .model import assemble_solution, make_model
from .monitor import take_error, traced_monitor
from .options import SolveOptions
from .sparsity import check_pattern
from .status import Solution
from .validate import as_float_pytree, check_concrete, residual_size


def solve(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    *,
    options: SolveOptions | None = None,
    **option_kwargs: Any,
) -> Solution:
    """Minimise ``0.5 * sum(fun(params, *args) ** 2)`` by Levenberg-Marquardt.

    A trust-region LM in the manner of MINPACK's ``lmder`` (Moré 1978) with an exact
    Jacobian from JAX. The whole loop is one jit-compiled ``lax.while_loop``: ``solve``
    works under ``jax.jit`` and ``jax.vmap`` (one independent fit per lane, each with
    its own status).

    Parameters
    ----------
    fun : callable
        ``fun(params, *args) -> residuals``, traceable by JAX. Residuals may have any
        shape; they are flattened to ``m`` values. Must satisfy ``m >= n``.
    x0 : pytree of float arrays
        Starting point; ``n`` is its total number of entries. Its dtype (float32 or
        float64) is the working precision. Integer leaves are cast to float.
    args : tuple, default ()
        Extra positional arguments of ``fun`` (any pytrees of arrays).
    options : SolveOptions, optional
        All the options below as one value (`jaxlsq.core.options.SolveOptions`);
        keywords given as well override its fields. An unknown keyword raises
        ``TypeError``.
    bounds : (lower, upper), optional
        Box constraints ``lower <= params <= upper``. Each side is a scalar (applied
        to every parameter) or a pytree with the structure of ``x0`` whose leaves
        broadcast to the parameter leaves; use ``-inf``/``inf`` for open sides.
        Requires ``lower < upper`` everywhere and ``x0`` inside the box (on a bound
        is fine): violations raise ``ValueError`` (like scipy ``least_squares``),
        or give ``Status.IMPROPER_INPUT`` when the values are traced. Method: an
        active-set projected LM (see `jaxlsq.core.loop`); solutions on the boundary are
        reached exactly and reported in ``Solution.active_mask``. Default: no bounds
        (the unbounded loop is compiled and nothing of this costs anything).
    fixed : pytree of bool, optional
        ``True`` holds a parameter at its value in ``x0``; same structure rules as
        ``bounds``. The model is not rewritten: fixed parameters still enter
        ``fun``, their Jacobian columns are simply ignored by the steps. Default:
        nothing fixed.
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"} or callable
        Robust loss with scipy ``least_squares``' definition (default "linear"):
        the fit minimises ``0.5 * f_scale**2 * sum(rho((r / f_scale)**2))`` (see
        `jaxlsq.core.losses`), and ``Solution.cost`` is that value. A callable
        follows scipy's convention, ``loss(z)`` for z (m,) returning rows
        ``rho, rho', rho''`` (3, m), or ``rho`` (m,) alone (derivatives by
        autodiff), and must be traceable by JAX.
    f_scale : float, default 1.0
        Residual scale (units of the residuals) at which a robust loss starts to
        down-weight a point. Must be > 0. Ignored for ``"linear"``.
    jac : {"auto", "fwd", "rev"} or callable, default "auto"
        How the Jacobian is computed: forward-mode (``jax.jacfwd``, best for
        ``n <= m``), reverse-mode, or a callable ``jac(params, *args)`` returning the
        (m, n) Jacobian (columns in the order of
        ``jax.flatten_util.ravel_pytree(params)``) or, for array ``params``, the
        ``residual_shape + params.shape`` array that ``jax.jacfwd`` gives. Any other
        shape (a transposed one included) raises ``ValueError`` naming ``jac``.
    ftol : float, default ``10 * eps`` of the working dtype (2.2e-15 in float64,
        1.2e-6 in float32)
        Stop when both the actual and predicted relative reductions of the sum of
        squares are at most ``ftol`` (status 1). MINPACK's own default,
        ``sqrt(eps)``, stops early on ill-conditioned problems (parameters good to
        only 3-5 digits on 21 of the 54 NIST StRD fits); ``10 * eps`` gets every NIST
        fit to 6+ digits (``100 * eps`` misses ENSO by a hair) for a few extra,
        cheap iterations. The scipy shims keep
        scipy's defaults.
    xtol : float, default ``10 * eps`` of the working dtype
        Stop when the trust-region radius is at most ``xtol`` times the scaled norm of
        the parameters (status 2).
    gtol : float, default ``eps`` of the working dtype
        Stop when the cosine between the residuals and every Jacobian column is at most
        ``gtol`` (status 4). MINPACK's default, 0, reports a point that is stationary
        to machine precision (e.g. an exactly solved linear problem) as status 8,
        "gtol is too small", a failure; with ``eps`` it is a success.
    max_nfev : int, default ``500 * (n + 1)``
        Maximum number of residual evaluations (status 5 when reached). Five times
        lmder's default: curved valleys such as NIST Bennett5 need ~760 evaluations.
    nfev_per_jac : int, default 0
        Residual evaluations that one Jacobian costs, added to ``nfev`` and counted
        against ``max_nfev`` for each Jacobian (e.g. ``n`` for your own forward
        differences, as MINPACK's ``lmdif`` counts them). 0 for exact Jacobians.
    factor : float, default 10.0
        Initial trust-region radius, relative to the scaled norm of ``x0``. MINPACK
        uses 100; from 100 the first step of NIST BoxBOD (start 1) jumps onto a
        plateau where the model saturates, a false minimum that MINPACK reports as
        converged. 10 avoids it and costs nothing measurable elsewhere.
    diag : array (n,), optional
        Fixed positive variable scaling. Default: MINPACK's automatic scaling (running
        maximum of the Jacobian's column norms).
    linear_solver : {"svd", "eigh", "cg"}, default "svd"
        How damped steps are solved; see `jaxlsq.core.steps`. ``"svd"`` is robust to
        ill-conditioning; ``"eigh"`` (normal equations) is cheaper but loses accuracy
        when the Jacobian's condition number exceeds about ``1/sqrt(eps)``.
        ``"cg"``: matrix-free, for many parameters (`jaxlsq.core.krylov`): J only
        through products (sparse by ``jac_sparsity``, else jvp/vjp), each step by
        Steihaug CG on the trust-region subproblem; no (m, n) or (n, n) matrix, and
        ``Solution.jac`` is None. Its convergence degrades with J's conditioning
        (44 of the 54 NIST fits, against 54 with "svd"). Not with a callable ``jac``.
    jac_sparsity : (m, n) array or scipy.sparse matrix, optional
        J's structural nonzeros. J is then computed by one ``jvp`` per group of
        columns that share no row (greedy colouring, as scipy's), e.g. 3 products
        instead of 10^4 for a global fit with one shared parameter. Static.
    cg_tol : float, default ``sqrt(eps)``
        ``"cg"`` stops when the model gradient falls by this factor.
    cg_maxiter : int, default n
        Most CG iterations per step (``"cg"`` only).
    chunk_points : "auto", int or None, default "auto"
        For one fit of many data points: compute the Jacobian in blocks of this
        many points, each reduced at once into ``J^T J`` and ``J^T f`` (R by its
        Cholesky factor where that is well conditioned, else by TSQR; see
        `jaxlsq.core.chunked`), so no (m, n) matrix exists inside the loop (its
        memory is O(chunk_points * n + n^2) beyond the data and residuals; the
        dense J is formed once at the end for ``Solution.jac``, unless
        ``keep_jac=False``). 3x faster than
        the dense Jacobian at 10^4-10^6 points (n = 5, 2-core CPU).
        ``"auto"``: blocks of 4096 points when there are at least 8192, the
        values are concrete (not under ``jit``/``vmap``) and ``fun`` passes the
        check below; otherwise (and for None) the dense Jacobian. ``fun`` must be
        pointwise in the data: its residuals have a leading axis of P points,
        every array in ``args`` with P entries along its leading axis is split
        along it (other leaves are passed whole), and the residuals of a block
        of points are the rows of the full residuals. With concrete ``args`` the
        first two blocks are checked at ``x0`` against the residuals of their
        points together (``ValueError`` if they differ; `check_pointwise`); under
        ``jit`` the contract is yours.
        Not with a callable ``jac``.
    keep_jac : bool, default True
        False: ``Solution.jac`` is None, and the (m, n) Jacobian is never formed
        after the loop (``grad`` comes from one vjp). With ``chunk_points`` one
        fit then holds O(chunk_points * n + n^2) beyond its data from start to
        end. Static; not for `fit`/`fit_batch` (their statistics need J) nor the
        refill pool.
    monitor : callable, optional
        ``monitor(progress) -> bool``, a host function told of the fit at its
        start and after every accepted step (a `jaxlsq.core.monitor.Progress`:
        ``nit``, ``nfev``, ``njev``, ``cost``, ``x`` flat (n,), ``fun`` (m,),
        ``grad`` (n,), ``final``), through ``io_callback`` from inside the
        compiled loop. Returning True (or raising ``StopIteration``) stops the
        fit there with ``Status.STOPPED``; another exception stops it too and
        is re-raised by ``solve``. Costs one host round trip per accepted step;
        static (pass the same function to reuse the compiled program). Not under
        ``vmap`` (``ValueError``: JAX cannot batch a host callback in the loop).
        Default None: nothing is compiled for it.
    adjoint : {"implicit", "unrolled"}, default "implicit"
        How JAX differentiates the result with respect to ``args``. ``"implicit"``:
        the implicit-function theorem at the solution, ``dp/dargs =
        -H^+ d(J^T r)/dargs`` with ``H`` the exact Hessian of the cost (see
        `jaxlsq.core.implicit`); forward and reverse mode, ``jit`` and ``vmap`` all
        work, memory does not depend on the number of iterations, and the derivative
        with respect to ``x0`` is zero. It assumes the returned point is stationary:
        for a fit that did not succeed it is still evaluated there, and may be
        meaningless.
        ``"unrolled"``: differentiate through the iterations themselves (for
        comparison); forward mode only (``jvp``, ``jacfwd``): JAX cannot reverse a
        ``while_loop`` and raises ``ValueError`` for ``grad``/``jacrev``/``vjp``.
        ``params``, ``residuals``, ``cost``, ``jac`` and ``grad`` carry derivatives;
        integer fields do not.

    Returns
    -------
    Solution
        ``params`` (structure of ``x0``), ``residuals`` (m,), ``cost``, ``jac`` (m, n),
        ``grad`` (n,), ``status``, ``success``, ``nfev``, ``njev``, ``n_iter``,
        ``active_mask`` (n,), and the host-side property ``message``.

    Raises
    ------
    ValueError
        For an invalid option, an empty or non-float ``x0``, non-finite concrete
        ``x0``, ``m < n``, a ``fun`` that cannot be evaluated at ``x0``, bounds with
        ``lower >= upper`` or ``x0`` outside them, an unknown ``loss``, or
        ``f_scale <= 0``. Under ``jit``/``vmap``, non-finite ``x0``, bad bounds or
        options are reported as ``Status.IMPROPER_INPUT`` instead.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, jaxlsq
    >>> x = jnp.linspace(0.0, 1.0, 20)
    >>> y = 2.0 * jnp.exp(-3.0 * x)
    >>> sol = jaxlsq.solve(lambda p, x, y: p[0] * jnp.exp(-p[1] * x) - y,
    ...                    jnp.array([1.0, 1.0]), args=(x, y))
    >>> bool(sol.success), [round(float(v), 4) for v in sol.params]
    (True, [2.0, 3.0])

    Derivative of the fitted parameters with respect to the data, shape (2, 20):

    >>> dp_dy = jax.jacrev(lambda y: jaxlsq.solve(
    ...     lambda p, x, y: p[0] * jnp.exp(-p[1] * x) - y, jnp.array([1.0, 1.0]),
    ...     args=(x, y)).params)(y)
    """
    options = SolveOptions.build(options, **option_kwargs)
    x0, args, resolved = prepare(fun, x0, args, options)
    try:
        sol = solve_prepared(fun, x0, args, resolved)
    except Exception as err:  # JAX's own words for a host callback under vmap
        if options.monitor is not None and "IO effect" in str(err):
            raise ValueError(
                "monitor cannot be used under jax.vmap (JAX cannot batch a host "
                "callback inside the loop): monitor one fit at a time"
            ) from err
        raise
    if options.monitor is not None:  # its exception, as itself (it stopped the fit)
        jax.block_until_ready(sol)
        error = take_error(options.monitor)
        if error is not None:
            raise error
    return sol


def prepare(
    fun: Callable[..., Any], x0: Any, args: tuple, options: SolveOptions
) -> tuple[Any, tuple, SolveOptions]:
    """`solve`'s checks and defaults: ``(x0, args, resolved options)`` for the loop.

    ``x0`` comes back as a float pytree, ``args`` as a tuple, ``options`` resolved
    (`SolveOptions.resolve`: defaults filled in, flat bounds and fixed mask).
    Raises what `solve` documents. Works on tracers too (inside ``vmap``), where
    value checks are left to the loop.
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if not isinstance(args, tuple):
        args = (args,)
    x0 = as_float_pytree(x0)
    leaves = jax.tree_util.tree_leaves(x0)
    n = sum(leaf.size for leaf in leaves)
    dtype = jnp.result_type(*leaves)
    m = residual_size(fun, x0, args)
    if m < n:
        raise ValueError(
            f"fun returns m={m} residuals for n={n} parameters; least squares needs "
            "m >= n (improper input)."
        )
    for leaf in leaves:
        check_concrete(leaf, "x0", lambda v: np.all(np.isfinite(v)), "must be finite")
    if options.linear_solver in MATRIX_FREE_SOLVERS and callable(options.jac):
        raise ValueError(
            "linear_solver='cg' cannot be used with a callable jac (its products "
            "come from jvp/vjp of fun); pass jac='auto'"
        )
    if options.jac_sparsity is not None:
        if callable(options.jac):
            raise ValueError(
                "jac_sparsity cannot be used with a callable jac (it says how to "
                "compute J by colour groups); give one or the other"
            )
        check_pattern(options.jac_sparsity, m, n)
    options = resolve_chunk_points(fun, x0, args, m, options)
    return x0, args, options.resolve(x0, n, dtype)


@jit(static_argnums=(0,))
def solve_prepared(fun, x0, args, options: SolveOptions) -> Solution:
    """`solve`'s compiled loop, for arguments `prepare` has checked and resolved
    (``fun`` static). Callable inside another jitted program (`fit` runs it and the
    fit statistics as one)."""
    flat_x0, unravel = ravel_pytree(x0)
    model = make_model(
        fun,
        options.jac,
        options.loss,
        flat_x0,
        unravel,
        args,
        options.chunk_points,
        options.jac_sparsity,
        options.linear_solver in MATRIX_FREE_SOLVERS,
        options.keep_jac,
    )
    full_args = (args, options.f_scale)
    if options.adjoint == "implicit":  # the loop carries no tangents; added after
        loop_x0, loop_args, loop_options = lax.stop_gradient(
            (flat_x0, full_args, options)
        )
    else:  # "unrolled": JAX differentiates through the iterations (forward mode)
        loop_x0, loop_args, loop_options = flat_x0, full_args, options
    flat_fun, jac_fun = model.loop_functions(loop_args)
    st = run_lm(
        flat_fun,
        jac_fun,
        loop_x0,
        loop_options,
        traced_monitor(model, args, options.monitor),
    )
    return assemble_solution(model, options.adjoint, st, full_args, loop_options)
