"""`solve`: the JAX-native entry point. Checks in Python, runs the jitted loop."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .implicit import ADJOINTS, implicit_solution, with_tangents
from .jacobian import JAC_MODES, make_jacobian
from .loop import LMOptions, LMState, run_lm
from .losses import LOSSES, robust_residuals
from .status import Solution, Status
from .steps import LINEAR_SOLVERS


def solve(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    *,
    bounds: tuple[Any, Any] | None = None,
    fixed: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    jac: str | Callable = "auto",
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    max_nfev: int | None = None,
    factor: float = 10.0,
    diag: Any = None,
    linear_solver: str = "svd",
    adjoint: str = "implicit",
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
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"}, default "linear"
        Robust loss with scipy ``least_squares``' definition: the fit minimises
        ``0.5 * f_scale**2 * sum(rho((r / f_scale)**2))`` (see
        `jaxlsq.core.losses`), and ``Solution.cost`` is that value.
    f_scale : float, default 1.0
        Residual scale (units of the residuals) at which a robust loss starts to
        down-weight a point. Must be > 0. Ignored for ``"linear"``.
    jac : {"auto", "fwd", "rev"} or callable, default "auto"
        How the Jacobian is computed: forward-mode (``jax.jacfwd``, best for
        ``n <= m``), reverse-mode, or a callable ``jac(params, *args)`` returning an
        array with ``m * n`` entries, reshaped to (m, n) in the order of
        ``jax.flatten_util.ravel_pytree(params)``.
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
    x0, args, options, f_scale = prepare(
        fun,
        x0,
        args,
        bounds=bounds,
        fixed=fixed,
        loss=loss,
        f_scale=f_scale,
        jac=jac,
        ftol=ftol,
        xtol=xtol,
        gtol=gtol,
        max_nfev=max_nfev,
        factor=factor,
        diag=diag,
        linear_solver=linear_solver,
        adjoint=adjoint,
    )
    return _solve_jit(
        fun, jac, linear_solver, adjoint, loss, x0, args, options, f_scale
    )


def prepare(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    *,
    bounds: tuple[Any, Any] | None = None,
    fixed: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    jac: str | Callable = "auto",
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    max_nfev: int | None = None,
    factor: float = 10.0,
    diag: Any = None,
    linear_solver: str = "svd",
    adjoint: str = "implicit",
) -> tuple[Any, tuple, LMOptions, jax.Array]:
    """`solve`'s checks and defaults: ``(x0, args, options, f_scale)`` for the loop.

    ``x0`` comes back as a float pytree, ``args`` as a tuple, the options resolved
    into `LMOptions` (flat bounds and fixed mask) and ``f_scale`` as an array.
    Raises what `solve` documents.
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if not isinstance(args, tuple):
        args = (args,)
    x0 = _as_float_pytree(x0)
    leaves = jax.tree_util.tree_leaves(x0)
    n = sum(leaf.size for leaf in leaves)
    dtype = jnp.result_type(*leaves)
    m = _residual_size(fun, x0, args)
    if m < n:
        raise ValueError(
            f"fun returns m={m} residuals for n={n} parameters; least squares needs "
            "m >= n (improper input)."
        )
    _check_options(jac, ftol, xtol, gtol, max_nfev, factor, linear_solver)
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint must be one of {ADJOINTS}, got {adjoint!r}")
    if diag is not None:
        diag = jnp.asarray(diag, dtype)
        if diag.shape != (n,):
            raise ValueError(f"diag must have shape ({n},), got {diag.shape}")
        _check_concrete(diag, "diag", lambda d: np.all(d > 0), "entries must be > 0")
    for leaf in leaves:
        _check_concrete(leaf, "x0", lambda v: np.all(np.isfinite(v)), "must be finite")

    lower, upper = _flat_bounds(bounds, x0, n, dtype)
    if lower is not None:
        _check_bounds(lower, upper, x0)
    fixed_mask = None if fixed is None else _flat_like(fixed, x0, n, bool, "fixed")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _check_concrete(f_scale, "f_scale", lambda v: np.all(v > 0), "must be > 0")

    default_tol = 10 * float(jnp.finfo(dtype).eps)
    options = LMOptions(
        ftol=default_tol if ftol is None else ftol,
        xtol=default_tol if xtol is None else xtol,
        gtol=float(jnp.finfo(dtype).eps) if gtol is None else gtol,
        factor=factor,
        max_nfev=500 * (n + 1) if max_nfev is None else max_nfev,
        diag=diag,
        lower=lower,
        upper=upper,
        fixed=fixed_mask,
    )
    xp = jnp if isinstance(f_scale, jax.core.Tracer) else np
    f_scale = xp.asarray(f_scale, dtype)
    return x0, args, options, f_scale


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _solve_jit(
    fun, jac, linear_solver, adjoint, loss, x0, args, options: LMOptions, f_scale
) -> Solution:
    flat_x0, unravel = ravel_pytree(x0)
    model = make_model(fun, jac, loss, flat_x0, unravel, args)
    full_args = (args, f_scale)
    if adjoint == "implicit":  # the loop carries no tangents; they are attached after
        loop_x0, loop_args, options = lax.stop_gradient((flat_x0, full_args, options))
    else:  # "unrolled": JAX differentiates through the iterations (forward mode)
        loop_x0, loop_args = flat_x0, full_args
    flat_fun, jac_fun = model.loop_functions(loop_args)
    st = run_lm(flat_fun, jac_fun, loop_x0, options, linear_solver)
    return assemble_solution(model, adjoint, st, full_args, options)


class Model(NamedTuple):
    """The residual functions of one problem, built from the user's ``fun``.

    ``full_args`` below is ``(args, f_scale)``: ``f_scale`` travels with the data so
    that implicit differentiation treats it like the data.

    Attributes
    ----------
    unravel : callable
        Flat parameters (n,) -> the pytree structure of ``x0``.
    loss : str
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
    fun, jac, loss: str, flat_x0: jax.Array, unravel: Callable, args: tuple
) -> Model:
    """`Model` of ``fun`` for parameters like ``flat_x0`` (n,) and arguments like
    ``args`` (shapes and dtypes only)."""
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
    model: Model, adjoint: str, st: LMState, full_args, options: LMOptions
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
    status = st.status
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


# ----------------------------------------------------------------------------------
# validation (Python, before tracing)


def _as_float_pytree(x0: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("x0 must contain at least one parameter, got an empty pytree")

    def to_float(leaf):
        # arrays pass through untouched (an eager jnp.asarray costs ~40 us per call)
        if not isinstance(leaf, jax.Array | np.ndarray):
            leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            raise TypeError(f"x0 must be real floating point, got dtype {leaf.dtype}")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = leaf.astype(jnp.result_type(float))
        return leaf

    x0 = jax.tree_util.tree_map(to_float, x0)
    if sum(jnp.size(leaf) for leaf in jax.tree_util.tree_leaves(x0)) == 0:
        raise ValueError("x0 must contain at least one parameter, got size 0")
    return x0


def _abstract_signature(tree: Any) -> tuple:
    """Hashable (structure, shapes, dtypes) of a pytree: what tracing depends on."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def _residual_size(fun, x0, args) -> int:
    """Number of residuals ``m``; cached so a warm call does not re-trace ``fun``."""
    try:
        key = (fun, _abstract_signature(x0), _abstract_signature(args))
        hash(key)
    except TypeError:  # unhashable leaf (e.g. a Python object): no caching
        return _trace_residual_size(fun, x0, args)
    if key not in _RESIDUAL_SIZES:
        if len(_RESIDUAL_SIZES) >= _CACHE_LIMIT:
            _RESIDUAL_SIZES.clear()
        _RESIDUAL_SIZES[key] = _trace_residual_size(fun, x0, args)
    return _RESIDUAL_SIZES[key]


_RESIDUAL_SIZES: dict = {}
_CACHE_LIMIT = 4096


def _trace_residual_size(fun, x0, args) -> int:
    try:
        out = jax.eval_shape(fun, x0, *args)
    except Exception as err:  # the user's function failed: say where, keep the cause
        raise ValueError(
            f"fun(x0, *args) could not be evaluated with x0 of structure "
            f"{jax.tree_util.tree_structure(x0)} and {len(args)} args "
            f"(shapes {[getattr(a, 'shape', type(a).__name__) for a in args]}): {err}"
        ) from err
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) != 1:
        raise ValueError(
            f"fun must return one array of residuals, got a pytree with "
            f"{len(leaves)} leaves"
        )
    if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        raise TypeError(
            f"fun must return floating-point residuals, got dtype {leaves[0].dtype}"
        )
    return int(np.prod(leaves[0].shape))


def _check_options(jac, ftol, xtol, gtol, max_nfev, factor, linear_solver) -> None:
    if not callable(jac) and jac not in JAC_MODES:
        raise ValueError(f"jac must be one of {JAC_MODES} or a callable, got {jac!r}")
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(
            f"linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}"
        )
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if value is not None:
            _check_concrete(value, name, lambda v: np.all(v >= 0), "must be >= 0")
    _check_concrete(factor, "factor", lambda v: np.all(v > 0), "must be > 0")
    if max_nfev is not None:
        if isinstance(max_nfev, numbers.Number) and not isinstance(
            max_nfev, numbers.Integral
        ):
            raise TypeError(f"max_nfev must be an integer, got {max_nfev!r}")
        _check_concrete(max_nfev, "max_nfev", lambda v: np.all(v > 0), "must be > 0")


def _check_concrete(value, name: str, predicate, requirement: str) -> None:
    """Raise ValueError if a concrete ``value`` fails ``predicate``; skip tracers."""
    if isinstance(value, jax.core.Tracer):
        return  # checked inside the loop, reported as Status.IMPROPER_INPUT
    if not predicate(np.asarray(value)):
        raise ValueError(f"{name} {requirement}, got {np.asarray(value)!r}")


def _flat_like(tree: Any, x0: Any, n: int, dtype, name: str) -> jax.Array:
    """Flatten a per-parameter option to (n,) in ``ravel_pytree(x0)`` order.

    ``tree`` is a scalar (same value for every parameter), a flat (n,) array, or a
    pytree with the structure of ``x0`` whose leaves broadcast to the matching leaves
    of ``x0``.
    """
    if not jax.tree_util.tree_leaves(tree):
        raise ValueError(f"{name} must not be empty")
    # numpy for concrete values: eager jnp ops cost ~10 us each on every call
    traced = any(
        isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(tree)
    )
    xp = jnp if traced else np
    if not _is_container(tree):
        if np.ndim(tree) == 0:
            return xp.full((n,), tree, dtype)
        if np.shape(tree) == (n,):  # already flat, in ravel_pytree order
            return xp.asarray(tree, dtype)
    x0_def = jax.tree_util.tree_structure(x0)
    try:
        leaves = x0_def.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must be a scalar or have the structure of x0 ({x0_def}), got "
            f"{jax.tree_util.tree_structure(tree)}"
        ) from err
    flat = []
    for leaf, ref in zip(leaves, jax.tree_util.tree_leaves(x0), strict=True):
        try:
            flat.append(xp.ravel(xp.broadcast_to(xp.asarray(leaf, dtype), ref.shape)))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name}: a leaf of shape {np.shape(leaf)} does not broadcast to the "
                f"matching x0 leaf of shape {ref.shape}"
            ) from err
    return xp.concatenate(flat)


def _is_container(tree: Any) -> bool:
    return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))


def _flat_bounds(bounds, x0, n, dtype):
    """``bounds`` -> (lower, upper) flat (n,) arrays, or (None, None)."""
    if bounds is None:
        return None, None
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError(
            "bounds must be a pair (lower, upper) of scalars or pytrees like x0, got "
            f"{type(bounds).__name__}"
            + (f" of length {len(bounds)}" if isinstance(bounds, tuple | list) else "")
        )
    return (
        _flat_like(bounds[0], x0, n, dtype, "bounds[0] (lower)"),
        _flat_like(bounds[1], x0, n, dtype, "bounds[1] (upper)"),
    )


def _check_bounds(lower, upper, x0) -> None:
    """scipy's rules: ``lower < upper`` strictly, ``x0`` inside (closed) box."""
    if any(isinstance(v, jax.core.Tracer) for v in (lower, upper)):
        return  # reported as Status.IMPROPER_INPUT inside the loop
    lo, hi = np.asarray(lower), np.asarray(upper)
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
        raise ValueError("bounds must not contain NaN")
    bad = np.flatnonzero(~(lo < hi))
    if bad.size:
        raise ValueError(
            f"bounds: each lower bound must be strictly less than its upper bound; "
            f"violated at flat parameter index {bad.tolist()} (lower {lo[bad]}, "
            f"upper {hi[bad]}). Use fixed= to hold a parameter constant."
        )
    leaves = jax.tree_util.tree_leaves(x0)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    x = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    outside = np.flatnonzero((x < lo) | (x > hi))
    if outside.size:
        raise ValueError(
            f"x0 is infeasible: outside bounds at flat parameter index "
            f"{outside.tolist()} (x0 {x[outside]}, lower {lo[outside]}, upper "
            f"{hi[outside]})"
        )
