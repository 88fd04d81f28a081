"""The scipy shim (`jaxlsq.scipy`): scipy itself is the oracle, on the same inputs.

Every compile costs ~1 s on 2 cores, so the residual functions are module-level and
shared between tests (one compile each), and the data keep one shape (m=50, n=3).
"""

import importlib
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import jaxlsq
from jaxlsq._testing import count_compiles, forward_difference, leastsq_messages
from jaxlsq.scipy import (
    NONFINITE_IER,
    HostFallbackWarning,
    OptimizeWarning,
    curve_fit,
    leastsq,
)

pytestmark = pytest.mark.filterwarnings("ignore::jaxlsq.scipy.HostFallbackWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUCCESS = (1, 2, 3, 4)
TOO_SMALL = (6, 7, 8)


# ----------------------------------------------------------------------------------
# problems (module level: one compile each for the whole file)


def _data():
    x = np.linspace(0.0, 5.0, 50)
    rng = np.random.default_rng(0)
    y = 2.0 * np.exp(-1.5 * x) + 0.5 + rng.normal(0.0, 0.2, x.size)
    return x, y


X, Y = _data()
X0 = [1.0, 1.0, 1.0]


def exp_jnp(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


def exp_np(p, x, y):
    return p[0] * np.exp(-p[1] * x) + p[2] - y


def exp_jac_np(p, x, y):
    e = np.exp(-p[1] * x)
    return np.stack([e, -p[0] * x * e, np.ones_like(x)], axis=1)


def exp_jac_np_cols(p, x, y):
    return exp_jac_np(p, x, y).T


def exp_jac_jnp(p, x, y):
    e = jnp.exp(-p[1] * x)
    return jnp.stack([e, -p[0] * x * e, jnp.ones_like(x)], axis=1)


def exp_jac_jnp_cols(p, x, y):
    return exp_jac_jnp(p, x, y).T


# A linear model has a constant Jacobian, so scipy's final Jacobian and ours are the
# same matrix and MINPACK's factors (fjac, ipvt, qtf) must agree to rounding.
A_LIN = np.stack([X, np.ones_like(X), np.cos(X)], axis=1) * np.array([1.0, 3.0, 0.5])


def lin_jnp(p, a, y):
    return a @ p - y


def lin_np(p, a, y):
    return a.dot(p) - y


def lin_jac(p, a, y):
    return a


def minpack_r(fjac, n):
    return np.triu(fjac.T[:n, :])


def ssr(f, p, *args):
    return float(np.sum(np.asarray(f(np.asarray(p), *args)) ** 2))


# ----------------------------------------------------------------------------------
# leastsq: every field against scipy


@pytest.mark.parametrize("func", [exp_jnp, exp_np], ids=["jax", "numpy"])
def test_full_output_fields_match_scipy(func):
    x, cov_x, info, mesg, ier = leastsq(func, X0, args=(X, Y), full_output=True)
    rx, rcov, rinfo, rmesg, rier = so.leastsq(exp_np, X0, args=(X, Y), full_output=True)
    assert ier == rier and mesg == rmesg
    assert isinstance(ier, int) and isinstance(mesg, str)
    assert x.dtype == np.float64 and x.shape == rx.shape
    np.testing.assert_allclose(x, rx, rtol=1e-6)
    assert list(info) == list(rinfo)
    for key in rinfo:
        ours, ref = np.asarray(info[key]), np.asarray(rinfo[key])
        assert ours.shape == ref.shape and ours.dtype == ref.dtype, key
    assert type(info["nfev"]) is int
    np.testing.assert_allclose(info["fvec"], rinfo["fvec"], atol=1e-6)
    np.testing.assert_allclose(info["fvec"], exp_np(x, X, Y), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(info["ipvt"], rinfo["ipvt"])
    # scipy factors the (finite-difference) Jacobian of its second-to-last point, we
    # the exact one at x: equal to the accuracy of the last step.
    n = x.size
    np.testing.assert_allclose(
        np.abs(minpack_r(info["fjac"], n)), np.abs(minpack_r(rinfo["fjac"], n)),
        rtol=1e-3, atol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(cov_x, rcov, rtol=2e-3)


@pytest.mark.parametrize("func", [exp_jnp, exp_np], ids=["jax", "numpy"])
def test_factors_are_a_pivoted_qr_of_the_final_jacobian(func):
    x, cov_x, info, _, _ = leastsq(func, X0, args=(X, Y), full_output=True)
    n = x.size
    if func is exp_jnp:  # exact Jacobian
        jac = np.asarray(jax.jacfwd(exp_jnp)(jnp.asarray(x), X, Y))
    else:  # host path: MINPACK's forward differences at x
        eps = np.finfo(float).eps
        jac = forward_difference(lambda p: exp_np(p, X, Y), x, exp_np(x, X, Y), eps)
    r = minpack_r(info["fjac"], n)
    perm = info["ipvt"]
    jp = jac[:, perm]
    tol = 1e-10
    np.testing.assert_allclose(r.T @ r, jp.T @ jp, rtol=tol, atol=tol)
    # pivots: |diag R| nonincreasing (MINPACK's column-norm pivoting)
    assert np.all(np.diff(np.abs(np.diag(r))) <= 1e-12)
    np.testing.assert_allclose(cov_x, np.linalg.inv(jac.T @ jac), rtol=100 * tol)
    # qtf = first n entries of Q^T fvec, Q = J P R^-1
    q = np.linalg.solve(r.T, jp.T).T
    np.testing.assert_allclose(info["qtf"], q.T @ info["fvec"], rtol=tol, atol=tol)


@pytest.mark.parametrize("func", [lin_jnp, lin_np], ids=["jax", "numpy"])
def test_minpack_factors_identical_on_a_constant_jacobian(func):
    args = (A_LIN, Y)
    ours = leastsq(func, X0, args=args, Dfun=lin_jac, full_output=True)
    ref = so.leastsq(lin_np, X0, args=args, Dfun=lin_jac, full_output=True)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-10)
    np.testing.assert_array_equal(ours[2]["ipvt"], ref[2]["ipvt"])
    # R, the Householder vectors below it and Q^T f: MINPACK's storage, to rounding
    np.testing.assert_allclose(ours[2]["fjac"], ref[2]["fjac"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours[2]["qtf"], ref[2]["qtf"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-9)
    assert ours[4] == ref[4]
    # and without Dfun the exact (JAX) or finite-difference Jacobian gives the same R
    auto = leastsq(func, X0, args=args, full_output=True)
    np.testing.assert_array_equal(auto[2]["ipvt"], ref[2]["ipvt"])
    n = 3
    np.testing.assert_allclose(
        minpack_r(auto[2]["fjac"], n), minpack_r(ref[2]["fjac"], n), rtol=1e-6
    )


def test_minimal_return_and_scalar_x0():
    out = leastsq(lambda x: 2 * (x - 3) ** 2 + 1, 0)
    ref = so.leastsq(lambda x: 2 * (x - 3) ** 2 + 1, 0)
    assert len(out) == 2 and out[1] == ref[1]
    assert out[0].shape == (1,) and out[0].dtype == np.float64
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-6)


def test_x0_is_flattened_and_args_wrapped():
    def model(p, x):  # x is the single, non-tuple arg
        return p[0] * jnp.exp(-p[1] * x) + p[2] - (2.0 * jnp.exp(-1.5 * x) + 0.5)

    x, ier = leastsq(model, np.ones((3, 1)), args=X)
    assert x.shape == (3,) and ier in SUCCESS
    np.testing.assert_allclose(x, [2.0, 1.5, 0.5], rtol=1e-7)


# ----------------------------------------------------------------------------------
# ier classes and messages


def _scipy_ier(kw):
    return so.leastsq(exp_np, X0, args=(X, Y), Dfun=exp_jac_np, full_output=True, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},  # 1
        dict(xtol=1e-2),  # 2
        dict(gtol=1e-3),  # 4
        dict(maxfev=5),  # 5
        dict(ftol=0.0, xtol=0.0),  # 6, 7 or 8
    ],
)
def test_ier_and_message_match_scipy(kw):
    ours = leastsq(exp_jnp, X0, args=(X, Y), full_output=True, **kw)
    ref = _scipy_ier(kw)
    if ref[4] in TOO_SMALL:  # which rounding-level test trips first: same class
        assert ours[4] in TOO_SMALL
        assert ours[3] == leastsq_messages(0.0, 0.0, 0.0, 0)[ours[4]]
    else:
        assert ours[4] == ref[4]
        assert ours[3] == ref[3]
    if ref[4] in SUCCESS:
        np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4)
        assert ours[1] is not None
    else:
        assert ours[1] is None


def test_ier_3_both_tolerances():
    ours = leastsq(lin_jnp, X0, args=(A_LIN, Y), full_output=True)
    ref = so.leastsq(lin_np, X0, args=(A_LIN, Y), full_output=True)
    assert ref[4] == 3 and ours[4] == 3 and ours[3] == ref[3]


@pytest.mark.parametrize("start", ["far", "at_solution"])
def test_tolerances_too_small_class(start):
    x0 = np.array(X0) if start == "far" else np.linalg.lstsq(A_LIN, Y, rcond=None)[0]
    kw = dict(ftol=0.0, xtol=0.0, gtol=0.0)
    ours = leastsq(lin_jnp, x0, args=(A_LIN, Y), full_output=True, **kw)
    ref = so.leastsq(lin_np, x0, args=(A_LIN, Y), Dfun=lin_jac, full_output=True, **kw)
    # 6, 7 and 8 differ in which rounding-level test trips first: same class
    assert ref[4] in TOO_SMALL and ours[4] in TOO_SMALL
    assert ours[3] == leastsq_messages(0.0, 0.0, 0.0, 0)[ours[4]]
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-9)


def test_failure_warns_without_full_output():
    with pytest.warns(RuntimeWarning, match="maxfev = 5") as rec:
        x, ier = leastsq(exp_jnp, X0, args=(X, Y), maxfev=5)
    with pytest.warns(RuntimeWarning) as ref_rec:
        so.leastsq(exp_np, X0, args=(X, Y), Dfun=exp_jac_np, maxfev=5)
    assert ier == 5 and str(rec[0].message) == str(ref_rec[0].message)
    assert rec[0].filename == __file__


@pytest.mark.parametrize("with_dfun", [False, True])
def test_maxfev_default_depends_on_dfun(with_dfun, monkeypatch):
    """scipy's default maxfev: 200 (n + 1) evaluations without Dfun, 100 (n + 1)
    with; what reaches the solver's options (a spy around SolveOptions.build)."""
    import jaxlsq.scipy.run as shim_run
    from jaxlsq import SolveOptions

    seen = []

    class Spy:
        @staticmethod
        def build(*args, **kwargs):
            seen.append(kwargs["max_nfev"])
            return SolveOptions.build(*args, **kwargs)

    monkeypatch.setattr(shim_run, "SolveOptions", Spy)
    dfun = exp_jac_jnp if with_dfun else None
    for maxfev in (0, -1, 7):
        leastsq(exp_jnp, X0, args=(X, Y), Dfun=dfun, maxfev=maxfev, full_output=True)
    default = (100 if with_dfun else 200) * (3 + 1)
    assert seen == [default, default, 7]
    out = leastsq(exp_jnp, X0, args=(X, Y), Dfun=dfun, full_output=True, maxfev=3)
    assert out[4] == 5 and out[2]["nfev"] == 3


def test_nonfinite_residuals_never_succeed():
    def always_nan(p, x, y):
        return exp_jnp(p, x, y) * jnp.nan

    x, cov, info, mesg, ier = leastsq(always_nan, X0, args=(X, Y), full_output=True)
    assert ier == NONFINITE_IER and cov is None and "not finite" in mesg
    with pytest.warns(RuntimeWarning, match="not finite"):
        x, ier = leastsq(always_nan, X0, args=(X, Y))
    assert ier == NONFINITE_IER
    # non-finite x0: returned unchanged, failure code, no exception
    x, cov, info, mesg, ier = leastsq(
        exp_jnp, [np.nan, 1, 1], args=(X, Y), full_output=True
    )
    assert ier == NONFINITE_IER and np.isnan(x[0]) and cov is None


# ----------------------------------------------------------------------------------
# errors, as scipy raises them


def _scipy_error(*args, **kwargs):
    with pytest.raises(Exception) as ref:
        so.leastsq(*args, **kwargs)
    return ref.type, str(ref.value)


def test_more_parameters_than_residuals():
    etype, msg = _scipy_error(lambda p: p[:1], [1.0, 2.0])
    with pytest.raises(etype) as ours:
        leastsq(lambda p: p[:1], [1.0, 2.0])
    assert str(ours.value) == msg
    with pytest.raises(etype) as ours:  # host path too
        leastsq(lambda p: np.atleast_1d(float(p[0])), [1.0, 2.0])
    assert str(ours.value) == msg


@pytest.mark.parametrize(
    "dfun, col_deriv",
    [(exp_jac_np_cols, False), (exp_jac_np, True), (exp_jac_jnp_cols, False)],
)
def test_dfun_shape_errors(dfun, col_deriv):
    ref_dfun = exp_jac_np if dfun is exp_jac_np else exp_jac_np_cols
    etype, msg = _scipy_error(
        exp_np, X0, args=(X, Y), Dfun=ref_dfun, col_deriv=col_deriv
    )
    with pytest.raises(etype) as ours:
        leastsq(exp_jnp, X0, args=(X, Y), Dfun=dfun, col_deriv=col_deriv)
    assert str(ours.value) == msg.replace(ref_dfun.__name__, dfun.__name__)


@pytest.mark.parametrize(
    "kw", [dict(ftol=-1.0), dict(xtol=-1.0), dict(gtol=-1.0), dict(factor=0)]
)
def test_improper_input(kw):
    etype, msg = _scipy_error(exp_np, X0, args=(X, Y), **kw)
    with pytest.raises(etype, match="^Improper input parameters.$"):
        leastsq(exp_jnp, X0, args=(X, Y), **kw)
    ours = leastsq(exp_jnp, X0, args=(X, Y), full_output=True, **kw)
    ref = so.leastsq(exp_np, X0, args=(X, Y), full_output=True, **kw)
    assert ours[4] == ref[4] == 0 and ours[3] == ref[3] and ours[1] is None
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_allclose(ours[2]["fvec"], ref[2]["fvec"])
    assert list(ours[2]) == list(ref[2]) and ours[2]["nfev"] == 0


def test_diag_must_be_positive_and_of_length_n():
    out = leastsq(exp_jnp, X0, args=(X, Y), diag=[1.0, -1.0, 1.0], full_output=True)
    assert out[4] == 0
    with pytest.raises(ValueError, match="diag"):
        leastsq(exp_jnp, X0, args=(X, Y), diag=[1.0, 1.0])


# ----------------------------------------------------------------------------------
# options honoured: Dfun/col_deriv, diag, factor, epsfcn


@pytest.mark.parametrize(
    "dfun, col_deriv",
    [
        (exp_jac_jnp, False),
        (exp_jac_jnp_cols, True),
        (exp_jac_np, False),
        (exp_jac_np_cols, True),
    ],
)
def test_dfun_both_orientations(dfun, col_deriv):
    func = exp_jnp if dfun in (exp_jac_jnp, exp_jac_jnp_cols) else exp_np
    ours = leastsq(func, X0, args=(X, Y), Dfun=dfun, col_deriv=col_deriv,
                   full_output=True)  # fmt: skip
    ref = so.leastsq(exp_np, X0, args=(X, Y), Dfun=exp_jac_np, full_output=True)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-9)
    assert ours[4] == ref[4] and "njev" in ours[2]
    # same Jacobians, same algorithm: same evaluations (+1 final Jacobian at x)
    assert ours[2]["nfev"] == ref[2]["nfev"]
    assert ours[2]["njev"] in (ref[2]["njev"], ref[2]["njev"] + 1)


@pytest.mark.parametrize("kw", [dict(factor=0.1), dict(diag=[10.0, 1.0, 0.1])])
def test_factor_and_diag_change_the_path_like_scipy(kw):
    x0 = [10.0, 0.1, -3.0]  # far: the path depends on the scaling and first radius
    ours = leastsq(exp_jnp, x0, args=(X, Y), full_output=True, **kw)
    ref = so.leastsq(exp_np, x0, args=(X, Y), Dfun=exp_jac_np, full_output=True, **kw)
    base = so.leastsq(exp_np, x0, args=(X, Y), Dfun=exp_jac_np, full_output=True)
    assert ref[2]["nfev"] != base[2]["nfev"]  # the option matters on this problem
    assert ours[2]["nfev"] == ref[2]["nfev"] and ours[4] == ref[4]
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)


def test_epsfcn_sets_the_forward_difference_step():
    kw = dict(epsfcn=1e-4, full_output=True)
    ours = leastsq(exp_np, X0, args=(X, Y), **kw)
    ref = so.leastsq(exp_np, X0, args=(X, Y), **kw)
    default = so.leastsq(exp_np, X0, args=(X, Y), full_output=True)
    # a coarse step lands measurably elsewhere; we land where scipy does
    assert np.max(np.abs(ref[0] - default[0]) / np.abs(ref[0])) > 1e-7
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-8)
    assert ours[4] == ref[4]


# ----------------------------------------------------------------------------------
# host path


def test_untraceable_functions_run_on_the_host_and_warn_once():
    calls = []

    def branchy(p, x, y):  # numpy ufunc, float(), Python if on a value
        if isinstance(p, np.ndarray):  # not the one failed trace
            calls.append(1)
        a = float(p[0])
        if a > 0:
            return a * np.exp(-p[1] * x) + p[2] - y
        return a * np.exp(-p[1] * x) + p[2] - y

    with pytest.warns(HostFallbackWarning, match="jax.numpy") as rec:
        x, cov, info, mesg, ier = leastsq(branchy, X0, args=(X, Y), full_output=True)
    assert len([w for w in rec if w.category is HostFallbackWarning]) == 1
    ref = so.leastsq(exp_np, X0, args=(X, Y), full_output=True)
    np.testing.assert_allclose(x, ref[0], rtol=1e-8)
    assert ier == ref[4] and mesg == ref[3]
    # nfev counts every call of the LM loop, differences included (+1: the x0 check)
    assert info["nfev"] + 1 == len(calls)
    assert ref[2]["nfev"] <= info["nfev"] <= ref[2]["nfev"] + 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostFallbackWarning)
        x2, _ = leastsq(branchy, X0, args=(X, Y + 0.01))  # warned already
    assert not np.allclose(x2, x)


@pytest.mark.parametrize("maxfev", [5, 12, 20])
def test_host_path_maxfev_counts_difference_calls_as_lmdif(maxfev):
    """Without Dfun the host path is MINPACK's lmdif: its n forward-difference
    calls per Jacobian count against maxfev, so a short budget stops at scipy's
    iterate with scipy's ier (before, only the loop's own calls counted and the
    fit ran on). nfev counts every call: lmdif's, plus the n of the Jacobian at
    the returned x (see leastsq's Notes)."""
    n = len(X0)
    ours = leastsq(exp_np, X0, args=(X, Y), maxfev=maxfev, full_output=True)
    ref = so.leastsq(exp_np, X0, args=(X, Y), maxfev=maxfev, full_output=True)
    assert ours[4] == ref[4] == 5 and ours[3] == ref[3]
    # the same iterates but for the SVD's rounding against MINPACK's QR
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-7)
    assert ours[2]["nfev"] == ref[2]["nfev"] + n


def test_side_effecting_model_runs_on_the_host():
    """A jax.numpy model that stores its last parameters on itself (a tracer, when
    JAX traces it) is caught by the leak check of the first trace and runs on the
    host, with the hint: same fit as the numpy model under scipy, and what it
    stores afterwards is a number, not a leaked tracer."""

    def model(x, a, b, c):
        model.last = a
        return a * jnp.exp(-b * x) + c

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + c

    with pytest.warns(HostFallbackWarning):
        popt, pcov = curve_fit(model, X, Y, p0=X0)
    ref_popt, ref_pcov = so.curve_fit(model_np, X, Y, p0=X0)
    # the host path is MINPACK's lmdif on float64 values (x64 on in the callback,
    # whatever thread runs it; float32 would be ~1e-4 off). jnp.exp and np.exp
    # differ in the last bit, forward differences make that ~1e-8 in J, and both
    # stop at curve_fit's xtol = 1.5e-8: the same point to ~1e-8
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-7)
    # (pcov: the host path's, as for a numpy model, ~1e-4 from scipy's; see
    # test_curve_fit_bounds_host_model_matches_scipy)
    np.testing.assert_allclose(pcov, ref_pcov, rtol=1e-4)
    assert not isinstance(model.last, jax.core.Tracer)
    assert float(model.last) == pytest.approx(popt[0], rel=1e-6)


def _self_reading(kind):
    """A residual (or, for curve_fit, a model) that reads the value it stored on
    itself on its previous call, as a scipy user's may (a warm start, a log): the
    trial trace stores a tracer there, which the host path must never read."""

    if kind == "curve_fit":

        def model(x, a, b, c):
            prev = getattr(model, "last", 1.0)
            model.last = a
            return a * jnp.exp(-b * x) + c + 0.0 * prev

        return model

    def residual(p, x, y):
        prev = getattr(residual, "last", 1.0)
        residual.last = p[0]
        return p[0] * jnp.exp(-p[1] * x) + p[2] - y + 0.0 * prev

    return residual


@pytest.mark.parametrize("kind", ["leastsq", "least_squares", "curve_fit"])
def test_model_reading_what_it_stored_on_itself_runs_on_the_host(kind):
    """Not a crash (UnexpectedTracerError, before): the attribute the failed trace
    left holding a tracer is put back, the function runs on the host with the
    hint, and its fit is scipy's on the same function (a fresh copy, so both
    start from the same state). Host path and scipy are both MINPACK-style forward
    differences on float64 values, so they stop at the same point up to the
    stopping tolerances (xtol = 1.5e-8; rtol 1e-7 as for the numpy model in
    test_side_effecting_model_runs_on_the_host); least_squares pairs our projected
    LM against scipy's trf: the same minimum, cost no higher than scipy's (to
    rounding: 1e-12 relative)."""
    ours_f, ref_f = _self_reading(kind), _self_reading(kind)
    with pytest.warns(HostFallbackWarning):
        if kind == "leastsq":
            ours = leastsq(ours_f, X0, args=(X, Y))[0]
        elif kind == "least_squares":
            res = jaxlsq.scipy.least_squares(ours_f, X0, args=(X, Y))
            ours = res.x
        else:
            ours = curve_fit(ours_f, X, Y, p0=X0)[0]
    if kind == "leastsq":
        ref = so.leastsq(ref_f, X0, args=(X, Y))[0]
    elif kind == "least_squares":
        ref_res = so.least_squares(ref_f, X0, args=(X, Y))
        ref = ref_res.x
        assert res.success and res.cost <= ref_res.cost * (1 + 1e-12)
    else:
        ref = so.curve_fit(ref_f, X, Y, p0=X0)[0]
    np.testing.assert_allclose(
        ours, ref, rtol=1e-7 if kind != "least_squares" else 1e-6
    )
    assert not isinstance(ours_f.last, jax.core.Tracer)
    assert float(ours_f.last) == pytest.approx(ours[0], rel=1e-6)


@pytest.mark.parametrize("xp", [jnp, np], ids=["jax", "host"])
def test_overflowing_sum_of_squares_leastsq_and_curve_fit(xp):
    """Finite residuals whose sum of squares overflows at x0 (5 * 1e320), the
    minimum 1e160 away. scipy 1.17: leastsq says ier 4 (converged) at x0 and
    curve_fit returns popt = p0 with pcov inf and only the covariance warning:
    silent wrong answers. jaxlsq keeps the clearer error at the same x0: ier
    NONFINITE_IER with "not finite" (a RuntimeWarning without full_output, as
    scipy's other failures), and curve_fit raises scipy's "Optimal parameters not
    found" RuntimeError (README, "what still differs")."""
    c = 1e160

    def res(p):
        return c + (p[0] - 3.0) * xp.ones(5)

    def model(x, a):
        return c + (a - 3.0) * xp.ones_like(x)

    x5 = np.arange(5.0)
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = so.leastsq(_overflowing_np, [0.0], full_output=True)
        ref_popt, ref_pcov = so.curve_fit(
            lambda x, a: c + (a - 3.0) * np.ones_like(x), x5, np.zeros(5), p0=[0.0]
        )
    assert ref[4] in SUCCESS and ref[0][0] == 0.0  # scipy's answer, as described
    assert ref_popt[0] == 0.0 and np.isinf(ref_pcov).all()
    ours = leastsq(res, [0.0], full_output=True)
    np.testing.assert_array_equal(ours[0], ref[0])  # neither moves from x0
    assert ours[4] == NONFINITE_IER and "not finite" in ours[3] and ours[1] is None
    with pytest.warns(RuntimeWarning, match="not finite"):
        leastsq(res, [0.0])
    with (
        pytest.raises(RuntimeError, match="Optimal parameters not found.*not finite"),
        np.errstate(over="ignore"),
    ):
        curve_fit(model, x5, np.zeros(5), p0=[0.0])


def _overflowing_np(p):
    return 1e160 + (p[0] - 3.0) * np.ones(5)


def test_host_path_accepts_non_array_args():
    def model(p, x, y, kind):
        assert kind == "exp"
        return p[0] * np.exp(-p[1] * x) + p[2] - y

    x, ier = leastsq(model, X0, args=(X, Y, "exp"))
    np.testing.assert_allclose(x, so.leastsq(model, X0, args=(X, Y, "exp"))[0], 1e-8)


# ----------------------------------------------------------------------------------
# tutorial fits, unchanged but for the import


def test_tutorial_fits_agree_with_scipy():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import tutorial_fits
    finally:
        sys.path.pop(0)
    for name, model, x_data, y_data, initial_guess in tutorial_fits.tutorial_problems():

        def residuals(params, x, y, model=model):
            return model(x, *params) - y

        params_opt, _ = jaxlsq.leastsq(residuals, initial_guess, args=(x_data, y_data))
        ref, _ = so.leastsq(residuals, initial_guess, args=(x_data, y_data))
        ours_ssr = ssr(residuals, params_opt, x_data, y_data)
        ref_ssr = ssr(residuals, ref, x_data, y_data)
        assert ours_ssr <= ref_ssr * (1 + 1e-6), name
        if name != "sinusoid":  # a flat valley there: agree on SSR, not on params
            np.testing.assert_allclose(params_opt, ref, rtol=1e-6, err_msg=name)


def test_tutorial_module_import_has_no_side_effects():
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import tutorial_fits

        importlib.reload(tutorial_fits)
    finally:
        sys.path.pop(0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


# ----------------------------------------------------------------------------------
# float64 whatever the global flag; compiled once


def test_float64_with_x64_disabled_in_a_subprocess():
    code = textwrap.dedent(
        """
        import warnings
        import jax, jax.numpy as jnp, numpy as np
        import scipy.optimize as so
        assert not jax.config.jax_enable_x64
        from jaxlsq.scipy import leastsq, curve_fit
        warnings.simplefilter("ignore")
        x = np.linspace(0, 5, 50)
        y = 2 * np.exp(-1.5 * x) + 0.5 + 0.2 * np.sin(7 * x)
        r_np = lambda p, x, y: p[0] * np.exp(-p[1] * x) + p[2] - y
        r_j = lambda p, x, y: p[0] * jnp.exp(-p[1] * x) + p[2] - y
        ref = so.leastsq(r_np, [1, 1, 1], args=(x, y))[0]
        for f in (r_j, r_np):
            p, cov, info, mesg, ier = leastsq(f, [1, 1, 1], args=(x, y),
                                              full_output=True)
            assert p.dtype == np.float64 and info["fvec"].dtype == np.float64, f
            assert cov.dtype == np.float64
            assert np.allclose(p, ref, rtol=1e-6, atol=0), (p, ref)
        popt, pcov = curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, x, y)
        assert popt.dtype == np.float64 and np.allclose(popt, ref, rtol=1e-6)
        assert not jax.config.jax_enable_x64 and jnp.ones(1).dtype == jnp.float32
        print("ok")
        """
    )
    _run_with_x64_off(code, timeout=120)


@pytest.mark.parametrize("shim", ["leastsq", "least_squares", "curve_fit"])
def test_x64_off_shim_leaves_the_users_arrays_float32_for_jax(shim):
    """With x64 off, a shim whose residual closes over the user's numpy x, y
    traces them in float64; JAX memoises that float64 copy per array (its key
    holds no x64 state), and without the shim's cleanup (`jaxlsq.scipy.x64`) a
    later float32 program was handed float64 buffers: ``jaxlsq.fit`` on the same
    x, y raised RuntimeProgramInputMismatch. Here: the shim fit equals scipy's,
    the arrays convert to float32 afterwards, ``fit`` runs, and a warm shim call
    still compiles nothing. Tolerances: the shim is float64 (scipy's iterates to
    the fit's xtol, 1e-6 is far above that and far below float32's 1e-3 here);
    the float32 ``fit`` of the same exact-model data lands within float32's
    rounding of the answer (1e-3 relative)."""
    code = textwrap.dedent(
        f"""
        import warnings
        import jax, jax.numpy as jnp, numpy as np
        import scipy.optimize as so
        import jaxlsq
        from jaxlsq._testing import count_compiles
        assert not jax.config.jax_enable_x64
        warnings.simplefilter("ignore")
        x = np.linspace(0, 5, 50)
        y = 2 * np.exp(-1.5 * x) + 0.5 + 0.01 * np.sin(7 * x)
        res = lambda p: p[0] * jnp.exp(-p[1] * x) + p[2] - y
        model = lambda t, a, b, c: a * jnp.exp(-b * t) + c
        res_np = lambda p: p[0] * np.exp(-p[1] * x) + p[2] - y
        model_np = lambda t, a, b, c: a * np.exp(-b * t) + c
        shim = "{shim}"
        def run():
            if shim == "leastsq":
                return jaxlsq.leastsq(res, [1.0, 1.0, 1.0])[0]
            if shim == "least_squares":
                return jaxlsq.least_squares(res, np.ones(3)).x
            return jaxlsq.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0])[0]
        ref = {{"leastsq": lambda: so.leastsq(res_np, [1.0, 1.0, 1.0])[0],
               "least_squares": lambda: so.least_squares(res_np, np.ones(3)).x,
               "curve_fit": lambda: so.curve_fit(model_np, x, y, p0=[1.0] * 3)[0],
               }}[shim]()
        p = run()
        assert p.dtype == np.float64 and np.allclose(p, ref, rtol=1e-6), (p, ref)
        assert jnp.asarray(x).dtype == jnp.float32 == jnp.asarray(y).dtype
        got = jaxlsq.fit(lambda t, q: q[0] * jnp.exp(-q[1] * t) + q[2], x, y,
                         jnp.ones(3)).params
        assert got.dtype == jnp.float32 and np.allclose(got, ref, rtol=1e-3), got
        with count_compiles() as compiles:
            assert np.allclose(run(), ref, rtol=1e-6)
        assert compiles[0] == 0, compiles[0]
        assert jnp.asarray(x).dtype == jnp.float32
        print("ok")
        """
    )
    _run_with_x64_off(code, timeout=180)


def _run_with_x64_off(code: str, timeout: int) -> None:
    """Run ``code`` in a fresh CPU process with JAX's default x64 off; it prints
    "ok" last when its own assertions pass."""
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_repeated_calls_do_not_recompile():
    traces = []

    def traced(p, x, y):
        traces.append(1)  # runs once per trace, never per evaluation
        return p[0] * jnp.exp(-p[1] * x) + p[2] - y

    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def host(p, x, y):
        return p[0] * np.exp(-p[1] * x) + p[2] - y

    rng = np.random.default_rng(1)
    leastsq(traced, X0, args=(X, Y), full_output=True)  # warm up: compiles here
    curve_fit(model, X, Y, sigma=np.ones_like(Y))
    leastsq(host, X0, args=(X, Y))
    n_traces = len(traces)
    with count_compiles() as compiles:
        for _ in range(3):
            y = Y + 0.05 * rng.normal(size=Y.size)
            leastsq(traced, rng.uniform(0.5, 1.5, 3), args=(X, y), full_output=True)
            leastsq(traced, X0, args=(X, y), ftol=1e-10, maxfev=50)
            curve_fit(model, X, y, sigma=rng.uniform(0.5, 1.0, Y.size))
            leastsq(host, X0, args=(X, y))
    assert compiles[0] == 0
    assert len(traces) == n_traces
    # and the counter does see compiles: a new shape compiles
    with count_compiles() as compiles:
        leastsq(traced, [1.0, 1.0, 1.0], args=(X[:40], Y[:40]))
    assert compiles[0] > 0 and len(traces) > n_traces


# ----------------------------------------------------------------------------------
# curve_fit


def model_jnp(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def model_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def model_jac_np(x, a, b, c):
    e = np.exp(-b * x)
    return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)


SIGMA = 0.1 + 0.1 * X / X.max()
COV = np.diag(SIGMA**2) + 0.002 * np.exp(-np.abs(np.subtract.outer(X, X)))


@pytest.mark.parametrize("model", [model_jnp, model_np], ids=["jax", "numpy"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(p0=[2.0, 1.0, 0.0]),
        dict(sigma=SIGMA),
        dict(sigma=SIGMA, absolute_sigma=True),
        dict(sigma=COV),
        dict(sigma=0.3),
    ],
    ids=["p0=None", "p0", "sigma1d", "absolute", "sigma2d", "scalar"],
)
def test_curve_fit_matches_scipy(model, kw):
    popt, pcov = curve_fit(model, X, Y, **kw)
    rpopt, rpcov = so.curve_fit(model_np, X, Y, **kw)
    assert popt.dtype == pcov.dtype == np.float64 and pcov.shape == (3, 3)
    np.testing.assert_allclose(popt, rpopt, rtol=1e-6)
    # scipy's pcov comes from the Jacobian one step before the end: ~1e-4 apart
    np.testing.assert_allclose(pcov, rpcov, rtol=2e-3, atol=1e-3 * np.abs(rpcov).max())


def test_curve_fit_covariance_is_the_scaled_inverse_hessian():
    for kw, weight in [({}, np.ones_like(Y)), (dict(sigma=SIGMA), 1 / SIGMA)]:
        popt, pcov = curve_fit(model_jnp, X, Y, **kw)
        jac = np.asarray(jax.jacfwd(lambda p: model_jnp(X, *p))(jnp.asarray(popt)))
        jw = jac * weight[:, None]
        r = (model_np(X, *popt) - Y) * weight
        expected = np.linalg.inv(jw.T @ jw) * (r @ r) / (Y.size - 3)
        np.testing.assert_allclose(pcov, expected, rtol=1e-8)
        _, pabs = curve_fit(model_jnp, X, Y, absolute_sigma=True, **kw)
        np.testing.assert_allclose(pabs, np.linalg.inv(jw.T @ jw), rtol=1e-8)


def test_curve_fit_with_jac_and_sigma():
    for sigma in (SIGMA, COV):
        popt, pcov = curve_fit(model_np, X, Y, sigma=sigma, jac=model_jac_np)
        rpopt, rpcov = so.curve_fit(model_np, X, Y, sigma=sigma, jac=model_jac_np)
        np.testing.assert_allclose(popt, rpopt, rtol=1e-8)
        np.testing.assert_allclose(pcov, rpcov, rtol=2e-3)


def test_curve_fit_full_output():
    out = curve_fit(model_jnp, X, Y, full_output=True)
    ref = so.curve_fit(model_np, X, Y, full_output=True)
    assert len(out) == 5 and out[4] == ref[4] and out[3] == ref[3]
    assert list(out[2]) == list(ref[2])
    np.testing.assert_allclose(out[2]["fvec"], ref[2]["fvec"], atol=1e-6)


def test_curve_fit_nan_policy_and_check_finite():
    y = Y.copy()
    y[[3, 17]] = np.nan
    for kw in [{}, dict(check_finite=True)]:
        with pytest.raises(ValueError) as ours:
            curve_fit(model_jnp, X, y, **kw)
        with pytest.raises(ValueError) as ref:
            so.curve_fit(model_np, X, y, **kw)
        assert str(ours.value) == str(ref.value)
    with pytest.raises(ValueError, match="The input contains nan values"):
        curve_fit(model_jnp, X, y, nan_policy="raise")
    for bad in ("propagate", "bogus"):
        with pytest.raises(ValueError) as ours:
            curve_fit(model_jnp, X, y, nan_policy=bad)
        with pytest.raises(ValueError) as ref:
            so.curve_fit(model_np, X, y, nan_policy=bad)
        assert str(ours.value) == str(ref.value)
    for sigma in (None, SIGMA, COV):
        popt, pcov = curve_fit(model_jnp, X, y, nan_policy="omit", sigma=sigma)
        rpopt, _ = so.curve_fit(model_np, X, y, nan_policy="omit", sigma=sigma)
        np.testing.assert_allclose(popt, rpopt, rtol=1e-6)
    # check_finite=False with NaN data: no error, a failed (not a "successful") fit
    with pytest.raises(RuntimeError, match="Optimal parameters not found"):
        curve_fit(model_jnp, X, y, check_finite=False)


def test_curve_fit_covariance_warning_and_failure():
    x3, y3 = X[:3], Y[:3]  # as many points as parameters: no variance estimate
    with pytest.warns(OptimizeWarning, match="could not be estimated"):
        popt, pcov = curve_fit(model_jnp, x3, y3)
    with pytest.warns(so.OptimizeWarning):
        rpopt, rpcov = so.curve_fit(model_np, x3, y3)
    assert np.all(np.isinf(pcov)) and np.all(np.isinf(rpcov))

    def unused_c(x, a, b, c):  # a zero Jacobian column: R is singular
        return a * jnp.exp(-b * x) + 0.0 * c

    with pytest.warns(OptimizeWarning):
        _, pcov = curve_fit(unused_c, X, Y)
    with pytest.warns(so.OptimizeWarning):
        _, rpcov = so.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + 0 * c, X, Y)
    assert np.all(np.isinf(pcov)) and np.all(np.isinf(rpcov))
    with pytest.raises(RuntimeError, match="^Optimal parameters not found: Number"):
        curve_fit(model_jnp, X, Y, maxfev=2)


def test_curve_fit_input_errors():  # bounded curve_fit: tests/test_least_squares.py
    with pytest.raises(ValueError, match="Method 'lm' only works"):
        curve_fit(model_jnp, X, Y, bounds=(0, 10), method="lm")
    with pytest.raises(ValueError, match="'args' is not a supported"):
        curve_fit(model_jnp, X, Y, args=(1,))
    with pytest.raises(TypeError, match="must not exceed the number of data"):
        curve_fit(model_jnp, X[:2], Y[:2])
    with pytest.raises(ValueError, match="incorrect shape"):
        curve_fit(model_jnp, X, Y, sigma=np.ones(7))
    with pytest.raises(ValueError, match="positive definite"):
        curve_fit(model_jnp, X, Y, sigma=-np.eye(Y.size))
    with pytest.raises(ValueError, match="Unable to determine number"):
        curve_fit(lambda *a: a[0], X, Y)
    with pytest.raises(ValueError, match="`method` must be"):
        curve_fit(model_jnp, X, Y, method="bogus")


def test_curve_fit_trf_without_bounds_follows_least_squares_contract():
    out = curve_fit(model_jnp, X, Y, method="trf", full_output=True)
    ref = so.curve_fit(model_np, X, Y, method="trf", full_output=True)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(out[1], ref[1], rtol=1e-3)
    assert list(out[2]) == list(ref[2]) and out[4] in (1, 2, 3, 4)
    lsq = importlib.import_module("scipy.optimize._lsq.least_squares")
    assert out[3] in lsq.TERMINATION_MESSAGES.values()


# ----------------------------------------------------------------------------------
# the warm-call fast path: one compiled dispatch, one transfer, same results


@pytest.mark.parametrize(
    "func,kw",
    [
        (exp_jnp, {}),
        (exp_jnp, dict(Dfun=exp_jac_jnp, diag=[1.0, 2.0, 3.0], maxfev=5)),
    ],
    ids=["jax", "jax-dfun-diag-maxfev"],
)
def test_packed_call_returns_what_solve_returns(func, kw):
    """One packed dispatch and one transfer give what `jaxlsq.solve` returns for
    the same problem and options (scipy's defaults, float64)."""
    ours = leastsq(func, X0, args=(X, Y), full_output=True, **kw)
    x, cov, info, mesg, ier = ours
    with jax.enable_x64(True):
        dfun = kw.get("Dfun")
        sol = jaxlsq.solve(
            func,
            jnp.asarray(X0, jnp.float64),
            (X, Y),
            jac="auto" if dfun is None else dfun,
            ftol=1.49012e-08,
            xtol=1.49012e-08,
            gtol=0.0,
            factor=100.0,
            max_nfev=kw.get("maxfev", 200 * 4),
            diag=None if "diag" not in kw else jnp.asarray(kw["diag"]),
        )
    assert ier == int(sol.status) and info["nfev"] == int(sol.nfev)
    np.testing.assert_array_equal(x, np.asarray(sol.params))
    np.testing.assert_array_equal(info["fvec"], np.asarray(sol.residuals))


def test_options_solve_rejects_still_raise_its_errors():
    # NaN passes the shim's sign checks (as scipy's); solve's own checks reject it
    with pytest.raises(ValueError, match="ftol must be >= 0"):
        leastsq(exp_jnp, X0, args=(X, Y), ftol=np.nan)
    with pytest.raises(ValueError, match="factor must be > 0"):
        leastsq(exp_jnp, X0, args=(X, Y), factor=np.nan)
    with pytest.raises(ValueError, match="max_nfev must be > 0"):
        leastsq(exp_jnp, X0, args=(X, Y), maxfev=0.5)  # int(0.5) == 0


def test_results_are_independent_writable_float64_arrays():
    x, cov, info, _, _ = leastsq(exp_jnp, X0, args=(X, Y), full_output=True)
    fvec = info["fvec"].copy()
    for a in (x, cov, info["fvec"], info["fjac"], info["qtf"]):
        assert a.dtype == np.float64 and a.flags.writeable
    x[:] = np.nan
    np.testing.assert_array_equal(info["fvec"], fvec)


def _qrfac_reference(a):
    """MINPACK's qrfac on numpy arrays and scalars (the shim's earlier version)."""
    a = np.array(a, dtype=np.float64, order="F")
    m, n = a.shape
    ipvt, rdiag = np.arange(n), np.linalg.norm(a, axis=0)
    wa = rdiag.copy()
    for j in range(min(m, n)):
        kmax = j + int(np.argmax(rdiag[j:]))
        if kmax != j:
            a[:, [j, kmax]] = a[:, [kmax, j]]
            rdiag[kmax], wa[kmax] = rdiag[j], wa[j]
            ipvt[[j, kmax]] = ipvt[[kmax, j]]
        ajnorm = np.linalg.norm(a[j:, j])
        if ajnorm != 0.0:
            ajnorm = -ajnorm if a[j, j] < 0.0 else ajnorm
            a[j:, j] /= ajnorm
            a[j, j] += 1.0
            if j + 1 < n:
                a[j:, j + 1 :] -= np.outer(
                    a[j:, j], (a[j:, j] @ a[j:, j + 1 :]) / a[j, j]
                )
                for k in range(j + 1, n):
                    if rdiag[k] == 0.0:
                        continue
                    temp = a[j, k] / rdiag[k]
                    rdiag[k] *= np.sqrt(max(0.0, 1.0 - temp * temp))
                    if 0.05 * (rdiag[k] / wa[k]) ** 2 <= np.finfo(float).eps:
                        rdiag[k] = wa[k] = np.linalg.norm(a[j + 1 :, k])
        rdiag[j] = -ajnorm
    return a, ipvt, rdiag


def test_minpack_qr_is_bit_for_bit_the_numpy_scalar_algorithm():
    from jaxlsq._testing import covariance_from_r, minpack_qr, qrfac

    rng = np.random.default_rng(3)
    mats = []
    for t in range(240):
        m = int(rng.integers(1, 10))
        n = int(rng.integers(1, m + 1))
        a = rng.normal(size=(m, n)) * rng.choice([1e-8, 1.0, 1e8], size=n)
        if t % 6 == 1 and n > 1:
            a[:, -1] = a[:, 0]  # rank deficient: exact ties, norm recomputation
        elif t % 6 == 2:
            a[:, rng.integers(n)] = 0.0  # a zero column: singular R
        elif t % 6 == 3:
            a = np.round(a)  # ties between norms
        elif t % 6 == 4:
            a[rng.integers(m), rng.integers(n)] = rng.choice([np.nan, np.inf])
        elif t % 6 == 5:
            a = np.ones((m, n))
        mats.append(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for a in mats:
            ours, ref = qrfac(a), _qrfac_reference(a)
            for u, v in zip(ours, ref, strict=True):
                assert u.dtype == v.dtype
                np.testing.assert_array_equal(u, v)
            fvec = np.linspace(-1.0, 1.0, a.shape[0])
            fjac, ipvt, qtf = minpack_qr(a, fvec)
            cov = covariance_from_r(fjac, ipvt)
            # qtf by the reflections one after the other; cov by back substitution
            h, _, rdiag = ref
            wa = fvec.copy()
            for j in range(a.shape[1]):
                if h[j, j] != 0.0:
                    wa[j:] += h[j:, j] * (-(h[j:, j] @ wa[j:]) / h[j, j])
            np.testing.assert_array_equal(qtf, wa[: a.shape[1]])
            np.testing.assert_array_equal(np.diagonal(fjac), rdiag)
            r = np.triu(fjac.T[: len(ipvt)])
            if np.any(np.diag(r) == 0.0):
                assert cov is None
                continue
            inv = np.zeros_like(r)
            for i in range(len(r) - 1, -1, -1):
                e = np.eye(len(r))[i]
                inv[i] = (e - r[i, i + 1 :] @ inv[i + 1 :]) / r[i, i]
            out = np.empty_like(inv)
            out[ipvt] = inv
            np.testing.assert_array_equal(cov, out @ out.T)


def test_host_callbacks_carry_float64_as_bits():
    # JAX converts callback operands and results to the default dtypes of the thread
    # that runs the callback (float32 there when it does not see enable_x64): the
    # host path passes float64 as uint32 pairs, which no conversion touches
    from jaxlsq._testing import from_bits, to_bits

    v = np.array([0.1, -0.0, 5e-324, np.inf, -np.nan, 1e308, np.pi])
    bits = to_bits(v)
    assert bits.dtype == np.uint32 and bits.shape == (v.size, 2)
    np.testing.assert_array_equal(from_bits(bits).view(np.uint64), v.view(np.uint64))
    with jax.enable_x64(True):
        traced = jax.jit(lambda x: jax.lax.bitcast_convert_type(x, jnp.uint32))(v)
    np.testing.assert_array_equal(np.asarray(traced), bits)
    m = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(from_bits(to_bits(m)), m)


def test_warnings_are_exported_from_the_package():
    assert jaxlsq.HostFallbackWarning is HostFallbackWarning
    assert jaxlsq.OptimizeWarning is OptimizeWarning
    assert {"HostFallbackWarning", "OptimizeWarning"} <= set(jaxlsq.__all__)


def test_optimize_warning_is_scipys_class():
    """One import line switched: the user's scipy warning filters still apply."""
    assert jaxlsq.OptimizeWarning is so.OptimizeWarning
    with warnings.catch_warnings():
        warnings.filterwarnings("error")
        warnings.filterwarnings("ignore", category=so.OptimizeWarning)
        _, pcov = curve_fit(model_jnp, X[:3], Y[:3])  # no variance estimate
    assert np.all(np.isinf(pcov))


def test_import_keeps_numpys_random_state_and_does_not_import_scipy():
    """Importing JAX draws from numpy's global generator; jaxlsq puts it back, so
    a seeded script gets the same data with jaxlsq as with scipy. scipy.optimize
    (~0.7 s) is not imported until a warning or the class is asked for."""
    code = (
        "import sys, numpy as np; np.random.seed(0); "
        "from jaxlsq.scipy import curve_fit; "
        "print(repr(np.random.rand()), 'scipy.optimize' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        check=True,
    ).stdout.split()  # fmt: skip
    seeded = np.random.RandomState(0).rand()  # noqa: NPY002 (the global one's draw)
    assert out == [repr(seeded), "False"]


class _UserError(Exception):
    pass


def _failing_after(n_calls, *, shrink=False):
    calls = [0]

    def f(p, x, y):
        calls[0] += 1
        if calls[0] > n_calls:
            if shrink:
                return model_np(x, *p)[:-1] - y[:-1]
            raise _UserError(f"raised at call {calls[0]}")
        return model_np(x, *p) - y

    return f


@pytest.mark.parametrize("shim", ["leastsq", "least_squares"])
def test_host_residual_errors_surface_as_the_users_own(shim):
    """scipy propagates what the user's function raises; so does the host path
    (not JAX's JaxRuntimeError around it), and a residual that changes size
    mid-fit raises scipy's ValueError."""
    run = {
        "leastsq": lambda f: leastsq(f, X0, args=(X, Y)),
        "least_squares": lambda f: jaxlsq.least_squares(f, X0, args=(X, Y)),
    }[shim]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HostFallbackWarning)
        with pytest.raises(_UserError, match="raised at call 6"):
            run(_failing_after(5))
        with pytest.raises(ValueError, match="changed size between calls"):
            run(_failing_after(4, shrink=True))
    with pytest.raises(_UserError):
        so.leastsq(_failing_after(5), X0, args=(X, Y))
    with pytest.raises(ValueError, match="changed size between calls"):
        so.leastsq(_failing_after(4, shrink=True), X0, args=(X, Y))
