"""Matrix-free steps (``linear_solver="cg"``): J only through products, for many
parameters.

Two Jacobian strategies give the loop a `Linearization` whose ``operator`` applies
J and J^T and which holds no (m, n) or (n, n) matrix:

* `SparseJacobian` (with ``jac_sparsity``): J's nonzeros by one ``jvp`` per colour
  group (`jaxlsq.core.sparsity`), the products by segment sums over them: O(nnz)
  memory and work per product;
* `OperatorJacobian` (no pattern): ``jax.linearize`` of the residuals, J^T by
  transposing it; the column norms (MINPACK's scaling and the gtol test need them)
  by ``jvp``s of unit vectors in blocks, so J is never held whole.

The damped step is `trust_region_cg`: Steihaug-Toint conjugate gradients on the
least-squares model ``min ||f + Js z||`` over ``||z|| <= delta`` (CGLS form: the
products are with Js and Js^T, never Js^T Js), in the scaled variables ``z = D p``
of lmder (``D`` the running column norms, which is Jacobi preconditioning). The
trust-region radius, acceptance and stopping tests of the loop are lmder's; the
predicted reduction is the linear model's own value at the step (one product),
and ``par`` reports only whether the step was interior (0: lmder's Gauss-Newton
step, the radius then grows) or on the boundary.

Cost per trial step: up to ``cg_maxiter`` iterations, each one J product and one
J^T product; per linearization: k ``jvp``s (sparse) or n (operator) for the
column norms, and one ``vjp``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .linearization import JacobianOperator, JacobianStrategy, Linearization
from .scaling import scaled_norm
from .sparsity import (
    SparsityPattern,
    colored_values,
    column_norms,
    compressed_products,
)

#: Linear solvers that need no matrix (see `jaxlsq.core.options`).
MATRIX_FREE_SOLVERS = ("cg",)

# Unit vectors per block when the column norms come from jvps (operator strategy):
# at most this many residuals held at once (32 MB in float64).
_BLOCK_ENTRIES = 1 << 22


def nonzero_operator(vals: jax.Array, pattern: SparsityPattern) -> JacobianOperator:
    """J's products as segment sums over its nonzeros ``vals`` (nnz,): O(nnz)
    gathers and scatters per product. The fallback of `SparseJacobian` for
    residuals JAX cannot transpose (a ``lax.while_loop`` inside, say)."""
    m, n = pattern.shape
    rows, cols = jnp.asarray(pattern.rows), jnp.asarray(pattern.cols)
    return JacobianOperator(
        matvec=lambda v: jax.ops.segment_sum(vals * v[cols], rows, m),
        rmatvec=lambda u: jax.ops.segment_sum(
            vals * u[rows], cols, n, indices_are_sorted=True
        ),
    )


def linearized_operator(flat_fun: Callable, x: jax.Array) -> JacobianOperator:
    """J at ``x`` as ``jax.linearize`` of ``flat_fun`` and its transpose: each
    product replays only the linear part of the residuals (the intermediates are
    kept from one evaluation), O(m) elementwise work for a pointwise model; about
    9x cheaper than `nonzero_operator` on the global decay fit (benchmarks/
    sparse.py). Raises at trace time when ``flat_fun`` cannot be transposed."""
    out, jvp = jax.linearize(flat_fun, x)
    vjp = jax.linear_transpose(jvp, x)
    jax.eval_shape(vjp, out)  # transpose now (trace only), so a failure raises here
    return JacobianOperator(matvec=jvp, rmatvec=lambda u: vjp(u)[0])


def transposed_product(
    flat_fun: Callable, x: jax.Array, u: jax.Array, pattern: SparsityPattern | None
) -> jax.Array:
    """``J^T u`` (n,) of ``flat_fun`` at ``x`` without a dense J: one ``vjp``, or,
    for a residual JAX cannot transpose, `nonzero_operator` on the entries found
    by colour groups of ``pattern`` (the final gradient of a matrix-free fit)."""
    try:
        return jax.vjp(flat_fun, x)[1](u)[0]
    except ValueError:
        if pattern is None:
            raise
    vals = colored_values(
        lambda seed: jax.jvp(flat_fun, (x,), (seed,))[1], pattern, x.dtype
    )
    return nonzero_operator(vals, pattern).rmatvec(u)


@dataclasses.dataclass(frozen=True)
class SparseJacobian(JacobianStrategy):
    """J through `linearized_operator`, its column norms from the entries found by
    one ``jvp`` per colour group of ``pattern`` (k products, not n); no carry."""

    flat_fun: Callable[[jax.Array], jax.Array]
    pattern: SparsityPattern
    forms_jacobian = False

    def __call__(self, x: jax.Array, f: jax.Array):
        pattern, dtype = self.pattern, x.dtype
        try:
            operator = linearized_operator(self.flat_fun, x)
            compressed = compressed_products(operator.matvec, pattern, dtype)
        except (NotImplementedError, ValueError, TypeError):  # not transposable
            compressed = compressed_products(
                lambda seed: jax.jvp(self.flat_fun, (x,), (seed,))[1], pattern, dtype
            )
            vals = compressed[pattern.groups[pattern.cols], pattern.rows]
            operator = nonzero_operator(vals, pattern)
        norms = column_norms(compressed, pattern)
        return Linearization(operator.rmatvec(f), norms, operator=operator), None

    def jacobian(self, x: jax.Array) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class OperatorJacobian(JacobianStrategy):
    """J through `linearized_operator`, its column norms from ``jvp``s of unit
    vectors a block at a time (n products; J never held whole); no carry."""

    flat_fun: Callable[[jax.Array], jax.Array]
    forms_jacobian = False

    def __call__(self, x: jax.Array, f: jax.Array):
        operator = linearized_operator(self.flat_fun, x)
        norms = _column_norms(operator.matvec, x.shape[0], f.shape[0], x.dtype)
        return Linearization(operator.rmatvec(f), norms, operator=operator), None

    def jacobian(self, x: jax.Array) -> None:
        return None


def _column_norms(jvp, n: int, m: int, dtype) -> jax.Array:
    """Norms (n,) of J's columns from ``jvp`` of unit vectors, a block at a time."""
    block = max(1, min(n, _BLOCK_ENTRIES // max(m, 1)))
    n_blocks = -(-n // block)

    def one_block(b):
        j = b * block + jnp.arange(block)
        seeds = jax.nn.one_hot(j, n, dtype=dtype)  # rows past n are all zero
        return scaled_norm(jax.vmap(jvp)(seeds), axis=1)

    norms = lax.map(one_block, jnp.arange(n_blocks)).reshape(-1)
    return norms[:n]


def cg_trial(lin: Linearization, diag, f, delta, options):
    """``(par, step)`` of one matrix-free trial: `trust_region_cg` with the
    options' ``cg_tol``/``cg_maxiter``; ``step`` (n,) is ``p = z / diag`` in the
    units of ``f`` and ``delta``, and ``par`` is 0 for an interior (Gauss-Newton)
    step, 1 for one cut at the radius (lmder's radius rule reads only that)."""
    z, cut = trust_region_cg(
        lin.operator, diag, f, delta,
        jnp.asarray(options.cg_tol, f.dtype),
        jnp.asarray(options.cg_maxiter, jnp.int32),
    )  # fmt: skip
    return cut.astype(f.dtype), z / diag


def trust_region_cg(
    operator: JacobianOperator,
    diag: jax.Array,
    f: jax.Array,
    delta: jax.Array,
    rtol: jax.Array,
    maxiter: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Steihaug-Toint CG for ``min ||f + J (z / diag)||`` over ``||z|| <= delta``.

    Parameters
    ----------
    operator : JacobianOperator
        J (m, n) by products.
    diag : Array, shape (n,)
        Positive variable scaling ``D`` (``z = D p``).
    f : Array, shape (m,)
        Residuals (any scale: the problem is homogeneous in ``(f, z, delta)``).
    delta : Array, shape ()
        Radius (> 0), in the units of ``f``'s scaling.
    rtol : Array, shape ()
        Stop when ``||Js^T r|| <= rtol * ||Js^T f||`` (``r`` the model residual).
    maxiter : Array, int32, shape ()
        Most CG iterations (each one J and one J^T product).

    Returns
    -------
    z : Array, shape (n,)
        The scaled step ``D p``.
    on_boundary : Array, bool, shape ()
        True when the step was cut at ``||z|| = delta`` (not a Gauss-Newton step).
    """
    dtype = f.dtype

    def a(z):  # Js z
        return operator.matvec(z / diag)

    def a_t(r):  # Js^T r
        return operator.rmatvec(r) / diag

    r0 = -f
    s0 = a_t(r0)
    gamma0 = jnp.dot(s0, s0)
    tol2 = (rtol**2) * gamma0
    zero = jnp.zeros((), dtype)

    def cond(state):
        return ~state[-1]

    def body(state):
        z, r, p, gamma, k, boundary, _ = state
        q = a(p)
        qq = jnp.dot(q, q)
        alpha = gamma / jnp.where(qq > 0, qq, 1)
        z_next = z + alpha * p
        # Cut at the boundary: tau >= 0 with ||z + tau p|| = delta.
        pp, zp, zz = jnp.dot(p, p), jnp.dot(z, p), jnp.dot(z, z)
        root = jnp.sqrt(jnp.maximum(zp * zp + pp * (delta * delta - zz), 0))
        tau = (root - zp) / jnp.where(pp > 0, pp, 1)
        hit = (jnp.dot(z_next, z_next) >= delta * delta) | (qq <= 0)
        z = jnp.where(hit, z + tau * p, z_next)
        r = r - alpha * q
        s = a_t(r)
        gamma_next = jnp.dot(s, s)
        p = s + (gamma_next / jnp.where(gamma > 0, gamma, 1)) * p
        done = hit | (gamma_next <= tol2) | (k + 1 >= maxiter)
        return z, r, p, gamma_next, k + 1, hit, done

    start = (jnp.zeros_like(s0), r0, s0, gamma0, jnp.zeros((), jnp.int32))
    start = start + (jnp.zeros((), bool), (gamma0 <= zero) | (maxiter <= 0))
    z, *_, boundary, _ = lax.while_loop(cond, body, start)
    return z, boundary
