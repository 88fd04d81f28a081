"""`FitResult.bootstrap` against a Python loop of scipy ``curve_fit`` on the same
resamples (replayed from ``indices``), and against the analytic expectation:
for a linear model the residual bootstrap's variance is ``RSS / m (X^T X)^-1``,
i.e. the covariance standard error times ``sqrt((m - n) / m)``; for counts the
parametric bootstrap's scatter is the Cramer-Rao bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit

import jaxlsq

jax.config.update("jax_enable_x64", True)

T = np.linspace(0.0, 5.0, 30)
Y = 3.0 * np.exp(-1.3 * T) + 0.5 + 0.05 * np.random.default_rng(0).standard_normal(30)
P0 = {"a": 1.0, "k": 1.0, "c": 0.0}
NAMES = ("a", "c", "k")
TIGHT = dict(ftol=1e-12, xtol=1e-12)


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def decay_np(x, a, c, k):
    return a * np.exp(-k * x) + c


def flat(params):
    return np.stack([np.asarray(params[n]) for n in NAMES], axis=-1)


@pytest.mark.parametrize("kind", ["residual", "pairs"])
def test_refits_equal_a_scipy_loop_on_the_same_resamples(kind):
    sigma = np.full(T.shape, 0.05) * (1 + 0.5 * np.sin(T))
    result = jaxlsq.fit(decay, T, Y, P0, sigma=sigma, **TIGHT)
    boot = result.bootstrap(
        T, Y, n_samples=12, kind=kind, sigma=sigma, key=jax.random.key(3), **TIGHT
    )
    got = flat(boot.params)
    assert got.shape == (12, 3) and bool(np.all(boot.success))
    best = flat(result.params)
    fit_y = np.asarray(result.best_fit)
    for b, idx in enumerate(np.asarray(boot.indices)):
        if kind == "residual":
            y_b = fit_y + sigma * ((Y - fit_y) / sigma)[idx]
            x_b, s_b = T, sigma
        else:
            x_b, y_b, s_b = T[idx], Y[idx], sigma[idx]
        want, _ = curve_fit(decay_np, x_b, y_b, p0=best, sigma=s_b, ftol=1e-12,
                            xtol=1e-12)  # fmt: skip
        np.testing.assert_allclose(got[b], want, rtol=1e-7, atol=1e-9)
    # the summary is that of the refits
    np.testing.assert_allclose(
        [float(boot.stderr[n]) for n in NAMES], got.std(axis=0, ddof=1), rtol=1e-12
    )
    lo, mid, hi = (boot.intervals["k"][i][1] for i in (1, 2, 3))
    np.testing.assert_allclose(
        [lo, hi], np.percentile(got[:, 2], [50 - 34.134, 50 + 34.134]), rtol=1e-4
    )
    assert mid == float(result.params["k"])


def test_residual_bootstrap_of_a_line_has_the_analytic_scatter():
    x = np.linspace(0.0, 1.0, 40)
    rng = np.random.default_rng(5)
    y = 1.0 + 2.0 * x + 0.1 * rng.standard_normal(x.size)

    def line(x, p):
        return p["b"] + p["m"] * x

    result = jaxlsq.fit(line, x, y, {"b": 0.0, "m": 0.0})
    boot = result.bootstrap(x, y, n_samples=4000, key=jax.random.key(1))
    shrink = np.sqrt((x.size - 2) / x.size)  # RSS / m instead of RSS / (m - n)
    for name in ("b", "m"):
        want = float(result.stderr[name]) * shrink
        # sd of a sd estimate from B draws: ~1 / sqrt(2B) = 1.1%; 4 of them
        assert abs(float(boot.stderr[name]) / want - 1) < 0.045, name


@pytest.mark.slow
def test_poisson_parametric_bootstrap_scatter_is_the_cramer_rao_bound():
    mu = 200 * np.exp(-0.6 * T) + 20
    counts = np.random.default_rng(2).poisson(mu).astype(float)
    p0 = {"a": 100.0, "k": 1.0, "c": 10.0}
    result = jaxlsq.fit(decay, T, counts, p0, estimator="poisson")
    boot = result.bootstrap(T, counts, n_samples=2000, key=jax.random.key(2))
    assert boot.indices is None and float(np.mean(boot.success)) > 0.99
    for name in NAMES:
        ratio = float(boot.stderr[name]) / float(result.stderr[name])
        assert abs(ratio - 1) < 0.08, (name, ratio)


def test_bootstrap_arguments_are_checked():
    result = jaxlsq.fit(decay, T, Y, P0)
    with pytest.raises(ValueError, match="kind must be one of"):
        result.bootstrap(T, Y, kind="jackknife")
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        result.bootstrap(T, Y, n_samples=1)
    with pytest.raises(ValueError, match="x of shape"):
        result.bootstrap(np.stack([T, T]), Y, kind="pairs")
    fits = jaxlsq.fit_batch(decay, T, np.stack([Y, Y]), P0)
    with pytest.raises(ValueError, match=r"leading axis \(2,\)"):
        fits.bootstrap(T, Y)


@pytest.mark.parametrize("kind", ["residual", "pairs"])
def test_a_batch_bootstraps_each_fit_as_alone(kind):
    # fit_batch's curves, each bootstrapped in one call: fit i's refits, errors and
    # intervals are those of fits[i].bootstrap with key split(key, N)[i] (the same
    # resamples), to the refits' accuracy: the batch runs another vmapped program
    # (N x B lanes, not B), whose rounding a stopping test can turn into an
    # iteration more or less: parameters agree to ~sqrt(eps), not bit for bit.
    rng = np.random.default_rng(7)
    ys = np.stack([
        a * np.exp(-k * T) + 0.5 + 0.05 * rng.standard_normal(T.size)
        for a, k in ((3.0, 1.3), (2.0, 0.8), (4.0, 2.0))
    ])  # fmt: skip
    sigma = np.full(T.shape, 0.05)
    fits = jaxlsq.fit_batch(decay, T, ys, P0, sigma=sigma, **TIGHT)
    key = jax.random.key(11)
    boot = fits.bootstrap(T, ys, n_samples=16, kind=kind, sigma=sigma, key=key, **TIGHT)
    assert np.asarray(boot.success).shape == (3, 16)
    assert np.asarray(boot.indices).shape == (3, 16, T.size)
    for i, k in enumerate(jax.random.split(key, 3)):
        one = fits[i].bootstrap(
            T, ys[i], n_samples=16, kind=kind, sigma=sigma, key=k, **TIGHT
        )
        np.testing.assert_array_equal(np.asarray(boot.indices[i]), one.indices)
        np.testing.assert_allclose(flat(boot.params)[i], flat(one.params), rtol=1e-7)
        for name in NAMES:
            np.testing.assert_allclose(
                float(boot.stderr[name][i]), float(one.stderr[name]), rtol=1e-6
            )
            for (p_b, v_b), (p_1, v_1) in zip(
                boot.intervals[name], one.intervals[name], strict=True
            ):
                assert p_b == p_1
                np.testing.assert_allclose(v_b[i], v_1, rtol=1e-7)


def test_a_batchs_sigma_broadcasts_against_its_curves():
    # One sigma per curve, (N,) as fit_batch takes it: curve i is bootstrapped with
    # its own sigma (the refits equal fits[i].bootstrap with sigma[i]); (N,) when
    # N == m could be per curve or per point: refused by name.
    rng = np.random.default_rng(3)
    ys = np.stack([Y + 0.02 * rng.standard_normal(T.size) for _ in range(2)])
    sig = np.array([0.05, 0.2])
    fits = jaxlsq.fit_batch(decay, T, ys, P0, sigma=sig, in_axes=(None, 0, None, 0))
    key = jax.random.key(5)
    boot = fits.bootstrap(T, ys, n_samples=8, sigma=sig, key=key, **TIGHT)
    for i, k in enumerate(jax.random.split(key, 2)):
        one = fits[i].bootstrap(T, ys[i], n_samples=8, sigma=sig[i], key=k, **TIGHT)
        np.testing.assert_allclose(flat(boot.params)[i], flat(one.params), rtol=1e-7)
    ys3 = np.stack([ys[0, :3], ys[1, :3], ys[0, :3]])  # N = m = 3
    square = jaxlsq.fit_batch(decay, T[:3], ys3, P0)
    with pytest.raises(ValueError, match="ambiguous"):
        square.bootstrap(T[:3], ys3, sigma=np.array([0.05, 0.2, 0.1]))
