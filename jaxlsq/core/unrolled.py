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
