"""Sparse Jacobians: a sparsity pattern, its column colouring, and J by colour groups.

A Jacobian whose columns fall into ``k`` groups of structurally orthogonal columns
(no two columns of a group have a nonzero in the same row) is recovered exactly
from ``k`` Jacobian-vector products, one per group, whose seed is the sum of the
group's unit vectors (Curtis, Powell and Reid 1974): for a global fit of 5,000
decay curves with one shared lifetime (10^4 parameters) that is 3 products instead
of 10^4. The colouring is greedy (columns taken in order, each given the first
group it fits: scipy's ``group_columns(A, order=arange(n))``, group for group;
scipy's own default order is a seeded random permutation), computed once, on the
host, when the options are built.

`SparsityPattern` is the hashable form of the user's ``jac_sparsity`` (a static
option: a new pattern compiles a new program). Shapes: ``m`` residuals, ``n``
parameters, ``nnz`` structural nonzeros, ``k`` groups.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np


class SparsityPattern:
    """The structural nonzeros of an (m, n) Jacobian and their column groups.

    Attributes
    ----------
    shape : (int, int)
        ``(m, n)``.
    rows, cols : ndarray of int32, shape (nnz,)
        Row and column of each structural nonzero, sorted by column.
    groups : ndarray of int32, shape (n,)
        Colour of each column: columns of one colour share no row.
    n_groups : int
        ``k``, the number of colours (Jacobian-vector products per Jacobian).
    """

    def __init__(self, rows, cols, shape: tuple[int, int]):
        m, n = (int(s) for s in shape)
        order = np.lexsort((rows, cols))
        self.rows = np.asarray(rows, np.int32)[order]
        self.cols = np.asarray(cols, np.int32)[order]
        self.shape = (m, n)
        self.groups = color_columns(self.rows, self.cols, m, n)
        self.n_groups = int(self.groups.max()) + 1 if n else 0
        digest = hashlib.sha1(self.rows.tobytes() + self.cols.tobytes()).hexdigest()
        self._key = (self.shape, digest)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, SparsityPattern) and self._key == other._key

    def __repr__(self) -> str:
        m, n = self.shape
        return (
            f"SparsityPattern(shape=({m}, {n}), nnz={self.rows.size}, "
            f"groups={self.n_groups})"
        )

    def dense(self) -> np.ndarray:
        """The pattern as an (m, n) bool array (for tests and small problems)."""
        out = np.zeros(self.shape, bool)
        out[self.rows, self.cols] = True
        return out


def as_pattern(value) -> SparsityPattern | None:
    """``jac_sparsity`` as a `SparsityPattern`: None, a pattern, an (m, n) array
    (nonzero entries are structural nonzeros) or a ``scipy.sparse`` matrix/array.
    Raises ``ValueError`` naming ``jac_sparsity`` for anything else."""
    if value is None or isinstance(value, SparsityPattern):
        return value
    if hasattr(value, "tocoo"):  # scipy.sparse, without importing scipy here
        coo = value.tocoo()
        keep = coo.data != 0
        return SparsityPattern(coo.row[keep], coo.col[keep], coo.shape)
    dense = np.asarray(value)
    if dense.ndim != 2 or dense.dtype == object:
        raise ValueError(
            "jac_sparsity must be an (m, n) array or scipy.sparse matrix of the "
            f"Jacobian's structural nonzeros, got {type(value).__name__} of shape "
            f"{getattr(dense, 'shape', None)}"
        )
    rows, cols = np.nonzero(dense)
    return SparsityPattern(rows, cols, dense.shape)


def color_columns(rows, cols, m: int, n: int) -> np.ndarray:
    """Greedy colouring (n,) int32 of the columns: each column, in order, gets the
    first colour none of whose columns shares a row with it. ``rows``/``cols``
    sorted by column."""
    groups = np.zeros(n, np.int32)
    starts = np.searchsorted(cols, np.arange(n + 1))
    occupied: list[np.ndarray] = []  # per colour: (m,) bool, rows already taken
    for j in range(n):
        r = rows[starts[j] : starts[j + 1]]
        free = [c for c, taken in enumerate(occupied) if not taken[r].any()]
        if free:
            c = free[0]
        else:
            c = len(occupied)
            occupied.append(np.zeros(m, bool))
        occupied[c][r] = True
        groups[j] = c
    return groups


def check_pattern(pattern: SparsityPattern, m: int, n: int) -> None:
    """Raise ``ValueError`` naming ``jac_sparsity`` unless its shape is (m, n)."""
    if pattern.shape != (m, n):
        raise ValueError(
            f"jac_sparsity must have the Jacobian's shape (m, n) = ({m}, {n}), "
            f"got {pattern.shape}"
        )


def colored_values(flat_fun, pattern: SparsityPattern, dtype):
    """``x -> vals`` (nnz,): the Jacobian's entries at the pattern's nonzeros, by
    one ``jvp`` per colour group (a ``vmap`` over the k seeds)."""
    n = pattern.shape[1]
    seeds = np.zeros((pattern.n_groups, n))
    seeds[pattern.groups, np.arange(n)] = 1.0
    rows, cols, groups = pattern.rows, pattern.cols, pattern.groups

    def values(x):
        def product(seed):
            return jax.jvp(flat_fun, (x,), (seed,))[1]

        compressed = jax.vmap(product)(jnp.asarray(seeds, dtype))  # (k, m)
        return compressed[groups[cols], rows]

    return values


def colored_jacobian(flat_fun, pattern: SparsityPattern, dtype):
    """``x -> J`` (m, n) dense, from `colored_values` (k products instead of n)."""
    values = colored_values(flat_fun, pattern, dtype)

    def jacobian(x):
        return (
            jnp.zeros(pattern.shape, dtype)
            .at[pattern.rows, pattern.cols]
            .set(values(x))
        )

    return jacobian
