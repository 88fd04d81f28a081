"""The chunked Jacobian strategy (`solve(..., chunk_points=K)`): J in blocks of
points reduced by TSQR, never the dense (m, n) matrix inside the loop.

Oracles: the dense strategy on the same problem, scipy's ``curve_fit`` (MINPACK)
on the same data, NIST certified values, and the analytic Jacobian. Two
minimisers that each stop by the ftol test are apart by at most about
``sqrt(ftol * m)`` standard errors (a cost within ``ftol * cost`` of the minimum
is a point within ``sqrt(2 ftol cost)`` of it in ``||J dx||``): the tolerances
below are ten times that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxlsq

from . import nist

P_TRUE = np.array([3.0, 5.0, 0.8, 1.0, 0.1])
P0 = np.array([2.0, 4.5, 1.0, 0.5, 0.0])


def peak(x, p):
    """Gaussian peak on a sloped background, 5 parameters."""
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3] + p[4] * x


def residuals(p, x, y):
    return peak(x, p) - y


def data(n_points, dtype=np.float64, seed=0):
    x = np.linspace(0.0, 10.0, n_points)
    y = np.asarray(peak(x, P_TRUE)) + 0.1 * np.random.default_rng(seed).normal(
        size=n_points
    )
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def stderr(sol, m):
    """Standard errors of a least-squares solution (its J at the solution)."""
    jac = np.asarray(sol.jac, np.float64)
    cov = np.linalg.inv(jac.T @ jac) * 2 * float(sol.cost) / (m - jac.shape[1])
    return np.sqrt(np.diag(cov))


def close_tol(sol, m, dtype):
    """Ten times ``sqrt(ftol * m)`` standard errors (module doc), ftol the default
    ``10 eps``."""
    return 10 * np.sqrt(10 * np.finfo(dtype).eps * m) * stderr(sol, m)


# m = 10007: ten whole blocks of 1000 points and a tail of 7.
M, CHUNK = 10007, 1000


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_equals_dense_and_scipy(dtype):
    x, y = data(M, dtype)
    p0 = jnp.asarray(P0, dtype)
    dense = jaxlsq.solve(residuals, p0, (x, y))
    chunked = jaxlsq.solve(residuals, p0, (x, y), chunk_points=CHUNK)
    assert bool(dense.success) and bool(chunked.success), chunked.message
    assert chunked.params.dtype == dtype and chunked.jac.shape == (M, 5)
    tol = close_tol(dense, M, dtype)
    np.testing.assert_array_less(np.abs(chunked.params - dense.params), tol)
    ref, _ = scipy.optimize.curve_fit(
        lambda x, *p: np.asarray(peak(x, np.array(p))),
        np.asarray(x, np.float64),
        np.asarray(y, np.float64),
        p0=P0,
    )
    np.testing.assert_array_less(np.abs(chunked.params - ref), tol)
    # The dense J at the solution, block by block, against jacfwd of the whole.
    exact = jax.jacfwd(residuals)(chunked.params, x, y)
    rtol = 100 * np.finfo(dtype).eps
    np.testing.assert_allclose(chunked.jac, exact, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(
        chunked.grad, exact.T @ chunked.residuals, rtol=rtol, atol=rtol * M
    )


def test_chunked_two_residuals_per_point_bounds_and_robust_loss():
    """Residuals (P, 2) (two channels per point), an active bound and soft_l1:
    the chunked fit equals the dense one, and stops on the same bound."""
    x, y = data(3001, seed=1)
    y2 = 0.5 * y + 0.01

    def two(p, x, y, y2):
        model = peak(x, p)
        return jnp.stack([model - y, 0.5 * model + 0.01 - y2], axis=1)

    opts = dict(bounds=([0.0, 0.0, 0.0, 0.0, 0.12], np.inf), loss="soft_l1")
    p0 = jnp.asarray(P0 + [0, 0, 0, 0, 0.2])
    dense = jaxlsq.solve(two, p0, (x, y, y2), **opts)
    chunked = jaxlsq.solve(two, p0, (x, y, y2), chunk_points=400, **opts)
    assert bool(dense.success) and bool(chunked.success)
    np.testing.assert_array_equal(chunked.active_mask, [0, 0, 0, 0, -1])
    np.testing.assert_array_equal(chunked.active_mask, dense.active_mask)
    tol = close_tol(dense, 2 * 3001, np.float64)
    np.testing.assert_array_less(np.abs(chunked.params - dense.params), tol)
    np.testing.assert_allclose(chunked.cost, dense.cost, rtol=1e-12)


# Every NIST problem, each in blocks of 5 points (so with a tail wherever 5 does
# not divide m): the certified values from both starts, as the dense path.
@pytest.mark.parametrize("name", nist.NAMES)
def test_chunked_nist_certified_values(name):
    problem = nist.load(name)
    for start in (1, 2):
        sol = jaxlsq.solve(
            problem.residuals,
            jnp.asarray(problem.starts[start - 1]),
            args=(jnp.asarray(problem.x), jnp.asarray(problem.y)),
            chunk_points=5,
        )
        lre = nist.min_lre(sol.params, problem.certified)
        assert bool(sol.success), f"{name} start {start}: {sol.message}"
        assert lre >= 6, f"{name} start {start}: min LRE {lre:.2f} < 6"


def test_chunked_implicit_derivatives_jit_and_vmap():
    x, y = data(2003, seed=2)

    def params(y, chunk):
        return jaxlsq.solve(residuals, jnp.asarray(P0), (x, y), chunk_points=chunk)

    # d(sum of parameters)/dy by the implicit rule: the same either way.
    grad_dense = jax.grad(lambda y: jnp.sum(params(y, None).params))(y)
    grad_chunked = jax.grad(lambda y: jnp.sum(params(y, 500).params))(y)
    np.testing.assert_allclose(grad_chunked, grad_dense, rtol=1e-7, atol=1e-10)

    # Under jit (traced data: no eager check) and vmap (three data sets).
    ys = jnp.stack([y, data(2003, seed=3)[1], data(2003, seed=4)[1]])
    batched = jax.jit(jax.vmap(lambda y: params(y, 500)))(ys)
    for i in range(3):
        one = params(ys[i], 500)
        assert int(batched.status[i]) == int(one.status)
        np.testing.assert_allclose(batched.params[i], one.params, rtol=1e-10)


def test_fit_with_chunk_points_equals_dense_fit():
    x, y = data(5000, seed=5)
    dense = jaxlsq.fit(peak, x, y, jnp.asarray(P0), sigma=0.1)
    chunked = jaxlsq.fit(peak, x, y, jnp.asarray(P0), sigma=0.1, chunk_points=999)
    assert bool(chunked.success)
    tol = 10 * np.sqrt(10 * np.finfo(np.float64).eps * 5000) * np.asarray(dense.stderr)
    np.testing.assert_array_less(np.abs(chunked.params - dense.params), tol)
    np.testing.assert_allclose(chunked.stderr, dense.stderr, rtol=1e-6)


def test_chunked_input_errors_name_the_problem():
    x, y = data(300)
    p0 = jnp.asarray(P0)

    def normalised(p, x, y):  # divides by the data's own maximum: not pointwise
        return peak(x / jnp.max(x) * 10.0, p) - y

    with pytest.raises(ValueError, match="not pointwise"):
        jaxlsq.solve(normalised, p0, (x, y), chunk_points=100)

    def indexed(p, x, y):  # reads each point's index
        return peak(x, p) + 1e-3 * jnp.arange(x.shape[0]) - y

    with pytest.raises(ValueError, match="not pointwise"):
        jaxlsq.solve(indexed, p0, (x, y), chunk_points=100)
    with pytest.raises(ValueError, match="callable jac"):
        jaxlsq.solve(residuals, p0, (x, y), chunk_points=100, jac=jax.jacfwd(residuals))
    with pytest.raises(ValueError, match="per-point data"):
        jaxlsq.solve(lambda p: p - jnp.arange(5.0), p0, (), chunk_points=2)
    with pytest.raises(ValueError, match="more than the 300 data points"):
        jaxlsq.solve(residuals, p0, (x, y), chunk_points=301)
    with pytest.raises(
        ValueError, match="chunk_points must be 'auto', a positive int or None"
    ):
        jaxlsq.solve(residuals, p0, (x, y), chunk_points=0)
    with pytest.raises(
        TypeError, match="chunk_points must be 'auto', a positive int or None"
    ):
        jaxlsq.solve(residuals, p0, (x, y), chunk_points=2.5)


def test_auto_chunks_large_pointwise_problems_only():
    """``chunk_points="auto"`` (the default) runs the chunked program (the same
    bits as blocks of 4096 given explicitly) for 10,007 pointwise points, and the
    dense one for a model that is not pointwise and under jit (traced values)."""
    x, y = data(M, seed=6)
    p0 = jnp.asarray(P0)

    def bits(sol):
        return np.asarray(sol.params).tobytes(), int(sol.nfev)

    auto = jaxlsq.solve(residuals, p0, (x, y))
    assert bits(auto) == bits(jaxlsq.solve(residuals, p0, (x, y), chunk_points=4096))

    def normalised(p, x, y):
        return peak(x / jnp.max(x) * 10.0, p) - y

    dense = jaxlsq.solve(normalised, p0, (x, y), chunk_points=None)
    assert bits(jaxlsq.solve(normalised, p0, (x, y))) == bits(dense)
    assert bool(dense.success)
    jitted = jax.jit(lambda y: jaxlsq.solve(residuals, p0, (x, y)))(y)
    traced_dense = jax.jit(
        lambda y: jaxlsq.solve(residuals, p0, (x, y), chunk_points=None)
    )(y)
    assert bits(jitted) == bits(traced_dense)


def test_curve_fit_shim_on_many_points_matches_scipy():
    """The scipy shim decides "auto" before its own jit (20,000 points: fitted in
    blocks); popt and pcov agree with scipy's (MINPACK, forward differences:
    pcov to the differences' accuracy, ~1e-6 relative)."""
    x, y = data(20_000, seed=7)
    x, y = np.asarray(x), np.asarray(y)

    def model(x, a, mu, s, b0, b1):
        return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    popt, pcov = jaxlsq.curve_fit(model, x, y, p0=P0)
    ref, ref_cov = scipy.optimize.curve_fit(
        lambda x, *p: np.asarray(model(x, *p)), x, y, p0=P0
    )
    err = np.sqrt(np.diag(ref_cov))
    np.testing.assert_array_less(np.abs(popt - ref), 1e-3 * err)
    # entries relative to their scale sqrt(C_ii C_jj) (some are ~1e-7 of it)
    np.testing.assert_array_less(np.abs(pcov - ref_cov), 1e-4 * np.outer(err, err))


@pytest.mark.parametrize("kappa", [1e2, 1e9])
def test_chunked_r_keeps_the_singular_values(kappa):
    """The strategy's R has J's singular values to QR's accuracy, ``eps * s_max``
    absolute (times a small factor): the Cholesky factor of J^T J where that is
    well conditioned (kappa 1e2), TSQR where it is not (kappa 1e9: a Cholesky
    factor would lose the smallest singular value to ``eps * kappa^2``, 1e2)."""
    from jaxlsq.core.chunked import ChunkedJacobian, split_points

    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.normal(size=(5003, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s = np.geomspace(1.0, 1.0 / kappa, 4)
    a = jnp.asarray((u * s) @ v.T)  # J of the linear residuals a @ p - b
    b = jnp.asarray(rng.normal(size=5003))
    blocks, tail, rebuild = split_points((a, b), 5003, 1000)

    def block_fun(p, block):
        a_, b_ = rebuild(block)
        return a_ @ p - b_

    strategy = ChunkedJacobian(block_fun, blocks, tail)
    p = jnp.zeros(4)
    lin, carry = strategy(p, a @ p - b)
    assert carry is None and lin.jac_t is None
    got = np.linalg.svd(np.asarray(lin.r), compute_uv=False)
    np.testing.assert_allclose(got, s, rtol=0, atol=100 * np.finfo(float).eps)
    np.testing.assert_allclose(lin.jtf, a.T @ (a @ p - b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(strategy.jacobian(p), a, rtol=0, atol=0)


def two_variable_model(x, a, b, c):
    """scipy's several-independent-variables convention: x is (2, M)."""
    xp = jnp if isinstance(x, jax.Array) else np
    return a * xp.exp(-b * x[0]) + c * x[1]


def two_variable_jac(x, a, b, c):
    e = np.exp(-b * x[0])
    return np.stack([e, -a * x[0] * e, x[1]], axis=1)


@pytest.mark.filterwarnings("ignore::jaxlsq.HostFallbackWarning")  # the numpy jac
@pytest.mark.parametrize(
    "method, jac", [("lm", None), ("trf", None), ("trf", two_variable_jac)]
)
def test_curve_fit_with_points_last_xdata_runs_chunked_and_matches_scipy(method, jac):
    """xdata (k, M) -- points last, as scipy takes several variables -- is held
    points first, so a large fit takes the chunked Jacobian (it used to fall back
    to the dense one: no array led with the points), while the model still sees
    (k, M). Oracle: scipy's curve_fit; tolerances as the module's (ftol stops)."""
    from jaxlsq.core.chunked import AUTO_CHUNK, auto_chunk_points
    from jaxlsq.fitting.weights import Residuals

    m = 3 * AUTO_CHUNK + 5
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 2.0, (2, m))
    y = two_variable_model(x, 1.5, 0.7, 0.3) + 0.01 * rng.normal(size=m)
    p0 = np.ones(3)
    held = Residuals(two_variable_model, None, unpack=True, points_last=True)
    args = (jnp.asarray(np.moveaxis(x, -1, 0)), jnp.asarray(y), None)
    assert auto_chunk_points(held, jnp.asarray(p0), args, m) == AUTO_CHUNK

    ours, ours_cov = jaxlsq.scipy.curve_fit(
        two_variable_model, x, y, p0=p0, method=method, jac=jac
    )
    ref, ref_cov = scipy.optimize.curve_fit(
        two_variable_model, x, y, p0=p0, method=method, jac=jac
    )
    se = np.sqrt(np.diag(ref_cov))
    assert np.all(np.abs(ours - ref) <= 10 * np.sqrt(1.49e-8 * m) * se)
    # scipy's lm covariance comes from MINPACK's forward-difference fjac (~1e-6)
    np.testing.assert_allclose(ours_cov, ref_cov, rtol=1e-5)


def peak_curve_fit(x, a, mu, s, b0, b1):
    """`peak` in curve_fit's convention, numpy or JAX by the input."""
    xp = jnp if isinstance(x, jax.Array) else np
    return a * xp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x


def record_jacobians(monkeypatch, module) -> list:
    """``(jac_is_r, jac.shape)`` of every `run_fit` that ``module`` makes, in order."""
    seen = []
    run_fit = module.run_fit

    def spy(*args, **kwargs):
        out = run_fit(*args, **kwargs)
        seen.append((out.jac_is_r, np.shape(out.jac)))
        return out

    monkeypatch.setattr(module, "run_fit", spy)
    return seen


def test_curve_fit_of_a_large_fit_takes_pcov_from_r_without_forming_j(monkeypatch):
    """curve_fit without full_output needs J only through J^T J: a chunked fit
    then returns R (n, n) by TSQR instead of the (m, n) J (nothing of size m x n
    crosses to the host), and pcov from R equals pcov from J (full_output=True,
    MINPACK's factors) to rounding times the conditioning, and scipy's to its
    forward differences' accuracy (~1e-6)."""
    import jaxlsq.scipy._leastsq as leastsq_module
    from jaxlsq.core.chunked import AUTO_CHUNK

    seen = record_jacobians(monkeypatch, leastsq_module)
    m = 3 * AUTO_CHUNK + 5
    x, y = (np.asarray(a) for a in data(m, seed=5))
    popt, pcov = jaxlsq.scipy.curve_fit(peak_curve_fit, x, y, p0=P0)
    assert seen[-1] == (True, (5, 5)), seen
    full = jaxlsq.scipy.curve_fit(peak_curve_fit, x, y, p0=P0, full_output=True)
    assert seen[-1] == (False, (m, 5)), seen
    np.testing.assert_array_equal(popt, full[0])
    # entry by entry on the scale of sqrt(C_ii C_jj) (an off-diagonal entry near 0
    # is a difference of large terms): rounding times the conditioning
    kappa = np.linalg.cond(full[1])
    scale = np.sqrt(np.outer(np.diag(full[1]), np.diag(full[1])))
    assert np.all(np.abs(pcov - full[1]) <= 10 * kappa * np.finfo(float).eps * scale)
    ref_popt, ref_pcov = scipy.optimize.curve_fit(peak_curve_fit, x, y, p0=P0)
    se = np.sqrt(np.diag(ref_pcov))  # scipy's from forward differences: ~1e-6
    assert np.all(np.abs(pcov - ref_pcov) <= 1e-5 * np.outer(se, se))
    assert np.all(np.abs(popt - ref_popt) <= 10 * np.sqrt(1.49e-8 * m) * se)


def test_bounded_curve_fit_of_a_large_fit_takes_pcov_from_r(monkeypatch):
    """The same on curve_fit's trf path (bounds): R (n, n) instead of J without
    full_output, the same pcov (scipy's rank cutoff kept: max(m, n) with m, not n)
    as with J, and scipy's pcov to its differences' accuracy."""
    import jaxlsq.scipy.lsq_solve as lsq_module
    from jaxlsq.core.chunked import AUTO_CHUNK

    seen = record_jacobians(monkeypatch, lsq_module)
    m = 3 * AUTO_CHUNK + 5
    x, y = (np.asarray(a) for a in data(m, seed=6))
    box = ([0.0, 0.0, 0.1, -10.0, -10.0], [10.0, 10.0, 5.0, 10.0, 10.0])
    popt, pcov = jaxlsq.scipy.curve_fit(peak_curve_fit, x, y, p0=P0, bounds=box)
    assert seen[-1] == (True, (5, 5)), seen
    full = jaxlsq.scipy.curve_fit(
        peak_curve_fit, x, y, p0=P0, bounds=box, full_output=True
    )
    assert seen[-1] == (False, (m, 5)), seen
    np.testing.assert_array_equal(popt, full[0])
    kappa = np.linalg.cond(full[1])
    scale = np.sqrt(np.outer(np.diag(full[1]), np.diag(full[1])))
    assert np.all(np.abs(pcov - full[1]) <= 10 * kappa * np.finfo(float).eps * scale)
    ref_popt, ref_pcov = scipy.optimize.curve_fit(
        peak_curve_fit, x, y, p0=P0, bounds=box
    )
    se = np.sqrt(np.diag(ref_pcov))
    assert np.all(np.abs(pcov - ref_pcov) <= 1e-5 * np.outer(se, se))
    assert np.all(np.abs(popt - ref_popt) <= 10 * np.sqrt(1e-8 * m) * se)


def test_pcov_from_r_keeps_scipys_rank_cutoff():
    """scipy drops singular values <= max(m, n) eps s_max. A J (1000 x 3) with
    singular values (1, 0.5, 1e-14): the last lies between n eps and m eps, so
    the cutoff must use m: from R (3 x 3) with ``rows=1000`` the pseudo-inverse
    equals J's (the direction dropped); without ``rows`` it would keep 1e28."""
    from jaxlsq.fitting.statistics import gram_pseudo_inverse

    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.normal(size=(1000, 3)))
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    jac = u @ np.diag([1.0, 0.5, 1e-14]) @ v.T
    r = np.linalg.qr(jac, mode="r")
    from_j = np.asarray(gram_pseudo_inverse(jnp.asarray(jac)))
    from_r = np.asarray(gram_pseudo_inverse(jnp.asarray(r), rows=1000))
    np.testing.assert_allclose(from_r, from_j, rtol=0, atol=1e-10)
    assert np.abs(from_j).max() < 10  # 1/s^2 of the kept values: 1 and 4
    assert np.abs(np.asarray(gram_pseudo_inverse(jnp.asarray(r)))).max() > 1e20
