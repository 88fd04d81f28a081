"""`solve`: the JAX-native entry point. Checks in Python, runs the jitted loop."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ._implicit import ADJOINTS, implicit_solution, with_tangents
from ._jacobian import JAC_MODES, make_jacobian
from ._linalg import LINEAR_SOLVERS
from ._lm import LMOptions, run_lm
from ._solution import Solution, Status


def solve(
    fun: Callable[..., Any],
    x0: Any,
    args: tuple = (),
    *,
    jac: str | Callable = "auto",
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float = 0.0,
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
    gtol : float, default 0.0
        Stop when the cosine between the residuals and every Jacobian column is at most
        ``gtol`` (status 4).
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
        How damped steps are solved; see `jaxlsq._linalg`. ``"svd"`` is robust to
        ill-conditioning; ``"eigh"`` (normal equations) is cheaper but loses accuracy
        when the Jacobian's condition number exceeds about ``1/sqrt(eps)``.
    adjoint : {"implicit", "unrolled"}, default "implicit"
        How JAX differentiates the result with respect to ``args``. ``"implicit"``:
        the implicit-function theorem at the solution, ``dp/dargs =
        -H^+ d(J^T r)/dargs`` with ``H`` the exact Hessian of the cost (see
        `jaxlsq._implicit`); forward and reverse mode, ``jit`` and ``vmap`` all work,
        memory does not depend on the number of iterations, and the derivative with
        respect to ``x0`` is zero. It assumes the returned point is stationary: for a
        fit that did not succeed it is still evaluated there, and may be meaningless.
        ``"unrolled"``: differentiate through the iterations themselves (for
        comparison); forward mode only (``jvp``, ``jacfwd``): JAX cannot reverse a
        ``while_loop`` and raises ``ValueError`` for ``grad``/``jacrev``/``vjp``.
        ``params``, ``residuals``, ``cost``, ``jac`` and ``grad`` carry derivatives;
        integer fields do not.

    Returns
    -------
    Solution
        ``params`` (structure of ``x0``), ``residuals`` (m,), ``cost``, ``jac`` (m, n),
        ``grad`` (n,), ``status``, ``success``, ``nfev``, ``njev``, ``n_iter``, and the
        host-side property ``message``.

    Raises
    ------
    ValueError
        For an invalid option, an empty or non-float ``x0``, non-finite concrete
        ``x0``, ``m < n``, or a ``fun`` that cannot be evaluated at ``x0``. Under
        ``jit``/``vmap``, non-finite ``x0`` or options are reported as
        ``Status.IMPROPER_INPUT`` instead.

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

    default_tol = 10 * float(jnp.finfo(dtype).eps)
    options = LMOptions(
        ftol=default_tol if ftol is None else ftol,
        xtol=default_tol if xtol is None else xtol,
        gtol=gtol,
        factor=factor,
        max_nfev=500 * (n + 1) if max_nfev is None else max_nfev,
        diag=diag,
    )
    return _solve_jit(fun, jac, linear_solver, adjoint, x0, args, options)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _solve_jit(
    fun, jac, linear_solver, adjoint, x0, args, options: LMOptions
) -> Solution:
    flat_x0, unravel = ravel_pytree(x0)
    dtype = flat_x0.dtype

    def residual_fn(x, a):
        return jnp.ravel(fun(unravel(x), *a)).astype(dtype)

    if adjoint == "implicit":  # the loop carries no tangents; they are attached after
        loop_x0, loop_args, options = lax.stop_gradient((flat_x0, args, options))
    else:  # "unrolled": JAX differentiates through the iterations (forward mode)
        loop_x0, loop_args = flat_x0, args

    def flat_fun(x):
        return residual_fn(x, loop_args)

    m = jax.eval_shape(flat_fun, flat_x0).shape[0]
    user_jac = (lambda x: jac(unravel(x), *loop_args)) if callable(jac) else jac
    jac_fun = make_jacobian(flat_fun, user_jac, m, flat_x0.size, dtype)
    st = run_lm(flat_fun, jac_fun, loop_x0, options, linear_solver)
    x, f, jac_ = st.x, st.f, st.jac
    if adjoint == "implicit":
        x = implicit_solution(residual_fn, x, args)
        f, jac_ = with_tangents(residual_fn, x, args, f, jac_)
    status = st.status
    return Solution(
        params=unravel(x),
        residuals=f,
        cost=0.5 * jnp.sum(f * f),
        jac=jac_,
        grad=jac_.T @ f,
        status=status,
        success=(status >= int(Status.FTOL)) & (status <= int(Status.GTOL)),
        nfev=st.nfev,
        njev=st.njev,
        n_iter=st.n_iter,
    )


# ----------------------------------------------------------------------------------
# validation (Python, before tracing)


def _as_float_pytree(x0: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("x0 must contain at least one parameter, got an empty pytree")

    def to_float(leaf):
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
