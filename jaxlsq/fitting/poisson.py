"""The Poisson estimator: maximum likelihood for counts, as a least-squares problem.

For counts ``y_i ~ Poisson(mu_i)``, ``mu = model(x, params)``, the maximum-likelihood
fit minimises the deviance ``D = 2 sum(mu - y + y log(y / mu))`` (twice the negative
log-likelihood less its saturated value; ``y log y = 0`` at ``y = 0``). ``D`` is the
sum of squares of the *deviance residuals*

    ``r_i = sign(mu_i - y_i) sqrt(2 (mu_i - y_i + y_i log(y_i / mu_i)))``,

so Levenberg-Marquardt on ``r`` (any of jaxlsq's solvers, batches and gradients
unchanged) is the exact MLE: its gradient ``J_r^T r = J_mu^T (1 - y / mu)`` is the
log-likelihood's. ``r`` is smooth through ``mu = y`` (``dr/dmu -> 1 / sqrt(y)``),
which `poisson_deviance_residuals` evaluates without the 0/0 of the formula above.

The covariance is the inverse Fisher information ``(J_mu^T diag(1 / mu) J_mu)^-1``,
the Cramer-Rao lower bound, not a rescaled ``(J_r^T J_r)^-1``; `fisher_jacobian` gets
``J_mu / sqrt(mu)`` from the solver's ``J_r`` without another model Jacobian.

Reference: Laurence & Chromy, "Efficient maximum likelihood estimator fitting of
histograms", Nat. Methods 7 (2010) (LM for Poisson MLE); McCullagh & Nelder,
"Generalized Linear Models" (deviance residuals).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import gammaln, xlogy

#: ``S(w) = sum_j w^j / (2j + 3)``: near ``mu = y`` the deviance of a point is
#: ``d = v^2 (y + mu + 2 y v S(v^2))``, ``v = (y - mu) / (y + mu)`` (Loader's
#: "bd0" series, as in R's ``dpois``). 16 terms reach float64 rounding for
#: ``|v| < 1/3`` (``mu / y`` in ``(0.5, 2)``: ``(1/9)^16 / 35 < 1e-17``).
_SERIES = tuple(1.0 / (2 * j + 3) for j in range(16))
#: Below it ``|v|`` uses the series; above it ``mu - y + y log(y / mu)`` loses at
#: most ``|t| / h(t) < 4`` roundings to cancellation (``t = mu / y - 1``,
#: ``h = t - log1p(t)``).
_NEAR = 1.0 / 3.0


def poisson_deviance_residuals(mu, y):
    """Signed Poisson deviance residuals: ``sum(r**2)`` is the deviance of ``mu``.

    Parameters
    ----------
    mu : array_like, shape (...)
        Model values (expected counts); must be > 0 (``mu = 0`` is allowed where
        ``y = 0``).
    y : array_like, shape of ``mu`` (broadcast)
        Observed counts, >= 0 (need not be integers: e.g. gain-corrected counts).

    Returns
    -------
    Array, shape of ``broadcast(mu, y)``, dtype ``result_type(mu, y)`` (floating)
        ``sign(mu - y) sqrt(2 (mu - y + y log(y / mu)))``. NaN where ``mu < 0``,
        ``y < 0``, or ``mu = 0 < y`` (an impossible observation): a solver rejects
        such a trial step and shrinks its trust region, and a starting point there
        reports ``Status.NONFINITE``.

    Notes
    -----
    Differentiable everywhere it is finite, including ``mu = y`` (where ``dr/dmu
    = 1 / sqrt(y)``) and ``y = 0`` (``r = sqrt(2 mu)``; at ``mu = 0`` it is 0 with
    derivative 0). For ``|v| < 1/3``, ``v = (y - mu) / (y + mu)``, it is
    ``-v sqrt(2 (y + mu) + 4 y v S(v^2))`` with a series ``S`` (no cancellation
    at ``mu = y``); elsewhere the formula above. Within a few roundings of the
    exact value (tested against 60-digit arithmetic).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxlsq import poisson_deviance_residuals
    >>> r = poisson_deviance_residuals(jnp.array([2.0, 3.0]), jnp.array([2.0, 0.0]))
    >>> [round(float(v), 6) for v in r]  # 0 at mu = y; sqrt(2 mu) at y = 0
    [0.0, 2.44949]
    """
    dtype = jnp.result_type(mu, y, float)
    mu, y = jnp.broadcast_arrays(jnp.asarray(mu, dtype), jnp.asarray(y, dtype))
    return _deviance_residuals(mu, y)


@jax.custom_jvp
def _deviance_residuals(mu, y):
    """`poisson_deviance_residuals` of same-shape floating ``mu``, ``y``."""
    return _residuals_and_slope(mu, y)[0]


@functools.partial(_deviance_residuals.defjvp, symbolic_zeros=True)
def _deviance_residuals_jvp(primals, tangents):
    # The tangent in mu is the closed form dr/dmu = (1 - y / mu) / r (from
    # d(r^2 / 2) / dmu), one multiply per Jacobian column instead of every branch's
    # tangent: the solver's jacfwd costs 4.6x less this way (5-parameter spots).
    # A tangent in y (differentiating a fit with respect to its data) is rare: there
    # autodiff goes through the same branches.
    mu, y = primals
    d_mu, d_y = tangents
    r, slope = _residuals_and_slope(mu, y)
    out = jnp.zeros_like(r) if type(d_mu) is SymbolicZero else slope * d_mu
    if type(d_y) is not SymbolicZero:
        out = out + jax.jvp(lambda v: _residuals_and_slope(mu, v)[0], (y,), (d_y,))[1]
    return r, out


def _residuals_and_slope(mu, y):
    """``(r, dr/dmu)`` for same-shape ``mu``, ``y``; both differentiable by autodiff
    (every branch gets safe inputs where it is not taken, so neither its value nor
    its derivative can put NaN into the one that is: the "double where"). One
    logarithm per point (``log1p`` costs 3-4 ``log`` on CPU)."""
    counted = y > 0
    mu_safe = jnp.where(mu > 0, mu, 1)
    total = jnp.where(counted, y + mu, 1)
    v = (y - mu) / total
    near = counted & (jnp.abs(v) < _NEAR)
    w = jnp.where(near, v * v, 0)
    poly = jnp.zeros_like(w)
    for c in reversed(_SERIES):
        poly = poly * w + c
    # d = v^2 q / 2 with q = 2 (y + mu + 2 y v S) > 0: r = -v sqrt(q), and
    # dr/dmu = (mu - y) / (mu r) = (y + mu) / (mu sqrt(q)) without the 0/0 at mu = y.
    q = 2 * (total + 2 * y * jnp.where(near, v, 0) * poly)
    # Elsewhere the formula (y = 0: d = mu); its cancellation is mild for |v| >= 1/3.
    ratio = jnp.where(counted & ~near & (mu > 0), y / mu_safe, 1)
    d_far = jnp.where(counted, mu - y + y * jnp.log(ratio), mu)
    d_far = jnp.where(near | (mu < 0), 1, jnp.maximum(d_far, jnp.finfo(mu.dtype).tiny))
    # One square root per point, of q or 2 d (a square root costs as much as the
    # logarithm on CPU: this and the log are most of the residual's time).
    root = jnp.sqrt(jnp.where(near, q, 2 * d_far))
    r_near = (mu - y) / total * root  # = -v sqrt(q), +0 at mu = y
    slope_near = total / (mu_safe * root)
    r_far = jnp.sign(mu - y) * root
    slope_far = (mu - y) / (mu_safe * jnp.where(near | (r_far == 0), 1, r_far))
    r = jnp.where(near, r_near, r_far)
    slope = jnp.where(near, slope_near, slope_far)
    impossible = (mu < 0) | (y < 0) | (counted & (mu <= 0))
    return jnp.where(impossible, jnp.nan, r), jnp.where(impossible, jnp.nan, slope)


def fisher_jacobian(jac_r, mu, y):
    """``J_mu / sqrt(mu)`` (m, n) from ``J_r`` (m, n), the Jacobian of the deviance
    residuals: ``(J^T J)^-1`` of it is the inverse Fisher information.

    ``J_r = diag(dr/dmu) J_mu``, so each row is divided by ``sqrt(mu) dr/dmu`` (> 0
    wherever ``mu > 0``; a row where it is 0 -- ``mu = y = 0`` -- carries no
    information and is 0). ``mu``, ``y``: flat (m,).
    """
    _, dr_dmu = jax.jvp(
        lambda m: poisson_deviance_residuals(m, y), (mu,), (jnp.ones_like(mu),)
    )
    q = jnp.sqrt(jnp.where(mu > 0, mu, 0)) * dr_dmu
    ok = q > 0
    return jnp.where(ok[:, None], jac_r / jnp.where(ok, q, 1)[:, None], 0)


def poisson_statistics(mu, y):
    """``(pearson_chisq, neg2_log_like)``: ``sum((y - mu)^2 / mu)`` and
    ``-2 log L = 2 sum(mu - y log mu + log y!)`` of counts ``y`` under ``mu``
    (flat (m,) each)."""
    ok = mu > 0
    mu_safe = jnp.where(ok, mu, 1)
    pearson = jnp.sum(
        jnp.where(ok, (y - mu) ** 2 / mu_safe, jnp.where(y > 0, jnp.inf, 0))
    )
    nll = jnp.sum(mu - xlogy(y, jnp.where(ok, mu, 0)) + gammaln(y + 1))
    return pearson, 2 * nll


def null_deviance(y):
    """Deviance of the best constant model (``mu = mean(y)``) for ``y`` (m,): the
    reference of the Poisson fit's pseudo-R^2 ``1 - D / D_0``."""
    return jnp.sum(poisson_deviance_residuals(jnp.mean(y), y) ** 2)
