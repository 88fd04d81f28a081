"""Covariance and fit statistics at a solution (jitted; every shape compiles once).

The covariance is the pseudo-inverse of ``J^T J`` of the weighted residuals, with
scipy ``curve_fit``'s rank cutoff and ``chisq / dof`` scaling; a robust loss uses
scipy's loss-rescaled Jacobian; the Poisson estimator the inverse Fisher
information (`jaxlsq.fitting.poisson`). What cannot be estimated is ``inf``, never
a number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..core.compiler import jit
from ..core.factorize import right_svd
from ..core.losses import loss_scaled_jacobian
from ..core.status import Status
from .degeneracy import degeneracy_flags, model_at_zero
from .poisson import fisher_jacobian, null_deviance, poisson_statistics
from .result import FitResult
from .weights import whiten


@jit(
    static_argnames=(
        "residual_fn", "fixed", "loss", "absolute_sigma", "names", "n_starts"
    ),
)  # fmt: skip
def fit_result(
    sol,
    x,
    y,
    transform,
    f_scale,
    n_success,
    *,
    residual_fn,
    fixed,
    loss,
    absolute_sigma,
    names,
    n_starts,
) -> FitResult:
    f, jac = sol.residuals, sol.jac
    m, n = jac.shape
    fixed_np = np.asarray(fixed, bool)
    nfree = int(np.sum(~fixed_np))
    dof = m - nfree
    dtype = f.dtype
    chisq = jnp.sum(f * f)
    best_fit = jnp.asarray(residual_fn.model(x, sol.params)).astype(dtype)
    poisson = residual_fn.kind == "poisson"
    if poisson:  # the Cramer-Rao bound: inverse Fisher information, never scaled
        mu, counts = jnp.ravel(best_fit), jnp.ravel(y)
        cov_jac, cov_chisq = fisher_jacobian(jac, mu, counts), chisq
        absolute_sigma = True
    elif loss == "linear":
        cov_jac, cov_chisq = jac, chisq
    else:  # curve_fit(method="trf", loss=...): loss-rescaled J, 2 * robust cost
        cov_jac = loss_scaled_jacobian(jac, f, loss, f_scale)
        cov_chisq = 2 * sol.cost
    cov, corr = covariance(cov_jac, cov_chisq, fixed_np, absolute_sigma)
    stderr_flat = _stderr(jnp.diagonal(cov))
    _, unravel = jax.flatten_util.ravel_pytree(sol.params)

    redchi = chisq / dof if dof > 0 else jnp.asarray(jnp.inf, dtype)
    if poisson:
        pearson, neg2_log_like = poisson_statistics(mu, counts)
        sst = null_deviance(counts)  # deviance of the best constant mean
    else:
        pearson = chisq
        tiny = jnp.finfo(dtype).tiny
        neg2_log_like = m * jnp.log(jnp.maximum(chisq, tiny * m) / m)
        # R^2 against the best constant model under the same weights
        w1 = jnp.ravel(whiten(jnp.ones_like(y), transform, residual_fn.kind))
        wy = jnp.ravel(whiten(y, transform, residual_fn.kind))
        ybar = jnp.dot(w1, wy) / jnp.dot(w1, w1)
        sst = jnp.sum((wy - ybar * w1) ** 2)
    aic = neg2_log_like + 2 * nfree
    bic = neg2_log_like + np.log(m) * nfree
    pos = sst > 0
    r_squared = jnp.where(pos, 1 - chisq / jnp.where(pos, sst, 1), jnp.nan)

    # A traced sigma (per curve in a batch, or under jit) is checked here, as the
    # eager path checks a concrete one: not > 0 or not finite is improper input
    # (a negative sigma would otherwise act as its absolute value).
    status, success = sol.status, sol.success
    if residual_fn.kind == "1d":
        weights_ok = jnp.all((transform > 0) & jnp.isfinite(transform))
        status = jnp.where(weights_ok, status, int(Status.IMPROPER_INPUT))
        success = success & weights_ok
    if poisson:  # traced counts likewise: a negative count is improper input
        counts_ok = jnp.all(counts >= 0)
        status = jnp.where(counts_ok, status, int(Status.IMPROPER_INPUT))
        success = success & counts_ok
    at_zero = model_at_zero(cov_jac, cov, mu, counts) if poisson else False
    degeneracy = degeneracy_flags(
        stderr_flat, corr, r_squared, fixed_np, dof, success, at_zero
    )
    active = getattr(sol, "active_mask", None)
    if active is None:
        active = jnp.zeros((n,), jnp.int32)
    return FitResult(
        params=sol.params,
        stderr=unravel(stderr_flat),
        covariance=cov,
        correlation=corr,
        chisq=chisq,
        pearson_chisq=pearson,
        redchi=redchi,
        r_squared=r_squared,
        aic=aic,
        bic=bic,
        cost=sol.cost,
        residuals=jnp.reshape(f, y.shape),
        best_fit=jnp.reshape(best_fit, y.shape),
        status=status,
        success=success,
        nfev=sol.nfev,
        njev=sol.njev,
        n_iter=sol.n_iter,
        active_mask=active,
        n_success=n_success,
        degeneracy=degeneracy,
        names=names,
        fixed=fixed,
        ndata=m,
        nfree=nfree,
        dof=dof,
        n_starts=n_starts,
        loss=loss,
        estimator="poisson" if poisson else "least_squares",
        model=residual_fn.model,
        sigma_kind=residual_fn.kind,
        absolute_sigma=absolute_sigma,
    )


def covariance(
    jac: jax.Array,
    chisq: jax.Array,
    fixed: np.ndarray,
    absolute_sigma: bool,
) -> tuple[jax.Array, jax.Array]:
    """Parameter covariance and correlation from the weighted Jacobian.

    Parameters
    ----------
    jac : Array, shape (m, n)
        Jacobian of the weighted residuals at the solution.
    chisq : Array, shape ()
        Weighted sum of squares used for the ``chisq / dof`` scaling.
    fixed : ndarray of bool, shape (n,)
        Fixed parameters (static): excluded from the fit, rows/columns 0.
    absolute_sigma : bool
        If False, scale by ``chisq / dof`` (``inf`` everywhere when ``dof <= 0``).

    Returns
    -------
    covariance, correlation : Array, shape (n, n)

    Notes
    -----
    ``(J^T J)^+`` from one SVD (`_gram_pinv`) of ``J`` with its columns scaled to
    unit norm (so the result does not depend on the parameters' units), with scipy
    ``curve_fit``'s cutoff: singular values ``<= max(m, n) * eps * s_max`` are
    dropped. A dropped
    direction has infinite variance: every free parameter with a component in it
    (diagonal of the null-space projector above ``eps``; a projector, so
    independent of the SVD's choice of basis) gets ``inf`` rows and columns; the
    other entries are those of the estimable block.
    """
    m, n = jac.shape
    dtype = jac.dtype
    eps = jnp.finfo(dtype).eps
    free = ~fixed
    dof = m - int(np.sum(free))
    jac_free = jnp.where(free[None, :], jac, 0)
    finite = jnp.all(jnp.isfinite(jac_free))
    jac_free = jnp.where(finite, jac_free, 0)
    # Columns scaled to unit norm before the SVD and its cutoff, unscaled after:
    # (J^T J)^+ = D^-1 (Js^T Js)^+ D^-1 with J = Js D, so the covariance does not
    # depend on the parameters' units (a parameter of size 1e12 beside one of 1e-12
    # must not look rank-deficient). The projector's diagonal is unchanged by D.
    col2 = jnp.sum(jac_free * jac_free, axis=0)
    pos = col2 > 0
    col = jnp.where(pos, jnp.sqrt(jnp.where(pos, col2, 1)), 1)
    cov0, null_diag = _gram_pinv(jac_free / col)
    cov0 = cov0 / (col[:, None] * col[None, :])
    bad = free & ((null_diag > eps) | ~finite)

    if absolute_sigma:
        cov = cov0
    elif dof > 0:
        cov = cov0 * (chisq / dof)
    else:  # scipy: the covariance cannot be estimated
        cov = jnp.full((n, n), jnp.inf, dtype)
    either_bad = bad[:, None] | bad[None, :]
    either_fixed = fixed[:, None] | fixed[None, :]
    cov = jnp.where(either_bad, jnp.inf, cov)
    cov = jnp.where(either_fixed, 0, cov)

    var0 = jnp.diagonal(cov0)
    good = free & ~bad & (var0 > 0)
    sd = jnp.where(good, jnp.sqrt(jnp.where(good, var0, 1)), 1)
    corr = cov0 / (sd[:, None] * sd[None, :])
    both_good = good[:, None] & good[None, :]
    corr = jnp.where(jnp.eye(n, dtype=bool), 1, corr)
    corr = jnp.where(both_good, corr, jnp.nan)
    corr = jnp.where(either_fixed, 0, corr)
    return cov, corr


def _gram_pinv_parts(jac, rows=None):
    """``(J^T J)^+`` (n, n) and the null-space projector ``I - (J^T J)^+ J^T J``.
    ``rows``: J's row count m where ``jac`` is its R factor (n, n) (the same
    singular values and right vectors; the cutoff is scipy's, with max(m, n))."""
    m, n = jac.shape
    m = m if rows is None else rows
    eps = jnp.finfo(jac.dtype).eps
    # solve's SVD helper: LAPACK for one matrix, vectorised code under vmap (a Jacobi
    # eigen-decomposition of J^T J when well conditioned, else QR + Jacobi SVD)
    v, s = right_svd(jac, jnp.ones((n,), jac.dtype))
    keep = s > jnp.maximum(m, n) * eps * jnp.max(s)
    inv_s2 = jnp.where(keep, 1 / jnp.where(keep, s, 1) ** 2, 0)
    return (v * inv_s2) @ v.T, (v * ~keep) @ v.T


@jax.custom_jvp
def _gram_pinv(jac: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``C = (J^T J)^+`` (n, n) with curve_fit's rank cutoff, and the diagonal of
    the null-space projector ``N`` (n,) (no derivative).

    The derivative is that of a pseudo-inverse of constant rank (Golub & Pereyra
    1973), with ``A = J^T J`` symmetric and ``dA = dJ^T J + J^T dJ``:
    ``dC = -C dA C + C C dA N + N dA C C``. It is linear in ``dJ`` (so JAX transposes
    it for reverse mode) and has no ``1 / (s_i^2 - s_j^2)`` terms: it stays finite
    for repeated singular values, unlike differentiating through the SVD.
    """
    cov0, null = _gram_pinv_parts(jac)
    return cov0, jnp.diagonal(null)


@_gram_pinv.defjvp
def _gram_pinv_jvp(primals, tangents):
    (jac,), (djac,) = primals, tangents
    cov0, null = _gram_pinv_parts(jac)
    da = djac.T @ jac + jac.T @ djac
    cc = cov0 @ cov0
    dcov = -cov0 @ da @ cov0 + cc @ da @ null + null @ da @ cc
    null_diag = jnp.diagonal(null)
    return (cov0, null_diag), (dcov, jnp.zeros_like(null_diag))


def _stderr(v):
    """Standard errors from variances ``v`` (n,): ``sqrt(v)``; 0 where ``v`` is 0
    (a fixed parameter) and NaN where it is NaN (a failed fit never claims zero
    uncertainty). The where-guards keep the derivative finite at 0."""
    pos = v > 0
    root = jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1)), 0)
    return jnp.where(jnp.isnan(v), v, root)


@jit
def gram_pseudo_inverse(jac: jax.Array, rows=None) -> jax.Array:
    """``(J^T J)^+`` (n, n) of ``jac`` (m, n) with scipy ``curve_fit``'s rank cutoff
    (singular values ``<= max(m, n) * eps * s_max`` dropped): the covariance
    `covariance` builds on, and scipy's own ``pcov`` before its scaling. ``rows``:
    J's row count when ``jac`` is its R factor (n, n)."""
    return _gram_pinv_parts(jac, rows)[0]
