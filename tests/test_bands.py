"""Confidence and prediction bands (`FitResult.eval_uncertainty`,
`FitResult.prediction_band`): against lmfit's ``eval_uncertainty``, the delta
method by hand with analytic derivatives, scipy's Student t quantiles, and a
coverage simulation (a 1-sigma band holds the truth 68.3% of the time)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf
from scipy.stats import norm
from scipy.stats import t as student_t

import jaxlsq
from jaxlsq.fitting.bands import student_t_quantile

X = np.linspace(0.0, 4.0, 40)
XN = np.linspace(-0.5, 5.0, 23)  # new abscissae, some outside the data
TRUE = {"a": 3.0, "k": 1.3, "c": 0.5}
P0 = {"a": 1.0, "k": 1.0, "c": 0.0}


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def decay_jac(x, a, k, c):
    """d model / d (a, c, k) in ravel order (keys sorted), by hand: (len(x), 3)."""
    e = np.exp(-k * x)
    return np.stack([e, np.ones_like(x), -a * x * e], axis=1)


def data(seed=0, noise=0.05, n=None):
    rng = np.random.default_rng(seed)
    mu = TRUE["a"] * np.exp(-TRUE["k"] * X) + TRUE["c"]
    shape = X.shape if n is None else (n, X.size)
    return mu + noise * rng.standard_normal(shape)


@pytest.mark.parametrize("dof", [1, 2, 5, 37, 1000])
@pytest.mark.parametrize("p", [0.6, 0.8413447460685429, 0.975, 0.99865, 1 - 1e-9])
def test_student_t_quantile_matches_scipy(dof, p):
    got = student_t_quantile(jnp.asarray(p), jnp.asarray(float(dof)))
    np.testing.assert_allclose(got, student_t.ppf(p, dof), rtol=1e-9)


def test_bands_match_lmfit_eval_uncertainty():
    """lmfit fits with MINPACK's finite-difference Jacobian and steps the
    parameters by ``dscale * stderr`` for the band: agreement to ~1e-5 is what
    its differences allow (rtol 1e-4)."""
    lmfit = pytest.importorskip("lmfit")
    y = data()
    res = jaxlsq.fit(decay, X, y, P0)
    out = lmfit.Model(lambda x, a, k, c: a * np.exp(-k * x) + c).fit(
        y, x=X, a=1.0, k=1.0, c=0.0
    )
    for sigma in (1, 2, 0.9):
        want = out.eval_uncertainty(x=XN, sigma=sigma, dscale=1e-4)
        np.testing.assert_allclose(res.eval_uncertainty(XN, sigma), want, rtol=1e-4)
        np.testing.assert_allclose(
            res.prediction_band(XN, sigma), out.dely_predicted, rtol=1e-4
        )
    np.testing.assert_allclose(res.eval(XN), out.eval(x=XN), rtol=1e-6)


def test_weighted_absolute_band_is_the_delta_method_with_a_normal_quantile():
    """``absolute_sigma``: ``z * sqrt(diag(J C J^T))``, J by hand, z the normal
    quantile (the covariance is not estimated from the scatter, so no t)."""
    sig = 0.02 * (1 + X)
    y = data(noise=0.0) + sig * np.random.default_rng(1).standard_normal(X.size)
    res = jaxlsq.fit(decay, X, y, P0, sigma=sig, absolute_sigma=True)
    a, k, c = (float(res.params[n]) for n in ("a", "k", "c"))
    jac = decay_jac(XN, a, k, c)
    var = np.einsum("ki,ij,kj->k", jac, np.asarray(res.covariance), jac)
    for sigma in (1, 3, 0.5):
        prob = sigma if sigma < 1 else erf(sigma / np.sqrt(2))
        z = norm.ppf((1 + prob) / 2)
        np.testing.assert_allclose(
            res.eval_uncertainty(XN, sigma), z * np.sqrt(var), rtol=1e-10
        )
        noise = 0.02 * (1 + XN)  # a new point's sigma, absolute: no redchi
        np.testing.assert_allclose(
            res.prediction_band(XN, sigma, noise=noise),
            z * np.sqrt(var + noise**2),
            rtol=1e-10,
        )
    with pytest.raises(ValueError, match="noise must be given"):
        res.prediction_band(XN)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        res.eval_uncertainty(XN, sigma=0.0)


@pytest.mark.slow
def test_one_sigma_bands_cover_the_truth_68_percent_of_the_time():
    """2000 simulated data sets, fitted in one batch: the 1-sigma confidence band
    holds the true curve, and the prediction band a new observation, in 68.27% of
    cases (binomial sd 1.0% per point; the delta method is first order, so 3%)."""
    n = 2000
    ys = data(seed=2, n=n)
    fits = jaxlsq.fit_batch(decay, X, ys, P0)
    assert bool(fits.success.all())
    band = np.asarray(fits.eval_uncertainty(XN))
    pred = np.asarray(fits.prediction_band(XN))
    assert band.shape == pred.shape == (n, XN.size)
    truth = np.asarray(decay(XN, TRUE))
    fitted = np.asarray(fits.eval(XN))
    covered = np.abs(fitted - truth) <= band
    new_y = truth + 0.05 * np.random.default_rng(3).standard_normal((n, XN.size))
    predicted = np.abs(new_y - fitted) <= pred
    target = erf(1 / np.sqrt(2))
    for share in (covered.mean(axis=0), predicted.mean(axis=0)):
        assert np.all(np.abs(share - target) < 0.03), share


def test_poisson_prediction_band_adds_the_counts_variance():
    rng = np.random.default_rng(4)
    mu = 20 * np.exp(-0.8 * X) + 2
    y = rng.poisson(mu).astype(float)
    res = jaxlsq.fit(decay, X, y, {"a": 10.0, "k": 1.0, "c": 1.0}, estimator="poisson")
    var = np.asarray(res.eval_uncertainty(XN, sigma=2)) ** 2
    z = norm.ppf((1 + erf(2 / np.sqrt(2))) / 2)  # absolute: Fisher information
    mu_new = np.asarray(res.eval(XN))
    np.testing.assert_allclose(
        res.prediction_band(XN, sigma=2), np.sqrt(var + z**2 * mu_new), rtol=1e-10
    )


def test_non_estimable_parameters_make_the_band_infinite_where_they_matter():
    """``a * b`` is not identifiable: their variances are inf, so the band is inf
    wherever the model depends on them, finite where it does not (x = 0)."""

    def product(x, p):
        return p["a"] * p["b"] * x + p["c"]

    y = 2.0 * X + 1.0 + 0.01 * np.sin(7 * X)
    res = jaxlsq.fit(product, X, y, {"a": 1.0, "b": 1.0, "c": 0.0})
    band = np.asarray(res.eval_uncertainty(np.array([0.0, 1.0, 2.0])))
    assert np.isfinite(band[0]) and np.isinf(band[1:]).all()


def test_fixed_parameters_do_not_widen_the_band():
    y = data(seed=5)
    res = jaxlsq.fit(
        decay, X, y, {**P0, "c": 0.5}, fixed={"a": False, "k": False, "c": True}
    )
    a, k = float(res.params["a"]), float(res.params["k"])
    jac = decay_jac(XN, a, k, 0.5)[:, [0, 2]]  # a, k
    cov = np.asarray(res.covariance)[np.ix_([0, 2], [0, 2])]
    q = student_t.ppf((1 + erf(1 / np.sqrt(2))) / 2, res.dof)
    want = q * np.sqrt(np.einsum("ki,ij,kj->k", jac, cov, jac))
    np.testing.assert_allclose(res.eval_uncertainty(XN), want, rtol=1e-10)


def test_bands_work_under_jit_and_grad():
    y = jnp.asarray(data(seed=6))

    # Tolerances at rounding: the finite difference below divides the fits' own
    # stopping error by 2h; at the default ftol (1.5e-8 of the cost) that error
    # moved it by 1.7e-4 relative on one CPU.
    tight = dict(ftol=1e-15, xtol=1e-15, gtol=0.0)

    @jax.jit
    def width(y):
        return jaxlsq.fit(decay, X, y, P0, **tight).eval_uncertainty(XN)

    np.testing.assert_allclose(
        width(y), jaxlsq.fit(decay, X, y, P0, **tight).eval_uncertainty(XN), rtol=1e-9
    )
    g = jax.grad(lambda y: jnp.sum(width(y)))(y)
    assert np.all(np.isfinite(np.asarray(g)))
    h = 1e-4  # truncation error ~h^2 relative; the fits' error / h ~1e-11
    e = jnp.zeros_like(y).at[3].set(h)
    fd = (float(jnp.sum(width(y + e))) - float(jnp.sum(width(y - e)))) / (2 * h)
    np.testing.assert_allclose(g[3], fd, rtol=1e-4)
