"""`solve`: the JAX-native entry point. Checks in Python, runs the jitted loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .chunked import chunked_strategy, resolve_chunk_points
from .compiler import jit
from .implicit import implicit_solution, with_tangents
from .jacobian import make_jacobian
from .loop import LMState, run_lm
from .losses import robust_residuals
from .monitor import take_error, traced_monitor
from .options import SolveOptions
from .status import Solution, Status
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
    linear_solver : {"svd", "eigh"}, default "svd"
        How damped steps are solved; see `jaxlsq.core.steps`. ``"svd"`` is robust to
        ill-conditioning; ``"eigh"`` (normal equations) is cheaper but loses accuracy
        when the Jacobian's condition number exceeds about ``1/sqrt(eps)``.
    chunk_points : "auto", int or None, default "auto"
        For one fit of many data points: compute the Jacobian in blocks of this
        many points, each reduced at once into ``J^T J`` and ``J^T f`` (R by its
        Cholesky factor where that is well conditioned, else by TSQR; see
        `jaxlsq.core.chunked`), so no (m, n) matrix exists inside the loop (its
        memory is O(chunk_points * n + n^2) beyond the data and residuals; the
        dense J is formed once at the end for ``Solution.jac``). 3x faster than
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
        sol = _solve_jit(fun, x0, args, resolved)
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
    options = resolve_chunk_points(fun, x0, args, m, options)
    return x0, args, options.resolve(x0, n, dtype)


@jit(static_argnums=(0,))
def _solve_jit(fun, x0, args, options: SolveOptions) -> Solution:
    flat_x0, unravel = ravel_pytree(x0)
    model = make_model(
        fun, options.jac, options.loss, flat_x0, unravel, args, options.chunk_points
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


class Model(NamedTuple):
    """The residual functions of one problem, built from the user's ``fun``.

    ``full_args`` below is ``(args, f_scale)``: ``f_scale`` travels with the data so
    that implicit differentiation treats it like the data.

    Attributes
    ----------
    unravel : callable
        Flat parameters (n,) -> the pytree structure of ``x0``.
    loss : str or callable
    raw_residual_fn : callable
        ``(x, args) -> fun(unravel(x), *args)`` flattened to (m,), in the working
        dtype.
    raw_jacobian_fn : callable
        ``args -> (x -> d raw_residual_fn / dx)``, (m, n).
    residual_fn : callable
        ``(x, full_args) ->`` the residuals the loop minimises (robust ones for a
        robust loss).
    loop_functions : callable
        ``full_args -> (flat_fun, jac_fun)``: `residual_fn` and its Jacobian as
        functions of ``x`` alone, what `run_lm` takes.
    robust_with_slope : callable
        ``(f, f_scale) ->`` robust residuals and their elementwise derivative.
    """

    unravel: Callable
    loss: str
    raw_residual_fn: Callable
    raw_jacobian_fn: Callable
    residual_fn: Callable
    loop_functions: Callable
    robust_with_slope: Callable


def make_model(
    fun,
    jac,
    loss: str,
    flat_x0: jax.Array,
    unravel: Callable,
    args: tuple,
    chunk_points: int | None = None,
) -> Model:
    """`Model` of ``fun`` for parameters like ``flat_x0`` (n,) and arguments like
    ``args`` (shapes and dtypes only). With ``chunk_points``, the loop's Jacobian
    is the chunked strategy (`jaxlsq.core.chunked`) over blocks of that many
    points."""
    dtype, n = flat_x0.dtype, flat_x0.size

    def raw_residual_fn(x, a):
        return jnp.ravel(fun(unravel(x), *a)).astype(dtype)

    def raw_jacobian_fn(a):  # x -> d raw_residual_fn / dx, (m, n)
        user_jac = (lambda x: jac(unravel(x), *a)) if callable(jac) else jac
        return make_jacobian(lambda x: raw_residual_fn(x, a), user_jac, m, n, dtype)

    def robust_with_slope(f, scale):
        """Robust residuals (jaxlsq.core.losses) and their elementwise derivative."""
        return jax.jvp(
            lambda f_: robust_residuals(f_, loss, scale), (f,), (jnp.ones_like(f),)
        )

    # The loop minimises half the sum of squares of ``residual_fn``. A robust loss is
    # an elementwise transformation of the residuals.
    def residual_fn(x, a):
        user_args, scale = a
        return robust_residuals(raw_residual_fn(x, user_args), loss, scale)

    m = jax.eval_shape(lambda x: raw_residual_fn(x, args), flat_x0).shape[0]

    def loop_functions(loop_args):
        def flat_fun(x):
            return residual_fn(x, loop_args)

        if loss == "linear":
            jac_fun = raw_jacobian_fn(loop_args[0])
        elif not callable(jac):
            jac_fun = make_jacobian(flat_fun, jac, m, n, dtype)
        else:  # chain rule through the transformation, for the user's Jacobian

            def jac_fun(x):
                f = raw_residual_fn(x, loop_args[0])
                _, slope = robust_with_slope(f, loop_args[1])
                return slope[:, None] * raw_jacobian_fn(loop_args[0])(x)

        if isinstance(chunk_points, int):  # the loop's J by blocks, jac_fun at the end
            jac_fun = chunked_strategy(
                fun, unravel, flat_x0, loop_args, chunk_points, loss, m, jac_fun
            )
        return flat_fun, jac_fun

    return Model(
        unravel,
        loss,
        raw_residual_fn,
        raw_jacobian_fn,
        residual_fn,
        loop_functions,
        robust_with_slope,
    )


def assemble_solution(
    model: Model, adjoint: str, st: LMState, full_args, options: SolveOptions
) -> Solution:
    """The `Solution` of the final loop state ``st`` (with the Jacobian at ``st.x``).

    ``full_args = (args, f_scale)`` as given by the caller (with their tangents): the
    implicit adjoint attaches the derivatives here. ``options`` are the loop's.
    """
    loss = model.loss
    args, f_scale = full_args
    x, f, jac_ = st.x, st.f, st.jac

    if options.lower is None:
        active_mask = jnp.zeros(x.shape, jnp.int32)
    else:  # the loop projects onto the box, so "on a bound" is an exact equality
        at_lower, at_upper = x <= options.lower, x >= options.upper
        active_mask = at_upper.astype(jnp.int32) - at_lower.astype(jnp.int32)
    if adjoint == "implicit":
        frozen = active_mask != 0
        if options.fixed is not None:
            frozen = frozen | options.fixed
        x = implicit_solution(model.residual_fn, x, full_args, frozen)
        if loss == "linear":
            f, jac_ = with_tangents(model.residual_fn, x, full_args, f, jac_)
    if loss == "linear":
        cost, grad = 0.5 * jnp.sum(f * f), jac_.T @ f
    else:  # report fun's own residuals and Jacobian, and the robust cost and gradient
        f = model.raw_residual_fn(x, args)
        jac_ = model.raw_jacobian_fn(args)(x)
        robust_f, slope = model.robust_with_slope(f, f_scale)
        cost = 0.5 * jnp.sum(robust_f * robust_f)
        grad = jac_.T @ (slope * robust_f)
    # Never a success with a non-finite cost or point (e.g. a sum of squares that
    # overflows although every residual is finite): NONFINITE instead.
    succeeded = (st.status >= int(Status.FTOL)) & (st.status <= int(Status.GTOL))
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(x))
    status = jnp.where(succeeded & ~finite, int(Status.NONFINITE), st.status)
    return Solution(
        params=model.unravel(x),
        residuals=f,
        cost=cost,
        jac=jac_,
        grad=grad,
        status=status,
        success=(status >= int(Status.FTOL)) & (status <= int(Status.GTOL)),
        nfev=st.nfev,
        njev=st.njev,
        n_iter=st.n_iter,
        active_mask=active_mask,
    )
