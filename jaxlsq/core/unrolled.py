"""Small dense linear algebra unrolled on scalars, for batches of tiny problems.

Every routine here works on Python lists of scalar arrays (``a[i][j]``) and is
unrolled over the matrix size at trace time, so that under ``vmap`` each operation
is elementwise (or a reduction over the residuals) across the batch: XLA fuses them
into a few kernels, where batched LAPACK runs one tiny matrix at a time. Used by
`jaxlsq.core.factorize` for n <= SMALL_N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# One-sided Jacobi sweeps for n <= SMALL_N: convergence is quadratic, so 12 sweeps
# are a generous cap; the loop stops once a sweep finds nothing to rotate.
_JACOBI_SWEEPS = 12


def ldl(a: list[list[jax.Array]]):
    """``A = L diag(d) L^T`` of a symmetric matrix given as nested lists of scalars.

    Returns the strictly lower part of the unit lower-triangular L (``lower[i][j]``
    for ``i > j``) and the pivots ``d`` (n,). A pivot ``<= 0`` (a zero row, or a
    matrix that is not positive definite) leaves its column of L zero. Unrolled so
    that under ``vmap`` every operation is elementwise across the batch.
    """
    n = len(a)
    lower = [[None] * n for _ in range(n)]
    pivots = []
    for j in range(n):
        d = a[j][j]
        for k in range(j):
            d = d - lower[j][k] * lower[j][k] * pivots[k]
        pivots.append(d)
        ok = d > 0
        safe = jnp.where(ok, d, 1)
        for i in range(j + 1, n):
            s = a[i][j]
            for k in range(j):
                s = s - lower[i][k] * lower[j][k] * pivots[k]
            lower[i][j] = jnp.where(ok, s / safe, 0)
    return lower, pivots


def unit_lower_solve(lower, b):
    """``L^-1 b`` for unit lower-triangular L (strict part ``lower``); lists."""
    x = []
    for i in range(len(b)):
        s = b[i]
        for k in range(i):
            s = s - lower[i][k] * x[k]
        x.append(s)
    return x


def unit_lower_inverse(lower, one):
    """``L^-1`` (nested lists, ``inverse[i][k]`` for ``k <= i``) of the unit
    lower-triangular L with strict part ``lower``; ``one`` is 1 as a scalar array."""
    n = len(lower)
    inverse = [[None] * n for _ in range(n)]
    for i in range(n):
        inverse[i][i] = one
        for k in range(i):
            s = -lower[i][k]
            for j in range(k + 1, i):
                s = s - lower[i][j] * inverse[j][k]
            inverse[i][k] = s
    return inverse


def unit_upper_solve(lower, b):
    """``L^-T b`` for unit lower-triangular L (strict part ``lower``); lists."""
    n = len(b)
    x = [None] * n
    for i in reversed(range(n)):
        s = b[i]
        for k in range(i + 1, n):
            s = s - lower[k][i] * x[k]
        x[i] = s
    return x


def householder_r(a_t: jax.Array) -> list[list[jax.Array]]:
    """R factor of the QR factorisation of ``a = a_t.T`` (m, n), m >= n, by Householder.

    Takes the transpose (n, m) so each column of ``a`` is a contiguous row. Written
    on a Python list of columns and unrolled over the n steps, so that under
    ``vmap`` every operation is elementwise or a length-m reduction across the batch
    (XLA fuses them; indexed updates of a stacked (batch, m, n) array do not fuse).
    Rows of R may differ in sign from LAPACK's.

    Returns
    -------
    list of lists of scalars
        ``r[i][j]`` for ``i <= j``, zero below the diagonal.
    """
    n, m = a_t.shape
    cols = [a_t[j] for j in range(n)]
    rows = jnp.arange(m)
    zero = jnp.zeros((), a_t.dtype)
    r = [[zero] * n for _ in range(n)]
    for k in range(n):
        below = rows >= k
        x = jnp.where(below, cols[k], 0)
        norm_x = jnp.linalg.norm(x)
        alpha = jnp.where(cols[k][k] >= 0, -norm_x, norm_x)  # sign avoids cancellation
        v = jnp.where(rows == k, x - alpha, x)
        vnorm2 = v @ v
        scale = 2 / jnp.where(vnorm2 > 0, vnorm2, 1)
        r[k][k] = jnp.where(vnorm2 > 0, alpha, cols[k][k])
        for j in range(k + 1, n):
            cols[j] = cols[j] - (scale * (v @ cols[j])) * v
            r[k][j] = cols[j][k]
    return r


def jacobi_svd(r: list[list[jax.Array]]):
    """Right singular vectors (n, n) and singular values (n,) of a square matrix.

    One-sided (Hestenes) Jacobi: rotate pairs of columns until they are orthogonal;
    the accumulated rotations are V and the column norms the singular values. It is
    accurate to working precision even for tiny singular values and converges
    quadratically. Unrolled on scalars (``r[i][j]``) so XLA fuses it into one
    elementwise kernel across a vmapped batch.
    """
    n = len(r)
    a = [[r[i][j] for i in range(n)] for j in range(n)]  # a[j] = column j
    one, zero = jnp.ones_like(r[0][0]), jnp.zeros_like(r[0][0])
    v = [[one if i == j else zero for i in range(n)] for j in range(n)]
    tiny = jnp.finfo(r[0][0].dtype).tiny

    def dot(p, q):
        return sum(pi * qi for pi, qi in zip(p, q, strict=True))

    eps = jnp.finfo(r[0][0].dtype).eps

    def sweep(carry):
        a, v, _, count = carry
        worst = jnp.zeros_like(tiny)
        for i in range(n):
            for j in range(i + 1, n):
                alpha, beta, gamma = dot(a[i], a[i]), dot(a[j], a[j]), dot(a[i], a[j])
                # Columns already orthogonal to working precision: no rotation.
                cosine = jnp.abs(gamma) / jnp.maximum(jnp.sqrt(alpha * beta), tiny)
                worst = jnp.maximum(worst, cosine)
                rotate = (jnp.abs(gamma) > tiny) & (cosine > eps)
                zeta = (beta - alpha) / (2 * jnp.where(rotate, gamma, 1))
                t = jnp.where(zeta >= 0, 1, -1) / (
                    jnp.abs(zeta) + jnp.sqrt(1 + zeta**2)
                )
                t = jnp.where(rotate, t, 0)
                c = 1 / jnp.sqrt(1 + t * t)
                s = c * t
                for mat in (a, v):
                    ci, cj = mat[i], mat[j]
                    mat[i] = [c * p - s * q for p, q in zip(ci, cj, strict=True)]
                    mat[j] = [s * p + c * q for p, q in zip(ci, cj, strict=True)]
        return a, v, worst <= eps, count + 1

    def unfinished(carry):
        _, _, converged, count = carry
        return ~converged & (count < _JACOBI_SWEEPS)

    # Stops after the first sweep that found every pair of columns orthogonal; a
    # loop over sweeps (not unrolled) keeps the compiled program small.
    init = (a, v, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    a, v, _, _ = lax.while_loop(unfinished, sweep, init)
    vmat = jnp.stack([jnp.stack(col) for col in v], axis=1)
    svals = jnp.stack([jnp.sqrt(dot(col, col)) for col in a])
    return vmat, svals


# Above this many parameters the Gram matrix is one matrix product (SMALL_N).
_UNROLL_GRAM_N = 8


def gram_matrix(jac_t: jax.Array) -> jax.Array:
    """``J^T J`` (n, n) from ``jac_t = J^T`` (n, m).

    For small n, one minor-axis dot product per entry (fused across a batch);
    otherwise a matrix product.
    """
    n = jac_t.shape[0]
    if n > _UNROLL_GRAM_N:
        return jac_t @ jac_t.T
    entries = {}
    for i in range(n):
        for j in range(i, n):
            entries[i, j] = entries[j, i] = jnp.sum(jac_t[i] * jac_t[j])
    return jnp.stack([jnp.stack([entries[i, j] for j in range(n)]) for i in range(n)])
