"""`jaxlsq.fit`: the curve-fitting layer, against scipy's curve_fit / least_squares,
hand formulas and finite differences.

Every model function and data shape is a new compile, so the tests share a few
models (module-level functions) and shapes (40 points for the decay, 100 for the
tutorial sinusoid).
"""

import functools
import html.parser
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit, least_squares

from jaxlsq import FitResult, Status, fit

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
from tutorial_fits import sinusoid, tutorial_problems  # noqa: E402

TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 0.0, "maxfev": 10000}
P0 = {"a": 1.0, "k": 1.0, "c": 0.0}


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def decay_np(x, a, k, c):
    return a * np.exp(-k * x) + c


def decay_jac(x, a, k, c):  # exact Jacobian for scipy: FD limits it to ~1e-9
    e = np.exp(-k * x)
    return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)


def sinus(x, p):
    return p["a"] * jnp.sin(p["b"] * x + p["c"])


@functools.cache
def decay_data():
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 4.0, 40)
    sig = 0.02 * (1.0 + x)
    y = decay_np(x, 3.0, 1.3, 0.5) + sig * rng.standard_normal(x.size)
    return x, y, sig


def ar1_covariance(sig, rho=0.6):
    i = np.arange(sig.size)
    return np.outer(sig, sig) * rho ** np.abs(i[:, None] - i[None, :])


def flat(tree):
    return np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tree)])


# ----------------------------------------------------------------------------------
# scipy curve_fit as the oracle


@pytest.mark.parametrize("kind", ["none", "scalar", "1d", "2d"])
def test_params_and_covariance_match_curve_fit(kind):
    x, y, sig = decay_data()
    sigma = {"none": None, "scalar": 0.05, "1d": sig, "2d": ar1_covariance(sig)}[kind]
    for absolute_sigma in (False, True):
        res = fit(decay, x, y, P0, sigma=sigma, absolute_sigma=absolute_sigma)
        # (scipy's jac wrapper cannot take a scalar sigma: give it the full array)
        ref_sigma = np.full(x.shape, sigma) if kind == "scalar" else sigma
        popt, pcov = curve_fit(
            decay_np, x, y, p0=[1.0, 1.0, 0.0], sigma=ref_sigma, jac=decay_jac,
            absolute_sigma=absolute_sigma, **TIGHT,
        )  # fmt: skip
        assert bool(res.success)
        # flat order of a dict is sorted keys: a, c, k
        order = [0, 2, 1]
        np.testing.assert_allclose(flat(res.params), popt[order], rtol=1e-9)
        np.testing.assert_allclose(
            np.asarray(res.covariance), pcov[np.ix_(order, order)], rtol=1e-6
        )
        np.testing.assert_allclose(
            flat(res.stderr), np.sqrt(np.diag(pcov))[order], rtol=1e-6
        )
        d = np.sqrt(np.diag(pcov))
        np.testing.assert_allclose(
            np.asarray(res.correlation),
            (pcov / np.outer(d, d))[np.ix_(order, order)],
            rtol=1e-6,
            atol=1e-12,
        )
        assert res.names == ("a", "c", "k")
        assert (res.ndata, res.nfree, res.dof) == (40, 3, 37)
        # weighted residuals and best fit from the oracle's parameters
        model_y = decay_np(x, *popt)
        if kind == "2d":
            white = np.linalg.solve(np.linalg.cholesky(sigma), model_y - y)
        else:
            white = (model_y - y) / (1.0 if sigma is None else sigma)
        np.testing.assert_allclose(np.asarray(res.residuals), white, atol=1e-8)
        np.testing.assert_allclose(np.asarray(res.best_fit), model_y, atol=1e-9)
        np.testing.assert_allclose(float(res.chisq), np.sum(white**2), rtol=1e-9)


def test_statistics_match_hand_formulas():
    x, y, sig = decay_data()
    m, nfree = x.size, 3
    for sigma in (None, sig):
        res = fit(decay, x, y, P0, sigma=sigma)
        popt, _ = curve_fit(
            decay_np, x, y, p0=[1, 1, 0], sigma=sigma, jac=decay_jac, **TIGHT
        )
        w = 1.0 if sigma is None else 1.0 / sigma
        chisq = np.sum(((decay_np(x, *popt) - y) * w) ** 2)
        # R^2 against the best constant model under the same weights (a curve_fit of
        # a constant: the weighted mean), which is 1 - SSR/SST without weights
        (c0,), _ = curve_fit(
            lambda x, c: np.full(x.shape, c), x, y, p0=[1.0], sigma=sigma, **TIGHT
        )
        chisq0 = np.sum(((c0 - y) * w) ** 2)
        if sigma is None:
            assert np.isclose(chisq0, np.sum((y - y.mean()) ** 2), rtol=1e-12)
        np.testing.assert_allclose(float(res.chisq), chisq, rtol=1e-9)
        np.testing.assert_allclose(float(res.redchi), chisq / (m - nfree), rtol=1e-9)
        np.testing.assert_allclose(float(res.r_squared), 1 - chisq / chisq0, rtol=1e-9)
        aic = m * np.log(chisq / m) + 2 * nfree
        bic = m * np.log(chisq / m) + np.log(m) * nfree
        np.testing.assert_allclose(float(res.aic), aic, rtol=1e-9)
        np.testing.assert_allclose(float(res.bic), bic, rtol=1e-9)
        np.testing.assert_allclose(float(res.cost), chisq / 2, rtol=1e-9)


def rank_deficient(x, p):  # a and b enter only through their product
    return p["a"] * p["b"] * x + p["c"]


def test_rank_deficient_gives_inf_not_garbage():
    x, y, _ = decay_data()
    res = fit(rank_deficient, x, y, {"a": 1.0, "b": -1.0, "c": 0.0})
    assert bool(res.success)
    cov = np.asarray(res.covariance)  # order a, b, c
    assert np.all(np.isinf(cov[:2, :])) and np.all(np.isinf(cov[:, :2]))
    assert np.isinf(float(res.stderr["a"])) and np.isinf(float(res.stderr["b"]))
    # c is estimable: same fit and same (unscaled) variance as in the identifiable
    # model s*x + c; the chisq/dof scale counts nfree = 3 (as scipy and lmfit do)
    popt, pcov = curve_fit(
        lambda x, s, c: s * x + c, x, y, p0=[1.0, 0.0], absolute_sigma=True, **TIGHT
    )
    ssr = np.sum((popt[0] * x + popt[1] - y) ** 2)
    np.testing.assert_allclose(float(res.chisq), ssr, rtol=1e-10)
    np.testing.assert_allclose(cov[2, 2], pcov[1, 1] * ssr / (x.size - 3), rtol=1e-8)
    corr = np.asarray(res.correlation)
    assert np.all(np.isnan(corr[:2, :])) and corr[2, 2] == 1.0
    text = res.report()
    assert "not estimable" in text and "C(a, b)" not in text


# ----------------------------------------------------------------------------------
# bounds, fixed parameters, robust losses


def test_bounds_match_curve_fit_trf():
    x, y, _ = decay_data()
    lower, upper = {"a": 0.0, "k": 0.0, "c": -1.0}, {"a": 10.0, "k": 5.0, "c": 0.45}
    res = fit(decay, x, y, P0, bounds=(lower, upper))  # c (0.5 free) hits 0.45
    popt, pcov = curve_fit(
        decay_np, x, y, p0=[1.0, 1.0, 0.0], bounds=([0, 0, -1], [10, 5, 0.45]),
        jac=decay_jac, ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    order = [0, 2, 1]  # a, c, k
    assert bool(res.success)
    np.testing.assert_allclose(flat(res.params), popt[order], rtol=1e-8)
    assert float(res.params["c"]) == 0.45
    np.testing.assert_array_equal(np.asarray(res.active_mask), [0, 1, 0])
    # curve_fit's pcov includes the parameter on its bound (J at the solution)
    np.testing.assert_allclose(
        np.asarray(res.covariance), pcov[np.ix_(order, order)], rtol=1e-6
    )
    text = res.report()
    assert "c: 0.45 +/- " in text and "(at upper bound)" in text
    assert text.count("(at ") == 1
    # flat bounds in ravel_pytree order (a, c, k) mean the same
    again = fit(
        decay, x, y, P0, bounds=(np.array([0, -1, 0.0]), np.array([10, 0.45, 5]))
    )
    np.testing.assert_array_equal(flat(again.params), flat(res.params))


def test_fixed_parameter_equals_fit_of_reduced_model():
    x, y, sig = decay_data()
    p0 = {"a": 1.0, "k": 1.3, "c": 0.0}
    res = fit(decay, x, y, p0, sigma=sig, fixed={"a": False, "k": True, "c": False})
    popt, pcov = curve_fit(
        lambda x, a, c: decay_np(x, a, 1.3, c), x, y, p0=[1.0, 0.0], sigma=sig, **TIGHT
    )
    assert bool(res.success)
    assert float(res.params["k"]) == 1.3 and float(res.stderr["k"]) == 0.0
    assert (res.nfree, res.dof, res.fixed) == (2, 38, (False, False, True))
    np.testing.assert_allclose(flat(res.params)[:2], popt, rtol=1e-9)
    cov = np.asarray(res.covariance)
    np.testing.assert_allclose(cov[:2, :2], pcov, rtol=1e-6)
    assert np.all(cov[2, :] == 0) and np.all(cov[:, 2] == 0)
    corr = np.asarray(res.correlation)
    assert np.all(corr[2, :] == 0) and np.all(corr[:, 2] == 0)
    chisq = np.sum(((decay_np(x, popt[0], 1.3, popt[1]) - y) / sig) ** 2)
    np.testing.assert_allclose(float(res.aic), 40 * np.log(chisq / 40) + 4, rtol=1e-9)
    assert "k: 1.3 (fixed)" in res.report()


def _cubic_soft_l1(xp):
    """A callable loss (scipy's convention: rows rho, rho', rho'' of z)."""

    def cubic(z):
        t = 1 + z
        return xp.stack([3 * (t ** (1 / 3) - 1), t ** (-2 / 3), -2 / 3 * t ** (-5 / 3)])

    return cubic


@pytest.mark.parametrize("name", ["soft_l1", "callable"])
def test_robust_loss_matches_least_squares_and_curve_fit(name):
    x, y, _ = decay_data()
    y = y.copy()
    y[::7] += 0.5  # outliers
    loss, ref_loss = (name, name) if name != "callable" else (
        _cubic_soft_l1(jnp), _cubic_soft_l1(np)
    )  # fmt: skip
    res = fit(decay, x, y, P0, loss=loss, f_scale=0.05)
    ref = least_squares(
        lambda p: decay_np(x, *p) - y, [1.0, 1.0, 0.0], jac=lambda p: decay_jac(x, *p),
        loss=ref_loss, f_scale=0.05, ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    order = [0, 2, 1]
    assert bool(res.success)
    np.testing.assert_allclose(flat(res.params), ref.x[order], rtol=1e-8)
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-10)
    np.testing.assert_allclose(float(res.chisq), np.sum(ref.fun**2), rtol=1e-8)
    # covariance: curve_fit's trf rule (loss-rescaled J, scaled by 2 cost / dof)
    _, pcov = curve_fit(
        decay_np, x, y, p0=[1.0, 1.0, 0.0], method="trf", loss=ref_loss,
        f_scale=0.05, jac=decay_jac, ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(res.covariance), pcov[np.ix_(order, order)], rtol=1e-6
    )
    shown = "soft_l1" if name == "soft_l1" else "cubic"
    assert f"{shown} (robust cost = " in res.report()


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_loss_rescaled_jacobian_matches_scipy(loss):
    # scipy's own helpers (private, test-only): the J that curve_fit(method="trf")
    # turns into pcov for a robust loss
    from scipy.optimize._lsq.common import scale_for_robust_loss_function
    from scipy.optimize._lsq.least_squares import construct_loss_function

    from jaxlsq._testing import loss_scaled_jacobian, robust_cost

    rng = np.random.default_rng(3)
    f = rng.standard_normal(50) * np.r_[np.full(45, 0.1), np.full(5, 3.0)]
    jac = rng.standard_normal((50, 3))
    rho = construct_loss_function(50, loss, 0.7)(f)
    ref, _ = scale_for_robust_loss_function(jac.copy(), f.copy(), rho)
    # one implementation, two array namespaces: in programs and on the host
    ours = loss_scaled_jacobian(jnp.asarray(jac), jnp.asarray(f), loss, 0.7)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-12)
    host = loss_scaled_jacobian(jac, f, loss, 0.7, xp=np)
    assert isinstance(host, np.ndarray)
    np.testing.assert_allclose(host, ref, rtol=1e-12)
    cost = robust_cost(f, loss, 0.7, xp=np)
    assert cost == pytest.approx(0.5 * np.sum(rho[0]), rel=1e-13)


def test_covariance_rules_against_numpy():
    from jaxlsq._testing import covariance

    rng = np.random.default_rng(4)
    jac = rng.standard_normal((20, 4))
    none = np.zeros(4, bool)
    inv = np.linalg.inv(jac.T @ jac)
    cov, corr = covariance(jnp.asarray(jac), 3.0, none, absolute_sigma=False)
    np.testing.assert_allclose(np.asarray(cov), inv * 3.0 / 16, rtol=1e-10)
    d = np.sqrt(np.diag(inv))
    np.testing.assert_allclose(np.asarray(corr), inv / np.outer(d, d), rtol=1e-10)
    cov, _ = covariance(jnp.asarray(jac), 3.0, none, absolute_sigma=True)
    np.testing.assert_allclose(np.asarray(cov), inv, rtol=1e-10)
    # dof <= 0: inf unless absolute_sigma (scipy's rule)
    square = jac[:4]
    cov, _ = covariance(jnp.asarray(square), 3.0, none, absolute_sigma=False)
    assert np.all(np.isinf(np.asarray(cov)))
    cov, _ = covariance(jnp.asarray(square), 3.0, none, absolute_sigma=True)
    np.testing.assert_allclose(
        np.asarray(cov), np.linalg.inv(square.T @ square), rtol=1e-8
    )
    # a column that is the sum of two others: those three are not estimable, the
    # last one is, with the variance of the identifiable model
    dep = jac.copy()
    dep[:, 2] = dep[:, 0] + dep[:, 1]
    cov, corr = covariance(jnp.asarray(dep), 3.0, none, absolute_sigma=True)
    cov = np.asarray(cov)
    assert np.all(np.isinf(cov[:3])) and np.all(np.isinf(cov[:, :3]))
    reduced = np.linalg.inv(dep[:, [0, 1, 3]].T @ dep[:, [0, 1, 3]])
    np.testing.assert_allclose(cov[3, 3], reduced[2, 2], rtol=1e-8)
    assert np.all(np.isnan(np.asarray(corr)[:3])) and float(corr[3, 3]) == 1.0
    # a fixed parameter: excluded, zero rows/columns
    fixed = np.array([False, True, False, False])
    cov, corr = covariance(jnp.asarray(jac), 3.0, fixed, absolute_sigma=False)
    free = jac[:, ~fixed]
    expected = np.linalg.inv(free.T @ free) * 3.0 / 17
    np.testing.assert_allclose(np.asarray(cov)[np.ix_(~fixed, ~fixed)], expected)
    assert np.all(np.asarray(cov)[1] == 0) and np.all(np.asarray(corr)[:, 1] == 0)
    # a non-finite Jacobian (a failed fit): inf, never garbage
    bad = jac.copy()
    bad[3, 1] = np.nan
    cov, _ = covariance(jnp.asarray(bad), 3.0, none, absolute_sigma=False)
    assert np.all(np.isinf(np.asarray(cov)))


def test_covariance_derivative_matches_finite_differences():
    # (J^T J)^+ along a path J + t dJ of constant rank: full rank, repeated singular
    # values (where differentiating through an SVD gives NaN), and rank-deficient
    from jaxlsq._testing import gram_pinv

    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((20, 3)))
    full = rng.standard_normal((20, 3))
    dep = full.copy()
    dep[:, 2] = dep[:, 0] - 2 * dep[:, 1]
    skew = rng.standard_normal((3, 3))
    skew -= skew.T
    for jac in (full, 2.0 * q, dep):
        step = rng.standard_normal((20, 3))
        if jac is dep:
            # J(t) = (dep + t D)(I + t K): rank 2 for every t, and the K factor
            # rotates the null space (which the projector terms of dC account for)
            step[:, 2] = step[:, 0] - 2 * step[:, 1]

            def path(t, step=step):
                return (dep + t * step) @ (np.eye(3) + t * skew)

            djac = step + dep @ skew
        else:

            def path(t, jac=jac, step=step):
                return jac + t * step

            djac = step
        _, (dcov, _) = jax.jvp(gram_pinv, (jnp.asarray(jac),), (jnp.asarray(djac),))
        h = 1e-6
        plus = np.asarray(gram_pinv(jnp.asarray(path(h)))[0])
        minus = np.asarray(gram_pinv(jnp.asarray(path(-h)))[0])
        fd = (plus - minus) / (2 * h)
        assert np.all(np.isfinite(np.asarray(dcov)))
        np.testing.assert_allclose(np.asarray(dcov), fd, atol=1e-7 * np.abs(fd).max())


# ----------------------------------------------------------------------------------
# report and HTML


def test_report_contents_and_html():
    x, y, _ = decay_data()
    res = fit(decay, x, y, P0)
    text = res.report(correl_threshold=0.1)
    assert str(res) == text
    for header in ("[[Fit Statistics]]", "[[Variables]]", "[[Correlations]]"):
        assert header in text
    assert f"# data points      = {x.size}" in text
    assert f"chi-square         = {float(res.chisq):.7g}" in text
    status = Status(int(res.status))
    assert f"status             = {status.value} ({status.name}, success)" in text
    assert res.message in text
    for name in res.names:
        v, e = float(res.params[name]), float(res.stderr[name])
        assert f"{name}: {v:.7g} +/- {e:.7g} ({abs(e / v) * 100:.2f}%)" in text
    corr = np.asarray(res.correlation)
    names = res.names
    for i in range(3):
        for j in range(i + 1, 3):
            label = f"C({names[i]}, {names[j]}) = {corr[i, j]:+.4f}"
            assert (label in text) == (abs(corr[i, j]) > 0.1)
    # a higher threshold drops correlations
    assert "[[Correlations]]" not in res.report(correl_threshold=1.0)
    # a failed fit says so (solve options pass through: max_nfev)
    failed = fit(decay, x, y, P0, max_nfev=3)
    assert int(failed.status) == Status.MAX_NFEV and not bool(failed.success)
    text = failed.report()
    assert "status             = 5 (MAX_NFEV, failure)" in text
    assert Status.MAX_NFEV.message in text

    page = res._repr_html_()

    class Parser(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)

    parser = Parser()
    parser.feed(page)
    assert parser.tags.count("table") == 3 and "th" in parser.tags
    assert all(name in parser.text for name in res.names)
    assert f"{float(res.params['k']):.7g}" in parser.text


def test_param_names_from_pytree_paths():
    from jaxlsq._testing import param_names

    assert param_names({"w": jnp.zeros(2), "b": 0.0}) == ("b", "w[0]", "w[1]")
    assert param_names(jnp.zeros(3)) == ("p[0]", "p[1]", "p[2]")
    assert param_names([1.0, jnp.zeros((1, 2))]) == ("p[0]", "p[1][0,0]", "p[1][0,1]")
    assert param_names({"g": {"mu": 0.0}}) == ("g.mu",)


# ----------------------------------------------------------------------------------
# multi-start


def test_multistart_sinusoid_finds_the_global_minimum():
    _, model, x, y, start = tutorial_problems()[2]
    assert model.__name__ == sinusoid.__name__  # (another test reloads the module)
    ref, _, info, *_ = curve_fit(sinusoid, x, y, p0=start, full_output=True)
    ref_ssr = np.sum(info["fvec"] ** 2)
    assert ref_ssr > 100  # MINPACK from [1, 1, 0] stops in a local minimum

    p0 = dict(zip("abc", map(float, start), strict=True))

    b, c = np.meshgrid(np.linspace(0.5, 3.0, 6), np.linspace(0.0, 2 * np.pi, 6))
    starts = np.stack([np.ones(b.size), b.ravel(), c.ravel()], axis=1)
    res = fit(sinus, x, y, p0, starts=starts)
    # oracle: the best of scipy's fits from the same 36 starts
    ssr = []
    for s in starts:
        try:
            p, _, info, _, ier = curve_fit(sinusoid, x, y, p0=s, full_output=True)
            ssr.append(np.sum(info["fvec"] ** 2))
        except RuntimeError:
            pass
    assert bool(res.success) and res.n_starts == 36
    assert 1 <= int(res.n_success) <= 36
    np.testing.assert_allclose(float(res.chisq), min(ssr), rtol=1e-6)
    assert float(res.chisq) < 4.0 < ref_ssr
    assert "starts             = " in res.report()
    # the same starts as a pytree with a leading K axis
    tree_starts = {k: starts[:, i] for i, k in enumerate("abc")}
    again = fit(sinus, x, y, p0, starts=tree_starts)
    np.testing.assert_array_equal(flat(again.params), flat(res.params))


# ----------------------------------------------------------------------------------
# jit, vmap, grad


def test_vmap_over_y_equals_per_curve_fits_and_batch_summary():
    x, _, _ = decay_data()
    rng = np.random.default_rng(1)
    truth = np.stack(
        [rng.uniform(1, 4, 6), rng.uniform(0.5, 2, 6), rng.uniform(0, 1, 6)]
    )
    ys = decay_np(x[None, :], *truth[:, :, None]) + 0.01 * rng.standard_normal((6, 40))
    ys[4, 7] = np.nan  # under vmap nothing raises: the lane reports it

    batched = jax.jit(jax.vmap(lambda y: fit(decay, x, y, P0)))(jnp.asarray(ys))
    assert isinstance(batched, FitResult) and batched.batch_shape == (6,)
    # Lanes agree with solo fits to the solver's accuracy, not bit for bit: solve
    # computes batched damped steps with a different SVD than a single fit's.
    for i in (0, 1, 2, 3, 5):
        solo = fit(decay, x, ys[i], P0)
        assert bool(solo.success) and bool(batched.success[i])
        for field in ("chisq", "covariance", "redchi", "r_squared", "best_fit"):
            np.testing.assert_allclose(
                np.asarray(getattr(batched, field))[i],
                np.asarray(getattr(solo, field)),
                rtol=1e-7,
            )
        np.testing.assert_allclose(
            flat(jax.tree_util.tree_map(lambda v, i=i: v[i], batched.params)),
            flat(solo.params),
            rtol=1e-7,
        )
    status = np.asarray(batched.status)
    success = np.asarray(batched.success)
    assert not success[4] and success[[0, 1, 2, 3, 5]].all()
    with pytest.raises(ValueError, match="y must be finite"):
        fit(decay, x, ys[4], P0)

    text = batched.report()
    assert "[[Batch Summary]]" in text
    assert f"# succeeded        = {success.sum()}" in text
    for code in np.unique(status):
        name = Status(int(code)).name
        assert f"{int(code):>2d} {name:<15s}: {np.sum(status == code):>8d}" in text
    k = np.asarray(batched.params["k"])[success]
    row = next(line for line in text.splitlines() if line.strip().startswith("k "))
    stats = [float(v) for v in row.split()[1:6]]
    np.testing.assert_allclose(
        stats, [k.mean(), k.std(), k.min(), np.median(k), k.max()], rtol=1e-5
    )
    assert "<table>" in batched._repr_html_()

    # indexing a batch gives the lane's own FitResult (and its single-fit report)
    lane = batched[2]
    assert lane.batch_shape == () and lane.names == batched.names
    np.testing.assert_array_equal(
        flat(lane.params), [np.asarray(batched.params[k])[2] for k in ("a", "c", "k")]
    )
    assert "[[Variables]]" in lane.report()
    assert batched[1:3].batch_shape == (2,)
    with pytest.raises(IndexError, match="cannot be indexed"):
        lane[0]


def test_chunked_batch_of_fits_with_lax_map_equals_vmap():
    # the documented way to fit a big batch in chunks: lax.map(..., batch_size=)
    x, _, _ = decay_data()
    rng = np.random.default_rng(7)
    ys = jnp.asarray(
        decay_np(x[None, :], 2.0, 1.2, 0.3) + 0.01 * rng.standard_normal((5, 40))
    )

    def fit_one(y):
        return fit(decay, x, y, P0)

    chunked = jax.jit(lambda ys: jax.lax.map(fit_one, ys, batch_size=2))(ys)
    vmapped = jax.jit(jax.vmap(fit_one))(ys)
    assert chunked.batch_shape == (5,)
    np.testing.assert_array_equal(chunked.status, vmapped.status)
    for field in ("chisq", "covariance"):
        np.testing.assert_allclose(
            getattr(chunked, field), getattr(vmapped, field), rtol=1e-7
        )


def test_percent_never_rounds_a_partial_count_to_100():
    from jaxlsq._testing import percent

    assert percent(np.r_[np.ones(4999, bool), False]) == ">99.9%"
    assert percent(np.r_[np.zeros(4999, bool), True]) == "<0.1%"
    assert percent(np.ones(10, bool)) == "100.0%"
    assert percent(np.r_[np.ones(3, bool), False]) == "75.0%"


def test_grad_of_params_and_stderr_matches_finite_differences():
    x, y, sig = decay_data()

    def summary(y):
        res = fit(decay, x, y, P0, sigma=sig)
        return jnp.stack([res.params["k"] + 0.3 * res.params["a"], res.stderr["k"]])

    jac = np.asarray(jax.jacrev(summary)(jnp.asarray(y)))  # (2, 40)
    rng = np.random.default_rng(2)
    for _ in range(3):
        d = rng.standard_normal(y.size)

        def central(h, d=d):
            return (np.asarray(summary(y + h * d)) - np.asarray(summary(y - h * d))) / (
                2 * h
            )

        # Richardson-extrapolated central differences of re-fits (error O(h^4));
        # each re-fit is only determined to ~1e-10, hence h = 1e-3.
        fd = (4 * central(1e-3) - central(2e-3)) / 3
        scale = np.linalg.norm(jac, axis=1) * np.linalg.norm(d)
        np.testing.assert_array_less(np.abs(jac @ d - fd), 1e-5 * scale)


def test_float32_in_float32_out():
    x, y, sig = decay_data()
    p32 = {k: np.float32(v) for k, v in P0.items()}
    res = fit(decay, x.astype(np.float32), y.astype(np.float32), p32, sigma=sig)
    ref = fit(decay, x, y, P0, sigma=sig)
    leaves = jax.tree_util.tree_leaves((res.params, res.stderr))
    leaves += [res.covariance, res.chisq, res.aic, res.residuals, res.best_fit]
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert bool(res.success)
    np.testing.assert_allclose(flat(res.params), flat(ref.params), rtol=1e-4)
    np.testing.assert_allclose(flat(res.stderr), flat(ref.stderr), rtol=1e-3)


# ----------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": np.ones(39)}, "sigma must be a scalar, an array of y's shape"),
        ({"sigma": np.r_[np.nan, np.ones(39)]}, "sigma must be finite"),
        ({"sigma": np.r_[0.0, np.ones(39)]}, "sigma must be > 0"),
        ({"sigma": -np.eye(40)}, "positive definite"),
        ({"y": np.ones(39)}, r"model\(x, p0\) returns shape \(40,\) but y has"),
        ({"y": np.r_[np.inf, np.ones(39)]}, "y must be finite"),
        ({"loss": "l1"}, "loss must be one of"),
        ({"f_scale": 0.0}, "f_scale must be > 0"),
        ({"starts": np.ones((4, 2))}, r"starts must be an array of shape \(K, 3\)"),
        ({"starts": np.full((2, 3), np.nan)}, "starts must be finite"),
        ({"bounds": (0.0, 0.0)}, "lower < upper"),
        ({"bounds": (2.0, 5.0)}, "p0 is infeasible: outside bounds"),
        ({"bounds": (0.0,)}, r"bounds must be a pair"),
        ({"bounds": (np.zeros(2), 5.0)}, r"bounds\[0\] \(lower\) must be"),
    ],
)
def test_bad_inputs_raise_with_a_named_problem(kwargs, match):
    x, y, _ = decay_data()
    kwargs = dict(kwargs)
    y = kwargs.pop("y", y)
    with pytest.raises(ValueError, match=match):
        fit(decay, x, y, P0, **kwargs)


def test_bad_types():
    x, y, _ = decay_data()
    with pytest.raises(TypeError, match="model must be callable"):
        fit(None, x, y, P0)
    with pytest.raises(TypeError, match="callable jac"):
        fit(decay, x, y, P0, jac=lambda *a: 0)
    with pytest.raises(TypeError, match="fixed must be concrete"):
        jax.jit(lambda f: fit(decay, x, y, P0, fixed={"a": f, "k": False, "c": False}))(
            True
        )


def test_data_given_as_lists_host_arrays_or_lists_of_tracers_fit_alike():
    # fit checks host data with numpy; a list that holds tracers (y built element by
    # element inside the user's jit) takes jax.numpy. All three give one fit.
    x, y, _ = decay_data()
    p0 = {"a": 1.0, "k": 1.0, "c": 0.0}
    host = fit(decay, x, y, p0)
    as_list = fit(decay, x, [float(v) for v in y], p0)

    @jax.jit
    def traced(y0, rest):
        return fit(decay, x, [y0, *[rest[i] for i in range(rest.shape[0])]], p0)

    inside = traced(jnp.asarray(y[0]), jnp.asarray(y[1:]))
    for other in (as_list, inside):
        np.testing.assert_array_equal(int(other.nfev), int(host.nfev))
        np.testing.assert_allclose(flat(other.params), flat(host.params), rtol=1e-12)
        np.testing.assert_allclose(other.covariance, host.covariance, rtol=1e-9)


def test_the_one_program_fit_equals_solve_then_statistics():
    """An eager fit runs the loop and the statistics as one compiled program; a fit
    with a monitor runs them as two (`solve`, then `fit_result`), and a fit inside
    the user's jit as part of the user's program: the same fit each way. Tolerances:
    the three programs may fuse differently, so the parameters agree to the fit's
    own precision (xtol 1e-10 relative) and the covariance to that times the
    problem's condition (~1e2 here)."""
    x, y, sig = decay_data()
    seen = []

    def monitor(state):
        seen.append(float(state.cost))

    one = fit(decay, x, y, P0, sigma=sig, xtol=1e-10, ftol=1e-10)
    two = fit(decay, x, y, P0, sigma=sig, xtol=1e-10, ftol=1e-10, monitor=monitor)
    inside = jax.jit(lambda y: fit(decay, x, y, P0, sigma=sig, xtol=1e-10, ftol=1e-10))(
        y
    )
    assert seen, "the monitor path ran"
    for other in (two, inside):
        assert int(other.status) == int(one.status)
        assert int(other.nfev) == int(one.nfev)
        np.testing.assert_allclose(flat(other.params), flat(one.params), rtol=1e-10)
        np.testing.assert_allclose(other.covariance, one.covariance, rtol=1e-8)
        np.testing.assert_allclose(float(other.chisq), float(one.chisq), rtol=1e-10)
        assert other.names == one.names and other.dof == one.dof


def test_fixing_another_parameter_recompiles_the_statistics_not_the_loop():
    """With parameters fixed, `fit` keeps the loop (the mask is traced in it) and the
    statistics (compiled per fixed set: ``dof`` is static) as two programs, so a
    notebook that fixes another parameter compiles the statistics alone."""
    from jaxlsq._testing import count_compiles
    from jaxlsq.core.solve import solve_prepared
    from jaxlsq.fitting.statistics import fit_result

    def model(x, p):  # this test's own function: no program compiled before it
        return decay(x, p)

    x, y, sig = decay_data()
    first = fit(model, x, y, P0, sigma=sig, fixed={"a": False, "k": False, "c": True})
    loop, stats = solve_prepared._jitted(), fit_result._jitted()
    programs = loop._cache_size(), stats._cache_size()
    with count_compiles() as compiles:
        other = fit(
            model, x, y, P0, sigma=sig, fixed={"a": True, "k": False, "c": False}
        )
    assert compiles[0] == 1
    assert (loop._cache_size(), stats._cache_size()) == (programs[0], programs[1] + 1)
    assert float(other.params["a"]) == P0["a"] and float(first.params["c"]) == P0["c"]
    assert float(other.stderr["a"]) == 0 and float(other.stderr["k"]) > 0
