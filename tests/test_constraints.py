"""Box bounds, fixed parameters and robust losses in `jaxlsq.solve`.

Oracles: scipy.optimize.least_squares (trf for bounds, any method for losses) on the
same problems; fits of the reduced model for fixed parameters; closed-form loss
definitions; central finite differences of re-fits for derivatives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

import jaxlsq
from jaxlsq import Status
from jaxlsq._testing import LOSSES, robust_cost

X = jnp.linspace(0.0, 4.0, 40)
Y = 2.5 * jnp.exp(-1.3 * X) + 0.3 + 0.02 * jnp.sin(7 * X)
Y_OUTLIERS = Y.at[::7].add(3.0)
X0 = jnp.array([1.0, 1.0, 0.0])
TIGHT = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15)


def decay(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


def scipy_fit(y, x0=X0, **kw):
    return least_squares(lambda p: np.asarray(decay(p, X, y)), np.asarray(x0), **kw)


# ---------------------------------------------------------------- bounds vs scipy

BOX_CASES = {
    "upper-active": ((0, 0, 0), (2, 5, 1)),
    "rate-pinned": ((0, 0.2, 0), (10, 1.0, 1)),
    "offset-pinned": ((0, 0, -1), (10, 10, 0.2)),
    "open": ((-np.inf,) * 3, (np.inf,) * 3),
    "one-sided": ((-np.inf,) * 3, (np.inf, 1.2, np.inf)),
}


@pytest.mark.parametrize("case", sorted(BOX_CASES))
def test_bounded_fit_matches_scipy_trf(case):
    lo, hi = (np.asarray(b, float) for b in BOX_CASES[case])
    sol = jaxlsq.solve(decay, X0, (X, Y), bounds=(lo, hi))
    ref = scipy_fit(Y, bounds=(lo, hi), method="trf", **TIGHT)
    assert sol.success, sol.message
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-7, atol=1e-9)
    assert float(sol.cost) <= ref.cost * (1 + 1e-10)
    np.testing.assert_array_equal(sol.active_mask, ref.active_mask)
    assert np.all(np.asarray(sol.params) >= lo) and np.all(np.asarray(sol.params) <= hi)


def test_bounds_exactly_on_the_boundary_and_gradient_points_out():
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([2.0, 5.0, 1.0])
    sol = jaxlsq.solve(decay, X0, (X, Y), bounds=(lo, hi))
    assert float(sol.params[0]) == 2.0  # projected, not merely close
    assert float(sol.grad[0]) < 0  # the cost would keep falling outside the box
    # the free components are stationary
    # the free components are stationary (to the ~sqrt(eps) floor of a cost test)
    np.testing.assert_allclose(sol.grad[1:], 0, atol=1e-6)


def test_inactive_bounds_reproduce_the_unbounded_iterates():
    free = jaxlsq.solve(decay, X0, (X, Y))
    boxed = jaxlsq.solve(decay, X0, (X, Y), bounds=(-100.0, 100.0))
    np.testing.assert_array_equal(boxed.params, free.params)
    assert int(boxed.nfev) == int(free.nfev)
    np.testing.assert_array_equal(boxed.active_mask, 0)


def test_pytree_bounds_and_fixed():
    def model(p, x, y):
        return p["amp"] * jnp.exp(-p["rate"] * x) + p["offset"] - y

    p0 = {"amp": 1.0, "rate": 1.0, "offset": 0.0}
    lo = {"amp": 0.0, "rate": 0.0, "offset": -1.0}
    hi = {"amp": 10.0, "rate": 10.0, "offset": 0.2}
    sol = jaxlsq.solve(model, p0, (X, Y), bounds=(lo, hi))
    ref = scipy_fit(Y, bounds=([0, 0, -1], [10, 10, 0.2]), method="trf", **TIGHT)
    flat = [float(sol.params[k]) for k in ("amp", "offset", "rate")]  # sorted keys
    np.testing.assert_allclose(flat, [ref.x[0], ref.x[2], ref.x[1]], rtol=1e-7)
    np.testing.assert_array_equal(sol.active_mask, [0, 1, 0])  # amp, offset, rate


def test_bounded_fits_under_vmap_match_solo_fits():
    uppers = jnp.array([[2.0, 5.0, 1.0], [10.0, 1.0, 1.0], [10.0, 10.0, 0.2]])
    lower = jnp.array([0.0, 0.0, -1.0])

    def one(hi):
        return jaxlsq.solve(decay, X0, (X, Y), bounds=(lower, hi))

    batch = jax.vmap(one)(uppers)
    for i, hi in enumerate(uppers):
        solo = one(hi)
        # equal to the fit's own accuracy (summation order differs under vmap)
        np.testing.assert_allclose(batch.params[i], solo.params, rtol=1e-7)
        np.testing.assert_array_equal(batch.active_mask[i], solo.active_mask)
        assert bool(batch.success[i]) and bool(solo.success)
        # With the default ftol = 10 eps, which of ftol/xtol fires first can hinge on
        # the last bit (here FTOL_AND_XTOL batched vs XTOL solo, same point): any
        # other difference in status is a real one.
        statuses = {int(batch.status[i]), int(solo.status)}
        assert len(statuses) == 1 or statuses <= {1, 2, 3}


def test_float32_bounded_fit_keeps_dtype():
    x32, y32 = X.astype(jnp.float32), Y.astype(jnp.float32)
    sol = jaxlsq.solve(
        decay, X0.astype(jnp.float32), (x32, y32), bounds=(0.0, (2.0, 5.0, 1.0))
    )
    assert sol.params.dtype == jnp.float32 and sol.cost.dtype == jnp.float32
    assert sol.success
    assert float(sol.params[0]) == 2.0


# ---------------------------------------------------------------- fixed parameters


def test_fixed_parameter_equals_fit_of_reduced_model():
    held = jnp.array([1.0, 1.2, 0.0])
    sol = jaxlsq.solve(decay, held, (X, Y), fixed=jnp.array([False, True, False]))

    def reduced(q):
        return np.asarray(decay(jnp.array([q[0], 1.2, q[1]]), X, Y))

    ref = least_squares(reduced, np.array([1.0, 0.0]), method="lm", **TIGHT)
    assert sol.success
    assert float(sol.params[1]) == 1.2
    np.testing.assert_allclose(sol.params[jnp.array([0, 2])], ref.x, rtol=1e-8)


def test_all_parameters_fixed_returns_x0():
    sol = jaxlsq.solve(decay, X0, (X, Y), fixed=True)
    np.testing.assert_array_equal(sol.params, X0)
    assert int(sol.status) == Status.GTOL


def test_fixed_and_bounds_together():
    sol = jaxlsq.solve(
        decay,
        jnp.array([1.0, 1.2, 0.0]),
        (X, Y),
        fixed=jnp.array([False, True, False]),
        bounds=((0, 0, -1), (10, 10, 0.2)),
    )
    assert float(sol.params[1]) == 1.2 and float(sol.params[2]) == 0.2
    np.testing.assert_array_equal(sol.active_mask, [0, 0, 1])


# ---------------------------------------------------------------- robust losses


def _rho(z, loss):
    """scipy's definitions, written out independently of jaxlsq.core.losses."""
    return {
        "linear": z,
        "soft_l1": 2 * (np.sqrt(1 + z) - 1),
        "huber": np.where(z <= 1, z, 2 * np.sqrt(z) - 1),
        "cauchy": np.log1p(z),
        "arctan": np.arctan(z),
    }[loss]


@pytest.mark.parametrize("loss", LOSSES)
def test_robust_cost_definition(loss):
    f = np.array([0.0, 1e-9, 0.03, -0.5, 2.0, -40.0])
    f_scale = 0.1
    expected = 0.5 * f_scale**2 * np.sum(_rho((f / f_scale) ** 2, loss))
    np.testing.assert_allclose(robust_cost(jnp.asarray(f), loss, f_scale), expected)


@pytest.mark.parametrize("loss", LOSSES)
def test_robust_transform_is_smooth_at_zero(loss):
    # d f_robust / d f = 1 at f = 0, and finite second derivative (no 0/0)
    from jaxlsq._testing import robust_residuals

    g = jax.grad(lambda f: robust_residuals(f, loss, 0.1))
    assert float(g(0.0)) == pytest.approx(1.0)
    assert np.isfinite(float(jax.grad(g)(0.0)))
    assert np.isfinite(float(jax.grad(g)(1e-4)))


@pytest.mark.parametrize("loss", LOSSES)
def test_robust_fit_matches_scipy(loss):
    x0 = jnp.array([2.0, 1.0, 0.3])  # cauchy/arctan are not convex: a fair start
    sol = jaxlsq.solve(decay, x0, (X, Y_OUTLIERS), loss=loss, f_scale=0.1)
    ref = scipy_fit(Y_OUTLIERS, x0=x0, loss=loss, f_scale=0.1, **TIGHT)
    assert sol.success, sol.message
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(float(sol.cost), ref.cost, rtol=1e-10)
    assert float(sol.cost) <= ref.cost * (1 + 1e-12)
    # raw residuals and Jacobian, robust gradient (zero at the solution)
    np.testing.assert_allclose(sol.residuals, ref.fun, atol=1e-6)
    np.testing.assert_allclose(sol.jac, jax.jacfwd(decay)(sol.params, X, Y_OUTLIERS))
    np.testing.assert_allclose(sol.grad, 0, atol=1e-6)


def _cubic_soft_l1(xp):
    """scipy's example of a callable loss, rho(z) = 3 ((1 + z)^(1/3) - 1), with
    rows (rho, rho', rho'') in numpy (for scipy) or jax.numpy (for the loop)."""

    def loss(z):
        t = 1 + z
        return xp.stack([3 * (t ** (1 / 3) - 1), t ** (-2 / 3), -2 / 3 * t ** (-5 / 3)])

    return loss


def test_callable_loss_matches_scipy_and_differentiates():
    loss = _cubic_soft_l1(jnp)
    x0 = jnp.array([2.0, 1.0, 0.3])

    @jax.jit
    def fit(y):
        return jaxlsq.solve(decay, x0, (X, y), loss=loss, f_scale=0.1, **TIGHT)

    sol = fit(Y_OUTLIERS)
    ref = scipy_fit(Y_OUTLIERS, x0=x0, loss=_cubic_soft_l1(np), f_scale=0.1, **TIGHT)
    assert sol.success, sol.message
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(float(sol.cost), ref.cost, rtol=1e-10)
    np.testing.assert_allclose(sol.grad, 0, atol=1e-6)
    # implicit derivative d params[1] / d y[3] against central differences (the
    # cost is smooth there: h ~ eps^(1/3) leaves an error ~ 1e-10 relative)
    grad = jax.grad(lambda y: fit(y).params[1])(Y_OUTLIERS)[3]
    h = 1e-5
    e3 = jnp.zeros_like(Y_OUTLIERS).at[3].set(h)
    fd = (fit(Y_OUTLIERS + e3).params[1] - fit(Y_OUTLIERS - e3).params[1]) / (2 * h)
    np.testing.assert_allclose(float(grad), float(fd), rtol=1e-5)


def test_callable_loss_transform_is_smooth_at_zero():
    """rho / z from the rows is 0 / 0 at z = 0: its Taylor form is used there, so
    d f_robust / d f = sqrt(rho'(0)) = 1 and the second derivative is finite."""
    from jaxlsq._testing import robust_residuals

    g = jax.grad(lambda f: robust_residuals(f, _cubic_soft_l1(jnp), 0.1))
    assert float(g(0.0)) == pytest.approx(1.0)
    assert np.isfinite(float(jax.grad(g)(0.0)))
    for f in (1e-4, 0.3):  # either side of the switch (z = eps^(1/3) ~ 6e-6)
        z = (f / 0.1) ** 2
        rho1 = (1 + z) ** (-2 / 3)
        rho = 3 * ((1 + z) ** (1 / 3) - 1)
        # d/df [sign(f) f_scale sqrt(rho(z))] = rho'(z) sqrt(z / rho(z))
        assert float(g(f)) == pytest.approx(rho1 * np.sqrt(z / rho), rel=1e-9)


def test_robust_loss_with_user_jacobian():
    def jac(p, x, y):
        e = jnp.exp(-p[1] * x)
        return jnp.stack([e, -p[0] * x * e, jnp.ones_like(x)], axis=1)

    x0 = jnp.array([2.0, 1.0, 0.3])
    auto = jaxlsq.solve(decay, x0, (X, Y_OUTLIERS), loss="soft_l1", f_scale=0.1)
    user = jaxlsq.solve(
        decay, x0, (X, Y_OUTLIERS), loss="soft_l1", f_scale=0.1, jac=jac
    )
    np.testing.assert_allclose(user.params, auto.params, rtol=1e-10)
    np.testing.assert_allclose(user.jac, auto.jac, rtol=1e-12)


def test_robust_loss_with_bounds_matches_scipy():
    x0 = jnp.array([2.0, 1.0, 0.1])
    bounds = ((0, 0, -1), (10, 10, 0.2))
    sol = jaxlsq.solve(
        decay, x0, (X, Y_OUTLIERS), loss="huber", f_scale=0.1, bounds=bounds
    )
    ref = scipy_fit(
        Y_OUTLIERS, x0=x0, loss="huber", f_scale=0.1, bounds=bounds, **TIGHT
    )
    np.testing.assert_allclose(sol.params, ref.x, rtol=1e-6)
    assert float(sol.cost) <= ref.cost * (1 + 1e-10)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bounds=((0, 2, 0), (1, 1, 1))), "strictly less"),
        (dict(bounds=((0, 0, 0.5), (10, 10, 1))), "x0 is infeasible"),
        (dict(bounds=((0, np.nan, 0), (10, 10, 1))), "NaN"),
        (dict(bounds=(0.0,)), "pair"),
        (dict(bounds=(jnp.zeros(2), 1.0)), "bounds\\[0\\]"),
        (dict(fixed=jnp.array([True, False])), "fixed"),
        (dict(loss="l1"), "loss must be one of"),
        (dict(loss="huber", f_scale=0.0), "f_scale must be > 0"),
    ],
)
def test_bad_constraint_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxlsq.solve(decay, X0, (X, Y), **kwargs)


def test_traced_bad_bounds_report_improper_input():
    @jax.jit
    def run(lo):
        return jaxlsq.solve(decay, X0, (X, Y), bounds=(lo, 10.0)).status

    assert int(run(jnp.array([0.0, 0.0, 0.0]))) != Status.IMPROPER_INPUT
    assert int(run(jnp.array([0.0, 2.0, 0.0]))) == Status.IMPROPER_INPUT  # x0 outside
    assert int(run(jnp.array([0.0, 20.0, 0.0]))) == Status.IMPROPER_INPUT  # lo > hi


# ---------------------------------------------------------------- derivatives


def _fd(fn, y, i, h=1e-3):
    # h = 1e-3: re-fits are good to ~1e-8, so the rounding noise of the difference is
    # ~1e-5 and the O(h^2) truncation error ~1e-6
    e = jnp.zeros_like(y).at[i].set(h)
    return (fn(y + e) - fn(y - e)) / (2 * h)


@pytest.mark.parametrize(
    "options",
    [
        dict(bounds=((0, 0, -1), (10, 10, 0.2))),
        dict(fixed=jnp.array([False, True, False])),
        dict(loss="soft_l1", f_scale=0.1),
        dict(loss="cauchy", f_scale=0.1, bounds=((0, 0, -1), (10, 10, 0.25))),
    ],
    ids=["bounds", "fixed", "soft_l1", "cauchy+bounds"],
)
def test_implicit_derivative_matches_finite_differences(options):
    x0 = jnp.array([2.0, 1.2, 0.1])

    def params(y):
        return jaxlsq.solve(decay, x0, (X, y), **options, **TIGHT).params

    y = Y_OUTLIERS if "loss" in options else Y
    jac = jax.jacrev(params)(y)
    for i in (0, 5, 17, 39):
        np.testing.assert_allclose(jac[:, i], _fd(params, y, i), rtol=1e-3, atol=2e-5)
    # frozen components (fixed, or ended on a bound) have zero derivative
    sol = jaxlsq.solve(decay, x0, (X, y), **options)
    frozen = np.array(sol.active_mask != 0)
    if "fixed" in options:
        frozen |= np.asarray(options["fixed"])
    assert frozen.any() or "bounds" not in options and "fixed" not in options
    np.testing.assert_array_equal(np.asarray(jac)[frozen], 0.0)
    # forward mode agrees with reverse mode
    np.testing.assert_allclose(jax.jacfwd(params)(y), jac, rtol=1e-8, atol=1e-12)
