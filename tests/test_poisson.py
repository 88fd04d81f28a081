"""Poisson maximum likelihood (``estimator="poisson"``): the deviance residuals
against a 60-digit oracle and their derivatives against closed forms; the fit
against scipy.optimize.minimize on the negative log-likelihood (free, fixed and
bounded); the covariance against the Fisher information computed by hand and the
analytic Cramer-Rao bound of a 2-D Gaussian spot; a low-count simulation (MLE
unbiased with pulls ~ N(0, 1), Neyman-weighted least squares biased); batches,
gradients, float32 and bad input."""

from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import jaxlsq
from jaxlsq import Status, poisson_deviance_residuals
from jaxlsq.fitting.result import flat_params

X = np.linspace(0.0, 5.0, 50)
TRUE = {"a": 20.0, "k": 0.8, "c": 2.0}
P0 = {"a": 10.0, "k": 1.0, "c": 1.0}
EPS64 = np.finfo(np.float64).eps


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def counts(seed=0, scale=1.0):
    mu = scale * (TRUE["a"] * np.exp(-TRUE["k"] * X) + TRUE["c"])
    return np.random.default_rng(seed).poisson(mu).astype(float)


def decimal_residual(mu, y):
    """``sign(mu - y) sqrt(2 (mu - y + y log(y / mu)))`` with 60 digits."""
    getcontext().prec = 60
    mu, y = Decimal(mu), Decimal(y)
    d = mu - y - (y * (mu / y).ln() if y > 0 else 0)
    return float((1 if mu > y else -1 if mu < y else 0) * (2 * d).sqrt())


def scipy_mle(y, x0=(10.0, 1.0, 1.0), bounds=None, fixed_c=None):
    """The MLE of `decay` by scipy.optimize.minimize on the negative
    log-likelihood with its analytic gradient (a, k, c order)."""

    def nll(v):
        a, k, c = v if fixed_c is None else (*v, fixed_c)
        e = np.exp(-k * X)
        mu = a * e + c
        grad = np.array([e, -a * X * e, np.ones_like(X)]) @ (1 - y / mu)
        return np.sum(mu - y * np.log(mu)), grad if fixed_c is None else grad[:2]

    start = x0 if fixed_c is None else x0[:2]
    opts = {"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10000}
    out = minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
    return out.x


# ----------------------------------------------------------------------------------
# the deviance residuals


def test_deviance_residuals_match_a_60_digit_oracle():
    """Every branch (the series near mu = y, the log1p form, the logs; y = 0) to
    a few ulps: the worst cancellation left is ``25 eps`` in the deviance."""
    cases = []
    for y in (1e-8, 0.3, 1.0, 7.0, 1e3, 1e7):
        for t in (-0.99, -0.5, -0.1000001, -0.0999, -1e-3, -1e-9, 0.0, 1e-12, 1e-5,
                  0.0999999, 0.1, 0.5, 3.9, 4.1, 1e3):  # fmt: skip
            cases.append((y * (1 + t), y))
    cases += [(m, 0.0) for m in (1e-300, 1e-5, 0.5, 3.0, 1e6)]
    mu, y = (np.array(v) for v in zip(*cases, strict=True))
    got = np.asarray(poisson_deviance_residuals(mu, y))
    want = np.array([decimal_residual(m, v) for m, v in cases])
    np.testing.assert_allclose(got, want, rtol=50 * EPS64, atol=1e-300)


def test_deviance_residual_derivatives_are_the_closed_forms():
    """``dr/dmu = (1 - y/mu) / r`` and ``dr/dy = log(y/mu) / r`` (from ``r^2/2 =
    d``); at ``mu = y`` the limits ``1 / sqrt(y)`` and ``-1 / sqrt(y)``; at
    ``y = 0``, ``1 / sqrt(2 mu)``; all finite in both modes."""
    mu = jnp.array([2.0, 0.5, 1.0 + 1e-6, 3.0, 40.0, 1e-4])
    y = jnp.array([1.0, 1.0, 1.0, 0.0, 50.0, 0.0])
    dev = jax.vmap(jax.grad(poisson_deviance_residuals, argnums=(0, 1)))
    d_mu, d_y = dev(mu, y)
    r = poisson_deviance_residuals(mu, y)
    np.testing.assert_allclose(d_mu, (1 - y / mu) / r, rtol=1e-9)
    pos = np.asarray(y) > 0
    y_pos, mu_pos, r_pos = (np.asarray(v)[pos] for v in (y, mu, r))
    np.testing.assert_allclose(
        np.asarray(d_y)[pos], np.log(y_pos / mu_pos) / r_pos, rtol=1e-6
    )
    at = jax.vmap(jax.grad(poisson_deviance_residuals, argnums=(0, 1)))
    g_mu, g_y = at(jnp.array([1.0, 9.0]), jnp.array([1.0, 9.0]))
    np.testing.assert_allclose(g_mu, [1.0, 1 / 3], rtol=1e-14)
    np.testing.assert_allclose(g_y, [-1.0, -1 / 3], rtol=1e-14)
    _, tangent = jax.jvp(lambda m: poisson_deviance_residuals(m, 9.0), (9.0,), (1.0,))
    np.testing.assert_allclose(tangent, 1 / 3, rtol=1e-14)


def test_impossible_points_are_nan_and_zero_counts_at_zero_are_zero():
    mu = jnp.array([-1.0, 0.0, 1.0, 0.0])
    y = jnp.array([0.0, 1.0, -1.0, 0.0])
    r = np.asarray(poisson_deviance_residuals(mu, y))
    assert np.isnan(r[:3]).all() and r[3] == 0.0
    assert float(jax.grad(poisson_deviance_residuals)(0.0, 0.0)) == 0.0


# ----------------------------------------------------------------------------------
# the fit against scipy


def test_mle_matches_scipy_minimize_on_the_negative_log_likelihood():
    y = counts()
    res = jaxlsq.fit(decay, X, y, P0, estimator="poisson")
    assert bool(res.success) and res.estimator == "poisson"
    want = scipy_mle(y)
    got = [float(res.params[k]) for k in ("a", "k", "c")]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # chisq is the deviance; the cost half of it; residuals the deviance residuals
    mu = np.asarray(res.best_fit)
    deviance = 2 * np.sum(
        mu - y + np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0)
    )
    np.testing.assert_allclose(res.chisq, deviance, rtol=1e-10)
    np.testing.assert_allclose(res.cost, deviance / 2, rtol=1e-10)
    np.testing.assert_allclose(
        res.pearson_chisq, np.sum((y - mu) ** 2 / mu), rtol=1e-10
    )
    # AIC from the full Poisson log-likelihood (scipy.stats as the oracle)
    from scipy.stats import poisson

    log_like = np.sum(poisson.logpmf(y, mu))
    np.testing.assert_allclose(res.aic, -2 * log_like + 2 * 3, rtol=1e-10)
    np.testing.assert_allclose(res.bic, -2 * log_like + np.log(y.size) * 3, rtol=1e-10)
    null = 2 * np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / y.mean()), 0))
    np.testing.assert_allclose(res.r_squared, 1 - deviance / null, rtol=1e-9)


def test_mle_with_fixed_and_bounded_parameters_matches_scipy():
    y = counts(seed=1)
    fixed = jaxlsq.fit(
        decay, X, y, {**P0, "c": 2.5}, fixed={"a": False, "k": False, "c": True},
        estimator="poisson",
    )  # fmt: skip
    want = scipy_mle(y, (10.0, 1.0, 2.5), fixed_c=2.5)
    np.testing.assert_allclose(
        [float(fixed.params["a"]), float(fixed.params["k"])], want, rtol=1e-6
    )
    assert float(fixed.stderr["c"]) == 0.0 and fixed.nfree == 2
    free = scipy_mle(y)
    upper = 0.5 * free[2]  # binds c
    box = ({"a": 0, "k": 0, "c": 0}, {"a": 100, "k": 10, "c": upper})
    bounded = jaxlsq.fit(decay, X, y, P0, bounds=box, estimator="poisson")
    want = scipy_mle(y, bounds=[(0, 100), (0, 10), (0, upper)])
    got = [float(bounded.params[k]) for k in ("a", "k", "c")]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert bool(bounded.success) and int(bounded.active_mask[1]) == 1  # c: flat index 1


def test_solve_with_deviance_residuals_is_the_same_mle():
    """`solve` users compose the estimator themselves: the same optimum."""
    y = jnp.asarray(counts())

    def residuals(p, x, y):
        return poisson_deviance_residuals(decay(x, p), y)

    sol = jaxlsq.solve(residuals, P0, (jnp.asarray(X), y))
    res = jaxlsq.fit(decay, X, y, P0, estimator="poisson")
    assert_same_optimum(sol.params, res)


def assert_same_optimum(params, fit):
    """``params`` (a dict like P0) is ``fit``'s optimum to what the cost resolves:
    a change ``dp`` moves the cost by ``(dp / stderr)^2 / 2``, invisible below
    ``eps * cost``, so optima agree to ``stderr * sqrt(2 eps cost)`` (~1e-7 here)."""
    resolved = flat_params(fit, "stderr") * np.sqrt(2 * EPS64 * float(fit.cost))
    diff = np.abs(jax.flatten_util.ravel_pytree(params)[0] - flat_params(fit))
    assert np.all(diff <= 30 * resolved), (diff, resolved)


# ----------------------------------------------------------------------------------
# the covariance: Fisher information and the Cramer-Rao bound


def test_covariance_is_the_inverse_fisher_information():
    """``(J_mu^T diag(1/mu) J_mu)^-1`` with J_mu by hand, at the fitted values; not
    scaled by deviance / dof, also when absolute_sigma is False (the default)."""
    y = counts(seed=2)
    res = jaxlsq.fit(decay, X, y, P0, estimator="poisson")
    a, k, c = (float(res.params[n]) for n in ("a", "k", "c"))
    e = np.exp(-k * X)
    mu = a * e + c
    jac = np.stack([e, np.ones_like(X), -a * X * e], axis=1)  # ravel order a, c, k
    fisher = jac.T @ (jac / mu[:, None])
    np.testing.assert_allclose(res.covariance, np.linalg.inv(fisher), rtol=1e-9)
    # a poor fit (deviance / dof far from 1) does not rescale it
    assert abs(float(res.redchi) - 1) > 1e-3


def gaussian_spot(xy, p):
    """Expected photons per pixel: N photons in a 2-D Gaussian of width s (px)."""
    gx, gy = xy
    r2 = (gx - p["x0"]) ** 2 + (gy - p["y0"]) ** 2
    return p["n"] / (2 * jnp.pi * p["s"] ** 2) * jnp.exp(-r2 / (2 * p["s"] ** 2))


def spot_grid(half=10):
    g = np.arange(-half, half + 1, dtype=float)
    return tuple(np.meshgrid(g, g, indexing="ij"))


def test_stderr_is_the_analytic_cramer_rao_bound_of_a_gaussian_spot():
    """No background: var(x0) = s^2 / N, var(N) = N, var(s) = s^2 / (4 N) at the
    fitted N and s (the sum over 1-px pixels of a 1.5 px Gaussian equals the
    integral to ~exp(-2 pi^2 s^2) ~ 1e-19; the +-6.7 s grid loses ~1e-10)."""
    xy = spot_grid()
    truth = {"x0": 0.3, "y0": -0.2, "n": 5000.0, "s": 1.5}
    mu = np.asarray(gaussian_spot(xy, truth))
    y = np.random.default_rng(3).poisson(mu).astype(float)
    p0 = {"x0": 0.0, "y0": 0.0, "n": 3000.0, "s": 1.0}
    res = jaxlsq.fit(gaussian_spot, xy, y, p0, estimator="poisson")
    assert bool(res.success)
    n, s = float(res.params["n"]), float(res.params["s"])
    np.testing.assert_allclose(res.stderr["x0"], s / np.sqrt(n), rtol=1e-6)
    np.testing.assert_allclose(res.stderr["y0"], s / np.sqrt(n), rtol=1e-6)
    np.testing.assert_allclose(res.stderr["n"], np.sqrt(n), rtol=1e-6)
    np.testing.assert_allclose(res.stderr["s"], s / (2 * np.sqrt(n)), rtol=1e-6)


def spot_with_background(xy, p):
    gx, gy = xy
    r2 = (gx - p["x0"]) ** 2 + (gy - p["y0"]) ** 2
    return p["n"] / (2 * jnp.pi * 1.2**2) * jnp.exp(-r2 / (2 * 1.2**2)) + p["b"]


@pytest.mark.slow
def test_low_count_simulation_mle_unbiased_with_unit_pulls_and_neyman_lsq_biased():
    """2000 spots of 60 photons on 1 photon/px background, 9x9 px: the MLE's mean
    is within 4 standard errors of the truth and its pulls (estimate - truth) /
    stderr have mean 0 and std 1 (to sampling error and the CRLB's asymptotics);
    least squares with Neyman's sigma = sqrt(max(y, 1)) underestimates N by many
    standard errors (the classic low-count bias)."""
    xy = spot_grid(4)
    truth = {"x0": 0.2, "y0": -0.1, "n": 60.0, "b": 1.0}
    mu = np.asarray(spot_with_background(xy, truth))
    n_spots = 2000
    y = np.random.default_rng(4).poisson(mu, size=(n_spots, *mu.shape)).astype(float)
    p0 = {"x0": 0.0, "y0": 0.0, "n": 40.0, "b": 2.0}
    mle = jaxlsq.fit_batch(spot_with_background, xy, y, p0, estimator="poisson")
    ok = np.asarray(mle.success)
    assert ok.mean() > 0.99
    for name in truth:
        est = np.asarray(mle.params[name])[ok]
        err = np.asarray(mle.stderr[name])[ok]
        se = est.std() / np.sqrt(est.size)
        assert abs(est.mean() - truth[name]) < 4 * se, name
        pulls = (est - truth[name]) / err
        assert abs(pulls.mean()) < 0.15 and abs(pulls.std() - 1) < 0.12, name
    sigma = np.sqrt(np.maximum(y, 1.0))
    lsq = jaxlsq.fit_batch(
        spot_with_background, xy, y, p0, sigma=sigma, in_axes=(None, 0, None, 0),
        absolute_sigma=True,
    )  # fmt: skip
    n_lsq = np.asarray(lsq.params["n"])[np.asarray(lsq.success)]
    se_lsq = n_lsq.std() / np.sqrt(n_lsq.size)
    assert truth["n"] - n_lsq.mean() > 10 * se_lsq


# ----------------------------------------------------------------------------------
# batches, gradients, dtypes


def test_fit_batch_poisson_matches_fit_and_isolates_bad_curves():
    """Same optimum as `fit` curve by curve (`assert_same_optimum`)."""
    ys = np.stack([counts(seed=s) for s in range(4)])
    ys[2, 5] = -1.0  # a negative count: that curve's improper input, nobody else's
    fits = jaxlsq.fit_batch(decay, X, ys, P0, estimator="poisson")
    assert int(fits.status[2]) == int(Status.IMPROPER_INPUT)
    assert not bool(fits.success[2])
    for i in (0, 1, 3):
        solo = jaxlsq.fit(decay, X, ys[i], P0, estimator="poisson")
        assert_same_optimum(fits[i].params, solo)
        np.testing.assert_allclose(fits[i].covariance, solo.covariance, rtol=1e-6)
        np.testing.assert_allclose(fits[i].chisq, solo.chisq, rtol=1e-12)
        assert bool(fits.success[i])
    assert "Poisson" in fits.report()


def test_parameters_are_differentiable_with_respect_to_the_counts():
    """Implicit differentiation through the MLE against central differences."""
    y = jnp.asarray(counts(seed=5))

    def k_hat(y):
        return jaxlsq.fit(decay, X, y, P0, estimator="poisson").params["k"]

    def k_exact(y):
        # The fit stops where the deviance is flat to rounding (k within ~1e-8);
        # Newton on the deviance's gradient from there finds its root to rounding,
        # so central differences of it see only h.
        p = jaxlsq.fit(decay, X, y, P0, estimator="poisson").params
        v = jnp.array([p["a"], p["k"], p["c"]])

        def dev(v):
            mu = decay(X, {"a": v[0], "k": v[1], "c": v[2]})
            return jnp.sum(poisson_deviance_residuals(mu, y) ** 2)

        for _ in range(3):
            v = v - jnp.linalg.solve(jax.hessian(dev)(v), jax.grad(dev)(v))
        return v[1]

    g = np.asarray(jax.grad(k_hat)(y))
    h = 1e-4
    for i in (0, 7, 30):
        e = jnp.zeros_like(y).at[i].set(h)
        fd = (float(k_exact(y + e)) - float(k_exact(y - e))) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-9)


def test_float32_counts_give_float32_results_close_to_float64():
    y = counts(seed=6, scale=50.0)  # enough counts for float32's 1e-7
    p0 = {k: 50.0 * v if k != "k" else v for k, v in P0.items()}
    p32 = jax.tree_util.tree_map(np.float32, p0)
    x32, y32 = X.astype(np.float32), y.astype(np.float32)
    r32 = jaxlsq.fit(decay, x32, y32, p32, estimator="poisson")
    r64 = jaxlsq.fit(decay, X, y, p0, estimator="poisson")
    assert r32.params["k"].dtype == jnp.float32 and bool(r32.success)
    np.testing.assert_allclose(flat_params(r32), flat_params(r64), rtol=2e-4)
    np.testing.assert_allclose(
        flat_params(r32, "stderr"), flat_params(r64, "stderr"), rtol=2e-3
    )


def test_report_names_the_estimator_and_the_deviance():
    text = jaxlsq.fit(decay, X, counts(), P0, estimator="poisson").report()
    assert "Poisson maximum likelihood" in text
    assert "deviance" in text and "Pearson chi-square" in text


# ----------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"estimator": "mle"}, "estimator must be one of"),
        ({"estimator": "poisson", "sigma": 1.0}, "sigma must be None"),
        ({"estimator": "poisson", "loss": "cauchy"}, "loss must be 'linear'"),
    ],
)
def test_bad_estimator_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxlsq.fit(decay, X, counts(), P0, **kwargs)
    with pytest.raises(ValueError, match=match):
        jaxlsq.fit_batch(decay, X, counts()[None], P0, **kwargs)


def test_negative_counts_and_a_non_positive_start_raise():
    y = counts()
    y[3] = -2.0
    with pytest.raises(ValueError, match="y must be counts >= 0"):
        jaxlsq.fit(decay, X, y, P0, estimator="poisson")
    with pytest.raises(ValueError, match=r"model\(x, p0\) must be > 0 .* flat index 0"):
        jaxlsq.fit(decay, X, counts(), {"a": -5.0, "k": 1.0, "c": 1.0},
                   estimator="poisson")  # fmt: skip


def test_non_positive_start_under_jit_reports_nonfinite():
    @jax.jit
    def run(y):
        return jaxlsq.fit(decay, X, y, {"a": -5.0, "k": 1.0, "c": 1.0},
                          estimator="poisson")  # fmt: skip

    res = run(jnp.asarray(counts()))
    assert int(res.status) == int(Status.NONFINITE) and not bool(res.success)


def test_fit_batch_poisson_with_bounds_and_fixed_matches_scipy_curve_by_curve():
    """A batch with a fixed parameter and a bound that binds on some curves: each
    fit is scipy's MLE of its own curve under the same constraints (`scipy_mle`:
    minimize on the negative log-likelihood, to 1e-6 as the single-fit test)."""
    ys = np.stack([counts(seed=s) for s in range(10, 14)])
    upper = np.median([scipy_mle(y)[0] for y in ys])  # binds "a" on half of them
    box = ({"a": 0, "k": 0, "c": 0}, {"a": upper, "k": 10, "c": 100})
    start = {**P0, "c": 2.0}
    fits = jaxlsq.fit_batch(
        decay, X, ys, start, bounds=box, fixed={"a": False, "k": False, "c": True},
        estimator="poisson",
    )  # fmt: skip
    assert bool(fits.success.all())
    for i, y in enumerate(ys):
        want = scipy_mle(y, (10.0, 1.0, 2.0), fixed_c=2.0,
                         bounds=[(0, upper), (0, 10)])  # fmt: skip
        got = [float(fits.params["a"][i]), float(fits.params["k"][i])]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert float(fits.params["c"][i]) == 2.0 and float(fits.stderr["c"][i]) == 0
    assert bool((fits.active_mask[:, 0] == 1).any())  # the bound binds somewhere


def test_gradients_through_fit_batch_poisson_equal_per_curve_gradients():
    """d(sum of the fitted rates)/d(counts) through a Poisson `fit_batch` equals the
    gradient through each curve's own `fit` (each validated against central
    differences in the single-fit test above)."""
    ys = jnp.asarray(np.stack([counts(seed=s) for s in range(20, 23)]))

    def batch_loss(ys):
        return jnp.sum(jaxlsq.fit_batch(decay, X, ys, P0, estimator="poisson")
                       .params["k"])  # fmt: skip

    def one_loss(y):
        return jaxlsq.fit(decay, X, y, P0, estimator="poisson").params["k"]

    g_batch = np.asarray(jax.grad(batch_loss)(ys))
    for i in range(ys.shape[0]):
        g_one = np.asarray(jax.grad(one_loss)(ys[i]))
        scale = np.abs(g_one).max()
        np.testing.assert_allclose(g_batch[i], g_one, rtol=0, atol=1e-7 * scale)


# A 5x5 spot (Gpufit's GAUSS_2D: amplitude, x0, y0, sigma, offset) at ~2 background
# photons whose unbounded MLE has a negative offset: the model touches 0 at a
# zero-count pixel (drawn by benchmarks/poisson.py, spot 4637 of its 10^4).
EDGE_XY = np.stack([np.tile(np.arange(5.0), 5), np.repeat(np.arange(5.0), 5)])
EDGE_Y = np.array([17, 46, 48, 17, 0, 34, 85, 92, 45, 7, 38, 84, 78, 29, 11,
                   14, 50, 33, 12, 4, 10, 12, 11, 6, 0], float)  # fmt: skip
EDGE_P0 = np.array([88.735, 1.31, 1.703, 0.945, 1.689])


def spot_with_offset(xy, p):
    r2 = (xy[0] - p[1]) ** 2 + (xy[1] - p[2]) ** 2
    return p[0] * jnp.exp(-r2 / (2 * p[3] ** 2)) + p[4]


def test_an_mle_on_the_edge_of_the_domain_is_the_constrained_mle_and_flagged():
    from jaxlsq.fitting.degeneracy import AT_ZERO

    with pytest.warns(jaxlsq.DegenerateFitWarning, match="edge of the model's domain"):
        fit = jaxlsq.fit(
            spot_with_offset, EDGE_XY, EDGE_Y, EDGE_P0, estimator="poisson"
        )
    assert bool(fit.success) and int(fit.degeneracy) == AT_ZERO
    assert "edge of the model's domain" in fit.report()

    # Oracle: the MLE constrained to mu >= 0 at every pixel (scipy's SLSQP on the
    # negative log-likelihood), to a thousandth of a standard error.
    def mu(p):
        return np.asarray(spot_with_offset(EDGE_XY, p))

    def nll(p):
        return np.sum(mu(p) - EDGE_Y * np.log(np.maximum(mu(p), 1e-300)))

    ref = minimize(nll, EDGE_P0, method="SLSQP", options=dict(ftol=1e-14),
                   constraints=[{"type": "ineq", "fun": mu}])  # fmt: skip
    assert ref.success and float(fit.params[4]) < 0
    np.testing.assert_array_less(
        np.abs(ref.x - np.asarray(fit.params)) / np.asarray(fit.stderr), 1e-3
    )
    assert mu(np.asarray(fit.params)).min() < 1e-8 * abs(float(fit.params[4]))
    # With the offset bounded at 0 (the cure the warning names) the fit is sound, and
    # in a batch only the edge fit is flagged.
    lower = np.array([0.0, -np.inf, -np.inf, 0.0, 0.0])
    bounded = jaxlsq.fit(spot_with_offset, EDGE_XY, EDGE_Y, EDGE_P0,
                         estimator="poisson", bounds=(lower, np.inf))  # fmt: skip
    assert bool(bounded.success) and int(bounded.degeneracy) == 0
    sound_y = np.asarray(np.round(spot_with_offset(EDGE_XY, ref.x) + 3.0))
    with pytest.warns(jaxlsq.DegenerateFitWarning, match="1 of 2 fits"):
        batch = jaxlsq.fit_batch(
            spot_with_offset, EDGE_XY, np.stack([EDGE_Y, sound_y]), EDGE_P0,
            in_axes=(None, 0, None, None), estimator="poisson",
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(batch.degeneracy), [AT_ZERO, 0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_edge_flag_does_not_depend_on_the_axis_origin(dtype):
    # A peak without background: its tails are ~0 with zero counts, but they carry
    # no information (leverage ~ mu): no flag, wherever the x axis starts.
    rng = np.random.default_rng(2)
    xs = np.linspace(-15.0, 15.0, 31)
    y = rng.poisson(200.0 * np.exp(-(xs**2) / 8.0)).astype(dtype)

    def peak(x, p):
        return p[0] * jnp.exp(-((x - p[1]) ** 2) / (2 * p[2] ** 2))

    for origin in (0.0, 1000.0):
        x = (xs + origin).astype(dtype)
        p0 = np.array([150.0, origin + 0.3, 1.5], dtype)
        fit = jaxlsq.fit(peak, x, y, p0, estimator="poisson")
        assert bool(fit.success), origin
        assert int(fit.degeneracy) == 0, origin
