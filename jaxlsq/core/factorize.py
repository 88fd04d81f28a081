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
  SMALL_N, each fit of a batch that is well conditioned instead uses ``V = I``,
  ``M = Js^T Js``, ``g = Js^T f`` directly (see `_small_system`).
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

from .chunked import TALL_BLOCK, tall_r
from .linearization import SMALL_N, Linearization
from .unrolled import (
    gram_matrix,
    ldl,
    unit_lower_inverse,
)

#: Names accepted by ``solve(..., linear_solver=...)``.
LINEAR_SOLVERS = ("svd", "eigh")


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


def factorize(
    lin: Linearization,
    diag: jax.Array,
    method: str,
    active: jax.Array | bool = True,
    unit: jax.Array | None = None,
) -> StepSystem:
    """The `StepSystem` of the scaled Jacobian ``Js = J / diag``.

    Parameters
    ----------
    lin : Linearization
        J at the current point (`jaxlsq.core.linearization`): its ``jac_t`` (n, m)
        when the strategy holds J, else its ``r`` (n, n) or ``gram`` (n, n).
    diag : Array, shape (n,)
        Positive variable scaling ``d``.
    method : {"svd", "eigh"}
    active : bool Array, shape ()
        False for a fit that has stopped (its lane of a batch is computed but
        discarded): it never makes the batch compute an SVD.
    unit : Array, shape (), optional
        When given, ``lin.jtf`` is ``J^T (f / unit)`` (``unit`` a power of 2; see
        `jaxlsq.core.state.with_linearization`): ``g`` is ``(lin.jtf / diag) *
        unit``, which does not underflow where ``J^T f`` would.
    """
    n = lin.jtf.shape[0]
    eps = jnp.finfo(lin.jtf.dtype).eps
    gs = lin.jtf / diag  # Js^T f without forming Js
    if unit is not None:  # lin.jtf is J^T (f / unit): scaled back after dividing
        gs = gs * unit
    jac_t = lin.jac_t
    if method == "svd" and jac_t is None and lin.r is not None:
        # A factor R (R^T R = J^T J) has J's right singular vectors and values.
        v, s = _right_svd_unbatched(lin.r.T, diag)
        return _truncated_spectrum(v, s, gs, n)
    if method == "svd" and jac_t is not None:
        m = jac_t.shape[1]
        if n <= SMALL_N:
            gram, gram_diag = _gram_and_diag(lin, diag)
            active = jnp.asarray(active)
            return _small_system(jac_t, diag, gram, gram_diag, gs, active)
        # n > SMALL_N: LAPACK (under vmap, one matrix at a time).
        v, s = _right_svd_unbatched(jac_t, diag)
        return _truncated_spectrum(v, s, gs, max(m, n))
    if method in ("svd", "eigh"):  # the normal equations (the only data for "svd")
        size = n if jac_t is None else max(jac_t.shape)
        gram, gram_diag = _gram_and_diag(lin, diag)
        w, v = jnp.linalg.eigh(gram / jnp.outer(gram_diag, gram_diag))
        # Eigenvalues of the Gram matrix carry absolute error ~ eps * w_max.
        keep = w > eps * size * w[-1]
        return StepSystem(v, jnp.where(keep, w, 0), jnp.where(keep, v.T @ gs, 0))
    raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {method!r}")


def _gram_and_diag(lin: Linearization, diag: jax.Array):
    """``(G, d)`` with ``G / outer(d, d)`` the scaled Gram matrix ``Js^T Js``:
    ``lin.gram`` and ``diag / lin.gram_scale`` (exact: powers of 2), or the Gram
    matrix formed here from J^T or R and ``diag``."""
    if lin.gram is None:
        jac_t = lin.jac_t
        return (gram_matrix(jac_t) if jac_t is not None else lin.r.T @ lin.r), diag
    if lin.gram_scale is None:
        return lin.gram, diag
    return lin.gram, diag / lin.gram_scale


def _truncated_spectrum(v, s, gs, size) -> StepSystem:
    """`StepSystem` (diagonal M) from right singular vectors and values of ``Js``,
    with singular values below numpy's lstsq/pinv cutoff ``eps * max(m, n) * s_max``
    dropped (M and g set to 0 there)."""
    eps = jnp.finfo(s.dtype).eps
    keep = s > eps * size * jnp.max(s)
    return StepSystem(v, jnp.where(keep, s * s, 0), jnp.where(keep, v.T @ gs, 0))


def right_svd(jac: jax.Array, diag: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Right singular vectors V (n, n) and singular values s (n,) of ``jac / diag``.

    ``jac`` is (m, n) and ``diag`` (n,) positive. LAPACK, also under ``vmap`` (one
    matrix at a time): the fit statistics' covariance, computed once per fit,
    where an unrolled batched SVD cost 0.6 s of compile (n = 3) for a few
    milliseconds per 10^4 fits.
    """
    return _right_svd_unbatched(jac.T, diag)


def _right_svd_unbatched(jac_t, diag):
    """LAPACK SVD of ``jac_t.T / diag``: (V, s). A tall matrix (m >= 2 *
    `TALL_BLOCK` rows and m >= 64 n) is first reduced to its (n, n) R by TSQR
    (`tall_r`): the same singular values and vectors, ~2x faster than the SVD of
    the whole, and no (m, n) U."""
    n, m = jac_t.shape
    if m >= 2 * TALL_BLOCK and m >= 64 * n:
        _, s, vt = jnp.linalg.svd(tall_r(jac_t / diag[:, None]), full_matrices=False)
        return vt.T, s
    _, s, vt = jnp.linalg.svd(jac_t.T / diag, full_matrices=False)
    return vt.T, s


def _with_batch_axis(x: jax.Array, batched: bool, axis_size: int) -> jax.Array:
    """``x`` with a leading batch axis: as it is if ``batched``, else broadcast."""
    return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))


@jax.custom_batching.custom_vmap
def _small_system(
    jac_t: jax.Array,
    diag: jax.Array,
    gram: jax.Array,
    gram_diag: jax.Array,
    gs: jax.Array,
    active: jax.Array,
) -> StepSystem:
    """`StepSystem` (M stored (n, n)) of ``Js = jac_t.T / diag`` for n <= SMALL_N.

    One matrix: LAPACK's SVD (fast to compile, fast to run). Under ``vmap``, the
    normal equations vectorised across the batch where they are accurate, LAPACK
    lane by lane where not; ``custom_vmap`` picks the implementation by whether
    the call is batched, which tracing alone cannot see:

    * usually, the normal equations themselves: ``V = I``, ``M = gram / (d d^T)``
      with ``d = gram_diag`` (``gram`` may be of J's columns divided by powers of
      2, ``gram_diag`` then ``diag`` divided by the same), ``g = gs`` (the damped
      solves are then unrolled LDL^T factorisations, no eigen-decomposition at
      all). The Gram matrix squares the condition number, so
      this is used only for a lane that is well conditioned: ``kappa(M) <=
      1/sqrt(eps)`` on its non-zero rows, by the bound ``||M||_F ||M^-1||_F``, so
      the steps are accurate to ``sqrt(eps)`` relative. Exactly-zero rows come
      from exactly-zero columns of J (frozen parameters), which the Gram matrix
      separates exactly.
    * otherwise, lane by lane: LAPACK's SVD of ``Js``, which keeps
      MINPACK's accuracy (condition number not squared), computed only for the
      running lanes (``active``) that need one (`_with_svd_lanes`). Every lane
      keeps its own path: a lane's steps never depend on the other lanes of its
      batch, neither in value nor in cost beyond its own SVDs.
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
def _small_system_batched(
    axis_size, in_batched, jac_t, diag, gram, gram_diag, gs, active
):
    if not any(in_batched[:5]):  # one matrix for every lane
        return _small_system_unbatched(jac_t, diag, gs), StepSystem(False, False, False)

    inputs = (jac_t, diag, gram, gram_diag, gs, active)
    jac_t, diag, gram, gram_diag, gs, active = (
        _with_batch_axis(x, b, axis_size)
        for x, b in zip(inputs, in_batched, strict=True)
    )
    scaled, well_conditioned = jax.vmap(_scaled_gram)(gram, gram_diag)
    n = gs.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=gs.dtype), (axis_size, n, n))

    gram_system = StepSystem(eye, scaled, gs)

    # Each lane takes its own path, so its steps do not depend on its neighbours:
    # the Gram system where it is well conditioned, its own SVD elsewhere. Only the
    # running lanes that need an SVD compute one, SVD_ROUND of them at a time
    # (gathered, then scattered back): a few ill-conditioned fits cost their own
    # SVDs, not the whole batch's at every step (a straggler of a pool of 1024
    # Poisson spots held it at 3 ms per step, 1024 LAPACK SVDs, for hundreds of
    # steps). A lane's SVD is computed by the same per-matrix code whichever
    # round and neighbours it has.
    need = ~well_conditioned & active
    return StepSystem(*_with_svd_lanes(jac_t, diag, need, *gram_system)), StepSystem(
        True, True, True
    )


#: Lanes per round of `_with_svd_lanes`: small, so that one ill-conditioned lane
#: costs a few SVDs; rounds run only while lanes needing one remain.
SVD_ROUND = 16


@jax.custom_batching.custom_vmap
def _with_svd_lanes(jac_t, diag, need, v, m, g):
    """``(v, m, g)``, a batched `StepSystem` (B, ...) of the normal equations, with
    the lanes where ``need`` (B,) replaced by their SVD systems (of ``jac_t`` (B,
    n, m) over ``diag`` (B, n)), computed `SVD_ROUND` lanes at a time for the lanes
    that need one only: as many rounds as those lanes fill, none at all (not even
    the gather of their indices) when no lane needs one, the usual case of a
    well-conditioned batch (one copy of the SVD code; forward-differentiable).

    Under a further ``vmap`` (a batch of batches: ``vmap`` of `fit` with
    ``starts``, a batch's profile intervals) the conds would become selects that
    run every round; the vmap rule instead folds the outer axis into the lanes."""
    # (Arrays, for the traced gathers below: the rule's callers may pass numpy.)
    jac_t, diag, v, m, g = (jnp.asarray(a) for a in (jac_t, diag, v, m, g))
    batch = need.shape[0]
    size = max(jac_t.shape[-2:])
    width = min(SVD_ROUND, batch)
    rounds = -(-batch // width)
    count = jnp.sum(need, dtype=jnp.int32)
    spectrum = jax.vmap(_truncated_spectrum, in_axes=(0, 0, 0, None))

    def with_svds(system):
        # Lanes needing an SVD first, then ``batch`` (out of range: a gather reads
        # a clamped row, a scatter drops it) to fill up to ``rounds * width``.
        order = jnp.nonzero(need, size=rounds * width, fill_value=batch)[0]

        def one_round(carry):
            r, system = carry
            lanes = lax.dynamic_slice_in_dim(order, r * width, width)
            rows = jnp.minimum(lanes, batch - 1)
            vr, sr = jax.vmap(_right_svd_unbatched)(jac_t[rows], diag[rows])
            part = _as_matrix(spectrum(vr, sr, g[rows], size))
            return r + 1, tuple(
                whole.at[lanes].set(new, mode="drop")
                for whole, new in zip(system, part, strict=True)
            )

        # A while loop over the rounds needed, not a fixed loop of conds: 64
        # skipped rounds (1,024 lanes) cost ~0.1 ms per batch iteration.
        start = (jnp.zeros((), jnp.int32), system)
        return lax.while_loop(lambda c: c[0] * width < count, one_round, start)[1]

    return lax.cond(count > 0, with_svds, lambda system: system, (v, m, g))


@_with_svd_lanes.def_vmap
def _with_svd_lanes_batched(axis_size, in_batched, *args):
    # (A, B, ...) -> (A B, ...): the rounds then skip on one count for all A B lanes.
    args = [
        _with_batch_axis(a, b, axis_size) for a, b in zip(args, in_batched, strict=True)
    ]
    lanes = args[2].shape[1]
    out = _with_svd_lanes(*(a.reshape((-1,) + a.shape[2:]) for a in args))
    return tuple(o.reshape((axis_size, lanes) + o.shape[1:]) for o in out), (
        True,
        True,
        True,
    )


def _scaled_gram(gram: jax.Array, diag: jax.Array):
    """``(M, well_conditioned)``: ``M = gram / (d d^T)`` (n, n) and whether the
    normal equations are accurate enough to use (see `_small_system`)."""
    n = gram.shape[0]
    a = [[gram[i, j] / (diag[i] * diag[j]) for j in range(n)] for i in range(n)]
    lower, pivots = ldl(a)
    nonzero = [a[j][j] != 0 for j in range(n)]
    positive = [~nz | (d > 0) for nz, d in zip(nonzero, pivots, strict=True)]
    inv_pivots = [
        jnp.where(nz, 1 / jnp.where(d > 0, d, 1), 0)
        for nz, d in zip(nonzero, pivots, strict=True)
    ]
    # trace(M^+) = sum_i ||row i of L^-1||^2 / d_i, with L^-1 unrolled (a zero row
    # of M has zero row and column in L, and 1/d_i = 0 leaves it out).
    inverse = unit_lower_inverse(lower, jnp.ones_like(a[0][0]))
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
