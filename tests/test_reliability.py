"""Reliability: no false success, no silent misreading of input, uncertainties that
never lie (issue 18). Each test is an adversarial input a careful user could give,
checked against an oracle (scipy's MINPACK, the same problem in other units, the
same batch without its bad curves) or against the documented error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxlsq
from jaxlsq import Status

T10 = np.linspace(0.0, 1.0, 10)


def _line(scale):
    """Residuals of a straight line, all multiplied by ``scale``."""

    def res(p):
        return scale * (p[0] * T10 + p[1] - (2 * T10 + 1))

    return res


# --- scale: norms, Jacobians, gradients and steps far outside [1e-150, 1e150] ------


@pytest.mark.parametrize("scale", [1e-170, 1e-100, 1e100, 1e160])
@pytest.mark.parametrize("batched", [False, True])
def test_fits_at_extreme_scales_match_minpack(scale, batched):
    """MINPACK scales its norms (enorm) and never squares J, so scipy solves a
    straight line whose residuals are all multiplied by 1e-170 or 1e160. Before,
    J^T f (or ||f||^2) underflowed (overflowed) and the fit 'converged' at x0."""
    res = _line(scale)
    ref = so.leastsq(lambda p: np.asarray(res(p)), [0.5, 0.5], full_output=True)
    assert ref[4] in (1, 2, 3, 4)
    x0 = jnp.array([0.5, 0.5])
    if batched:
        sol = jaxlsq.solve_batch(
            lambda p, a: a * res(p), jnp.stack([x0] * 3), (jnp.ones(3),)
        )
        params, success = np.asarray(sol.params), np.asarray(sol.success)
    else:
        sol = jaxlsq.solve(res, x0)
        params, success = np.asarray(sol.params)[None], np.asarray(sol.success)
    assert np.all(success)
    # a linear problem, conditioning ~10: its solution to ~1e-14
    np.testing.assert_allclose(params, np.broadcast_to(ref[0], params.shape), 1e-12)


def test_overflowing_sum_of_squares_never_succeeds_at_an_infinite_cost():
    """Residuals that are finite but whose sum of squares overflows (1e160 for every
    residual): scipy stops at x0 there (its radius starts at 100 while the
    minimum is 1e160 away); jaxlsq must not call that a success with cost inf."""
    c = 1e160

    def res(p):
        return c + (p[0] - 3.0) * jnp.ones(5)

    sol = jaxlsq.solve(res, jnp.array([0.0]))
    assert not np.isfinite(float(sol.cost))
    assert not bool(sol.success) and int(sol.status) == Status.NONFINITE


def _lmder_exp(t, y, maxfev):
    """scipy's lmder (``leastsq`` with the exact ``Dfun``) on ``exp(p t) - y`` from
    p = 36: ``(x, infodict, ier)``."""
    x, _, info, _, ier = so.leastsq(
        lambda p: np.exp(p[0] * t) - y,
        [36.0],
        Dfun=lambda p: (t * np.exp(p[0] * t))[:, None],
        full_output=True,
        maxfev=maxfev,
    )
    return x, info, ier


def test_exponential_from_an_overflowing_start_is_never_a_success_at_x0():
    """r = exp(p t) - exp(t / 2) from p = 36: ||f||^2 ~ 1e313 overflows at x0.
    Before, every trial looked equally bad and the fit reported success at x0
    with cost inf; now the scaled norms let it move (MINPACK's path: the
    iterates match scipy's lmder to ~1e-10 over the first 340 evaluations)."""
    t = np.linspace(0, 10, 20)
    y = np.exp(0.5 * t)

    def res(p):
        return jnp.exp(p[0] * t) - y

    sol = jaxlsq.solve(res, jnp.array([36.0]), max_nfev=340)
    x_mp, _, ier = _lmder_exp(t, y, maxfev=340)
    assert int(sol.status) == Status.MAX_NFEV and ier == 5
    np.testing.assert_allclose(float(sol.params[0]), x_mp[0], rtol=1e-9)
    # Run to the end, both reach the exact minimum p = 1/2 (zero residuals). Before
    # the step system was rescaled (see the next test), jaxlsq stopped at p = 0.533
    # with cost 3515 and status 3: a false success.
    full = jaxlsq.solve(res, jnp.array([36.0]))
    x_mp, _, ier = _lmder_exp(t, y, maxfev=5000)
    assert ier in (1, 2, 3, 4) and bool(full.success)
    np.testing.assert_allclose(float(full.params[0]), 0.5, rtol=1e-10)
    np.testing.assert_allclose(x_mp[0], 0.5, rtol=1e-10)


@pytest.mark.parametrize("batched", [False, True])
def test_a_jacobian_that_shrinks_by_1e150_is_no_false_convergence(batched):
    """r = exp(p t) from p = 36: J shrinks by ~1e155 on the way down, while
    MINPACK's diag (the largest column norm so far) does not, so Js = J / diag
    ~ 1e-153 and its squares (Gram matrix, singular values squared) underflow.
    The step system is built for Js / s (s a power of 2): the fit reaches the
    infimum 1/2 (the residual at t = 0 is 1 for every p), as MINPACK (QR, no
    squares) does. Before, it stopped at p = 0.44 with cost 1.3e4, 'success'."""
    t = np.linspace(0, 10, 30)
    _, info, ier = _lmder_exp(t, 0.0, maxfev=2000)
    cost_mp = 0.5 * np.sum(info["fvec"] ** 2)
    assert ier in (1, 2, 3, 4) and abs(cost_mp - 0.5) < 1e-9
    if batched:  # n = 1: the batched Gram path, next to an ordinary lane
        res = lambda p, a: a * jnp.exp(p[0] * t)  # noqa: E731
        sol = jaxlsq.solve_batch(res, jnp.array([[36.0], [5.0]]), (jnp.ones(2),))
        cost, success = float(sol.cost[0]), bool(sol.success[0])
        assert bool(sol.success[1]) and abs(float(sol.cost[1]) - 0.5) < 1e-9
    else:
        sol = jaxlsq.solve(lambda p: jnp.exp(p[0] * t), jnp.array([36.0]))
        cost, success = float(sol.cost), bool(sol.success)
    assert success and abs(cost - 0.5) < 1e-9


def test_a_shrinking_jacobian_in_float32():
    """The same in float32 (k = 32 there): exp(p t) from p = 8 overflows the sum of
    squares at x0 and J then shrinks by ~1e35. The infimum is 1/2; float32's
    tolerances stop within 1e-3 of it. Before: p = 3.6, cost 9e30, 'success'."""
    t = jnp.linspace(0, 10, 20, dtype=jnp.float32)
    sol = jaxlsq.solve(lambda p: jnp.exp(p[0] * t), jnp.array([8.0], jnp.float32))
    assert sol.params.dtype == jnp.float32
    assert bool(sol.success) and abs(float(sol.cost) - 0.5) < 5e-4


def test_reciprocal_ends_where_its_jacobian_is_exactly_zero():
    """r = 1/p has its infimum 0 at p -> inf. The fit follows it until p^2
    overflows, where J = -1/p^2 is exactly 0 and the cost underflows to 0: a zero
    gradient in floating point, which MINPACK's gtol test (a zero column has
    cosine 0) calls converged. A success is only ever reported there, at a cost
    of 0 to the float range; scipy runs out of evaluations on the way (ier 5)."""
    sol = jaxlsq.solve(lambda p: 1 / p, jnp.array([1.0]))
    assert int(sol.status) == Status.GTOL and bool(sol.success)
    assert float(sol.jac[0, 0]) == 0.0 and float(sol.cost) < 1e-300
    assert np.square(np.float64(sol.params[0])) == np.inf  # where p^2 overflows


def test_success_always_has_a_finite_cost_and_params():
    """The guard in one place (the Solution): a success status with a non-finite
    cost becomes NONFINITE, in solve, solve_batch and the shims alike."""
    c = 1e160
    res = lambda p, a: a * (c + (p[0] - 3.0) * jnp.ones(5))  # noqa: E731
    sol = jaxlsq.solve_batch(res, jnp.zeros((3, 1)), (jnp.array([1.0, 1e-170, 1.0]),))
    ok = np.asarray(sol.success)
    assert np.all(np.isfinite(np.asarray(sol.cost))[ok])
    assert not ok[0] and not ok[2]
    x, ier = jaxlsq.leastsq(lambda p: c + (p[0] - 3.0) * jnp.ones(5), [0.0])
    assert ier not in (1, 2, 3, 4)


def test_gtol_cosine_does_not_underflow():
    """J^T f underflows (~1e-340) at a point far from the minimum when f and J are
    both ~1e-170: the cosines come from J^T (f / u), u a power of 2 near max|f|,
    so the gradient test does not read 'converged' (it did, at x0)."""
    sol = jaxlsq.solve(_line(1e-170), jnp.array([0.5, 0.5]), gtol=1e-8)
    assert bool(sol.success) and int(sol.status) != Status.GTOL
    np.testing.assert_allclose(np.asarray(sol.params), [2.0, 1.0], rtol=1e-12)


# --- input that must raise, naming the argument -------------------------------------


def _expdecay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


T30 = jnp.linspace(0, 4, 30)
Y30 = 2 * jnp.exp(-1.3 * T30) + 0.1
X0 = jnp.array([1.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "fixed, match",
    [
        ({"a": False}, "structure of x0"),
        ("no", "booleans"),
        (jnp.array([1.0, 0.0, 0.0]), "booleans"),
        ([True, False], "broadcast"),
        ((True, (False, False)), "one flat array"),
    ],
)
def test_malformed_fixed_mask_raises_naming_fixed(fixed, match):
    with pytest.raises(ValueError, match=f"fixed.*{match}|{match}.*fixed"):
        jaxlsq.solve(_expdecay, X0, (T30, Y30), fixed=fixed)


def test_wellformed_fixed_masks_still_work():
    free = jaxlsq.solve(_expdecay, X0, (T30, Y30))
    for fixed in ([False, False, True], np.array([False, False, True])):
        sol = jaxlsq.solve(_expdecay, X0, (T30, Y30), fixed=fixed)
        assert bool(sol.success) and float(sol.params[2]) == 0.0
        assert float(sol.cost) > float(free.cost)
    tree = {"a": jnp.array(1.0), "k": jnp.array([1.0, 0.0])}

    def tree_res(p, t, y):
        return _expdecay(jnp.concatenate([p["a"][None], p["k"]]), t, y)

    sol = jaxlsq.solve(
        tree_res, tree, (T30, Y30), fixed={"a": False, "k": np.array([False, True])}
    )
    assert float(sol.params["k"][1]) == 0.0
    with pytest.raises(ValueError, match="fixed"):
        jaxlsq.solve(tree_res, tree, (T30, Y30), fixed={"a": False, "b": True})


def test_user_jacobian_of_the_wrong_shape_raises_naming_jac():
    jac = jax.jacfwd(_expdecay)
    with pytest.raises(ValueError, match=r"jac must return .*\(30, 3\).*\(30, 4\)"):
        jaxlsq.solve(_expdecay, X0, (T30, Y30), jac=lambda p, t, y: jnp.ones((30, 4)))
    with pytest.raises(ValueError, match=r"jac .*\(3, 30\) \(transposed\?\)"):
        jaxlsq.solve(_expdecay, X0, (T30, Y30), jac=lambda p, t, y: jac(p, t, y).T)
    ref = jaxlsq.solve(_expdecay, X0, (T30, Y30))
    sol = jaxlsq.solve(_expdecay, X0, (T30, Y30), jac=jac)
    np.testing.assert_allclose(sol.params, ref.params, rtol=1e-10)


def test_user_jacobian_may_have_jacfwds_shape_for_matrix_parameters():
    """residual_shape + param_shape, as jax.jacfwd of the unflattened function."""
    a = jnp.array([[2.0, -1.0], [0.5, 3.0]])
    xs = jnp.stack([jnp.linspace(-1, 1, 5), jnp.linspace(0, 2, 5)], axis=1)  # (5, 2)
    target = xs @ a.T  # (5, 2)

    def res(w):  # (2, 2) -> (5, 2)
        return xs @ w.T - target

    w0 = jnp.eye(2)
    assert jax.jacfwd(res)(w0).shape == (5, 2, 2, 2)
    sol = jaxlsq.solve(res, w0, jac=jax.jacfwd(res))
    np.testing.assert_allclose(sol.params, a, rtol=1e-12)


@pytest.mark.parametrize("f_scale", [-1.0, 0.0, float("nan")])
def test_traced_bad_f_scale_is_improper_input(f_scale):
    solve = jax.jit(
        lambda fs: jaxlsq.solve(_expdecay, X0, (T30, Y30), loss="cauchy", f_scale=fs)
    )
    sol = solve(f_scale)
    assert int(sol.status) == Status.IMPROPER_INPUT and not bool(sol.success)
    assert bool(solve(1.0).success)
    with pytest.raises(ValueError, match="f_scale"):
        jaxlsq.solve(_expdecay, X0, (T30, Y30), loss="cauchy", f_scale=f_scale)


def _model(t, p):
    return p[0] * jnp.exp(-p[1] * t) + p[2]


@pytest.mark.parametrize("sigma", [-1.0, 0.0, float("nan")])
def test_fit_batch_checks_a_shared_sigma_like_fit(sigma):
    ys = jnp.stack([Y30, 2 * Y30])
    with pytest.raises(ValueError, match="sigma"):
        jaxlsq.fit(_model, T30, Y30, p0=X0, sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        jaxlsq.fit_batch(_model, T30, ys, p0=X0, sigma=sigma)


def test_traced_bad_sigma_reports_improper_input():
    """Per curve in a batch, or traced under jit: reported through the status
    (a negative sigma used to act as its absolute value: success)."""
    ys = jnp.stack([Y30, 2 * Y30, 3 * Y30])
    sigmas = jnp.array([1.0, -1.0, 0.0])[:, None] * jnp.ones((3, 30))
    res = jaxlsq.fit_batch(
        _model, T30, ys, p0=X0, sigma=sigmas, in_axes=(None, 0, None, 0)
    )
    assert bool(res.success[0])
    assert not np.any(np.asarray(res.success)[1:])
    assert int(res.status[1]) == Status.IMPROPER_INPUT
    fitted = jax.jit(lambda s: jaxlsq.fit(_model, T30, Y30, p0=X0, sigma=s).status)
    assert int(fitted(-jnp.ones(30))) == Status.IMPROPER_INPUT
    assert Status(int(fitted(jnp.ones(30)))).success


@pytest.mark.parametrize(
    "in_axes", [(0, (None, 0.5)), ("0", (None, 0)), (0, (None, True))]
)
def test_non_integer_in_axes_raise_naming_in_axes(in_axes):
    ys = jnp.stack([Y30, 2 * Y30])
    with pytest.raises(ValueError, match="in_axes"):
        jaxlsq.solve_batch(_expdecay, jnp.stack([X0, X0]), (T30, ys), in_axes=in_axes)


# --- uncertainties ------------------------------------------------------------------


def test_stderr_does_not_depend_on_parameter_units():
    """Parameters of sizes 1e12, 1 and 1e-12: the rank cutoff used to run on the
    unscaled Jacobian (stderr [inf, 1.8e-3, 4e-15]); the same data fitted in units
    where all three are ~1 is the oracle, and scipy's curve_fit agrees."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 40)

    def model(x, a, b, c):
        return a * (x * 1e-12) + b + c * (x**2 * 1e12)

    def unit(x, a, b, c):
        return a * x + b + c * x**2

    y = unit(x, 1.0, 2.0, 3.0) + 0.01 * rng.standard_normal(40)
    r = jaxlsq.fit(
        lambda x, p: model(x, *p), x, y, p0=jnp.array([1.1e12, 2.1, 3.1e-12])
    )
    r_unit = jaxlsq.fit(lambda x, p: unit(x, *p), x, y, p0=jnp.array([1.1, 2.1, 3.1]))
    to_units = np.array([1e12, 1.0, 1e-12])
    assert np.all(np.isfinite(np.asarray(r.stderr)))
    # same linear least-squares problem in two units: equal to its conditioning
    np.testing.assert_allclose(r.stderr, np.asarray(r_unit.stderr) * to_units, 1e-8)
    _, pcov = so.curve_fit(unit, x, y, p0=[1.1, 2.1, 3.1])
    np.testing.assert_allclose(r_unit.stderr, np.sqrt(np.diag(pcov)), rtol=1e-6)


def test_a_failed_fit_never_claims_zero_uncertainty():
    """A fit whose cost is NaN (the model is NaN for a < 0, with a finite
    derivative): its variances are NaN, so stderr is NaN, never 0."""

    def model(t, p):
        return p[0] * jnp.exp(-p[1] * t) + jnp.where(p[0] < 0, jnp.nan, 0.0)

    r = jaxlsq.fit(model, T30, Y30, p0=jnp.array([-1.0, 1.0]))
    assert not bool(r.success)
    stderr = np.asarray(r.stderr)
    assert not np.any(stderr == 0), stderr
    assert "+/- 0 " not in r.report()


def test_fixed_parameters_alone_have_zero_stderr():
    r = jaxlsq.fit(_model, T30, Y30, p0=X0, fixed=[False, False, True])
    stderr = np.asarray(r.stderr)
    assert stderr[2] == 0 and np.all(stderr[:2] > 0)


# --- batches: a lane never sees its neighbours -------------------------------------


def _poisoned_batch():
    rng = np.random.default_rng(7)
    k = rng.uniform(0.5, 2.0, 512)
    ys = np.stack([3 * np.exp(-1.3 * k_ * np.asarray(T30)) + 0.5 for k_ in k])
    ys += 0.01 * rng.standard_normal(ys.shape)
    bad = ys.copy()
    bad[5] = np.nan
    bad[100] = 0.0
    bad[300] *= 1e30
    return (
        jnp.asarray(ys),
        jnp.asarray(bad),
        np.setdiff1d(np.arange(512), [5, 100, 300]),
    )


@pytest.mark.parametrize("how", ["vmap", "refill", "jax.vmap"])
def test_bad_curves_leave_every_other_curve_bit_identical(how):
    """512 curves, one NaN, one all zeros, one scaled by 1e30: every other curve's
    params, cost, nfev and status are bit for bit those of the same batch with
    three ordinary curves in their place (same compiled program)."""
    clean, poisoned, others = _poisoned_batch()

    if how == "jax.vmap":
        run = jax.jit(
            jax.vmap(lambda y: jaxlsq.solve(_expdecay, X0, (T30, y)), in_axes=0)
        )
    else:

        def run(ys):
            return jaxlsq.solve_batch(
                _expdecay, X0, (T30, ys), in_axes=(None, (None, 0)),
                schedule=how, chunk_size=64,
            )  # fmt: skip

    a, b = run(clean), run(poisoned)
    for field in ("params", "cost", "nfev", "status"):
        x, y = (
            np.asarray(getattr(a, field))[others],
            np.asarray(getattr(b, field))[others],
        )
        assert np.array_equal(x, y), field
    assert int(b.status[5]) == Status.NONFINITE and not bool(b.success[5])
    assert np.all(np.asarray(a.success)[others])


# --- property: adversarial values inside one compiled program ----------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf")])


@jax.jit
def _adversarial(y, x0, ftol, factor, f_scale):
    return jaxlsq.solve(
        _expdecay, x0, (T30, y), ftol=ftol, factor=factor, loss="soft_l1",
        f_scale=f_scale,
    )  # fmt: skip


@jax.jit
def _adversarial_batch(ys, scale):
    return jax.vmap(lambda y: jaxlsq.solve(_expdecay, X0, (T30, y * scale)))(ys)


@settings(max_examples=40, deadline=None)
@given(
    exponent=st.integers(-150, 150),
    poison=st.lists(st.tuples(st.integers(0, 29), _BAD_FLOATS), max_size=2),
    x0_bad=st.one_of(st.none(), st.tuples(st.integers(0, 2), _BAD_FLOATS)),
    ftol=st.sampled_from([1e-10, 0.0, -1.0, float("nan")]),
    factor=st.sampled_from([100.0, 1e-3, 0.0, -1.0]),
    f_scale=st.sampled_from([1.0, 1e-3, 0.0, -1.0, float("nan")]),
)
def test_adversarial_values_never_give_a_false_success(
    exponent, poison, x0_bad, ftol, factor, f_scale
):
    scale = 10.0**exponent
    y = np.asarray(Y30) * scale
    for i, v in poison:
        y[i] = v
    x0 = np.asarray(X0) * np.array([scale, 1.0, scale])
    if x0_bad is not None:
        x0[x0_bad[0]] = x0_bad[1]
    sol = _adversarial(jnp.asarray(y), jnp.asarray(x0), ftol, factor, f_scale)
    status, success = int(sol.status), bool(sol.success)
    assert success == Status(status).success
    if success:
        assert np.isfinite(float(sol.cost))
        assert np.all(np.isfinite(np.asarray(sol.params)))
    bad_option = not (ftol >= 0 and factor > 0 and f_scale > 0)
    if bad_option or x0_bad is not None:
        assert status == Status.IMPROPER_INPUT, status
    elif poison:
        assert status == Status.NONFINITE, status
    # lanes: a poisoned curve in a batch changes no other curve, at any scale
    clean = np.stack([np.asarray(Y30) * s for s in (1.0, 1.5, 0.7, 2.0)])
    dirty = clean.copy()
    dirty[1] = y / scale if np.isfinite(scale) and scale != 0 else y
    a = _adversarial_batch(jnp.asarray(clean), scale)
    b = _adversarial_batch(jnp.asarray(dirty), scale)
    keep = [0, 2, 3]
    for field in ("params", "cost", "nfev", "status"):
        assert np.array_equal(
            np.asarray(getattr(a, field))[keep], np.asarray(getattr(b, field))[keep]
        ), field
