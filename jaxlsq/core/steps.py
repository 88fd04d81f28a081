"""Damped least-squares steps: the trust-region subproblem of Levenberg-Marquardt.

The LM step for damping ``par`` solves, in the least-squares sense,

    [ J            ]       [ f ]
    [ sqrt(par) D  ] p = - [ 0 ]

with ``D = diag(d)`` the variable scaling. Writing ``z = D p`` and the scaled Jacobian
``Js = J D^-1``, the step solves ``(Js^T Js + par I) z = -Js^T f``. Every factorisation
here is brought to one form, a `StepSystem` ``(V, M, g)`` with V orthonormal:

    z(par) = -V c(par),      (M + par I) c = g,

computed once per Jacobian; every trial step and every Newton iteration on ``par`` of
MINPACK's ``lmpar`` then costs O(n^2) to O(n^3) for tiny n, never a pass over J.

* ``"svd"`` (default): the SVD of the m x n matrix ``Js = U S V^T`` gives ``M =
  diag(s^2)``, ``g = V^T Js^T f``. It never forms ``Js^T Js``, so it keeps the accuracy
  of MINPACK's QR (condition number not squared) and handles rank deficiency by
  truncating tiny singular values (a pseudo-inverse step). Under ``vmap`` with n <=
  SMALL_N, a batch whose every fit is well conditioned instead uses ``V = I``, ``M =
  Js^T Js``, ``g = Js^T f`` directly (see `_small_system`).
* ``"eigh"``: eigen-decomposition of the n x n matrix ``Js^T Js`` (normal equations).
  Cheaper for m >> n, but squares the condition number: singular values below about
  ``sqrt(eps) * s_max`` are lost. For well-conditioned small fits in large batches.

``M`` is stored as its diagonal, shape (n,), when it is diagonal by construction (n >
SMALL_N, or ``"eigh"``), and as an (n, n) matrix otherwise. A batch then solves by an
unrolled LDL^T factorisation, vectorised by XLA across the lanes and exact for a
diagonal matrix (so both storages give the same steps); a single fit's (n, n) M is
always diagonal and takes the diagonal formula (`_dense_coefficients`).

All shapes below are for one problem: ``m`` residuals, ``n`` parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

#: Names accepted by ``solve(..., linear_solver=...)``.
LINEAR_SOLVERS = ("svd", "eigh")

#: Up to this many parameters a batch uses the normal equations when they are well
#: conditioned (unrolled on scalars, see `_small_system`).
SMALL_N = 8

# Up to this many parameters a batch's SVD is the unrolled Householder QR + Jacobi
# SVD (`_small_svd`); above, LAPACK one matrix at a time. Measured on 1024 matrices
# 25 x n, float64, 2-core CPU: unrolled 0.54 / 1.0 / 2.5 / 5.3 ms for n = 3 / 4 / 5
# / 6, LAPACK 1.5 / 2.2 / 3.1 / 4.1 ms; the unrolled code also takes 0.6 s (n = 3)
# to 1.6 s (n = 6) longer to compile, in every program that holds it.
_UNROLLED_SVD_N = 4

# One-sided Jacobi sweeps for n <= SMALL_N: convergence is quadratic, so 12 sweeps
# are a generous cap; the loop stops once a sweep finds nothing to rotate.
_JACOBI_SWEEPS = 12

# Moré's lmpar stops after this many Newton iterations on ``par``.
_MAX_PAR_ITERATIONS = 10


class StepSystem(NamedTuple):
    """The damped steps ``z(par) = -V c(par)`` with ``(M + par I) c = g``.

    Attributes
    ----------
    v : Array, shape (n, n)
        Orthonormal basis (right singular vectors of ``Js``, or the identity).
    m : Array, shape (n,) or (n, n)
        ``V^T Js^T Js V``: its diagonal (eigenvalues ``>= 0``) when it is diagonal,
        else the symmetric matrix. Zero rows/columns stand for directions the step
        does not move (truncated singular values, frozen or all-zero columns); the
        matching entries of ``g`` are exactly 0.
    g : Array, shape (n,)
        ``V^T Js^T f``.
    """

    v: jax.Array
    m: jax.Array
    g: jax.Array


def normal_equations(
    jac_t: jax.Array, f: jax.Array
) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """``(J^T J, J^T f, column norms of J)`` from ``jac_t = J^T`` (n, m), f (m,).

    For n <= SMALL_N the Gram matrix is formed (one pass over J: its diagonal gives
    the column norms) because the batched factorisation starts from it; for larger
    n it is None and the norms come from J itself.
    """
    jtf = jnp.sum(jac_t * f, axis=1)
    if jac_t.shape[0] > SMALL_N:
        return None, jtf, jnp.sqrt(jnp.sum(jac_t * jac_t, axis=1))
    gram = _gram(jac_t)
    return gram, jtf, jnp.sqrt(jnp.diagonal(gram))


def factorize(
    jac_t: jax.Array,
    diag: jax.Array,
    jtf: jax.Array,
    method: str,
    gram: jax.Array | None = None,
    active: jax.Array | bool = True,
) -> StepSystem:
    """The `StepSystem` of the scaled Jacobian ``Js = jac_t.T / diag``.

    Parameters
    ----------
    jac_t : Array, shape (n, m)
        Transposed Jacobian at the current point (row ``j`` is ``dr/dx_j``; the
        loop keeps this layout so reductions over residuals run along the minor
        axis).
    diag : Array, shape (n,)
        Positive variable scaling ``d``.
    jtf : Array, shape (n,)
        ``jac.T @ f`` (the caller needs it for the gtol test too).
    method : {"svd", "eigh"}
    gram : Array, shape (n, n), optional
        ``J^T J`` if the caller has it (`normal_equations`); formed here otherwise.
    active : bool Array, shape ()
        False for a fit that has stopped (its lane of a batch is computed but
        discarded): its conditioning does not decide the batch's path.
    """
    n, m = jac_t.shape
    eps = jnp.finfo(jac_t.dtype).eps
    gs = jtf / diag  # Js^T f without forming Js
    if method == "svd":
        if n <= SMALL_N:
            if gram is None:
                gram = _gram(jac_t)
            return _small_system(jac_t, diag, gram, gs, jnp.asarray(active))
        # n > SMALL_N: LAPACK (under vmap, one matrix at a time).
        v, s = _right_svd_unbatched(jac_t, diag)
        return _truncated_spectrum(v, s, gs, max(m, n))
    if method == "eigh":
        if gram is None:
            gram = _gram(jac_t)
        w, v = jnp.linalg.eigh(gram / jnp.outer(diag, diag))
        # Eigenvalues of the Gram matrix carry absolute error ~ eps * w_max.
        keep = w > eps * max(m, n) * w[-1]
        return StepSystem(v, jnp.where(keep, w, 0), jnp.where(keep, v.T @ gs, 0))
    raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {method!r}")


def _truncated_spectrum(v, s, gs, size) -> StepSystem:
    """`StepSystem` (diagonal M) from right singular vectors and values of ``Js``,
    with singular values below numpy's lstsq/pinv cutoff ``eps * max(m, n) * s_max``
    dropped (M and g set to 0 there)."""
    eps = jnp.finfo(s.dtype).eps
    keep = s > eps * size * jnp.max(s)
    return StepSystem(v, jnp.where(keep, s * s, 0), jnp.where(keep, v.T @ gs, 0))


def _damped_coefficients(system: StepSystem, par: jax.Array):
    """``(c, q)`` for damping ``par >= 0``: ``c`` (n,) solves ``(M + par I) c = g``
    and ``q = c^T (M + par I)^+ c`` (the derivative term of lmpar's Newton step).

    A zero pivot (a zero row of ``M`` with ``par == 0``) gives ``c = 0`` there: the
    pseudo-inverse solution, since ``g`` is 0 there too.
    """
    par = jnp.asarray(par, system.g.dtype)
    if system.m.ndim == system.g.ndim:
        return _diagonal_coefficients(system.m, system.g, par)
    return _dense_coefficients(system.m, system.g, par)


def _diagonal_coefficients(w, g, par):
    """`_damped_coefficients` for ``M = diag(w)``. The where-guards keep every
    division off zero instead of blending an inf away afterwards (0 * inf is NaN)."""
    denom = w + par
    ok = denom > 0
    safe = jnp.where(ok, denom, 1)
    c = jnp.where(ok, g / safe, 0)
    return c, jnp.sum(jnp.where(ok, c * c / safe, 0))


@jax.custom_batching.custom_vmap
def _dense_coefficients(m, g, par):
    """`_damped_coefficients` for an (n, n) ``M``.

    An (n, n) M that is not batched is diagonal: `_small_system` returns a general
    one only for a batch (its Gram path). So a single fit takes the diagonal formula
    (a much smaller program to compile), and a batch the unrolled LDL^T solve,
    `_ldl_coefficients`; ``custom_vmap`` tells the two apart.
    """
    return _diagonal_coefficients(jnp.diagonal(m), g, par)


@_dense_coefficients.def_vmap
def _dense_coefficients_batched(axis_size, in_batched, m, g, par):
    if not any(in_batched):  # (happens under jvp) one diagonal M: see above
        return _diagonal_coefficients(jnp.diagonal(m), g, par), (False, False)
    axes = tuple(0 if b else None for b in in_batched)
    if in_batched[0]:
        solve = jax.vmap(_ldl_coefficients, in_axes=axes, axis_size=axis_size)
        return solve(m, g, par), (True, True)
    # M shared by every lane: unbatched, hence diagonal (see above).
    solve = jax.vmap(_diagonal_coefficients, in_axes=axes, axis_size=axis_size)
    return solve(jnp.diagonal(m), g, par), (True, True)


def _ldl_coefficients(m, g, par):
    """`_damped_coefficients` for a general symmetric (n, n) ``M`` >= 0, by an
    unrolled LDL^T factorisation of ``M + par I`` (elementwise across a batch)."""
    n = g.shape[-1]
    a = [[m[i, j] for j in range(n)] for i in range(n)]
    for j in range(n):
        a[j][j] = a[j][j] + par
    lower, pivots = _ldl(a)
    ok = [d > 0 for d in pivots]
    safe = [jnp.where(o, d, 1) for o, d in zip(ok, pivots, strict=True)]
    # c = L^-T D^-1 L^-1 g, then q = || D^-1/2 L^-1 c ||^2.
    y = _unit_lower_solve(lower, [g[i] for i in range(n)])
    y = [jnp.where(o, yi / d, 0) for o, yi, d in zip(ok, y, safe, strict=True)]
    c = _unit_upper_solve(lower, y)
    u = _unit_lower_solve(lower, c)
    q = sum(jnp.where(o, ui * ui / d, 0) for o, ui, d in zip(ok, u, safe, strict=True))
    return jnp.stack(c), q


def _ldl(a: list[list[jax.Array]]):
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


def _unit_lower_solve(lower, b):
    """``L^-1 b`` for unit lower-triangular L (strict part ``lower``); lists."""
    x = []
    for i in range(len(b)):
        s = b[i]
        for k in range(i):
            s = s - lower[i][k] * x[k]
        x.append(s)
    return x


def _unit_lower_inverse(lower, one):
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


def _unit_upper_solve(lower, b):
    """``L^-T b`` for unit lower-triangular L (strict part ``lower``); lists."""
    n = len(b)
    x = [None] * n
    for i in reversed(range(n)):
        s = b[i]
        for k in range(i + 1, n):
            s = s - lower[k][i] * x[k]
        x[i] = s
    return x


def scaled_jacobian_norm(system: StepSystem, z: jax.Array) -> jax.Array:
    """``||Js z||`` for a scaled step ``z`` (n,), in O(n^2) from the factorisation.

    The predicted reduction needs ``||J p|| = ||Js z||``; this avoids another pass
    over the m x n Jacobian for every trial step.
    """
    y = system.v.T @ z
    if system.m.ndim == y.ndim:
        return jnp.sqrt(jnp.sum(system.m * y * y))
    return jnp.sqrt(jnp.maximum(y @ (system.m @ y), 0))


def _gram(jac_t: jax.Array) -> jax.Array:
    """``J^T J`` (n, n) from ``jac_t = J^T`` (n, m).

    For small n, one minor-axis dot product per entry (fused across a batch);
    otherwise a matrix product.
    """
    n = jac_t.shape[0]
    if n > SMALL_N:
        return jac_t @ jac_t.T
    entries = {}
    for i in range(n):
        for j in range(i, n):
            entries[i, j] = entries[j, i] = jnp.sum(jac_t[i] * jac_t[j])
    return jnp.stack([jnp.stack([entries[i, j] for j in range(n)]) for i in range(n)])


def right_svd(jac: jax.Array, diag: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Right singular vectors V (n, n) and singular values s (n,) of ``jac / diag``.

    ``jac`` is (m, n) and ``diag`` (n,) positive. LAPACK for one matrix; under
    ``vmap``, `_batched_svd`.
    """
    return _right_svd(jac.T, diag)


def _right_svd_unbatched(jac_t, diag):
    """LAPACK SVD of ``jac_t.T / diag``: (V, s)."""
    _, s, vt = jnp.linalg.svd(jac_t.T / diag, full_matrices=False)
    return vt.T, s


@jax.custom_batching.custom_vmap
def _right_svd(jac_t: jax.Array, diag: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(V, s) of ``jac_t.T / diag``: LAPACK for one matrix, `_batched_svd` under
    ``vmap``."""
    return _right_svd_unbatched(jac_t, diag)


@_right_svd.def_vmap
def _right_svd_batched(axis_size, in_batched, jac_t, diag):
    if not any(in_batched):  # (happens under jvp)
        return _right_svd_unbatched(jac_t, diag), (False, False)
    jac_t, diag = (
        _with_batch_axis(x, b, axis_size)
        for x, b in zip((jac_t, diag), in_batched, strict=True)
    )
    return _batched_svd(jac_t, diag), (True, True)


def _with_batch_axis(x: jax.Array, batched: bool, axis_size: int) -> jax.Array:
    """``x`` with a leading batch axis: as it is if ``batched``, else broadcast."""
    return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))


def _batched_svd(jac_t: jax.Array, diag: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(V, s) of every ``jac_t[b].T / diag[b]`` of a batch, (B, n, m) and (B, n).

    For n <= _UNROLLED_SVD_N, `_small_svd`, which XLA vectorises across the batch
    (batched LAPACK runs one tiny matrix at a time); for larger n LAPACK, which is
    then as fast and far quicker to compile.
    """
    one = _small_svd if jac_t.shape[-2] <= _UNROLLED_SVD_N else _right_svd_unbatched
    return jax.vmap(one)(jac_t, diag)


@jax.custom_batching.custom_vmap
def _small_system(
    jac_t: jax.Array,
    diag: jax.Array,
    gram: jax.Array,
    gs: jax.Array,
    active: jax.Array,
) -> StepSystem:
    """`StepSystem` (M stored (n, n)) of ``Js = jac_t.T / diag`` for n <= SMALL_N.

    One matrix: LAPACK's SVD (fast to compile, fast to run). Under ``vmap``, code
    that XLA vectorises across the batch; ``custom_vmap`` picks the implementation
    by whether the call is batched, which tracing alone cannot see:

    * usually, the normal equations themselves: ``V = I``, ``M = gram / (d d^T)``,
      ``g = gs`` (the damped solves are then unrolled LDL^T factorisations, no
      eigen-decomposition at all). The Gram matrix squares the condition number, so
      this is used only when every lane is well conditioned: ``kappa(M) <=
      1/sqrt(eps)`` on its non-zero rows, by the bound ``||M||_F ||M^-1||_F``, so
      the steps are accurate to ``sqrt(eps)`` relative. Lanes whose fit has stopped
      (``active`` False) do not count. Exactly-zero rows come from exactly-zero
      columns of J (frozen parameters), which the Gram matrix separates exactly.
    * otherwise, for the whole batch (a real branch: the test is one scalar for the
      batch): the SVD of ``Js`` (`_batched_svd`), which keeps MINPACK's accuracy
      (condition number not squared).
    """
    return _small_system_unbatched(jac_t, diag, gs)


def _small_system_unbatched(jac_t, diag, gs) -> StepSystem:
    """`_small_system` of one matrix: LAPACK's SVD, M stored (n, n)."""
    v, s = _right_svd_unbatched(jac_t, diag)
    return _as_matrix(_truncated_spectrum(v, s, gs, max(jac_t.shape)))


def _as_matrix(system: StepSystem) -> StepSystem:
    """The same system with its diagonal M stored as an (n, n) matrix."""
    n = system.g.shape[-1]
    return system._replace(m=system.m[..., :, None] * jnp.eye(n, dtype=system.m.dtype))


@_small_system.def_vmap
def _small_system_batched(axis_size, in_batched, jac_t, diag, gram, gs, active):
    if not any(in_batched[:4]):  # one matrix for every lane
        return _small_system_unbatched(jac_t, diag, gs), StepSystem(False, False, False)

    jac_t, diag, gram, gs, active = (
        _with_batch_axis(x, b, axis_size)
        for x, b in zip((jac_t, diag, gram, gs, active), in_batched, strict=True)
    )
    size = max(jac_t.shape[-2:])
    scaled, well_conditioned = jax.vmap(_scaled_gram)(gram, diag)
    n = gs.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=gs.dtype), (axis_size, n, n))

    def svd_path(_):
        v, s = _batched_svd(jac_t, diag)
        spectrum = jax.vmap(_truncated_spectrum, in_axes=(0, 0, 0, None))
        return _as_matrix(spectrum(v, s, gs, size))

    out = lax.cond(
        jnp.all(well_conditioned | ~active),
        lambda _: StepSystem(eye, scaled, gs),
        svd_path,
        operand=None,
    )
    return out, StepSystem(True, True, True)


def _scaled_gram(gram: jax.Array, diag: jax.Array):
    """``(M, well_conditioned)``: ``M = gram / (d d^T)`` (n, n) and whether the
    normal equations are accurate enough to use (see `_small_system`)."""
    n = gram.shape[0]
    a = [[gram[i, j] / (diag[i] * diag[j]) for j in range(n)] for i in range(n)]
    lower, pivots = _ldl(a)
    nonzero = [a[j][j] != 0 for j in range(n)]
    positive = [~nz | (d > 0) for nz, d in zip(nonzero, pivots, strict=True)]
    inv_pivots = [
        jnp.where(nz, 1 / jnp.where(d > 0, d, 1), 0)
        for nz, d in zip(nonzero, pivots, strict=True)
    ]
    # trace(M^+) = sum_i ||row i of L^-1||^2 / d_i, with L^-1 unrolled (a zero row
    # of M has zero row and column in L, and 1/d_i = 0 leaves it out).
    inverse = _unit_lower_inverse(lower, jnp.ones_like(a[0][0]))
    trace_inv = sum(
        inv_pivots[i] * sum(inverse[i][k] * inverse[i][k] for k in range(i + 1))
        for i in range(n)
    )
    norm2 = sum(a[i][j] * a[i][j] for i in range(n) for j in range(n))
    # kappa(M) <= ||M||_F ||M^+||_F <= ||M||_F trace(M^+) (M^+ >= 0), at most
    # n^1.5 kappa; compare squares with kappa^2 <= 1 / eps.
    bound2 = norm2 * trace_inv * trace_inv
    eps = jnp.finfo(gram.dtype).eps
    well_conditioned = (
        jnp.all(jnp.stack(positive)) & (bound2 * eps <= 1) & jnp.isfinite(bound2)
    )
    matrix = jnp.stack([jnp.stack(row) for row in a])
    return matrix, well_conditioned


def _small_svd(jac_t, diag):
    r = _householder_r(jac_t)
    n = len(r)
    scaled = [[r[i][j] / diag[j] for j in range(n)] for i in range(n)]
    return _jacobi_svd(scaled)


def _householder_r(a_t: jax.Array) -> list[list[jax.Array]]:
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


def _jacobi_svd(r: list[list[jax.Array]]):
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


def damped_step(system: StepSystem, par: jax.Array) -> jax.Array:
    """The scaled LM step ``z = D p`` (n,) for damping ``par >= 0``."""
    return -(system.v @ _damped_coefficients(system, par)[0])


def trust_region_par(system: StepSystem, delta: jax.Array, par0: jax.Array):
    """Find ``par`` so that the scaled step length ``||z(par)||`` matches ``delta``.

    Moré's algorithm (MINPACK ``lmpar``): return ``par = 0`` when the Gauss-Newton step
    is inside ``1.1 * delta``; otherwise Newton iterations on
    ``phi(par) = ||z(par)|| - delta``, safeguarded by the bounds ``[parl, paru]``, until
    ``|phi| <= 0.1 delta`` or 10 iterations.

    Parameters
    ----------
    system : StepSystem
        Factorisation of the scaled Jacobian at the current point.
    delta : Array, shape ()
        Trust-region radius (> 0) in the scaled norm.
    par0 : Array, shape ()
        Previous damping, used as the starting guess (as MINPACK does).

    Returns
    -------
    par : Array, shape ()
        The damping parameter (0 for a Gauss-Newton step).
    z : Array, shape (n,)
        The scaled step ``D p`` for that ``par``.
    """
    dtype = system.g.dtype
    dwarf = jnp.finfo(dtype).tiny
    zero = jnp.zeros((), dtype)

    coef0, q0 = _damped_coefficients(system, zero)
    dxnorm0 = jnp.linalg.norm(coef0)
    fp0 = dxnorm0 - delta
    gauss_newton_ok = fp0 <= 0.1 * delta

    # Lower bound: the Newton step from par = 0, defined when Js has full rank.
    m_diag = system.m if system.m.ndim == system.g.ndim else jnp.diagonal(system.m)
    full_rank = jnp.all(m_diag > 0)
    parl0 = jnp.where(full_rank & (q0 > 0), (fp0 / delta) * dxnorm0**2 / q0, zero)
    # Upper bound: ||Js^T f|| / delta.
    gnorm = jnp.linalg.norm(system.g)
    paru0 = gnorm / delta
    paru0 = jnp.where(paru0 == 0, dwarf / jnp.minimum(delta, 0.1), paru0)

    par = jnp.clip(par0, parl0, paru0)
    par = jnp.where(par == 0, gnorm / jnp.where(dxnorm0 > 0, dxnorm0, 1), par)

    def cond(state):
        return ~state[4]

    def body(state):
        par, parl, paru, fp_old, _, it, _ = state
        par = jnp.where(par == 0, jnp.maximum(dwarf, 0.001 * paru), par)
        coef, q = _damped_coefficients(system, par)
        dxnorm = jnp.linalg.norm(coef)
        fp = dxnorm - delta
        done = (
            (jnp.abs(fp) <= 0.1 * delta)
            | ((parl == 0) & (fp <= fp_old) & (fp_old < 0))
            | (it + 1 >= _MAX_PAR_ITERATIONS)
        )
        # Newton correction for the secular equation (Moré 1978, eq. 5.5).
        parc = jnp.where(q > 0, (fp / delta) * dxnorm**2 / jnp.where(q > 0, q, 1), 0)
        parl = jnp.where(fp > 0, jnp.maximum(parl, par), parl)
        paru = jnp.where(fp < 0, jnp.minimum(paru, par), paru)
        new_par = jnp.where(done, par, jnp.maximum(parl, par + parc))
        # Once done, par is left alone, so coef belongs to the returned par.
        return new_par, parl, paru, fp, done, it + 1, coef

    # The carried coef starts as the Gauss-Newton one (par = 0), which is what is
    # returned when that step is short enough (the loop does not run then).
    start = (par, parl0, paru0, fp0, gauss_newton_ok, jnp.zeros((), jnp.int32), coef0)
    par, *_, coef = lax.while_loop(cond, body, start)
    par = jnp.where(gauss_newton_ok, zero, par)
    return par, -(system.v @ coef)
