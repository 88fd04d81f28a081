"""Implicit differentiation of a least-squares solution with respect to ``args``.

At a minimiser ``p*`` of ``0.5 * ||r(p, theta)||^2`` the gradient vanishes:
``g(p*, theta) = J_p^T r(p*, theta) = 0``. Differentiating that identity gives

    dp*/dtheta . theta_dot = -H^+ (dg/dtheta . theta_dot),

with ``H`` the exact Hessian of ``0.5 * ||r||^2`` in ``p`` (``J^T J + sum_i r_i
grad^2 r_i``; Gauss-Newton's ``J^T J`` alone is wrong when the residuals are not zero).
The rule is attached with `jax.custom_jvp` and written as a linear function of the
argument tangents (the ``H`` solve goes through `jax.lax.custom_linear_solve`), so JAX
obtains reverse mode by transposing it: ``jvp``, ``jacfwd``, ``grad``, ``jacrev``,
``jit`` and ``vmap`` all compose. Nothing of the iterations is stored: the cost of a
derivative is one Hessian (n x n) and one eigendecomposition at the solution, whatever
the number of iterations.

The tangent of the starting point is ignored: ``dp*/dx0 = 0``.

Frozen parameters -- fixed ones, and those that ended on a bound -- have zero
derivative: the stationarity condition holds only in the free directions, so the
system is solved on the free block of ``H`` (``p_free_dot = -H_ff^+ g_f_dot``) and
the frozen entries of the tangent are 0. (A parameter exactly on its bound with a zero
gradient could move inwards under some perturbations; its one-sided derivative is
reported as 0.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

#: Values accepted by ``solve(..., adjoint=...)``.
ADJOINTS = ("implicit", "unrolled")


def _cost(residual_fn, x, args):
    r = residual_fn(x, args)
    return 0.5 * jnp.sum(r * r)


def _sym_pinv_solver(h: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """``b -> H^+ b`` for a symmetric (possibly singular or indefinite) ``h`` (n, n).

    Eigenvalues with ``|w| <= n * eps * max|w|`` are treated as zero (the solve returns
    the minimum-norm solution on the rest), as ``numpy.linalg.pinv`` does.
    """
    h = 0.5 * (h + h.T)
    w, v = jnp.linalg.eigh(h)
    absw = jnp.abs(w)
    cutoff = h.shape[0] * jnp.finfo(h.dtype).eps * jnp.max(absw)
    keep = absw > cutoff
    inv_w = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)

    def apply(b):
        return v @ (inv_w * (v.T @ b))

    return apply


#: Above this many Jacobian entries (m * n) the Hessian is built one column at a
#: time (`_hessian`): 2^22, 32 MiB per float64 intermediate of the residuals.
SEQUENTIAL_HESSIAN_ENTRIES = 1 << 22


def _hessian(grad_fn, residual_fn, x, args) -> jax.Array:
    """The exact Hessian (n, n) of ``0.5 * ||r(x, args)||^2`` in ``x``.

    ``jax.hessian`` pushes all n tangents through the reverse pass at once: every
    intermediate of the residuals is held n times, O(m n) memory (gigabytes for one
    fit of 10^7 points). Past `SEQUENTIAL_HESSIAN_ENTRIES` the n Hessian-vector
    products (forward over reverse) run one after another under ``lax.map``: O(m)
    memory, the same arithmetic, the same matrix to rounding.
    """
    n = x.shape[0]
    m = jax.eval_shape(residual_fn, x, args).size
    if m * n <= SEQUENTIAL_HESSIAN_ENTRIES:
        return jax.hessian(_cost, argnums=1)(residual_fn, x, args)

    def column(v):
        return jax.jvp(lambda x_: grad_fn(x_, args), (x,), (v,))[1]

    return lax.map(column, jnp.eye(n, dtype=x.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def implicit_solution(
    residual_fn: Callable[[jax.Array, Any], jax.Array],
    x_star: jax.Array,
    args: Any,
    frozen: jax.Array,
) -> jax.Array:
    """Return ``x_star`` with the implicit-function derivative attached.

    Parameters
    ----------
    residual_fn : callable
        ``residual_fn(x, args) -> r``, flat parameters (n,) and the ``args`` pytree to
        flat residuals (m,); differentiable by JAX in both arguments.
    x_star : array (n,)
        The converged flat parameters (its own tangent is ignored: a minimiser does not
        depend on where the fit started).
    args : pytree of arrays
        Everything the residuals depend on besides the parameters.
    frozen : bool array (n,)
        Parameters held fixed or stopped on a bound: their tangent is 0 and the
        others are solved for on the free block of ``H``.

    Returns
    -------
    array (n,)
        ``x_star`` unchanged. Its tangent for argument tangents ``args_dot`` is
        ``-H^+ (d/dargs J^T r) . args_dot`` with ``H`` the exact Hessian of
        ``0.5 * ||r||^2`` at ``x_star`` and ``H^+`` its pseudo-inverse.

    Notes
    -----
    The rule assumes ``x_star`` is a stationary point. It is evaluated at the point
    returned whatever the fit's status: when the fit did not converge the result is the
    derivative of the stationary-point condition linearised there, not the derivative
    of anything the solver computed, and it can be meaningless. When ``H`` is singular
    (non-identifiable parameters) the minimum-norm derivative is returned; when it is
    indefinite (a saddle point) the derivative is that of the saddle point. Non-finite
    residuals give non-finite tangents.
    """
    del residual_fn, args, frozen
    return x_star


@implicit_solution.defjvp
def _implicit_solution_jvp(residual_fn, primals, tangents):
    x_star, args, frozen = primals
    _, args_dot, _ = tangents  # the tangent of x_star is ignored (x0 does not matter)

    def grad_fn(x, a):
        return jax.grad(_cost, argnums=1)(residual_fn, x, a)

    # Higher-order derivatives: H and b depend on args also through x_star; give
    # x_star its own implicit tangent (a no-op at first order).
    x_star = implicit_solution(residual_fn, lax.stop_gradient(x_star), args, frozen)
    h = _hessian(grad_fn, residual_fn, x_star, args)
    # dg/dargs . args_dot: linear in args_dot (JAX transposes it for reverse mode)
    _, b = jax.jvp(lambda a: grad_fn(x_star, a), (args,), (args_dot,))
    # Frozen rows/columns of H become the identity and their right-hand sides 0,
    # which decouples them (tangent 0) and leaves H_ff on the free block.
    free = ~frozen
    h = jnp.where(free[:, None] & free[None, :], h, 0) + jnp.diag(
        frozen.astype(h.dtype)
    )
    b = jnp.where(free, b, 0)
    pinv = _sym_pinv_solver(h)
    x_dot = -lax.custom_linear_solve(
        lambda v: h @ v, b, solve=lambda _, rhs: pinv(rhs), symmetric=True
    )
    return x_star, x_dot


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def with_tangents(
    residual_fn: Callable[[jax.Array, Any], jax.Array],
    x: jax.Array,
    args: Any,
    f: jax.Array,
    jac: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Return the loop's residuals ``f`` (m,) and Jacobian ``jac`` (m, n) unchanged,
    with the tangents of ``residual_fn(x, args)`` and of its Jacobian in ``x``.

    The primal values are the solver's own (no extra evaluation when nothing is
    differentiated); only their derivatives are recomputed, by ``jax.jvp`` of
    ``residual_fn`` and of its forward-mode Jacobian, at ``(x, args)``. The tangents of
    ``f`` and ``jac`` themselves are ignored (they come from the stopped loop).
    """
    del residual_fn, x, args
    return f, jac


@with_tangents.defjvp
def _with_tangents_jvp(residual_fn, primals, tangents):
    x, args, f, jac = primals
    x_dot, args_dot, _, _ = tangents

    def f_and_jac(x_, a_):
        return residual_fn(x_, a_), jax.jacfwd(residual_fn)(x_, a_)

    (f_new, jac_new), (f_dot, jac_dot) = jax.jvp(
        f_and_jac, (x, args), (x_dot, args_dot)
    )
    # Same values as the loop's (v - v == 0 exactly), but differentiable in (x, args)
    # for higher-order derivatives; the loop's own f and jac carry no tangent.
    f = f + (f_new - lax.stop_gradient(f_new)).astype(f.dtype)
    jac = jac + (jac_new - lax.stop_gradient(jac_new)).astype(jac.dtype)
    return (f, jac), (f_dot.astype(f.dtype), jac_dot.astype(jac.dtype))
