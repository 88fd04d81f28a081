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

from .scaling import power_of_two

# Column groups and pieces by pattern key (most recent last), see SparsityPattern.
_DERIVED: dict = {}
_DERIVED_SIZE = 16


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
        key = np.asarray(cols, np.int64) * m + np.asarray(rows, np.int64)
        if key.size and not np.all(key[1:] > key[:-1]):  # sort, drop repeats
            key = np.unique(key)
        self.rows = (key % max(m, 1)).astype(np.int32)
        self.cols = (key // max(m, 1)).astype(np.int32)
        self.shape = (m, n)
        digest = hashlib.sha1(key.tobytes()).hexdigest()
        self._key = (self.shape, digest)
        # The colouring and the pieces are host work linear to quadratic in n
        # (0.06 s each at n = 10^4): shared by every pattern with these nonzeros,
        # so a scipy.sparse matrix passed again (a new SparsityPattern each call)
        # costs only its conversion and digest.
        cached = _DERIVED.get(self._key)
        if cached is None:
            cached = [color_columns(self.rows, self.cols, m, n), None]
            _DERIVED[self._key] = cached
            while len(_DERIVED) > _DERIVED_SIZE:
                _DERIVED.pop(next(iter(_DERIVED)))
        self._derived = cached
        self.groups = cached[0]
        self.n_groups = int(self.groups.max()) + 1 if n else 0

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

    def pieces(self) -> tuple[np.ndarray, np.ndarray]:
        """The nonzeros as fixed-width pieces of columns (for `column_norms`):
        ``index`` (P, w) int32, each entry ``g * m + row`` into the flattened
        (k, m) compressed Jacobian, padded with ``k * m`` (an appended 0), and
        ``piece_cols`` (P,) int32, sorted, the column of each piece. ``w`` is
        the power of 2 (8 to 1024) of the least estimated cost. Computed once."""
        if self._derived[1] is None:
            m, n = self.shape
            counts = np.bincount(self.cols, minlength=n)
            widths = [1 << e for e in range(3, 11)]
            # Cost ~ gathered entries + 8 per scattered partial sum (measured on
            # the global decay fit: w = 64 there, 1.2 ms against 3.0 at w = 8).
            w = min(widths, key=lambda w: int(np.sum(-(-counts // w))) * (w + 8))
            per_col = -(-counts // w)
            first = np.concatenate([[0], np.cumsum(per_col)])
            starts = np.concatenate([[0], np.cumsum(counts)])
            pos = np.arange(self.cols.size) - starts[self.cols]
            index = np.full((int(first[-1]), w), self.n_groups * m, np.int64)
            flat = self.groups[self.cols].astype(np.int64) * m + self.rows
            index[first[self.cols] + pos // w, pos % w] = flat
            piece_cols = np.repeat(np.arange(n, dtype=np.int32), per_col)
            small = self.n_groups * m < np.iinfo(np.int32).max
            index = index.astype(np.int32) if small else index
            self._derived[1] = (index, piece_cols)
        return self._derived[1]

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
    if hasattr(value, "tocsc"):  # scipy.sparse, without importing scipy here
        csc = value.tocsc(copy=True)  # (a copy: sorting must not touch the user's)
        csc.sort_indices()
        cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
        keep = csc.data != 0
        return SparsityPattern(csc.indices[keep], cols[keep], csc.shape)
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


def compressed_products(product, pattern: SparsityPattern, dtype) -> jax.Array:
    """``J @ seed_g`` (k, m) for the k colour groups: ``product`` (``seed (n,) ->
    J @ seed (m,)``, a jvp) under a ``vmap`` over the seeds, each the sum of its
    group's unit vectors. Row ``g`` holds, at each residual, the entry of the one
    column of group ``g`` that touches it (0 where none does)."""
    n = pattern.shape[1]
    seeds = np.zeros((pattern.n_groups, n))
    seeds[pattern.groups, np.arange(n)] = 1.0
    return jax.vmap(product)(jnp.asarray(seeds, dtype))


def colored_values(product, pattern: SparsityPattern, dtype) -> jax.Array:
    """The Jacobian's entries (nnz,) at the pattern's nonzeros, from
    `compressed_products`."""
    compressed = compressed_products(product, pattern, dtype)
    return compressed[pattern.groups[pattern.cols], pattern.rows]


def column_norms(compressed: jax.Array, pattern: SparsityPattern) -> jax.Array:
    """Norms (n,) of J's columns from `compressed_products` (k, m), each column
    scaled by the power of 2 of its largest entry first (as
    `jaxlsq.core.linearization.linearize_dense` does, so no square overflows).

    Why pieces: a segment sum over all nnz entries is a scatter, serial on a CPU
    (4.6 ms of a 7.4 ms linearization at nnz = 750k). The entries are instead
    gathered into `SparsityPattern.pieces`, an (P, w) block of fixed-width pieces
    of columns, reduced along its rows; only P ~ nnz / w partial sums are then
    scattered into their columns."""
    index, piece_cols = pattern.pieces()
    n = pattern.shape[1]
    flat = jnp.concatenate([jnp.ravel(compressed), jnp.zeros(1, compressed.dtype)])
    blocks = flat[index]  # (P, w), padded with the appended 0

    def per_column(v, reduce):  # (P,) -> (n,), pieces sorted by column
        return reduce(v, jnp.asarray(piece_cols), n, indices_are_sorted=True)

    largest = per_column(jnp.max(jnp.abs(blocks), axis=1), jax.ops.segment_max)
    scale = power_of_two(jnp.where(jnp.isfinite(largest), largest, 0))
    scaled = blocks / scale[piece_cols][:, None]
    return scale * jnp.sqrt(
        per_column(jnp.sum(scaled * scaled, 1), jax.ops.segment_sum)
    )


def colored_jacobian(flat_fun, pattern: SparsityPattern, dtype):
    """``x -> J`` (m, n) dense, from `colored_values` (k products instead of n)."""

    def jacobian(x):
        vals = colored_values(
            lambda seed: jax.jvp(flat_fun, (x,), (seed,))[1], pattern, dtype
        )
        return jnp.zeros(pattern.shape, dtype).at[pattern.rows, pattern.cols].set(vals)

    return jacobian
