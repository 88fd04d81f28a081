"""`jaxlsq.solve`: MINPACK as the oracle, analytic solutions, vmap isolation, dtypes,
statuses and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import leastsq

import jaxlsq
from jaxlsq import Status

from .problems import ZOO

# --------------------------------------------------------------------------------
# shared problems (module level, so solve's compile cache is reused across tests)


def expdecay(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


X50 = jnp.linspace(0.0, 5.0, 50)


def expdecay_data(seed, n_curves=None, noise=0.05):
    rng = np.random.default_rng(seed)
    shape = (50,) if n_curves is None else (n_curves, 50)
    truth = np.array([2.0, 1.5, 0.5])
    if n_curves is not None:
        truth = truth * rng.uniform(0.8, 1.2, (n_curves, 3))
        y = truth[:, :1] * np.exp(-truth[:, 1:2] * np.asarray(X50)) + truth[:, 2:]
    else:
        y = truth[0] * np.exp(-truth[1] * np.asarray(X50)) + truth[2]
    return jnp.asarray(y + noise * rng.standard_normal(shape))


P0 = jnp.array([1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------
# against MINPACK


@pytest.mark.parametrize("name", sorted(ZOO))
def test_cost_no_worse_than_minpack_on_mgh_zoo(name):
    fun, x0 = ZOO[name]
    x0 = np.asarray(x0, float)
    jac = jax.jit(jax.jacfwd(fun))
    ref = leastsq(
        lambda x: np.asarray(fun(jnp.asarray(x))),
        x0,
        Dfun=lambda x: np.asarray(jac(jnp.asarray(x))),
        full_output=True,
    )
    ref_cost = 0.5 * np.sum(ref[2]["fvec"] ** 2)
    sol = jaxlsq.solve(fun, jnp.asarray(x0))
    assert np.all(np.isfinite(np.asarray(sol.params)))
    assert float(sol.cost) <= ref_cost * (1 + 1e-6) + 1e-14, (float(sol.cost), ref_cost)
    if 1 <= ref[4] <= 4:
        assert bool(sol.success), sol.message


def test_same_iterates_as_minpack_with_minpack_settings():
    """With lmder's defaults and an exact Jacobian, the path is MINPACK's path."""
    y = expdecay_data(0)
    jac = jax.jit(jax.jacfwd(expdecay))
    ref = leastsq(
        lambda p: np.asarray(expdecay(jnp.asarray(p), X50, y)),
        np.ones(3),
        Dfun=lambda p: np.asarray(jac(jnp.asarray(p), X50, y)),
        full_output=True,
    )
    sol = jaxlsq.solve(
        expdecay, P0, args=(X50, y), ftol=1.49012e-8, xtol=1.49012e-8, factor=100.0
    )
    np.testing.assert_allclose(sol.params, ref[0], rtol=1e-9)
    assert int(sol.status) == ref[4]
    assert int(sol.nfev) == ref[2]["nfev"]
    # MINPACK does not evaluate J at the final point; jaxlsq does (for jac/grad).
    assert int(sol.njev) == ref[2]["njev"] + 1


def test_linear_model_matches_lstsq():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 4))
    b = rng.standard_normal(30)
    sol = jaxlsq.solve(lambda p, a, b: a @ p - b, jnp.zeros(4), args=(a, b))
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(sol.params, expected, rtol=1e-10, atol=1e-12)
    assert bool(sol.success)


def test_solution_fields_are_consistent():
    y = expdecay_data(2)
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y))
    r = expdecay(sol.params, X50, y)
    np.testing.assert_allclose(sol.residuals, r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sol.cost, 0.5 * np.sum(np.asarray(r) ** 2), rtol=1e-14)
    jac = jax.jacfwd(expdecay)(sol.params, X50, y)
    np.testing.assert_allclose(sol.jac, jac, rtol=1e-12)
    np.testing.assert_allclose(sol.grad, jac.T @ r, atol=1e-12)
    np.testing.assert_allclose(sol.grad, 0, atol=1e-8)  # a stationary point
    assert sol.message == jaxlsq.MESSAGES[Status(int(sol.status))]
    # One Jacobian per accepted step, plus the one at x0.
    assert int(sol.njev) == int(sol.n_iter) + 1
    assert int(sol.nfev) >= int(sol.n_iter) + 1


@pytest.mark.parametrize("mode", ["fwd", "rev", "callable"])
def test_jacobian_strategies_agree(mode):
    y = expdecay_data(3)
    ref = jaxlsq.solve(expdecay, P0, args=(X50, y))
    jac = jax.jacfwd(expdecay) if mode == "callable" else mode
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y), jac=jac)
    np.testing.assert_allclose(sol.params, ref.params, rtol=1e-10)
    assert int(sol.status) == int(ref.status)


def test_eigh_linear_solver_agrees_on_well_conditioned_fit():
    y = expdecay_data(4)
    ref = jaxlsq.solve(expdecay, P0, args=(X50, y))
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y), linear_solver="eigh")
    np.testing.assert_allclose(sol.params, ref.params, rtol=1e-8)
    assert bool(sol.success)


def test_pytree_params_and_matrix_residuals():
    def fun(p, x, y):
        model = p["amp"] * jnp.exp(-p["rate"] * x) + p["offset"][0]
        return jnp.stack([model - y, 0.0 * y])  # (2, 50) residuals

    y = expdecay_data(5)
    p0 = {"amp": jnp.array(1.0), "rate": jnp.array(1.0), "offset": jnp.array([1.0])}
    sol = jaxlsq.solve(fun, p0, args=(X50, y))
    flat = jaxlsq.solve(expdecay, P0, args=(X50, y))
    assert jax.tree_util.tree_structure(sol.params) == jax.tree_util.tree_structure(p0)
    got = [sol.params["amp"], sol.params["rate"], sol.params["offset"][0]]
    np.testing.assert_allclose(got, flat.params, rtol=1e-9)
    assert sol.residuals.shape == (100,)


# --------------------------------------------------------------------------------
# statuses


def test_status_max_nfev():
    sol = jaxlsq.solve(ZOO["rosenbrock"][0], jnp.array([-1.2, 1.0]), max_nfev=3)
    assert int(sol.status) == Status.MAX_NFEV and not bool(sol.success)
    assert int(sol.nfev) == 3


def test_status_gtol():
    y = expdecay_data(6)
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y), gtol=1.0)  # every cosine is <= 1
    assert int(sol.status) == Status.GTOL and int(sol.nfev) == 1


def test_status_tolerances_too_small_are_failures():
    y = expdecay_data(7)
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y), ftol=0.0, xtol=0.0)
    assert int(sol.status) in (6, 7, 8)
    assert not bool(sol.success)
    # ...yet the answer is the minimum.
    ref = jaxlsq.solve(expdecay, P0, args=(X50, y))
    np.testing.assert_allclose(sol.params, ref.params, rtol=1e-8)


def test_exact_fit_stops_with_gtol_success():
    y = 2.0 * jnp.exp(-1.5 * X50) + 0.5
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y))
    assert bool(sol.success)
    np.testing.assert_allclose(sol.params, [2.0, 1.5, 0.5], rtol=1e-10)


def test_nan_residual_at_start_is_reported_not_success():
    y = expdecay_data(8).at[3].set(jnp.nan)
    sol = jaxlsq.solve(expdecay, P0, args=(X50, y))
    assert int(sol.status) == Status.NONFINITE and not bool(sol.success)
    assert "not finite" in sol.message


def test_nan_trial_point_is_a_rejected_step():
    # sqrt(p) is NaN for p < 0: the full Gauss-Newton step from 4 overshoots to p < 0.
    def fun(p):
        return jnp.stack([jnp.sqrt(p[0]) - 0.1, 1e-3 * (p[0] - 0.01)])

    sol = jaxlsq.solve(fun, jnp.array([4.0]), factor=1e3)
    assert bool(sol.success), sol.message
    np.testing.assert_allclose(sol.params, [0.01], rtol=1e-6)
    assert int(sol.nfev) > int(sol.n_iter) + 1  # at least one rejected trial


# --------------------------------------------------------------------------------
# jit / vmap / dtypes


def test_vmap_lanes_equal_solo_fits_and_bad_lane_is_isolated():
    ys = expdecay_data(9, n_curves=16)
    ys = ys.at[5, 10].set(jnp.nan)  # a bad curve
    ys = ys.at[11].set(ys[11] * 1e3)  # a very different curve (more iterations)
    batch_solve = jax.jit(jax.vmap(lambda y: jaxlsq.solve(expdecay, P0, args=(X50, y))))
    batch = batch_solve(ys)
    for i in range(ys.shape[0]):
        solo = jaxlsq.solve(expdecay, P0, args=(X50, ys[i]))
        # The batched program sums in another order, so the last bit can differ and
        # a test at the 10*eps tolerance may fire one evaluation earlier or later:
        # equal to the fit's own accuracy, same status.
        np.testing.assert_allclose(batch.params[i], solo.params, rtol=1e-8)
        np.testing.assert_allclose(batch.cost[i], solo.cost, rtol=1e-12)
        assert int(batch.status[i]) == int(solo.status)
        assert abs(int(batch.nfev[i]) - int(solo.nfev)) <= 1
    assert int(batch.status[5]) == Status.NONFINITE
    assert int(np.sum(~np.asarray(batch.success))) == 1
    messages = batch.message
    assert messages.shape == (16,) and "not finite" in messages[5]

    # Isolation, bit for bit: replacing the other curves changes nothing in a lane.
    others = expdecay_data(99, n_curves=16).at[3].set(jnp.inf)
    mixed = batch_solve(others.at[0].set(ys[0]).at[11].set(ys[11]))
    for i in (0, 11):
        for field in ("params", "cost", "jac", "status", "nfev", "njev", "n_iter"):
            np.testing.assert_array_equal(
                getattr(mixed, field)[i], getattr(batch, field)[i], err_msg=field
            )


def test_traced_non_finite_x0_reports_improper_input():
    y = expdecay_data(10)
    solve = jax.jit(lambda p0: jaxlsq.solve(expdecay, p0, args=(X50, y)))
    sol = solve(jnp.array([1.0, jnp.nan, 1.0]))
    assert int(sol.status) == Status.IMPROPER_INPUT and not bool(sol.success)
    ok = solve(P0)
    assert bool(ok.success)


def test_traced_bad_option_reports_improper_input():
    y = expdecay_data(10)
    solve = jax.jit(lambda ftol: jaxlsq.solve(expdecay, P0, args=(X50, y), ftol=ftol))
    assert int(solve(-1.0).status) == Status.IMPROPER_INPUT
    assert bool(solve(1e-10).success)
    per_jac = jax.jit(
        lambda k: jaxlsq.solve(expdecay, P0, args=(X50, y), nfev_per_jac=k)
    )
    assert int(per_jac(-1).status) == Status.IMPROPER_INPUT
    plain, counted = jaxlsq.solve(expdecay, P0, args=(X50, y)), per_jac(3)
    # the same fit, with 3 more evaluations counted per Jacobian of the loop (njev
    # also counts the one at the returned point, when it had to be evaluated)
    np.testing.assert_array_equal(counted.params, plain.params)
    extra, njev = int(counted.nfev) - int(plain.nfev), int(plain.njev)
    assert extra % 3 == 0 and extra // 3 in (njev - 1, njev)


def test_float32_keeps_dtype_and_converges():
    y = expdecay_data(11).astype(jnp.float32)
    x = X50.astype(jnp.float32)
    sol = jaxlsq.solve(expdecay, P0.astype(jnp.float32), args=(x, y))
    for leaf in (sol.params, sol.residuals, sol.cost, sol.jac, sol.grad):
        assert leaf.dtype == jnp.float32
    assert bool(sol.success), sol.message
    ref = jaxlsq.solve(expdecay, P0, args=(X50, expdecay_data(11)))
    np.testing.assert_allclose(sol.params, ref.params, rtol=2e-3)


def test_loop_state_keeps_shape_and_dtype():
    from jaxlsq import SolveOptions
    from jaxlsq._testing import run_lm

    for dtype in (jnp.float32, jnp.float64):
        x = X50.astype(dtype)
        y = expdecay_data(12).astype(dtype)

        def flat(p, x=x, y=y):
            return expdecay(p, x, y)

        x0 = P0.astype(dtype)
        opts = SolveOptions(ftol=1e-5, xtol=1e-5, gtol=0.0, max_nfev=400)
        final = run_lm(flat, jax.jacfwd(flat), x0, opts.resolve(x0, 3, dtype))
        assert final.x.shape == (3,) and final.jac.shape == (50, 3)
        for name in ("x", "f", "fnorm", "jac", "diag", "delta", "par", "xnorm"):
            assert getattr(final, name).dtype == dtype, name
        for name in ("nfev", "njev", "n_iter", "status"):
            assert getattr(final, name).dtype == jnp.int32, name


def test_no_global_config_change_on_import():
    import subprocess
    import sys

    code = "import jax, jaxlsq; print(jax.config.jax_enable_x64)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------------
# property-based: random well-posed problems (values drawn, shapes fixed: one compile)


def _linear(p, a, b):
    return a @ p - b


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
@example(seed=2343, scale=999.9999999999999)  # exactly solved: was status 8 with gtol=0
def test_random_linear_problems_match_lstsq(seed, scale):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 4)) * scale
    b = rng.standard_normal(12)
    sol = jaxlsq.solve(_linear, jnp.zeros(4), args=(a, b))
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    assert bool(sol.success), sol.message
    np.testing.assert_allclose(sol.params, expected, rtol=1e-7, atol=1e-9 / scale)


@settings(max_examples=25, deadline=None)
@given(
    amp=st.floats(0.5, 5.0),
    rate=st.floats(0.3, 3.0),
    offset=st.floats(-1.0, 1.0),
    noise_seed=st.integers(0, 1000),
)
def test_random_exponential_fits_converge_or_say_why(amp, rate, offset, noise_seed):
    rng = np.random.default_rng(noise_seed)
    y = amp * np.exp(-rate * np.asarray(X50)) + offset + 0.01 * rng.standard_normal(50)
    sol = jaxlsq.solve(expdecay, P0, args=(X50, jnp.asarray(y)))
    assert bool(jnp.all(jnp.isfinite(sol.params)))
    assert bool(sol.success), sol.message
    np.testing.assert_allclose(sol.params, [amp, rate, offset], atol=0.15 * max(amp, 1))


# --------------------------------------------------------------------------------
# input validation (eager): errors that name the argument


def test_m_less_than_n_raises():
    with pytest.raises(ValueError, match=r"m=2 .* n=3"):
        jaxlsq.solve(lambda p: p[:2], jnp.ones(3))


def test_integer_residuals_raise():
    with pytest.raises(TypeError, match="floating-point residuals"):
        jaxlsq.solve(lambda p: jnp.ones(5, jnp.int32), jnp.ones(2))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x0_raises(bad):
    with pytest.raises(ValueError, match="x0 must be finite"):
        jaxlsq.solve(expdecay, jnp.array([1.0, bad, 1.0]), args=(X50, X50))


def test_empty_x0_raises():
    with pytest.raises(ValueError, match="x0 must contain at least one parameter"):
        jaxlsq.solve(lambda p: jnp.ones(3), jnp.zeros(0))


@pytest.mark.parametrize(
    "option,value,match",
    [
        ("ftol", -1.0, "ftol must be >= 0"),
        ("xtol", -1.0, "xtol must be >= 0"),
        ("gtol", -0.5, "gtol must be >= 0"),
        ("factor", 0.0, "factor must be > 0"),
        ("max_nfev", 0, "max_nfev must be > 0"),
        ("max_nfev", 10.5, "max_nfev must be an integer"),
        ("jac", "central", "jac must be one of"),
        ("linear_solver", "qr", "linear_solver must be one of"),
        ("diag", [1.0, 1.0], r"diag must have shape \(3,\)"),
        ("diag", [1.0, 0.0, 1.0], "diag entries must be > 0"),
    ],
)
def test_bad_options_raise_and_name_the_option(option, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        jaxlsq.solve(expdecay, P0, args=(X50, X50), **{option: value})


def test_mismatched_args_are_named():
    with pytest.raises(ValueError, match="could not be evaluated"):
        jaxlsq.solve(expdecay, P0, args=(X50, jnp.ones(7)))


def test_non_callable_fun_raises():
    with pytest.raises(TypeError, match="fun must be callable"):
        jaxlsq.solve("not a function", P0)


def test_batched_factorisation_gives_the_same_steps_as_lapack():
    """The vmapped (Gram / LDL^T, or per-lane LAPACK SVD) and single (LAPACK) paths
    agree on every damped step, whatever their ordering and signs of singular
    vectors."""
    from jaxlsq._testing import damped_step, factorize, linearize_dense

    rng = np.random.default_rng(0)
    jac = rng.standard_normal((6, 30, 4)) @ np.diag([1.0, 1e-3, 1e3, 1e-6])
    diag = rng.uniform(0.5, 2.0, (6, 4))
    f = rng.standard_normal((6, 30))

    def steps(j, d, f):
        spec = factorize(linearize_dense(j, f), d, "svd")
        return jnp.stack([damped_step(spec, par) for par in (0.0, 1e-4, 1.0, 1e3)])

    batched = jax.vmap(steps)(jac, diag, f)
    eps = np.finfo(np.float64).eps
    for i in range(6):
        single = np.asarray(steps(jac[i], diag[i], f[i]))
        # Both paths are backward stable for the factorisation of Js = J / diag;
        # to first order a step then errs by kappa(Js) * eps relative, normwise
        # (kappa ~ 1e9 here: the columns are scaled by 1e-6 ... 1e3). The
        # damping does not help: both steps inherit the error of the same V.
        # Measured: at most 4e-3 of this bound on one machine; 2.4e-9
        # (elementwise) on another.
        kappa = np.linalg.cond(jac[i] / diag[i])
        for z_batched, z_single in zip(np.asarray(batched[i]), single, strict=True):
            bound = kappa * eps * np.linalg.norm(z_single)
            np.testing.assert_allclose(z_batched, z_single, rtol=0, atol=bound)


# --------------------------------------------------------------------------------
# the batched Gram path: Jacobi eigen-decomposition of J^T J when well conditioned


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_unrolled_damped_solve_matches_numpy(n):
    """The unrolled LDL^T solve of (M + par I) c = g, and lmpar's q = c^T (M + par
    I)^-1 c, against numpy; a zero row of M (frozen column) gives c = 0 there."""
    from jaxlsq._testing import StepSystem, damped_coefficients

    rng = np.random.default_rng(10 + n)
    a = rng.standard_normal((40, n))
    m, g = a.T @ a, rng.standard_normal(n)
    if n > 1:
        m[1, :] = m[:, 1] = 0.0
        g[1] = 0.0
    free = np.flatnonzero(np.diagonal(m) != 0)
    pars = np.array([0.0, 1e-3, 1.0, 1e4])
    # A dense M is solved by LDL^T only for a batch (a single one is diagonal by
    # construction, see _dense_coefficients): vmap over the damping values.
    batch = StepSystem(
        jnp.broadcast_to(jnp.eye(n), (4, n, n)),
        jnp.broadcast_to(jnp.asarray(m), (4, n, n)),
        jnp.broadcast_to(jnp.asarray(g), (4, n)),
    )
    cs, qs = jax.vmap(damped_coefficients)(batch, jnp.asarray(pars))
    for par, c, q in zip(pars, np.asarray(cs), np.asarray(qs), strict=True):
        damped = m[np.ix_(free, free)] + par * np.eye(len(free))
        expected = np.zeros(n)
        expected[free] = np.linalg.solve(damped, g[free])
        np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-15)
        assert float(q) == pytest.approx(
            expected[free] @ np.linalg.solve(damped, expected[free]), rel=1e-12
        )
    # A diagonal M gives the very same numbers, stored as a matrix (batched: LDL^T;
    # single) or as its diagonal.
    w = np.abs(g) + np.arange(n)
    flat = StepSystem(jnp.eye(n), jnp.asarray(w), jnp.asarray(g))
    dense = flat._replace(m=jnp.diag(flat.m))
    for par in (0.0, 0.5):
        expected = [np.asarray(t) for t in damped_coefficients(flat, par)]
        single = damped_coefficients(dense, par)
        batched = jax.vmap(damped_coefficients, in_axes=(0, None))(
            jax.tree_util.tree_map(lambda t: t[None], dense), par
        )
        for x, y, z in zip(expected, single, batched, strict=True):
            np.testing.assert_array_equal(x, np.asarray(y))
            np.testing.assert_array_equal(x, np.asarray(z)[0])


def _batched_and_single_steps(jac, diag, f, active=None):
    """Damped steps (B, 4, n) from the vmapped factorisation and, per lane, from the
    single-matrix (LAPACK) one."""
    from jaxlsq._testing import damped_step, factorize, linearize_dense

    pars = (0.0, 1e-4, 1.0, 1e3)
    if active is None:
        active = np.ones(len(jac), bool)

    def steps(spec):
        return jnp.stack([damped_step(spec, par) for par in pars])

    def system(j, d, f, a=True):
        return factorize(linearize_dense(j, f), d, "svd", a)

    batched = jax.vmap(lambda j, d, f, a: steps(system(j, d, f, a)))(
        jac, diag, f, active
    )
    single = [steps(system(jac[i], diag[i], f[i])) for i in range(len(jac))]
    return np.asarray(batched), np.asarray(single)


def test_gram_path_flags_conditioning():
    """The Gram path is trusted only when the scaled Gram matrix has condition number
    <= 1/sqrt(eps) on its non-zero rows; exact zero rows (frozen columns) are fine."""
    from jaxlsq._testing import scaled_gram

    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 3))
    ones = np.ones(3)
    assert bool(scaled_gram(jnp.asarray(a.T @ a), ones)[1])
    ill = a @ np.diag([1.0, 1.0, 1e-5])  # condition 1e5: squared 1e10 > 1/sqrt(eps)
    assert not bool(scaled_gram(jnp.asarray(ill.T @ ill), ones)[1])
    frozen = a.copy()
    frozen[:, 1] = 0.0
    assert bool(scaled_gram(jnp.asarray(frozen.T @ frozen), ones)[1])
    nan = a.T @ a
    nan[0, 0] = np.nan
    assert not bool(scaled_gram(jnp.asarray(nan), ones)[1])


def test_gram_path_gives_the_same_steps_as_lapack():
    """A well-conditioned batch (Gram path), one with a frozen (zero) column, and one
    with an ill-conditioned lane (the whole batch takes the QR path) all give
    LAPACK's damped steps."""
    rng = np.random.default_rng(2)
    jac = rng.standard_normal((6, 30, 5))
    diag = rng.uniform(0.5, 2.0, (6, 5))
    f = rng.standard_normal((6, 30))
    batched, single = _batched_and_single_steps(jac, diag, f)
    np.testing.assert_allclose(batched, single, rtol=1e-10, atol=1e-13)

    jac[2, :, 3] = 0.0  # a frozen parameter
    batched, single = _batched_and_single_steps(jac, diag, f)
    np.testing.assert_allclose(batched, single, rtol=1e-10, atol=1e-13)
    assert np.all(batched[2, :, 3] == 0)

    jac[4] = jac[4] @ np.diag([1.0, 1e-3, 1e3, 1.0, 1e-6])
    batched, single = _batched_and_single_steps(jac, diag, f)
    np.testing.assert_allclose(batched, single, rtol=1e-9, atol=1e-12)


def test_stopped_lanes_do_not_decide_the_batched_path():
    """A stopped fit's lane (here NaN) is ignored by the conditioning test, so the
    running lanes still get correct steps from the Gram path."""
    rng = np.random.default_rng(3)
    jac = rng.standard_normal((4, 20, 3))
    diag = np.ones((4, 3))
    f = rng.standard_normal((4, 20))
    jac[1] = np.nan
    active = np.array([True, False, True, True])
    batched, single = _batched_and_single_steps(jac, diag, f, active)
    keep = [0, 2, 3]
    np.testing.assert_allclose(batched[keep], single[keep], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_one_non_finite_jacobian_entry_stops_the_fit(bad, dtype):
    """Finite residuals, a Jacobian with one NaN or inf entry (from the user's jac):
    NONFINITE, never success; alone, in a batch (the other lanes unharmed) and
    with bounds. The loop reads it off J's column norms (a bad entry reaches its
    column's norm), not from a pass over J."""
    x = jnp.linspace(0.0, 1.0, 20, dtype=dtype)

    def fun(p, y):
        return p[0] * x + p[1] - y

    def jac(p, y):
        j = jnp.stack([x, jnp.ones_like(x)], axis=1)
        return jnp.where(y[0] > 50, j.at[7, 0].set(bad), j)  # y[0] > 50: the bad lane

    ys = jnp.stack([2.0 * x + 1.0, 2.0 * x + 100.0]).astype(dtype)
    p0 = jnp.zeros(2, dtype)
    alone = jaxlsq.solve(fun, p0, (ys[1],), jac=jac)
    boxed = jaxlsq.solve(fun, p0, (ys[1],), jac=jac, bounds=(-1e3, 1e3))
    batch = jax.jit(jax.vmap(lambda y: jaxlsq.solve(fun, p0, (y,), jac=jac)))(ys)
    for sol in (alone, boxed):
        assert int(sol.status) == Status.NONFINITE and not bool(sol.success)
    assert int(batch.status[1]) == Status.NONFINITE and not bool(batch.success[1])
    assert bool(batch.success[0])
    np.testing.assert_allclose(
        batch.params[0], [2.0, 1.0], rtol=10 * jnp.finfo(dtype).eps ** 0.5
    )
