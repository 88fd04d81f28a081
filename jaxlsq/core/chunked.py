"""The chunked Jacobian strategy: one fit of many data points without the dense J.

For one fit of m >> n residuals (a spectrum, a time trace, an image of 10^6-10^8
points) the dense strategy forms J (m, n) at every iteration and the step solver
takes its SVD: at 10^6 points and n = 5 that SVD is ~85% of the time (2-core CPU,
float64: 170 ms against 26 ms for J itself), and J with its copies dominates the
memory. MINPACK's lmpar never needs J itself, only a triangular R with ``R^T R =
J^T J``, ``J^T f`` and the column norms (`jaxlsq.core.linearization`).

`ChunkedJacobian` computes them block by block over the data points: ``lax.scan``
over blocks of ``chunk`` points, the block's Jacobian by ``jax.jacfwd`` of the
residuals of that block alone, reduced at once into

* ``R`` by TSQR: ``R <- qr([R; J_b])`` (Householder on an (n + rows, n) matrix:
  QR's accuracy, the condition number is not squared as in a Gram matrix);
* ``J^T f`` by ``J_b^T f_b``;
* the column norms as those of R (equal to J's: ``R^T R = J^T J``).

Nothing of size m x n exists in the loop: its memory is O(chunk * n + n^2) beyond
the data and the residuals (the loop still evaluates ``f`` (m,) whole, one fused
pass). The dense J is formed once, block by block, for the `jaxlsq.Solution`.

The contract (the caller's, checked eagerly by `check_pointwise`): ``fun`` is
*pointwise* in the data. Its residuals have a leading axis of P points; every array
leaf of ``args`` whose leading axis has length P holds per-point data and is split
along that axis; every other leaf is passed whole to each block; and the residuals
of a block of points are the rows of the full residuals for those points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .linearization import JacobianStrategy, Linearization
from .losses import robust_residuals
from .scaling import scaled_norm


def _is_per_point(leaf, n_points: int) -> bool:
    """Whether a leaf of ``args`` is per-point data (leading axis ``n_points``)."""
    shape = getattr(leaf, "shape", ())
    return len(shape) >= 1 and shape[0] == n_points


def per_point_leaves(args: tuple, n_points: int, chunk: int):
    """``(leaves, treedef, split)`` of ``args``, ``split`` saying which leaves are
    per-point data; raises ``ValueError`` (naming ``chunk_points``) if none is or
    ``chunk > n_points``. Only shapes are read: no data is copied."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    split = [_is_per_point(leaf, n_points) for leaf in leaves]
    if not any(split):
        raise ValueError(
            f"chunk_points needs per-point data: no array in args has {n_points} "
            "entries along its leading axis (the residuals' leading axis, points)"
        )
    if chunk > n_points:
        raise ValueError(
            f"chunk_points={chunk} is more than the {n_points} data points; use "
            "chunk_points=None (the dense Jacobian) for a problem this small"
        )
    return leaves, treedef, split


def split_points(args: tuple, n_points: int, chunk: int):
    """``(blocks, tail, rebuild)``: the per-point leaves of ``args`` in blocks.

    Every array leaf whose leading axis has length ``n_points`` is per-point data:
    its first ``n_blocks * chunk`` points (``n_blocks = n_points // chunk``) are
    reshaped to ``(n_blocks, chunk, ...)`` in ``blocks``, the remaining ``n_points
    - n_blocks * chunk`` (fewer than ``chunk``; possibly none) are in ``tail``
    (None when there are none). ``rebuild(block)`` returns ``args`` with those
    leaves replaced by one block's slices. Raises ``ValueError`` if no leaf of
    ``args`` has ``n_points`` entries along axis 0 or ``chunk > n_points``.
    """
    leaves, treedef, split = per_point_leaves(args, n_points, chunk)
    n_blocks = n_points // chunk
    full = n_blocks * chunk
    data = [jnp.asarray(leaf) for leaf, s in zip(leaves, split, strict=True) if s]
    blocks = tuple(d[:full].reshape((n_blocks, chunk) + d.shape[1:]) for d in data)
    tail = tuple(d[full:] for d in data) if full < n_points else None

    def rebuild(block: tuple) -> tuple:
        parts = iter(block)
        return jax.tree_util.tree_unflatten(
            treedef,
            [next(parts) if s else leaf for leaf, s in zip(leaves, split, strict=True)],
        )

    return blocks, tail, rebuild


@dataclasses.dataclass(frozen=True)
class ChunkedJacobian(JacobianStrategy):
    """J by blocks of points, reduced by TSQR (see the module doc).

    Attributes
    ----------
    block_fun : callable
        ``(x (n,), block) -> (rows,)``: the residuals of one block of points, flat
        (``rows = chunk * k`` for k residuals per point).
    blocks : tuple of Arrays
        The per-point data in whole blocks, each leaf ``(n_blocks, chunk, ...)``.
    tail : tuple of Arrays, or None
        The points after the last whole block (fewer than ``chunk``), or None.
    mode : {"fwd", "rev"}
        How each block's Jacobian is taken (``jax.jacfwd`` unless the block has
        fewer rows than parameters).
    """

    block_fun: Callable[[jax.Array, tuple], jax.Array]
    blocks: tuple
    tail: tuple | None
    mode: str = "fwd"
    dense_jac: Callable[[jax.Array], jax.Array] | None = None
    carries_jacobian = False  # (a class attribute, not a field)

    def _block_jacobian(self, x, block):
        jac = (jax.jacfwd if self.mode == "fwd" else jax.jacrev)(self.block_fun)
        return jac(x, block)  # (rows, n)

    def _scan(self, x, f, reduce, start):
        """``reduce`` over the blocks (and the tail) with their residuals ``f``."""
        n_blocks = self.blocks[0].shape[0]
        rows = jax.eval_shape(self.block_fun, x, tuple(b[0] for b in self.blocks))
        whole = n_blocks * rows.shape[0]
        f_blocks = f[:whole].reshape(n_blocks, -1)
        carry, _ = lax.scan(reduce, start, (self.blocks, f_blocks))
        if self.tail is not None:
            carry, _ = reduce(carry, (self.tail, f[whole:]))
        return carry

    def __call__(self, x: jax.Array, f: jax.Array):
        """The `Linearization` at ``x`` for residuals ``f`` (m,); carry None.

        One pass forms ``J^T J`` and ``J^T f`` (the Gram matrix: half TSQR's work,
        measured 12 against 27 ms per pass at 10^6 points, n = 5). Where the Gram
        matrix with unit diagonal is well conditioned (``kappa <= 1/sqrt(eps)``,
        the rule of the batched small-n solver in `jaxlsq.core.factorize`) R is its
        Cholesky factor, accurate enough for the steps (the gradient ``J^T f``, on
        which convergence is tested, is exact either way); otherwise, or where the
        Gram matrix overflows or underflows, a second pass forms R by TSQR.
        """
        n, dtype = x.shape[0], x.dtype

        def gram_pass(carry, block):
            # [J_b^T; f_b] (n + 1, rows), reduced over its minor axis (the layout
            # jacfwd produces; measured 16 against 25 ms for J_b^T J_b and f_b J_b
            # as separate products at 10^6 points): J^T J and J^T f in one.
            data, fb = block
            a = jnp.concatenate([self._block_jacobian(x, data).T, fb[None]])
            return carry + jnp.einsum("im,jm->ij", a, a), None

        augmented = self._scan(x, f, gram_pass, jnp.zeros((n + 1, n + 1), dtype))
        gram, jtf = augmented[:n, :n], augmented[:n, n]
        usable = _well_conditioned(gram)
        r = lax.cond(
            usable,
            lambda: (
                jnp.linalg.cholesky(jnp.where(usable, gram, jnp.eye(n, dtype=dtype))).T
            ),
            lambda: self.r_factor(x),
        )
        return Linearization(jtf, scaled_norm(r, axis=0), r=r), None

    def r_factor(self, x: jax.Array) -> jax.Array:
        """R (n, n) with ``R^T R = J^T J`` at ``x``, by TSQR over the blocks: what a
        covariance needs (J's singular values and right singular vectors), with
        no (m, n) J formed."""
        n = x.shape[0]

        def reduce(r, block):
            return merge_r(r, self._block_jacobian(x, block)), None

        r, _ = lax.scan(reduce, jnp.zeros((n, n), x.dtype), self.blocks)
        if self.tail is None:
            return r
        return merge_r(r, self._block_jacobian(x, self.tail))

    def jacobian(self, x: jax.Array) -> jax.Array:
        """The dense J (m, n) at ``x`` (for the solution): ``dense_jac`` when given
        (jacfwd of the whole residuals: one fused pass, 2.6x faster than by blocks
        at 10^6 points), else block by block."""
        if self.dense_jac is not None:
            return self.dense_jac(x)
        jac = lax.map(partial(self._block_jacobian, x), self.blocks)
        jac = jac.reshape(-1, x.shape[0])
        if self.tail is None:
            return jac
        return jnp.concatenate([jac, self._block_jacobian(x, self.tail)])


def chunked_strategy(
    fun, unravel, flat_x0, loop_args, chunk: int, loss, m: int, dense_jac
) -> ChunkedJacobian:
    """The `ChunkedJacobian` of `jaxlsq.core.model`'s model: ``fun(unravel(x),
    *args)`` (m residuals, flat, robust ones for ``loss``) in blocks of ``chunk``
    points of ``loop_args = (args, f_scale)``; ``dense_jac`` (x -> (m, n)) for
    the solution's J."""
    user_args, scale = loop_args
    dtype, n = flat_x0.dtype, flat_x0.size
    n_points = jax.eval_shape(lambda x: fun(unravel(x), *user_args), flat_x0)
    n_points = n_points.shape[0]
    blocks, tail, rebuild = split_points(user_args, n_points, chunk)

    def block_fun(x, block):  # the (robust) residuals of one block, flat
        raw = jnp.ravel(fun(unravel(x), *rebuild(block))).astype(dtype)
        return robust_residuals(raw, loss, scale)

    rows = m // n_points * chunk
    mode = "fwd" if n <= rows else "rev"
    return ChunkedJacobian(block_fun, blocks, tail, mode, dense_jac)


def _well_conditioned(gram: jax.Array) -> jax.Array:
    """Whether the Cholesky factor of ``gram`` (n, n) can stand for R: finite, every
    diagonal entry in the normal range (no column whose squares over- or
    underflowed), and the Gram matrix with unit diagonal of condition number at
    most ``1/sqrt(eps)`` (so ``kappa(J) <= eps^-1/4`` after column scaling)."""
    info = jnp.finfo(gram.dtype)
    d = jnp.diagonal(gram)
    in_range = jnp.all(jnp.isfinite(gram)) & jnp.all(
        (d > info.tiny / info.eps) & (d < info.max * info.eps)
    )
    scale = jnp.sqrt(jnp.where(in_range, d, 1))
    w = jnp.linalg.eigvalsh(jnp.where(in_range, gram / jnp.outer(scale, scale), 1))
    return in_range & (w[0] > jnp.sqrt(info.eps) * w[-1])


def merge_r(r: jax.Array, rows: jax.Array) -> jax.Array:
    """One TSQR step: the (n, n) R of ``[r; rows]`` (``r`` (n, n), ``rows`` (k,
    n)), so that ``R^T R = r^T r + rows^T rows``. Householder QR (LAPACK's geqrf):
    backward stable, the condition number is not squared."""
    return jnp.linalg.qr(jnp.concatenate([r, rows]), mode="r")


#: Rows per block of `tall_r` (measured at m = 10^6, n = 5, float64, 2-core CPU:
#: blocks of 2^11 / 2^13 / 2^15 rows took 71 / 76 / 92 ms against 163 ms for the
#: SVD of the whole; singular values then agree to 9e-14 / 3e-14 / 7e-15 relative,
#: the error growing with the number of merges).
TALL_BLOCK = 2**15


def tall_r(a_t: jax.Array, block: int = TALL_BLOCK) -> jax.Array:
    """The (n, n) R of the tall matrix ``a_t.T`` (``a_t`` (n, m), m >> n), by TSQR
    over blocks of ``block`` rows: ``R^T R = a_t a_t^T``, so R has the singular
    values and right singular vectors of ``a_t.T``. For m >= 2 blocks; the
    LAPACK SVD of the whole (m, n) matrix is ~2x slower (see `TALL_BLOCK`)."""
    n, m = a_t.shape
    n_blocks = m // block
    whole = n_blocks * block
    blocks = jnp.moveaxis(a_t[:, :whole].reshape(n, n_blocks, block), 0, -1)

    def reduce(r, rows):
        return merge_r(r, rows), None

    r, _ = lax.scan(reduce, jnp.zeros((n, n), a_t.dtype), blocks)
    return merge_r(r, a_t[:, whole:].T) if whole < m else r


#: ``chunk_points="auto"`` (the default): problems of at least `AUTO_POINTS` points
#: are fitted in blocks of `AUTO_CHUNK` when ``fun`` passes `check_pointwise`.
#: Measured (`jaxlsq.solve` under jit, Gaussian peak on a slope, n = 5, float64,
#: 2-core CPU, warm): dense / chunked by 4096 = 8.3 / 2.8 ms at 10^4 points, 64 /
#: 26 ms at 10^5, 571 / 192 ms at 10^6; blocks of 16384 were no faster.
AUTO_CHUNK = 4096
AUTO_POINTS = 2 * AUTO_CHUNK


def auto_chunk_points(fun: Callable, x0: Any, args: tuple, m: int) -> int | None:
    """What ``chunk_points="auto"`` means for ``fun(x0, *args)`` with ``m``
    residuals: `AUTO_CHUNK` when its residuals have at least `AUTO_POINTS` points
    along their leading axis, ``args`` hold per-point data, everything is concrete
    (not traced: the contract is checked on values) and ``fun`` passes
    `check_pointwise`; else None (the dense Jacobian)."""
    if m < AUTO_POINTS:
        return None
    leaves = jax.tree_util.tree_leaves((x0, args))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return None
    shape = jax.eval_shape(fun, x0, *args).shape
    if len(shape) == 0 or shape[0] < AUTO_POINTS:
        return None
    try:
        per_point_leaves(args, shape[0], AUTO_CHUNK)  # shapes only
        check_pointwise(fun, x0, args, shape[0], AUTO_CHUNK)
    except ValueError:
        return None
    return AUTO_CHUNK


def check_pointwise(
    fun: Callable, x0: Any, args: tuple, n_points: int, chunk: int
) -> None:
    """Raise ``ValueError`` unless ``fun(x0, *args)`` looks pointwise in the data
    (the module's contract): on the first ``min(2 * chunk, n_points)`` points
    alone, each of the first two blocks computed alone must give the same
    residuals as those rows, to rounding (a model that normalises by the data,
    takes differences along it or reads a point's index gives other values).
    O(chunk) work; only concrete ``args`` can be checked, so call it eagerly."""
    size = min(2 * chunk, n_points)
    prefix = _first_points(args, n_points, size)
    full = np.asarray(fun(x0, *prefix))
    scale = np.max(np.abs(full), initial=0.0)
    eps = np.finfo(full.dtype).eps
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        try:
            part = np.asarray(fun(x0, *_first_points(prefix, size, stop, start)))
        except Exception as err:  # e.g. per-point data along another axis
            raise ValueError(
                f"chunk_points={chunk}: fun fails on a block of {stop - start} "
                f"points (the per-point data in args must have the points along "
                f"their leading axis): {err}"
            ) from err
        same = part.shape == full[start:stop].shape and np.allclose(
            part, full[start:stop], rtol=64 * eps, atol=64 * eps * scale
        )
        if not same:
            raise ValueError(
                f"chunk_points={chunk}: fun is not pointwise in the data -- its "
                f"residuals for points {start}..{stop - 1} computed alone differ from "
                "those rows of the residuals of more points (does it normalise by "
                "the data, take differences along it or use a point's index?). Use "
                "chunk_points=None (the dense Jacobian) for such a model."
            )


def _first_points(args: tuple, n_points: int, stop: int, start: int = 0) -> tuple:
    """``args`` with every per-point leaf (leading axis ``n_points``) sliced to its
    points ``start:stop``."""

    def cut(leaf):
        return leaf[start:stop] if _is_per_point(leaf, n_points) else leaf

    return jax.tree_util.tree_map(cut, args)


def resolve_chunk_points(fun, x0, args: tuple, m: int, options):
    """``options`` with ``chunk_points="auto"`` decided (`auto_chunk_points`: an
    int or None) for ``fun(x0, *args)`` with ``m`` residuals; a given int is
    checked (`_check_chunked`). Entry points that trace `solve` inside their own
    ``jit`` call this first, eagerly, so that "auto" sees concrete values."""
    if options.chunk_points == "auto":
        other = callable(options.jac) or options.jac_sparsity is not None
        other = other or options.linear_solver == "cg"  # (the krylov strategies)
        chunk = None if other else auto_chunk_points(fun, x0, args, m)
        return dataclasses.replace(options, chunk_points=chunk)
    if options.chunk_points is not None:
        _check_chunked(fun, x0, args, options)
    return options


def _check_chunked(fun, x0, args, options) -> None:
    """Raise unless ``chunk_points`` can be used: no callable ``jac``, residuals
    with a leading axis of points, per-point data in ``args`` and (when the
    values are concrete) ``fun`` pointwise on its first and last blocks."""
    if callable(options.jac):
        raise ValueError(
            "chunk_points cannot be used with a callable jac (the chunked strategy "
            "differentiates each block itself); pass jac='fwd' or 'rev'"
        )
    if options.jac_sparsity is not None or options.linear_solver == "cg":
        raise ValueError(
            "chunk_points cannot be used with jac_sparsity or linear_solver='cg' "
            "(they are other Jacobian strategies); pass chunk_points=None"
        )
    shape = jax.eval_shape(fun, x0, *args).shape
    if len(shape) == 0:
        raise ValueError("chunk_points needs residuals with a leading axis of points")
    per_point_leaves(args, shape[0], options.chunk_points)  # shapes only: no copy
    leaves = jax.tree_util.tree_leaves((x0, args))
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        check_pointwise(fun, x0, args, shape[0], options.chunk_points)
