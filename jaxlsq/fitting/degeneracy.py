"""Degeneracy: fits that report success but mean little.

MINPACK's convergence codes say the iteration stopped where it should; they do not
say the optimum is well determined. The scipy tutorial's sinusoid ``a sin(b x +
c)`` from ``[1, 1, 0]`` ends at ``b ~ 0`` with ``ier = 2``: there ``a`` and ``b``
only enter as ``a b`` (not separately identifiable), every correlation is
``+-1.0000`` and the model explains 0.6% of the data's variance. A successful fit
gets a `DegenerateFitWarning` (eager calls) and a nonzero ``degeneracy`` (always,
also under ``jit``/``vmap``), a bit mask of:

* `NOT_ESTIMABLE` (1): a free parameter has an infinite variance (a rank-deficient
  Jacobian at the optimum; only with ``dof > 0``, where variances are estimable);
* `CORRELATED` (2): two free parameters are correlated beyond ``|C| > 0.999``
  (`CORRELATION_LIMIT`): the data determine a combination of them, not each;
* `LOW_R_SQUARED` (4): ``R^2 < 0.05`` (`R_SQUARED_LIMIT`; the deviance pseudo-R^2
  for counts): the model explains almost none of the data's variation about its
  mean -- a flat valley, a local minimum, or the wrong model (legitimate only
  when the data hold no signal);
* `AT_ZERO` (8), Poisson estimator only: the model is ~0 at a zero-count point
  that carries the fit's information (`model_at_zero`). The maximum-likelihood fit
  then lies on the edge of the model's domain (``mu >= 0``): typically an
  unbounded offset went negative until the model touched 0 where nothing was
  counted. There the Cramer-Rao errors do not hold, and the fit converges slowly
  (the deviance residual ``sqrt(2 mu)`` of such a point is far from linear near 0:
  of 10^4 unbounded 2-D Gaussian spots at 2 background photons,
  ``benchmarks/poisson.py``, the 93 that end there took a median 54 evaluations,
  all fits 12). The cure is a bound (``offset >= 0``).

The usual cure for the others is another start: ``fit(..., starts=...)`` fits from
many and keeps the best.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

NOT_ESTIMABLE = 1
CORRELATED = 2
LOW_R_SQUARED = 4
AT_ZERO = 8
CORRELATION_LIMIT = 0.999
R_SQUARED_LIMIT = 0.05


class DegenerateFitWarning(UserWarning):
    """A fit succeeded but is degenerate (see `jaxlsq.fitting.degeneracy`)."""


def degeneracy_flags(stderr, corr, r_squared, fixed, dof, success, at_zero=False):
    """The ``degeneracy`` bit mask (int32, shape ()) of one fit: `stderr` (n,),
    `corr` (n, n), ``r_squared`` (), the static ``fixed`` mask (n,) and ``dof``;
    ``at_zero`` (bool, ()) from `model_at_zero` for the Poisson estimator; 0 for
    a fit that did not succeed (its status already says why)."""
    free = ~np.asarray(fixed, bool)
    n = free.size
    pair = free[:, None] & free[None, :] & ~np.eye(n, dtype=bool)
    corr_abs = jnp.where(pair & jnp.isfinite(corr), jnp.abs(corr), 0)
    correlated = jnp.any(corr_abs > CORRELATION_LIMIT)
    not_estimable = jnp.any(free & ~jnp.isfinite(stderr)) & (dof > 0)
    low_r2 = r_squared < R_SQUARED_LIMIT  # NaN (constant data): False
    flags = (
        not_estimable.astype(jnp.int32) * NOT_ESTIMABLE
        + correlated.astype(jnp.int32) * CORRELATED
        + low_r2.astype(jnp.int32) * LOW_R_SQUARED
        + jnp.asarray(at_zero).astype(jnp.int32) * AT_ZERO
    )
    return jnp.where(success, flags, 0).astype(jnp.int32)


def model_at_zero(fisher_jac, cov, mu, counts):
    """`AT_ZERO` (bool, shape ()): at a point where ``counts`` (m,) is 0 the model
    ``mu`` (m,) is below ``sqrt(eps)`` times that point's leverage ``h_k = F_k C
    F_k^T`` (``F = J_mu / sqrt(mu)``, ``fisher_jac`` (m, n); ``C`` the fit's
    covariance (n, n), the inverse Fisher information; ``0 <= h_k <= 1``).

    At the edge of the domain the point carries the information of the direction
    that would take it below 0 (``h_k`` near 1) while its expected count is ~0.
    The tail of a peak without background has a tiny ``mu_k`` but a leverage of
    order ``mu_k`` (it carries no information): not flagged. Counts are
    dimensionless and the leverage does not depend on the parameters' units or
    origin, so neither does the test."""
    eps = jnp.finfo(mu.dtype).eps
    leverage = jnp.einsum("ij,jk,ik->i", fisher_jac, cov, fisher_jac)
    return jnp.any((counts == 0) & (mu > 0) & (mu <= jnp.sqrt(eps) * leverage))


def describe(result) -> list[str]:
    """What makes one concrete fit degenerate, one phrase per flag, naming the
    parameters (empty for a sound fit)."""
    from .result import flat_params

    flags = int(result.degeneracy)
    names = result.names
    phrases = []
    if flags & NOT_ESTIMABLE:
        err = np.asarray(flat_params(result, "stderr"))
        bad = [nm for nm, e, f in zip(names, err, result.fixed, strict=True)
               if not f and not np.isfinite(e)]  # fmt: skip
        phrases.append(
            f"{', '.join(bad)} cannot be estimated (infinite standard errors)"
        )
    if flags & CORRELATED:
        corr = np.asarray(result.correlation)
        pairs = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                c = corr[i, j]
                if np.isfinite(c) and abs(c) > CORRELATION_LIMIT:
                    pairs.append(f"C({names[i]}, {names[j]}) = {c:+.4f}")
        phrases.append(f"correlations beyond +-{CORRELATION_LIMIT}: {'; '.join(pairs)}")
    if flags & LOW_R_SQUARED:
        phrases.append(
            f"R^2 = {float(result.r_squared):.3g}: the model explains almost none of "
            "the data's variation"
        )
    if flags & AT_ZERO:
        phrases.append(
            "the model is 0 (to rounding) at a point with zero counts: the "
            "maximum-likelihood fit lies on the edge of the model's domain (mu >= "
            "0), where the Cramer-Rao errors do not hold. If a parameter (an "
            "offset) went negative to get there, bound it: bounds=(lower, upper) "
            "with lower = 0 for it"
        )
    return phrases


def warn_if_degenerate(result, where: str) -> None:
    """One `DegenerateFitWarning` for a concrete `FitResult` (a batch: one summary
    warning); nothing under tracing."""
    import jax

    if isinstance(result.degeneracy, jax.core.Tracer):
        return
    from ..batch.sharding import local_batch  # a batch across hosts: its local fits

    flags = local_batch(result.degeneracy)
    if not flags.any():
        return
    if flags.ndim == 0:
        text = f"{where}: the fit succeeded but is degenerate: " + "; ".join(
            describe(result)
        )
        if int(flags) & ~AT_ZERO:
            text += (
                ". Often a flat valley or a local minimum: try other starting "
                f"points ({where}(..., starts=...) fits from many and keeps the best)"
            )
        text += "."
    else:
        text = (
            f"{where}: {int(np.count_nonzero(flags))} of {flags.size} fits succeeded "
            "but are degenerate (see result.degeneracy and result[i].report())."
        )
    warnings.warn(text, DegenerateFitWarning, stacklevel=3)
