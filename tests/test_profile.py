"""Profile-likelihood intervals (`FitResult.conf_interval`) against two oracles:

* lmfit's ``conf_interval`` on the same fit (its root finder stops at a relative
  tolerance of 5e-5 of the value, so ends agree to ~1e-4 standard errors);
* a tight independent profile: scipy ``least_squares`` refits with the parameter
  held (tolerances 1e-15) and ``brentq`` (xtol 1e-14) on the chi2 rise, with the
  threshold from ``scipy.stats`` (F for a scaled covariance, chi2(1) for an
  absolute one). Agreement to 1e-6 standard errors: the profile chi2 is known to
  about sqrt(eps * chi2) relative, which moves an end by far less.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import xlogy

import jaxlsq

jax.config.update("jax_enable_x64", True)

T = np.linspace(0.0, 5.0, 30)
Y = 3.0 * np.exp(-1.3 * T) + 0.5 + 0.05 * np.random.default_rng(0).standard_normal(30)
P0 = {"a": 1.0, "k": 1.0, "c": 0.0}
NAMES = ("a", "c", "k")  # ravel order of the dict


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def np_residual(p, y, sigma=1.0):
    a, c, k = p
    return (a * np.exp(-k * T) + c - y) / sigma


def profile_end(best, j, side, rise, residual, y):
    """brentq on chi2_j(v) - chi2_min - rise, each chi2_j by a tight refit."""
    free = [i for i in range(3) if i != j]

    def chi2_at(v):
        def res(q):
            p = np.array(best, float)
            p[free] = q
            p[j] = v
            return residual(p, y)

        sol = optimize.least_squares(
            res, np.asarray(best)[free], ftol=1e-15, xtol=1e-15, gtol=1e-15
        )
        return 2 * sol.cost

    chi2_min = chi2_at(best[j])
    g = lambda v: chi2_at(v) - chi2_min - rise  # noqa: E731
    step = 0.01 * max(abs(best[j]), 1.0)
    far = best[j] + side * step
    while g(far) < 0:
        step *= 2
        far = best[j] + side * step
    return optimize.brentq(g, best[j], far, xtol=1e-14, rtol=1e-14)


def ends_of(ci, name):
    return np.array([float(v) for _, v in ci[name]])


def test_scaled_intervals_match_lmfit_and_a_tight_scipy_profile():
    result = jaxlsq.fit(decay, T, Y, P0)
    ci = result.conf_interval(T, Y, sigmas=(1, 2, 3))
    stderr = {n: float(result.stderr[n]) for n in NAMES}
    # the lmfit oracle
    lmfit = pytest.importorskip("lmfit")
    model = lmfit.Model(lambda x, a, k, c: a * np.exp(-k * x) + c)
    fit = model.fit(Y, x=T, a=1.0, k=1.0, c=0.0)
    ref = lmfit.conf_interval(fit, fit, sigmas=(1, 2, 3))
    for name in NAMES:
        probs = [p for p, _ in ci[name]]
        np.testing.assert_allclose(probs, [p for p, _ in ref[name]], rtol=1e-12)
        want = np.array([v for _, v in ref[name]])
        np.testing.assert_allclose(ends_of(ci, name), want, atol=2e-4 * stderr[name])
    # the tight oracle: F(1, dof) threshold times chisq / dof
    best = np.array([float(result.params[n]) for n in NAMES])
    chi2 = float(result.chisq)
    for s, col in ((1, (2, 4)), (2, (1, 5))):
        prob = stats.norm.cdf(s) - stats.norm.cdf(-s)
        rise = stats.f.ppf(prob, 1, result.dof) * chi2 / result.dof
        for j, name in enumerate(NAMES):
            for side, k in zip((-1, 1), col, strict=True):
                want = profile_end(best, j, side, rise, np_residual, Y)
                got = ends_of(ci, name)[k]
                assert abs(got - want) < 1e-6 * stderr[name], (name, s, side)


def test_absolute_sigma_uses_the_chi2_threshold_and_a_batch_matches_single_fits():
    sigma = 0.05
    result = jaxlsq.fit(decay, T, Y, P0, sigma=sigma, absolute_sigma=True)
    ci = result.conf_interval(T, Y, sigma=sigma, sigmas=(1, 0.9))
    best = np.array([float(result.params[n]) for n in NAMES])
    for j, name in enumerate(NAMES):
        ends = ends_of(ci, name)  # [-0.9, -1s, best, +1s, +0.9]
        for k, rise, side in ((3, 1.0, 1), (0, stats.chi2.ppf(0.9, 1), -1)):
            want = profile_end(
                best, j, side, rise, lambda p, y: np_residual(p, y, sigma), Y
            )
            assert abs(ends[k] - want) < 1e-6 * float(result.stderr[name]), name
    # a batch: every fit's intervals are those of its own fit
    rng = np.random.default_rng(1)
    ys = 3.0 * np.exp(-1.3 * T) + 0.5 + 0.05 * rng.standard_normal((3, T.size))
    fits = jaxlsq.fit_batch(decay, T, ys, P0, sigma=sigma, absolute_sigma=True)
    batch_ci = fits.conf_interval(T, ys, sigma=sigma, sigmas=(1, 2))
    for i in range(3):
        solo = jaxlsq.fit(decay, T, ys[i], P0, sigma=sigma, absolute_sigma=True)
        solo_ci = solo.conf_interval(T, ys[i], sigma=sigma, sigmas=(1, 2))
        for name in NAMES:
            got = np.array([float(v[i]) for _, v in batch_ci[name]])
            np.testing.assert_allclose(
                got, ends_of(solo_ci, name), atol=1e-7 * float(solo.stderr[name])
            )


def test_poisson_profile_is_the_likelihood_ratio_interval():
    mu = 40 * np.exp(-0.6 * T) + 3
    counts = np.random.default_rng(2).poisson(mu).astype(float)
    p0 = {"a": 10.0, "k": 1.0, "c": 1.0}
    result = jaxlsq.fit(decay, T, counts, p0, estimator="poisson")
    ci = result.conf_interval(T, counts, sigmas=(1,))
    best = np.array([float(result.params[n]) for n in NAMES])

    def deviance_residual(p, y):  # the textbook formula, in numpy
        a, c, k = p
        m = a * np.exp(-k * T) + c
        return np.sign(m - y) * np.sqrt(2 * np.maximum(m - y + xlogy(y, y / m), 0))

    for j, name in enumerate(NAMES):
        for side, k in ((-1, 0), (1, 2)):
            want = profile_end(best, j, side, 1.0, deviance_residual, counts)
            got = ends_of(ci, name)[k]
            assert abs(got - want) < 1e-6 * float(result.stderr[name]), name


def test_a_bound_stops_an_interval_and_params_selects():
    lower = {"a": 0.0, "k": 0.0, "c": 0.48}
    p0 = {"a": 1.0, "k": 1.0, "c": 0.6}
    result = jaxlsq.fit(decay, T, Y, p0, bounds=(lower, np.inf))
    assert float(result.params["c"]) > 0.48  # the bound is not active at the optimum
    ci = result.conf_interval(T, Y, bounds=(lower, np.inf), params=["c"])
    assert list(ci) == ["c"]
    ends = ends_of(ci, "c")
    # the 1-sigma lower end of c (0.479 unbounded) and beyond lie past the bound
    np.testing.assert_allclose(ends[:3], 0.48, rtol=0, atol=1e-15)
    assert ends[3] == float(result.params["c"]) and ends[4] > ends[3]
    with pytest.raises(ValueError, match="not a free parameter"):
        result.conf_interval(T, Y, params=["nope"])
    fixed = jaxlsq.fit(decay, T, Y, P0, fixed={"a": False, "k": False, "c": True})
    with pytest.raises(ValueError, match="not a free parameter"):
        fixed.conf_interval(T, Y, params=["c"])
    assert set(fixed.conf_interval(T, Y, sigmas=(1,))) == {"a", "k"}
