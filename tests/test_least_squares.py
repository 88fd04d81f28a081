"""`jaxlsq.scipy.least_squares` and `curve_fit(bounds=...)` against scipy.

Oracle: scipy.optimize.least_squares / curve_fit on the same problems (tight tolerances
where solutions are compared, exact Jacobians given to scipy where Jacobians are), and
scipy's own ``approx_derivative`` for the host path's finite differences. Every error
case is raised by scipy and by jaxlsq, and the two exceptions are compared.

Compile budget: one residual function, one shape; bounds, tolerances, scales and
``factor`` are traced values, so most tests reuse a handful of compiled loops.
"""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.sparse
import scipy.sparse.linalg
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize._numdiff import approx_derivative

from jaxlsq import HostFallbackWarning
from jaxlsq._testing import TERMINATION_MESSAGES, approx_jacobian
from jaxlsq.core.sparsity import as_pattern
from jaxlsq.scipy import curve_fit, least_squares
from jaxlsq.scipy.differences import grouped_jacobian

T = np.linspace(0.0, 3.0, 30)
Y = 2.0 * np.exp(-1.5 * T) + 0.5 + 0.01 * np.sin(9 * T)
Y_OUT = Y.copy()
Y_OUT[::6] += 1.0  # outliers for the robust losses
X0 = np.array([1.0, 1.0, 0.0])
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
SCIPY_KEYS = {
    "x", "cost", "fun", "jac", "grad", "optimality", "active_mask", "nfev", "njev",
    "status", "message", "success",
}  # fmt: skip


def res_jnp(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def res_np(p, t, y):
    return p[0] * np.exp(-p[1] * t) + p[2] - y


def jac_np(p, t, y):
    e = np.exp(-p[1] * t)
    return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)


def jac_jnp(p, t, y):
    e = jnp.exp(-p[1] * t)
    return jnp.stack([e, -p[0] * t * e, jnp.ones_like(t)], axis=1)


def model_jnp(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def _host(call, *args, **kwargs):
    """Call with the HostFallbackWarning (tested on its own) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        return call(*args, **kwargs)


def assert_matches(ours, ref, *, x_rtol=1e-9, jac_rtol=1e-9, grad_atol=1e-9):
    """Solution, cost (no worse), residuals, Jacobian, gradient, mask, success."""
    assert set(ours) == SCIPY_KEYS
    assert bool(ours.success) and bool(ref.success), (ours.message, ref.message)
    assert (
        ours.status in (1, 2, 3, 4)
        and ours.message == TERMINATION_MESSAGES[ours.status]
    )
    assert_allclose(ours.x, ref.x, rtol=x_rtol, atol=x_rtol)
    assert ours.cost <= ref.cost * (1 + 1e-9) + 1e-300
    assert_allclose(ours.fun, ref.fun, rtol=1e-6, atol=x_rtol)
    assert_allclose(ours.jac, ref.jac, rtol=jac_rtol, atol=jac_rtol)
    assert_allclose(ours.grad, ref.grad, atol=grad_atol)
    assert_array_equal(ours.active_mask, ref.active_mask)
    for name in ("x", "fun", "jac", "grad"):
        assert ours[name].dtype == np.float64, name
    assert ours.active_mask.dtype.kind == "i"
    assert type(ours.nfev) is int and isinstance(ours.cost, float | np.floating)


# ----------------------------------------------------------------------------------
# unbounded, every method; bounds; losses; scaling; args/kwargs; jac callables


def assert_same_stop(fun, fun_np, x0, **kwargs):
    """Same status and evaluation count as scipy at the default tolerances. (At
    TIGHT ones the stop is decided by rounding -- which of ftol/xtol notices first
    that nothing changes any more -- and moves with the CPU's vector code.)"""
    ours = least_squares(fun, x0, **kwargs)
    ref = so.least_squares(fun_np, x0, jac_np, **kwargs)
    assert (ours.status, ours.nfev) == (ref.status, ref.nfev)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_unbounded_matches_scipy(method):
    ours = least_squares(res_jnp, X0, method=method, args=(T, Y), **TIGHT)
    ref = so.least_squares(res_np, X0, jac_np, method=method, args=(T, Y), **TIGHT)
    assert_matches(ours, ref)
    assert ours.optimality == pytest.approx(ref.optimality, abs=1e-9)
    if method == "lm":  # the same algorithm (MINPACK's lmder, factor 100, 'jac')
        assert_same_stop(res_jnp, res_np, X0, method="lm", args=(T, Y))
        assert ours.njev is None and so.least_squares(
            res_np, X0, method="lm", args=(T, Y)
        ).njev is None  # fmt: skip
    else:
        assert type(ours.njev) is int


BOXES = {
    "upper-active": ((0, 0, 0), (2, 5, 1)),
    "rate-pinned": ((0, 0.2, 0), (10, 1.2, 1)),
    "offset-pinned-lower": ((0, 0, 0.6), (10, 10, 2)),
    "one-sided": ((-np.inf, -np.inf, -np.inf), (np.inf, 1.2, np.inf)),
    "inactive": ((-10, -10, -10), (10, 10, 10)),
}


@pytest.mark.parametrize("method", ["trf", "dogbox"])
@pytest.mark.parametrize("case", sorted(BOXES))
def test_bounds_match_scipy(case, method):
    lb, ub = (np.asarray(b, float) for b in BOXES[case])
    x0 = np.clip(X0, lb, ub)
    ours = least_squares(res_jnp, x0, bounds=(lb, ub), method=method, args=(T, Y),
                         **TIGHT)  # fmt: skip
    ref = so.least_squares(res_np, x0, jac_np, bounds=(lb, ub), method=method,
                           args=(T, Y), **TIGHT)  # fmt: skip
    # scipy's trf stays strictly inside the box (x on a bound only to ~1e-10)
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-6, grad_atol=1e-7)
    assert np.all(ours.x >= lb) and np.all(ours.x <= ub)
    active = ours.active_mask != 0
    assert_array_equal(ours.x[active], np.where(ours.active_mask < 0, lb, ub)[active])
    # first-order optimality, scipy's measure: ~0 at both solutions
    assert ours.optimality < 1e-7 and ref.optimality < 1e-6


def test_bounds_object_and_scalar_bounds():
    ours = least_squares(res_jnp, X0, bounds=so.Bounds(0.0, [10, 1.2, 10]),
                         args=(T, Y))  # fmt: skip
    ref = so.least_squares(res_np, X0, jac_np, bounds=(0.0, [10, 1.2, 10]),
                           args=(T, Y), **TIGHT)  # fmt: skip
    assert_allclose(ours.x, ref.x, rtol=1e-6)
    assert_array_equal(ours.active_mask, [0, 1, 0])


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_robust_losses_match_scipy(loss):
    # (f_scale 0.1 would leave arctan's cost with several minima, found by one each)
    kw = dict(loss=loss, f_scale=0.3, args=(T, Y_OUT), **TIGHT)
    ours = least_squares(res_jnp, X0, **kw)
    ref = so.least_squares(res_np, X0, jac_np, **kw)
    # jac is scipy's loss-modified Jacobian; cost the robust cost; fun the raw residuals
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-6, grad_atol=1e-7)
    # far from the outlier-free fit: the loss did something
    plain = least_squares(res_jnp, X0, args=(T, Y_OUT))
    assert np.abs(plain.x - ours.x).max() > 1e-2


def cubic_soft_l1_np(z):
    """A callable loss as scipy's docs and tests write them: rows filled in place
    (numpy only: it runs on the host)."""
    rho = np.empty((3, z.size))
    t = 1 + z
    rho[0] = 3 * (t ** (1 / 3) - 1)
    rho[1] = t ** (-2 / 3)
    rho[2] = -2 / 3 * t ** (-5 / 3)
    return rho


def cubic_soft_l1_jnp(z):
    """The same loss, traceable by JAX (it runs inside the compiled loop)."""
    t = 1 + z
    return jnp.stack([3 * (t ** (1 / 3) - 1), t ** (-2 / 3), -2 / 3 * t ** (-5 / 3)])


@pytest.mark.parametrize("where", ["host-loss", "jax-loss", "host-fun"])
def test_callable_loss_matches_scipy(where):
    loss = cubic_soft_l1_jnp if where == "jax-loss" else cubic_soft_l1_np
    fun = res_np if where == "host-fun" else res_jnp
    kw = dict(f_scale=0.3, args=(T, Y_OUT), **TIGHT)
    ours = _host(least_squares, fun, X0, loss=loss, **kw)
    ref = so.least_squares(res_np, X0, jac_np, loss=cubic_soft_l1_np, **kw)
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-6, grad_atol=1e-7)
    # the loss did something: far from the soft_l1 fit at the same f_scale
    soft = least_squares(res_jnp, X0, loss="soft_l1", f_scale=0.3, args=(T, Y_OUT))
    assert np.abs(soft.x - ours.x).max() > 1e-4


def test_callable_loss_equal_to_a_builtin_gives_the_builtin_fit():
    """soft_l1 written as a callable: the same cost function, so the same fit. Both
    stop on xtol with |grad| ~ 1e-8 (the robust cost is flat there), which fixes x
    to ~1e-7, as close as the built-in soft_l1 comes to scipy's own fit."""

    def soft_l1(z):
        t = 1 + z
        return jnp.stack([2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5])

    kw = dict(f_scale=0.3, args=(T, Y_OUT), **TIGHT)
    ours = least_squares(res_jnp, X0, loss=soft_l1, **kw)
    builtin = least_squares(res_jnp, X0, loss="soft_l1", **kw)
    assert_allclose(ours.x, builtin.x, rtol=1e-7)
    assert_allclose(ours.cost, builtin.cost, rtol=1e-12)
    assert_allclose(ours.jac, builtin.jac, rtol=1e-6, atol=1e-9)


def test_callable_loss_errors():
    with pytest.raises(ValueError, match="method='lm' supports only 'linear'") as e:
        least_squares(res_jnp, X0, loss=cubic_soft_l1_np, method="lm", args=(T, Y))
    with pytest.raises(ValueError) as ref:
        so.least_squares(res_np, X0, loss=cubic_soft_l1_np, method="lm", args=(T, Y))
    assert str(e.value) == str(ref.value)
    with pytest.raises(ValueError, match=r"`loss` must return an array of shape \(3"):
        least_squares(res_jnp, X0, loss=lambda z: jnp.stack([z, z]), args=(T, Y))
    with pytest.raises(ValueError, match="rho alone only from a loss JAX can trace"):
        least_squares(res_jnp, X0, loss=lambda z: np.log1p(z), args=(T, Y))


def test_repeated_calls_with_a_callable_loss_do_not_recompile():
    from jaxlsq._testing import count_compiles

    kw = dict(f_scale=0.3, args=(T, Y_OUT))
    for loss in (cubic_soft_l1_jnp, cubic_soft_l1_np):
        _host(least_squares, res_jnp, X0, loss=loss, **kw)
        with count_compiles() as compiles:
            _host(least_squares, res_jnp, X0 + 0.1, loss=loss, **kw)
        assert compiles[0] == 0, loss.__name__


def test_traceable_loss_may_return_rho_alone():
    """jaxlsq's extension: a JAX-traceable loss may return rho alone (shape of z);
    rho' and rho'' come from autodiff. Same cost function, so the same fit as
    with the rows written out, to rounding."""
    kw = dict(f_scale=0.3, args=(T, Y_OUT), **TIGHT)
    alone = least_squares(
        res_jnp, X0, loss=lambda z: 3 * ((1 + z) ** (1 / 3) - 1), **kw
    )
    rows = least_squares(res_jnp, X0, loss=cubic_soft_l1_jnp, **kw)
    assert_allclose(alone.x, rows.x, rtol=1e-12)
    assert_allclose(alone.cost, rows.cost, rtol=1e-14)
    assert_allclose(alone.jac, rows.jac, rtol=1e-12, atol=1e-15)


def test_x_scale_matches_scipy():
    scale = np.array([1.0, 10.0, 0.1])
    ours = least_squares(res_jnp, X0, method="lm", x_scale=scale, args=(T, Y), **TIGHT)
    ref = so.least_squares(res_np, X0, jac_np, method="lm", x_scale=scale,
                           args=(T, Y), **TIGHT)  # fmt: skip
    assert_matches(ours, ref)
    assert_same_stop(res_jnp, res_np, X0, method="lm", x_scale=scale, args=(T, Y))
    for x_scale in (2.0, "jac"):
        ours = least_squares(res_jnp, X0, x_scale=x_scale, args=(T, Y), **TIGHT)
        assert_allclose(ours.x, ref.x, rtol=1e-9)


def res_mode(p, t, y, mode="exp"):
    decay = jnp.exp(-p[1] * t) if mode == "exp" else 1 / (1 + p[1] * t)
    return p[0] * decay + p[2] - y


def test_args_kwargs_and_jac_callables():
    ref = so.least_squares(res_np, X0, jac_np, args=(T,), kwargs={"y": Y}, **TIGHT)
    ours = least_squares(res_jnp, X0, jac_jnp, args=(T, Y), **TIGHT)
    assert_matches(ours, ref)
    assert type(ours.njev) is int and ours.njev >= 1
    # kwargs, a string among them (static: stays on the JAX path), a string jac
    # (the exact Jacobian on the JAX path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostFallbackWarning)
        ours = least_squares(res_mode, X0, "3-point", args=(T,),
                             kwargs={"y": Y, "mode": "exp"}, **TIGHT)  # fmt: skip
    assert_matches(ours, ref)


def test_nonfinite_jacobian_is_a_failure():
    ours = least_squares(lambda p: jnp.sqrt(jnp.abs(p)), [1.0, 2.0], method="lm")
    assert ours.status == -1 and not ours.success
    assert "not finite" in ours.message


def _overflowing(xp):
    """Finite residuals whose sum of squares overflows (5 * 1e320 > 1.8e308)."""
    return lambda p: 1e160 + (p[0] - 3.0) * xp.ones(5)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
@pytest.mark.parametrize("xp", [jnp, np], ids=["jax", "host"])
def test_overflowing_cost_at_x0_is_never_a_success(method, xp):
    """scipy 1.17 stops at x0 with cost inf and calls it a success (its gtol test
    compares inf with inf; the minimum is 1e160 away): a silent wrong answer.
    jaxlsq stops at the same x0 and says why: status -1, "not finite", success
    False (a "what still differs" row of the README's migration table)."""
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        ref = so.least_squares(_overflowing(np), [0.0], method=method)
        ours = least_squares(_overflowing(xp), [0.0], method=method)
    assert ref.success and ref.cost == np.inf  # scipy's answer, as described
    assert_array_equal(ours.x, ref.x)  # neither moves from x0
    assert not ours.success and ours.status == -1
    assert "not finite" in ours.message and not np.isfinite(ours.cost)


def test_m_less_than_n_with_trf():
    def short(p):  # 2 residuals, 3 parameters; a unique minimiser in the box
        return jnp.stack([p[0] + p[1] - 1, p[1] - p[2] - 0.1])

    x0, box = np.full(3, 0.1), (0.0, 0.3)
    ours = least_squares(short, x0, bounds=box, **TIGHT)
    ref = so.least_squares(lambda p: np.asarray(short(p)), x0, bounds=box, **TIGHT)
    assert ours.fun.shape == (2,) and ours.jac.shape == (2, 3)
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-9, grad_atol=1e-7)


@pytest.mark.parametrize("method", ["trf", "dogbox"])
@pytest.mark.parametrize("fun", [res_jnp, res_np], ids=["jax", "host"])
def test_max_nfev_1_returns_x0_as_scipy(method, fun):
    """scipy's trf/dogbox count fun(x0) against max_nfev: with 1 no trial step is
    left, and the result is x0 with its residuals, Jacobian and gradient."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        ours = least_squares(fun, X0, max_nfev=1, method=method, args=(T, Y))
    ref = so.least_squares(res_np, X0, jac_np, max_nfev=1, method=method, args=(T, Y))
    assert_array_equal(ours.x, X0)
    assert (ours.status, ours.message, ours.success, ours.nfev, ours.njev) == (
        ref.status, ref.message, ref.success, ref.nfev, ref.njev,
    )  # fmt: skip
    assert_allclose(ours.fun, ref.fun, rtol=1e-14, atol=1e-14)
    jac_tol = 1e-14 if fun is res_jnp else 1e-6  # exact, or 2-point differences
    assert_allclose(ours.jac, ref.jac, rtol=jac_tol, atol=jac_tol)
    assert_allclose(ours.grad, ref.grad, rtol=10 * jac_tol, atol=10 * jac_tol)


def test_max_nfev_status_and_message():
    ours = least_squares(res_jnp, X0, max_nfev=2, args=(T, Y))
    ref = so.least_squares(res_np, X0, max_nfev=2, args=(T, Y))
    assert (ours.status, ours.message, ours.success) == (
        ref.status,
        ref.message,
        ref.success,
    )
    assert ours.status == 0 and ours.nfev == 2


def test_verbose_prints_scipys_report(capsys):
    least_squares(res_jnp, X0, args=(T, Y), verbose=1)
    ours = capsys.readouterr().out.splitlines()
    so.least_squares(res_np, X0, args=(T, Y), verbose=1)
    ref = capsys.readouterr().out.splitlines()
    assert ours[0] in TERMINATION_MESSAGES.values()
    pattern = (
        r"Function evaluations \d+, initial cost (\S+), final cost \S+, "
        r"first-order optimality \S+\."
    )
    ours_initial = re.fullmatch(pattern, ours[1]).group(1)
    assert ours_initial == re.fullmatch(pattern, ref[-1]).group(1)
    least_squares(res_jnp, X0, args=(T, Y), verbose=2)  # a table, then the report
    out = capsys.readouterr().out.splitlines()
    so.least_squares(res_np, X0, args=(T, Y), verbose=2)
    ref = capsys.readouterr().out.splitlines()
    assert out[0] == ref[0] and out[-2] in TERMINATION_MESSAGES.values()
    assert re.fullmatch(pattern, out[-1]) and len(out) > 4


# ----------------------------------------------------------------------------------
# host path: numpy functions, scipy's finite differences


def test_host_path_warns_once_and_matches_scipy():
    def res_once(p, t, y):  # its own function: the warning is once per function
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    with pytest.warns(HostFallbackWarning, match="res_once"):
        ours = least_squares(res_once, X0, args=(T, Y), **TIGHT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostFallbackWarning)
        again = least_squares(res_once, X0, args=(T, Y), **TIGHT)
    assert_array_equal(again.x, ours.x)
    ref = so.least_squares(res_once, X0, args=(T, Y), **TIGHT)
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-6, grad_atol=1e-7)


@pytest.mark.parametrize("jac", ["2-point", "3-point", "cs"])
def test_host_difference_schemes_match_scipy(jac):
    box = ([0, 0, 0], [10, 1.2, 10])  # rate ends on its bound: one-sided differences
    ours = _host(least_squares, res_np, X0, jac, box, args=(T, Y), **TIGHT)
    ref = so.least_squares(res_np, X0, jac, box, args=(T, Y), **TIGHT)
    assert_matches(ours, ref, x_rtol=1e-7, jac_rtol=1e-5, grad_atol=1e-7)
    ours = _host(least_squares, res_np, X0, jac, box, diff_step=1e-3, args=(T, Y))
    ref = so.least_squares(res_np, X0, jac, box, diff_step=1e-3, args=(T, Y))
    assert_allclose(ours.x, ref.x, rtol=1e-6)
    assert type(ours.njev) is int and ours.njev >= 1


def test_host_callable_jac():
    def jac_numpy_only(p, t, y):  # with a traceable fun: the host path for both
        return jac_np(np.asarray(p), t, y)

    ref = so.least_squares(res_np, X0, jac_np, args=(T, Y), **TIGHT)
    with pytest.warns(HostFallbackWarning, match="jac_numpy_only"):
        ours = least_squares(res_jnp, X0, jac_numpy_only, args=(T, Y), **TIGHT)
    assert_matches(ours, ref)
    assert type(ours.njev) is int and ours.njev >= 1


@pytest.mark.parametrize("method", ["2-point", "3-point", "cs"])
@pytest.mark.parametrize("rel_step", [None, 1e-4])
def test_approx_jacobian_is_scipys(method, rel_step):
    x0 = np.array([1.0, 1.2 - 1e-9, 0.0, -2.0])  # next to an upper bound; x0 == 0
    lb, ub = np.array([-np.inf, 0, -1, -2.0]), np.array([np.inf, 1.2, 1e-9, 5])
    tt = T[:7]

    def fun(p):
        return p[0] * np.exp(-p[1] * tt) + p[2] * tt**2 + np.sin(p[3] * tt)

    if method == "cs":
        lb, ub = -np.inf, np.inf
    lb, ub = np.broadcast_arrays(lb, ub, x0)[:2]
    ours = approx_jacobian(fun, x0, fun(x0), method, rel_step, lb, ub, np.float64)
    ref = approx_derivative(fun, x0, method=method, rel_step=rel_step,
                            bounds=(lb, ub))  # fmt: skip
    assert_allclose(ours, ref, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------------
# validation: scipy's exception types and messages


def _short_jnp(p, t, y):
    return p[:2] - 1


def _two_d_jnp(p, t, y):
    return res_jnp(p, t, y).reshape(5, 6)


def _jac_t_jnp(p, t, y):
    return jac_jnp(p, t, y).T


def _jac_t_np(p, t, y):
    return jac_np(p, t, y).T


def _jac_csr_np(p, t, y):
    return scipy.sparse.csr_array(jac_np(p, t, y))


def _jac_op_np(p, t, y):
    return scipy.sparse.linalg.aslinearoperator(jac_np(p, t, y))


Y_NAN = np.where(np.arange(T.size) == 3, np.nan, Y)

ERROR_CASES = {
    "method": dict(method="bogus"),
    "jac": dict(jac="4-point"),
    "tr_solver": dict(tr_solver="bogus"),
    "loss": dict(loss="bogus"),
    "lm-loss": dict(method="lm", loss="huber"),
    "verbose": dict(verbose=3),
    "max_nfev": dict(max_nfev=0),
    "x0-complex": dict(x0=np.array([1 + 1j, 1, 0])),
    "x0-2d": dict(x0=np.ones((3, 1))),
    "bounds-len": dict(bounds=(0, 1, 2)),
    "lm-bounds": dict(method="lm", bounds=(0, 10)),
    "bounds-shape": dict(bounds=([0, 0], [1, 1])),
    "lb>=ub": dict(bounds=([0, 1, 0], [1, 1, 1])),
    "infeasible": dict(bounds=(2, 10)),
    "x0-nan": dict(x0=np.array([np.nan, 1, 0])),
    "x0-inf": dict(x0=np.array([np.inf, 1, 0])),
    "x0-inf-host": dict(x0=np.array([np.inf, 1, 0]), host=True),
    "x_scale-value": dict(x_scale=[1, -1, 1]),
    "x_scale-shape": dict(x_scale=[1, 2]),
    "x_scale-str": dict(x_scale="bogus"),
    "tolerances": dict(ftol=None, xtol=None, gtol=None),
    "lm-tolerance": dict(method="lm", xtol=None),
    "lm-sparsity": dict(method="lm", jac_sparsity=np.ones((30, 3))),
    "sparsity-shape": dict(jac_sparsity=np.ones((29, 3))),
    "sparsity-1d": dict(jac_sparsity=np.ones(3)),
    "exact-sparsity": dict(tr_solver="exact", jac_sparsity=np.ones((30, 3))),
    "lsmr-option": dict(tr_solver="lsmr", tr_options={"tol": 1e-3}),
    "nonfinite-jax": dict(args=(T, Y_NAN)),
    "nonfinite-host": dict(args=(T, Y_NAN), host=True),
    "lm-m<n": dict(fun=(_short_jnp, _short_jnp), method="lm"),
    # (scipy words it "`f0` passed has more than 1 dimension." with a string jac)
    "fun-2d": dict(fun=(_two_d_jnp, _two_d_jnp), jac=("2-point", jac_np)),
    "jac-shape-jax": dict(jac=(_jac_t_jnp, _jac_t_np)),
    "jac-shape-host": dict(jac=(_jac_t_np, _jac_t_np), host=True),
    "lm-sparse-jac": dict(method="lm", jac=(_jac_csr_np,) * 2, host=True),
    "exact-sparse-jac": dict(tr_solver="exact", jac=(_jac_csr_np,) * 2, host=True),
    "lm-operator-jac": dict(method="lm", jac=(_jac_op_np,) * 2, host=True),
    "exact-operator-jac": dict(tr_solver="exact", jac=(_jac_op_np,) * 2, host=True),
    "x_scale-jac-operator": dict(x_scale="jac", jac=(_jac_op_np,) * 2, host=True),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_scipys(case):
    kw = dict(ERROR_CASES[case])
    host = kw.pop("host", False)
    ours_fun, ref_fun = kw.pop("fun", (res_np if host else res_jnp, res_np))
    x0 = kw.pop("x0", X0)
    kw.setdefault("args", (T, Y))
    ours_kw, ref_kw = dict(kw), dict(kw)
    if isinstance(kw.get("jac"), tuple):
        ours_kw["jac"], ref_kw["jac"] = kw["jac"]
    with pytest.raises(Exception) as ref_err:
        so.least_squares(ref_fun, x0, **ref_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        with pytest.raises(type(ref_err.value)) as our_err:
            least_squares(ours_fun, x0, **ours_kw)
    assert str(our_err.value) == str(ref_err.value)


def test_tolerance_below_eps_warns_like_scipy():
    with pytest.warns(UserWarning) as ref_w:
        so.least_squares(res_np, X0, ftol=1e-20, args=(T, Y))
    with pytest.warns(UserWarning) as our_w:
        ours = least_squares(res_jnp, X0, ftol=1e-20, args=(T, Y))
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]
    assert our_w[0].filename == __file__
    assert ours.success


def test_negative_tolerance_warns_and_acts_as_zero_like_scipy():
    """scipy warns about ftol=-1 (below eps) and fits on: the test never fires."""
    with pytest.warns(UserWarning) as ref_w:
        ref = so.least_squares(res_np, X0, ftol=-1.0, args=(T, Y))
    with pytest.warns(UserWarning) as our_w:
        ours = least_squares(res_jnp, X0, ftol=-1.0, args=(T, Y))
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]
    assert ours.success and ref.success
    assert_allclose(ours.x, ref.x, rtol=1e-6)


def test_callback_with_lm_warns_like_scipy():
    with pytest.warns(UserWarning) as ref_w:
        so.least_squares(res_np, X0, method="lm", callback=print, args=(T, Y))
    with pytest.warns(UserWarning) as our_w:
        least_squares(res_jnp, X0, method="lm", callback=print, args=(T, Y))
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]


def global_problem(k=30, points=20):
    """k decays sharing one lifetime (n = 2k + 1) and its sparsity pattern."""
    from .test_sparse import global_decays

    t, ys, pattern, p0 = global_decays(k, points)

    def fun_jnp(p):
        return (p[1 : k + 1, None] * jnp.exp(-t / p[0]) + p[k + 1 :, None] - ys).ravel()

    def fun_np(p):
        return (p[1 : k + 1, None] * np.exp(-t / p[0]) + p[k + 1 :, None] - ys).ravel()

    return fun_jnp, fun_np, pattern, p0


SPARSE_CASES = {
    "pattern": dict(),
    "pattern, lsmr, tr_options": dict(
        tr_solver="lsmr", tr_options=dict(atol=1e-10, btol=1e-10, maxiter=200)
    ),
    "pattern, soft_l1": dict(loss="soft_l1", f_scale=0.02),
    "pattern, bounded, dogbox": dict(method="dogbox", bounds=(-5.0, 1.29)),
    "lsmr alone": dict(tr_solver="lsmr", sparse=False),
    # a numpy fun: scipy's sparse differences by groups, dense steps
    "host pattern": dict(host=True),
    "host pattern, 3-point, soft_l1": dict(
        host=True, jac="3-point", loss="soft_l1", f_scale=0.02
    ),
    "host pattern, cs": dict(host=True, jac="cs"),
    "host pattern, bounded, dogbox": dict(
        host=True, method="dogbox", bounds=(-5.0, 1.29)
    ),
}


@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_sparse_and_lsmr_fits_are_scipys(case):
    """jac_sparsity / tr_solver='lsmr' run jaxlsq's matrix-free CG steps: scipy's
    minimum (trf with LSMR steps, differences by colour groups), and scipy's
    `jac` (CSR with a pattern; J's exact entries against its differences)."""
    kw = dict(SPARSE_CASES[case])
    fun_jnp, fun_np, pattern, p0 = global_problem()
    if kw.pop("sparse", True):
        kw["jac_sparsity"] = pattern
    ours_fun = fun_np if kw.pop("host", False) else fun_jnp
    ours = _host(least_squares, ours_fun, p0, **kw)
    ref = so.least_squares(fun_np, p0, **kw)
    assert ours.success and ref.success and ours.status > 0
    assert type(ours.jac) is type(ref.jac)
    # Both stop at ftol = 1e-8 of the cost: the costs agree to that, the lifetime
    # (well determined: 600 points) to sqrt(ftol) of its relative error.
    assert_allclose(ours.cost, ref.cost, rtol=1e-7)
    assert_allclose(ours.x[0], ref.x[0], rtol=1e-5)
    if "jac_sparsity" in kw:  # scipy's sparse J: CSR with the pattern's nonzeros
        assert ours.jac.format == ref.jac.format == "csr"
        assert ours.jac.nnz == ref.jac.nnz
    ours_jac = ours.jac.toarray() if hasattr(ours.jac, "toarray") else ours.jac
    ref_jac = ref.jac.toarray() if hasattr(ref.jac, "toarray") else ref.jac
    # scipy's J is 2-point differences at its own x: agreement to sqrt(eps) times
    # J's size, plus the change of J between the two minima.
    assert_allclose(ours_jac, ref_jac, atol=1e-4 * np.abs(ref_jac).max())
    if kw.get("loss", "linear") == "linear":  # grad = J^T f at the solution
        assert_allclose(ours.grad, ours_jac.T @ ours.fun, rtol=1e-10, atol=1e-12)


def test_sparsity_with_a_callable_jac_is_ignored_like_scipy():
    sparsity = np.ones((30, 3))
    ours = least_squares(res_jnp, X0, jac=jac_jnp, jac_sparsity=sparsity, args=(T, Y))
    ref = so.least_squares(res_np, X0, jac=jac_np, jac_sparsity=sparsity, args=(T, Y))
    assert isinstance(ours.jac, np.ndarray) and isinstance(ref.jac, np.ndarray)
    assert_allclose(ours.x, ref.x, rtol=1e-6)


def test_tr_options_are_ignored_for_exact_and_regularize_warns_for_dogbox():
    plain = least_squares(res_jnp, X0, args=(T, Y))
    ours = least_squares(res_jnp, X0, args=(T, Y), tr_options={"regularize": True})
    assert_array_equal(ours.x, plain.x)
    kw = dict(method="dogbox", tr_solver="lsmr", tr_options={"regularize": True})
    with pytest.warns(UserWarning) as ref_w:
        so.least_squares(res_np, X0, args=(T, Y), **kw)
    with pytest.warns(UserWarning) as our_w:
        ours = least_squares(res_jnp, X0, args=(T, Y), **kw)
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]
    assert_allclose(ours.x, plain.x, rtol=1e-6)


def banded(p):
    """8 residuals of 6 parameters, each row touching 2-3 neighbours (3 groups)."""
    i = np.arange(8)
    a, b, c = p[np.minimum(i, 5)], p[np.clip(i - 1, 0, 5)], p[np.clip(i - 2, 0, 5)]
    return np.exp(0.3 * a) * b + np.sin(c) * (1 + i) + a * c**2


BANDED_PATTERN = np.zeros((8, 6), bool)
for _i in range(8):
    BANDED_PATTERN[_i, [min(_i, 5), np.clip(_i - 1, 0, 5), np.clip(_i - 2, 0, 5)]] = 1


@pytest.mark.parametrize("method", ["2-point", "3-point", "cs"])
@pytest.mark.parametrize("rel_step", [None, 1e-4])
def test_grouped_differences_are_scipys(method, rel_step):
    """The host path's sparse differences against scipy's ``approx_derivative``
    with ``sparsity``: the same entries (to rounding: scipy's groups differ), one
    evaluation per group (two for 3-point) instead of one per column, steps
    adjusted at the bounds as scipy's."""
    x0 = np.array([1.0, 1.2 - 1e-9, 0.0, -2.0, 0.5, 3.0])  # at an upper bound; 0
    lb = np.array([-np.inf, 0, -1, -2.0, -np.inf, 2.9])
    ub = np.array([np.inf, 1.2, 1e-9, 5, np.inf, 3.0])
    if method == "cs":
        lb, ub = np.full(6, -np.inf), np.full(6, np.inf)
    pattern = as_pattern(BANDED_PATTERN)
    calls = []

    def fun(p):
        calls.append(1)
        return banded(p)

    vals = grouped_jacobian(fun, x0, banded(x0), method, rel_step, lb, ub,
                            np.float64, pattern)  # fmt: skip
    per = 2 if method == "3-point" else 1
    assert len(calls) == per * pattern.n_groups < per * 6
    ours = np.zeros((8, 6))
    ours[pattern.rows, pattern.cols] = vals
    ref = approx_derivative(
        banded, x0, method=method, rel_step=rel_step, bounds=(lb, ub),
        sparsity=BANDED_PATTERN,
    ).toarray()  # fmt: skip
    assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    dense = approx_derivative(banded, x0, method=method, rel_step=rel_step,
                              bounds=(lb, ub))  # fmt: skip
    # and the dense scheme's (which has rounding noise, ulps of f over h, where
    # the pattern has no nonzero: numpy's vector code may round f_i differently
    # when another parameter moves)
    assert_allclose(ours[BANDED_PATTERN], dense[BANDED_PATTERN], rtol=1e-12)
    assert np.all(np.abs(dense[~BANDED_PATTERN]) < 1e-9)


@pytest.mark.parametrize("kind", ["sparse", "operator"])
@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_jac_returning_sparse_or_a_linear_operator_fits_as_scipy(kind, method):
    """A host ``jac`` may return a scipy.sparse matrix or a LinearOperator (LSMR
    steps in scipy, densified here): scipy's minimum, and ``res.jac`` of scipy's
    kind with the same values."""
    jac = _jac_csr_np if kind == "sparse" else _jac_op_np
    kw = dict(method=method, args=(T, Y_OUT), loss="cauchy", f_scale=0.1)
    ours = _host(least_squares, res_np, X0, jac=jac, **kw, **TIGHT)
    ref = so.least_squares(res_np, X0, jac=jac, **kw)  # (LSMR: TIGHT never stops)
    minimum = so.least_squares(res_np, X0, jac=jac_np, **kw, **TIGHT)
    assert ours.success and ref.success and minimum.success
    assert ours.cost <= minimum.cost * (1 + 1e-12)
    assert_allclose(ours.x, minimum.x, rtol=1e-7)
    # scipy's inexact LSMR steps stop short (dogbox: 2e-4 away in x)
    assert ours.cost <= ref.cost * (1 + 1e-12)
    if kind == "sparse":
        assert type(ours.jac) is type(ref.jac)
        ours_jac, ref_jac = ours.jac.toarray(), ref.jac.toarray()
    else:
        assert isinstance(ours.jac, scipy.sparse.linalg.LinearOperator)
        ours_jac, ref_jac = ours.jac @ np.eye(3), ref.jac @ np.eye(3)
    # scipy's J at its own stop, the loss weights moving with x
    assert_allclose(ours_jac, ref_jac, rtol=1e-2, atol=1e-3)
    assert_allclose(ours_jac, minimum.jac, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("host", [False, True], ids=["jax", "host"])
def test_curve_fit_with_jac_sparsity_gives_the_dense_covariance(host):
    """curve_fit(jac_sparsity=...): scipy's own curve_fit raises there (its SVD
    of the CSR jac); jaxlsq fits and gives the covariance of the dense fit
    (scipy's, without the pattern)."""
    kw = dict(p0=X0, method="trf", **CF_TIGHT)
    model = model_np if host else model_jnp
    popt, pcov = _host(curve_fit, model, T, Y, jac_sparsity=np.ones((30, 3)), **kw)
    ref_popt, ref_pcov = so.curve_fit(model_np, T, Y, jac=_cf_jac, **kw)
    assert_allclose(popt, ref_popt, rtol=1e-7)
    assert_allclose(pcov, ref_pcov, rtol=1e-5)


def test_integer_workers_pool_the_host_differences_as_scipy():
    """``workers=2``: a process pool maps the finite differences (host path), the
    same numbers as serial; the JAX path accepts and ignores it (exact Jacobian);
    bad values raise scipy's errors."""
    with warnings.catch_warnings():  # (the host-path hint, once per function)
        warnings.simplefilter("ignore", HostFallbackWarning)
        serial = least_squares(res_np, X0, args=(T, Y))
        pooled = least_squares(res_np, X0, args=(T, Y), workers=2)
    ref = so.least_squares(res_np, X0, args=(T, Y), workers=2)
    assert_array_equal(pooled.x, serial.x)
    assert (pooled.nfev, pooled.njev) == (serial.nfev, serial.njev)
    assert_allclose(pooled.x, ref.x, rtol=1e-6)
    assert_allclose(least_squares(res_jnp, X0, args=(T, Y), workers=-1).x, ref.x, 1e-6)
    for bad in (0, "two"):
        with pytest.raises(Exception) as ours:
            least_squares(res_np, X0, args=(T, Y), workers=bad)
        with pytest.raises(Exception) as theirs:
            so.least_squares(res_np, X0, args=(T, Y), workers=bad)
        assert (type(ours.value), str(ours.value)) == (
            type(theirs.value),
            str(theirs.value),
        )


def test_map_like_workers_map_the_host_differences_as_scipy():
    """``workers`` as a map-like callable (the builtin ``map``, or a recording
    one standing for a pool's ``map``): the host path hands its finite
    differences to it, the same numbers as serial and as scipy given the same
    callable (the same 2-point differences and the same trf path up to its
    stopping tolerances: rtol 1e-6, as the integer-workers test)."""
    mapped = []

    def recording_map(f, points):
        points = list(points)
        mapped.append(len(points))
        return list(map(f, points))

    with warnings.catch_warnings():  # (the host-path hint, once per function)
        warnings.simplefilter("ignore", HostFallbackWarning)
        serial = least_squares(res_np, X0, args=(T, Y))
        builtin = least_squares(res_np, X0, args=(T, Y), workers=map)
        ours = least_squares(res_np, X0, args=(T, Y), workers=recording_map)
    assert mapped and sum(mapped) > 0  # the differences went through the callable
    ref = so.least_squares(res_np, X0, args=(T, Y), workers=map)
    for res in (builtin, ours):
        assert_array_equal(res.x, serial.x)
        assert (res.nfev, res.njev, res.status) == (
            serial.nfev, serial.njev, serial.status,
        )  # fmt: skip
        assert_allclose(res.x, ref.x, rtol=1e-6)
        assert res.cost <= ref.cost * (1 + 1e-12)


@pytest.mark.parametrize("fun, jac", [(res_jnp, jac_jnp), (res_np, jac_np)],
                         ids=["jax", "host"])  # fmt: skip
def test_lm_njev_with_a_callable_jac_counts_the_final_jacobian(fun, jac):
    """method='lm' with a callable jac: the same iterates and nfev as scipy (both
    are lmder), and njev one more where the fit stopped right after an accepted
    step: jaxlsq counts the Jacobian it evaluates at the returned x (res.jac),
    which scipy evaluates too, after MINPACK, without counting it (njev is
    MINPACK's). A README "what still differs" row."""
    ours = _host(least_squares, fun, X0, jac, args=(T, Y), method="lm")
    ref = so.least_squares(res_np, X0, jac_np, args=(T, Y), method="lm")
    assert_allclose(ours.x, ref.x, rtol=1e-9)
    assert (ours.status, ours.nfev) == (ref.status, ref.nfev)
    assert ours.njev in (ref.njev, ref.njev + 1)
    assert_allclose(ours.jac, jac_np(ours.x, T, Y), rtol=1e-12)  # J at x


def test_f_scale_must_be_positive():
    with pytest.raises(ValueError, match="f_scale"):
        least_squares(res_jnp, X0, loss="soft_l1", f_scale=0.0, args=(T, Y))


# ----------------------------------------------------------------------------------
# curve_fit with bounds (and least_squares' kwargs)


CF_TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
CF_BOUNDS = ([0, 0, 0], [2.2, 5, 1])  # amplitude ends on its upper bound


@pytest.mark.parametrize("method", [None, "trf", "dogbox"])
def test_curve_fit_bounds_match_scipy(method):
    kw = dict(bounds=CF_BOUNDS, method=method, **CF_TIGHT)
    popt, pcov = curve_fit(model_jnp, T, Y_OUT, **kw)
    ref_popt, ref_pcov = so.curve_fit(model_np, T, Y_OUT, jac=_cf_jac, **kw)
    assert_allclose(popt, ref_popt, rtol=1e-8)
    assert_allclose(pcov, ref_pcov, rtol=1e-5)
    assert popt[0] == 2.2  # on its bound, exactly
    cost = np.sum((model_np(T, *popt) - Y_OUT) ** 2)
    assert cost <= np.sum((model_np(T, *ref_popt) - Y_OUT) ** 2) * (1 + 1e-12)


def _cf_jac(x, a, b, c):
    return jac_np(np.array([a, b, c]), x, None)


def test_curve_fit_bounds_default_p0_sigma_and_full_output():
    kw = dict(bounds=(0, [3, 5, np.inf]), sigma=0.1 + 0.01 * T, absolute_sigma=True)
    ours = curve_fit(model_jnp, T, Y, full_output=True, **kw, **CF_TIGHT)
    ref = so.curve_fit(model_np, T, Y, jac=_cf_jac, full_output=True, **kw,
                       **CF_TIGHT)  # fmt: skip
    assert_allclose(ours[0], ref[0], rtol=1e-8)
    assert_allclose(ours[1], ref[1], rtol=1e-5)
    assert list(ours[2]) == list(ref[2]) == ["nfev", "fvec"]
    assert_allclose(ours[2]["fvec"], ref[2]["fvec"], rtol=1e-6, atol=1e-9)
    assert ours[3] == TERMINATION_MESSAGES[ours[4]] and ours[4] in (1, 2, 3, 4)


def test_curve_fit_loss_and_f_scale_match_scipy():
    kw = dict(bounds=(0, 10), loss="soft_l1", f_scale=0.1, **CF_TIGHT)
    popt, pcov = curve_fit(model_jnp, T, Y_OUT, **kw)
    ref_popt, ref_pcov = so.curve_fit(model_np, T, Y_OUT, jac=_cf_jac, **kw)
    assert_allclose(popt, ref_popt, rtol=1e-7)
    assert_allclose(pcov, ref_pcov, rtol=1e-5)  # from the loss-modified Jacobian


def test_curve_fit_callable_loss_matches_scipy():
    kw = dict(method="trf", loss=cubic_soft_l1_np, f_scale=0.1, **CF_TIGHT)
    popt, pcov = curve_fit(model_jnp, T, Y_OUT, **kw)
    ref_popt, ref_pcov = so.curve_fit(model_np, T, Y_OUT, jac=_cf_jac, **kw)
    assert_allclose(popt, ref_popt, rtol=1e-7)
    assert_allclose(pcov, ref_pcov, rtol=1e-5)  # from the loss-modified Jacobian


def test_curve_fit_bounds_host_model_matches_scipy():
    popt, pcov = _host(curve_fit, model_np, T, Y_OUT, bounds=CF_BOUNDS, **CF_TIGHT)
    ref_popt, ref_pcov = so.curve_fit(model_np, T, Y_OUT, bounds=CF_BOUNDS,
                                      **CF_TIGHT)  # fmt: skip
    assert_allclose(popt, ref_popt, rtol=1e-7)
    assert_allclose(pcov, ref_pcov, rtol=1e-4)


def test_curve_fit_bounds_errors_like_scipy():
    cases = [
        dict(bounds=(0, 10), method="lm"),  # lm with bounds
        dict(bounds=(0, 10), maxfev=2),  # not converged: RuntimeError
        dict(bounds=(2, 10), p0=X0),  # p0 outside the box
    ]
    for kw in cases:
        with pytest.raises(Exception) as ref_err:
            so.curve_fit(model_np, T, Y, **kw)
        with pytest.raises(type(ref_err.value)) as our_err:
            curve_fit(model_jnp, T, Y, **kw)
        assert str(our_err.value) == str(ref_err.value)
