"""Confidence and prediction bands of a fitted model (the delta method).

For a fit with covariance ``C`` of its flat parameters, the variance of the model
at new abscissae ``x`` is ``diag(J C J^T)``, ``J = d model(x, p) / dp`` (k, n) the
exact Jacobian (``jax.jacfwd``; lmfit steps each parameter by a fraction of its
standard error instead). The band's half-width is ``q * sqrt(var)``, with ``q`` the
two-sided quantile of the confidence level that ``sigma`` names (lmfit's
convention: ``sigma >= 1`` is a number of standard deviations, ``sigma < 1`` the
probability itself): Student's t with ``dof`` degrees of freedom when the
covariance was scaled by ``chisq / dof`` (least squares without
``absolute_sigma``, as lmfit does), the normal quantile when it is absolute (an
``absolute_sigma`` fit, the Poisson estimator).

A prediction band adds the variance of a new observation: ``redchi`` for an
unweighted fit (lmfit's ``dely_predicted``), ``mu(x)`` for counts, or the ``noise``
given (a standard deviation in ``y``'s units, times ``sqrt(redchi)`` when sigma
gave only relative weights).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.scipy.special import betainc, ndtri

from ..core.compiler import jit


def confidence_band(result, x, sigma=1.0):
    """Half-width of the ``sigma`` confidence band of ``model(x, params)``.

    Parameters
    ----------
    result : FitResult
        A fit (or a batch of fits: every array field with leading batch axes).
    x : pytree of arrays
        Abscissae to evaluate at, as ``model`` takes them (shared by a batch).
    sigma : float, default 1
        Confidence level: ``sigma >= 1`` standard deviations (1, 2, 3 are 68.27%,
        95.45%, 99.73%), ``sigma < 1`` the probability itself.

    Returns
    -------
    Array, shape ``batch_shape + model(x, p).shape``
        ``q * sqrt(diag(J C J^T))``; ``inf`` where a parameter that cannot be
        estimated (an ``inf`` variance) moves the model, and everywhere when
        ``dof <= 0`` for a scaled covariance.
    """
    return band_quantile(result, sigma) * jnp.sqrt(_model_variance(result, x))


def prediction_band(result, x, sigma=1.0, noise=None):
    """Half-width of the ``sigma`` prediction band: where a *new observation* at
    ``x`` falls, ``q * sqrt(var_model + var_noise)``.

    ``noise`` (a standard deviation in ``y``'s units, broadcast to the model's
    output at ``x``; times ``sqrt(redchi)`` unless the fit had ``absolute_sigma``)
    is required for a fit weighted by ``sigma``, whose noise at new points is not
    known. Otherwise the default is the fit's own: ``redchi`` (or 1 with
    ``absolute_sigma``) for unit weights, ``mu(x)`` for the Poisson estimator.
    Other arguments and the result as for `confidence_band`.
    """
    scaled = not result.absolute_sigma
    poisson = result.estimator == "poisson"
    if noise is None and not poisson and result.sigma_kind is not None:
        raise ValueError(
            "noise must be given for the prediction band of a fit weighted by "
            "sigma (the standard deviation of a new observation at x, in y's units)"
        )
    var = _model_variance(result, x, add_mu=poisson and noise is None)
    if noise is not None or not poisson:
        # per fit: redchi (the noise scale; 1 for absolute weights) times noise^2
        out_ndim = var.ndim - len(result.batch_shape)
        scale = jnp.asarray(result.redchi) if scaled else jnp.ones_like(result.redchi)
        scale = jnp.reshape(scale, jnp.shape(scale) + (1,) * out_ndim)
        if noise is not None:
            noise = jnp.asarray(noise, var.dtype)
            var = var + scale * noise * noise
        else:
            var = var + scale
    return band_quantile(result, sigma) * jnp.sqrt(var)


def evaluate(result, x) -> jax.Array:
    """``model(x, params)`` for every fit of ``result``: ``batch_shape + out``."""
    if result.model is None:
        raise ValueError("this FitResult has no model (it was not made by fit)")
    batch = result.batch_shape
    params = jax.tree_util.tree_map(
        lambda v: jnp.reshape(v, (-1,) + jnp.shape(v)[len(batch) :]), result.params
    )
    out = _evaluate(result.model, params, x)
    return jnp.reshape(out, batch + jnp.shape(out)[1:])


@jit(static_argnames=("model",))
def _evaluate(model, params, x):
    """``model(x, p)`` for a stack of parameter pytrees (leading axis)."""
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    return jax.vmap(lambda p: jnp.asarray(model(x, p)).astype(dtype))(params)


def _model_variance(result, x, *, add_mu=False):
    """``diag(J C J^T)`` at ``x`` for every fit of the batch, shape
    ``batch_shape + out``; plus ``mu(x)`` when ``add_mu`` (Poisson noise)."""
    if result.model is None:
        raise ValueError("this FitResult has no model (it was not made by fit)")
    batch = result.batch_shape
    params, cov = jax.tree_util.tree_map(
        lambda v: jnp.reshape(v, (-1,) + jnp.shape(v)[len(batch) :]),
        (result.params, result.covariance),
    )
    out = jax.vmap(lambda p, c: _variance(result.model, p, c, x, add_mu=add_mu))(
        params, cov
    )
    return jnp.reshape(out, batch + jnp.shape(out)[1:])


def _variance(model, params, cov, x, *, add_mu):
    """``diag(J C J^T)`` (shape of ``model(x, params)``) for one fit (params a
    pytree, C (n, n)), plus ``mu(x)`` when ``add_mu``."""
    flat, unravel = ravel_pytree(params)

    def f(v):
        return jnp.asarray(model(x, unravel(v))).astype(flat.dtype)

    mu = f(flat)
    jac = jax.jacfwd(lambda v: jnp.ravel(f(v)))(flat)  # (k, n): n forward passes
    finite = jnp.isfinite(cov)
    var = jnp.einsum("ki,ij,kj->k", jac, jnp.where(finite, cov, 0), jac)
    # a parameter that cannot be estimated (inf variance) and moves the model
    unknown = ~jnp.isfinite(jnp.diagonal(cov))
    moved = jnp.any((jac != 0) & unknown[None, :], axis=1)
    var = jnp.reshape(jnp.where(moved, jnp.inf, jnp.maximum(var, 0)), jnp.shape(mu))
    return var + jnp.maximum(mu, 0) if add_mu else var


def level_probability(sigma) -> float:
    """lmfit's level convention: ``sigma >= 1`` standard deviations (the two-sided
    normal probability ``erf(sigma / sqrt(2))``), ``sigma < 1`` the probability."""
    sigma = float(sigma)
    return sigma if sigma < 1 else math.erf(sigma / math.sqrt(2))


def band_quantile(result, sigma) -> jax.Array:
    """Two-sided quantile (a scalar of the parameters' dtype) of the level ``sigma``
    names (`level_probability`): Student's t with ``result.dof`` degrees of freedom
    for a scaled covariance, normal for an absolute one (``result.absolute_sigma``).
    Shared by the bands and the profile intervals' thresholds."""
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (a level), got {sigma}")
    prob = level_probability(sigma)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(result.params))
    if result.absolute_sigma:
        return ndtri(jnp.asarray((1 + prob) / 2, dtype))
    if result.dof <= 0:
        return jnp.asarray(jnp.inf, dtype)
    return student_t_quantile(
        jnp.asarray((1 + prob) / 2, dtype), jnp.asarray(result.dof, dtype)
    )


@jit
def student_t_quantile(p, dof):
    """The ``p`` quantile (``p >= 1/2``) of Student's t with ``dof`` degrees of
    freedom, by bisection on the regularized incomplete beta function:
    ``P(T > t) = I_x(dof/2, 1/2) / 2`` with ``x = dof / (dof + t^2)``."""
    target = 2 * (1 - p)  # I_x(dof/2, 1/2), increasing in x on [0, 1]
    a, b = jnp.asarray(dof / 2, p.dtype), jnp.asarray(0.5, p.dtype)

    def step(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        below = betainc(a, b, mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(
        0, 200, step, (jnp.zeros_like(p), jnp.ones_like(p))
    )  # 200 halvings: past float64's smallest normal number
    x = 0.5 * (lo + hi)
    return jnp.sqrt(dof * (1 - x) / x)
