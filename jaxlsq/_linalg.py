"""Damped least-squares steps: the trust-region subproblem of Levenberg-Marquardt.

The LM step for damping ``par`` solves, in the least-squares sense,

    [ J            ]       [ f ]
    [ sqrt(par) D  ] p = - [ 0 ]

with ``D = diag(d)`` the variable scaling. Writing ``z = D p`` and the scaled Jacobian
``Js = J D^-1``, a spectral factorisation ``Js^T Js = V diag(w) V^T`` gives every
damped step in O(n) once the factorisation is known:

    z(par) = -V (g / (w + par)),      g = V^T Js^T f.

So one factorisation per Jacobian serves all trial steps and all the Newton iterations
on ``par`` that MINPACK's ``lmpar`` performs; a rejected step never refactors.

Two ways to get ``(V, w, g)``:

* ``"svd"`` (default): SVD of the m x n matrix ``Js``. It never forms ``Js^T Js``, so it
  keeps the accuracy of MINPACK's QR (condition number not squared) and handles rank
  deficiency by truncating tiny singular values (a pseudo-inverse step).
* ``"eigh"``: eigen-decomposition of the n x n matrix ``Js^T Js`` (normal equations).
  Cheaper for m >> n, but squares the condition number: singular values below about
  ``sqrt(eps) * s_max`` are lost. For well-conditioned small fits in large batches.

All shapes below are for one problem: ``m`` residuals, ``n`` parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

#: Names accepted by ``solve(..., linear_solver=...)``.
LINEAR_SOLVERS = ("svd", "eigh")

#: Up to this many parameters the SVD is computed by unrolled Householder QR + Jacobi.
SMALL_N = 8

# One-sided Jacobi sweeps for n <= SMALL_N: convergence is quadratic, so 12 sweeps
# are a generous cap; the loop stops once a sweep finds nothing to rotate.
_JACOBI_SWEEPS = 12

# Moré's lmpar stops after this many Newton iterations on ``par``.
_MAX_PAR_ITERATIONS = 10


class Spectral(NamedTuple):
    """``Js^T Js = V diag(w) V^T`` and the projected scaled gradient ``g = V^T Js^T f``.

    Attributes
    ----------
    v : Array, shape (n, n)
        Orthonormal eigenvectors (right singular vectors of ``Js``).
    w : Array, shape (n,)
        Eigenvalues (squared singular values), ``>= 0``; those below the rank cutoff
        are set to exactly 0 together with the matching entries of ``g``.
    g : Array, shape (n,)
        ``V^T Js^T f``.
    """

    v: jax.Array
    w: jax.Array
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
) -> Spectral:
    """Factorise the scaled Jacobian ``Js = jac_t.T / diag``.

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
        if gram is None and n <= SMALL_N:
            gram = _gram(jac_t)
        v, s = _right_svd_scaled(jac_t, diag, gram, jnp.asarray(active))
        # Same cutoff as numpy's lstsq/pinv default: eps * max(m, n) * s_max.
        keep = s > eps * max(m, n) * jnp.max(s)
        return Spectral(v, jnp.where(keep, s * s, 0), jnp.where(keep, v.T @ gs, 0))
    if method == "eigh":
        if gram is None:
            gram = _gram(jac_t)
        w, v = jnp.linalg.eigh(gram / jnp.outer(diag, diag))
        # Eigenvalues of the Gram matrix carry absolute error ~ eps * w_max.
        keep = w > eps * max(m, n) * w[-1]
        return Spectral(v, jnp.where(keep, w, 0), jnp.where(keep, v.T @ gs, 0))
    raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {method!r}")


def scaled_jacobian_norm(spec: Spectral, z: jax.Array) -> jax.Array:
    """``||Js z||`` for a scaled step ``z`` (n,), in O(n^2) from the factorisation.

    The predicted reduction needs ``||J p|| = ||Js z||``; this avoids another pass
    over the m x n Jacobian for every trial step.
    """
    return jnp.sqrt(jnp.sum(spec.w * (spec.v.T @ z) ** 2))


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
    ``vmap`` the vectorised paths of `_right_svd_scaled`.
    """
    jac_t = jac.T
    gram = _gram(jac_t) if jac_t.shape[0] <= SMALL_N else None
    return _right_svd_scaled(jac_t, diag, gram, jnp.ones((), bool))


def _right_svd_unbatched(jac_t, diag):
    """LAPACK SVD of ``jac_t.T / diag``: (V, s)."""
    _, s, vt = jnp.linalg.svd(jac_t.T / diag, full_matrices=False)
    return vt.T, s


@jax.custom_batching.custom_vmap
def _right_svd_scaled(
    jac_t: jax.Array, diag: jax.Array, gram: jax.Array | None, active: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Right singular vectors V (n, n) and singular values s (n,) of ``jac_t.T / diag``.

    One matrix: LAPACK (fast to compile, fast to run). Under ``vmap`` with n <=
    SMALL_N, code that XLA vectorises across the batch (batched LAPACK runs one
    tiny matrix at a time, 3.4 us per 50 x 3 SVD here); ``custom_vmap`` picks the
    implementation by whether the call is batched, which tracing alone cannot see.
    The batched path, `_small_svd_batch`:

    * usually: a Jacobi eigen-decomposition of the scaled Gram matrix ``gram /
      (d d^T)`` (n x n, already formed in one pass over J). Its eigenvalues carry
      an absolute error of about ``eps * w_max``, so this is used only when every
      lane is well conditioned: every non-zero eigenvalue at least ``sqrt(eps) *
      w_max`` (the smallest is then accurate to ``sqrt(eps)`` relative, and so is
      the damped step). Lanes whose fit has stopped (``active`` False) do not
      count. Exactly-zero eigenvalues come from exactly-zero columns
      (frozen parameters), which the Gram matrix separates exactly.
    * otherwise, for the whole batch (a real branch: the test is one scalar for the
      batch): an unrolled Householder QR of J whose R has its columns scaled by
      ``1/diag`` (column-wise backward stable, so this equals factorising the
      scaled matrix), then a one-sided Jacobi SVD of R, which keeps MINPACK's
      accuracy (condition number not squared).
    """
    return _right_svd_unbatched(jac_t, diag)


@_right_svd_scaled.def_vmap
def _right_svd_scaled_batched(axis_size, in_batched, jac_t, diag, gram, active):
    jac_batched, diag_batched, gram_batched, _ = in_batched
    if not (jac_batched or diag_batched):
        return _right_svd_unbatched(jac_t, diag), (False, False)
    axes = [0 if b else None for b in (jac_batched, diag_batched)]
    if jac_t.shape[-2] > SMALL_N:
        one = jax.vmap(_right_svd_unbatched, in_axes=tuple(axes))
        return one(jac_t, diag), (True, True)
    if gram is None:
        gram = jax.vmap(_gram, in_axes=axes[0])(jac_t)
        gram_batched = jac_batched
    gram_axis = 0 if gram_batched else None

    def eig_path(_):
        return jax.vmap(_gram_spectrum, in_axes=(gram_axis, axes[1]))(gram, diag)

    def qr_path(_):
        return jax.vmap(_small_svd, in_axes=tuple(axes))(jac_t, diag)

    v, s, well_conditioned = eig_path(None)
    if not (gram_batched or diag_batched):  # one Gram matrix for every lane
        v = jnp.broadcast_to(v, (axis_size, *v.shape))
        s = jnp.broadcast_to(s, (axis_size, *s.shape))
        well_conditioned = jnp.broadcast_to(well_conditioned, (axis_size,))
    v, s = lax.cond(
        jnp.all(well_conditioned | ~active), lambda _: (v, s), qr_path, operand=None
    )
    return (v, s), (True, True)


def _gram_spectrum(gram: jax.Array, diag: jax.Array):
    """``(V, s, well_conditioned)`` of ``Js = J / diag`` from ``gram = J^T J``.

    ``s = sqrt(w)`` for the eigenvalues ``w`` of ``gram / (d d^T)``;
    ``well_conditioned`` says whether they are accurate enough (see
    `_right_svd_scaled`).
    """
    n = gram.shape[0]
    scaled = [[gram[i, j] / (diag[i] * diag[j]) for j in range(n)] for i in range(n)]
    v, w, converged = _jacobi_eigh(scaled)
    w_max = jnp.max(w)
    eps = jnp.finfo(gram.dtype).eps
    resolved = (w == 0) | (w >= jnp.sqrt(eps) * w_max)
    well_conditioned = converged & jnp.all(resolved) & jnp.all(jnp.isfinite(w))
    return v, jnp.sqrt(jnp.maximum(w, 0)), well_conditioned


def _sweep_until_converged(sweep, a, v):
    """Run Jacobi ``sweep((a, v, converged, count)) -> same`` until it reports
    convergence or `_JACOBI_SWEEPS` sweeps; returns ``(a, v, converged)``.

    A loop over sweeps (not unrolled) keeps the compiled program small.
    """

    def unfinished(carry):
        _, _, converged, count = carry
        return ~converged & (count < _JACOBI_SWEEPS)

    init = (a, v, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    a, v, converged, _ = lax.while_loop(unfinished, sweep, init)
    return a, v, converged


def _jacobi_eigh(a: list[list[jax.Array]]):
    """Eigenvectors (n, n), eigenvalues (n,) and convergence flag () of a symmetric
    matrix given as nested lists of scalars.

    Cyclic two-sided Jacobi: rotate each off-diagonal pair to zero, sweep after
    sweep, until every ``|a_pq| <= eps * sqrt(a_pp a_qq)`` (quadratic convergence;
    at most 12 sweeps). Unrolled on scalars so XLA vectorises it across a vmapped
    batch; one ``while_loop`` over sweeps keeps the program small.
    """
    n = len(a)
    a = [row[:] for row in a]
    one, zero = jnp.ones_like(a[0][0]), jnp.zeros_like(a[0][0])
    v = [[one if i == j else zero for i in range(n)] for j in range(n)]  # columns
    eps2 = jnp.finfo(a[0][0].dtype).eps ** 2

    def sweep(carry):
        a, v, _, count = carry
        a = [row[:] for row in a]
        v = [col[:] for col in v]
        rotated = jnp.zeros((), bool)
        for p in range(n):
            for q in range(p + 1, n):
                apq, app, aqq = a[p][q], a[p][p], a[q][q]
                rotate = apq * apq > eps2 * jnp.abs(app * aqq)
                rotated = rotated | rotate
                theta = (aqq - app) / (2 * jnp.where(rotate, apq, 1))
                t = 1 / (jnp.abs(theta) + jnp.sqrt(1 + theta * theta))
                t = jnp.where(rotate, jnp.where(theta < 0, -t, t), 0)
                c = lax.rsqrt(1 + t * t)
                s = t * c
                for r in range(n):
                    if r not in (p, q):
                        arp, arq = a[r][p], a[r][q]
                        a[r][p] = a[p][r] = c * arp - s * arq
                        a[r][q] = a[q][r] = s * arp + c * arq
                a[p][p] = app - t * apq
                a[q][q] = aqq + t * apq
                a[p][q] = a[q][p] = jnp.where(rotate, zero, apq)
                vp, vq = v[p], v[q]
                v[p] = [c * x - s * y for x, y in zip(vp, vq, strict=True)]
                v[q] = [s * x + c * y for x, y in zip(vp, vq, strict=True)]
                # Without this barrier XLA fuses across rotations and recomputes
                # shared terms in every consumer: 1.4x slower for n = 5, and
                # unrolled sweeps blow up entirely.
                a, v = lax.optimization_barrier((a, v))
        return a, v, ~rotated, count + 1

    a, v, converged = _sweep_until_converged(sweep, a, v)
    vmat = jnp.stack([jnp.stack(col) for col in v], axis=1)
    return vmat, jnp.stack([a[i][i] for i in range(n)]), converged


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

    # Stops after the first sweep that found every pair of columns orthogonal.
    a, v, _ = _sweep_until_converged(sweep, a, v)
    vmat = jnp.stack([jnp.stack(col) for col in v], axis=1)
    svals = jnp.stack([jnp.sqrt(dot(col, col)) for col in a])
    return vmat, svals


def _scaled_coefficients(spec: Spectral, par: jax.Array) -> jax.Array:
    """``V^T z(par)`` up to sign: ``g / (w + par)``, with 0 where ``w + par == 0``.

    The where-guards keep the division off zero denominators instead of blending an
    inf away afterwards (0 * inf would be NaN).
    """
    denom = spec.w + par
    ok = denom > 0
    return jnp.where(ok, spec.g / jnp.where(ok, denom, 1), 0)


def damped_step(spec: Spectral, par: jax.Array) -> jax.Array:
    """The scaled LM step ``z = D p`` (n,) for damping ``par >= 0``."""
    return -(spec.v @ _scaled_coefficients(spec, par))


def trust_region_par(spec: Spectral, delta: jax.Array, par0: jax.Array):
    """Find ``par`` so that the scaled step length ``||z(par)||`` matches ``delta``.

    Moré's algorithm (MINPACK ``lmpar``): return ``par = 0`` when the Gauss-Newton step
    is inside ``1.1 * delta``; otherwise Newton iterations on
    ``phi(par) = ||z(par)|| - delta``, safeguarded by the bounds ``[parl, paru]``, until
    ``|phi| <= 0.1 delta`` or 10 iterations.

    Parameters
    ----------
    spec : Spectral
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
    dtype = spec.w.dtype
    dwarf = jnp.finfo(dtype).tiny
    zero = jnp.zeros((), dtype)

    coef0 = _scaled_coefficients(spec, zero)
    dxnorm0 = jnp.linalg.norm(coef0)
    fp0 = dxnorm0 - delta
    gauss_newton_ok = fp0 <= 0.1 * delta

    # Lower bound: the Newton step from par = 0, defined when Js has full rank.
    full_rank = jnp.all(spec.w > 0)
    safe_w = jnp.where(full_rank, spec.w, 1)
    q0 = jnp.sum(coef0 * coef0 / safe_w)
    parl0 = jnp.where(full_rank & (q0 > 0), (fp0 / delta) * dxnorm0**2 / q0, zero)
    # Upper bound: ||Js^T f|| / delta.
    gnorm = jnp.linalg.norm(spec.g)
    paru0 = gnorm / delta
    paru0 = jnp.where(paru0 == 0, dwarf / jnp.minimum(delta, 0.1), paru0)

    par = jnp.clip(par0, parl0, paru0)
    par = jnp.where(par == 0, gnorm / jnp.where(dxnorm0 > 0, dxnorm0, 1), par)

    def cond(state):
        _, _, _, _, done, _ = state
        return ~done

    def body(state):
        par, parl, paru, fp_old, _, it = state
        par = jnp.where(par == 0, jnp.maximum(dwarf, 0.001 * paru), par)
        coef = _scaled_coefficients(spec, par)
        dxnorm = jnp.linalg.norm(coef)
        fp = dxnorm - delta
        done = (
            (jnp.abs(fp) <= 0.1 * delta)
            | ((parl == 0) & (fp <= fp_old) & (fp_old < 0))
            | (it + 1 >= _MAX_PAR_ITERATIONS)
        )
        # Newton correction for the secular equation (Moré 1978, eq. 5.5).
        denom = spec.w + par
        q = jnp.sum(coef * coef / jnp.where(denom > 0, denom, 1))
        parc = jnp.where(q > 0, (fp / delta) * dxnorm**2 / jnp.where(q > 0, q, 1), 0)
        parl = jnp.where(fp > 0, jnp.maximum(parl, par), parl)
        paru = jnp.where(fp < 0, jnp.minimum(paru, par), paru)
        new_par = jnp.where(done, par, jnp.maximum(parl, par + parc))
        return new_par, parl, paru, fp, done, it + 1

    init = (par, parl0, paru0, fp0, gauss_newton_ok, jnp.zeros((), jnp.int32))
    par, *_ = lax.while_loop(cond, body, init)
    par = jnp.where(gauss_newton_ok, zero, par)
    return par, damped_step(spec, par)
