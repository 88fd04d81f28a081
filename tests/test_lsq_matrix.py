"""`least_squares` against scipy over a matrix of options (issue 14, item 5), on
the JAX path (a jax.numpy ``fun``) and the host path (a numpy one).

Every loss (the named ones and a callable) with and without bounds (one active)
is one case, trf and dogbox alternating, plus "lm"; jac kind (a callable, scipy's
three schemes, a ``jac_sparsity`` pattern), x_scale, f_scale and
a callback are spread over the cases so that each value meets several of the
others. Oracle: scipy's own
``least_squares`` on the same problem with the same options, given the exact
Jacobian where ours is a callable. With ``method="lm"`` the algorithm is the same
(MINPACK): the same point. Otherwise (trf/dogbox against jaxlsq's projected LM) the
same minimum -- the same or a lower cost, the same point to the conditioning of
the problem -- and the same statuses where the stop is the budget's. A small
``max_nfev`` case per method checks the budget's semantics: the same ``nfev``,
status and message.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from numpy.testing import assert_allclose

from jaxlsq.scipy import least_squares

T = np.linspace(0.0, 3.0, 30)
Y = 2.0 * np.exp(-1.5 * T) + 0.5 + 0.01 * np.sin(9 * T)
Y[::6] += 1.0  # outliers: each robust loss has its own minimum
X0 = np.array([1.0, 1.0, 0.0])
TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
BOX = ([0.0, 0.0, -1.0], [10.0, 10.0, 0.6])  # the offset ends on its upper bound


def res_jnp(p):
    return p[0] * jnp.exp(-p[1] * T) + p[2] - Y


def res_np(p):
    return p[0] * np.exp(-p[1] * T) + p[2] - Y


def jac_np(p):
    e = np.exp(-p[1] * T)
    return np.stack([e, -p[0] * T * e, np.ones_like(T)], axis=1)


def jac_jnp(p):
    e = jnp.exp(-p[1] * T)
    return jnp.stack([e, -p[0] * T * e, jnp.ones_like(T)], axis=1)


def cubic_np(z):  # a callable loss (scipy's contract: rows rho, rho', rho'')
    return np.stack([np.log1p(z) + z / (1 + z), (2 + z) / (1 + z) ** 2,
                     -(3 + z) / (1 + z) ** 3])  # fmt: skip


LOSSES = ["linear", "soft_l1", "huber", "cauchy", "arctan", cubic_np]
JACS = ["callable", "2-point", "3-point", "cs", "sparse"]  # sparse: jac_sparsity
X_SCALES = [1.0, "jac", np.array([1.0, 0.5, 2.0])]
# every loss with and without bounds, the methods alternating (each meets both)
CASES = [("lm", "linear", False)] + [
    (("trf", "dogbox")[(k + bounded) % 2], loss, bool(bounded))
    for (k, loss), bounded in itertools.product(enumerate(LOSSES), [0, 1])
]


def _options(i, method, loss, bounded):
    kw = dict(method=method, loss=loss, x_scale=X_SCALES[i % 3], **TIGHT)
    if loss != "linear":
        kw["f_scale"] = (0.3, 0.5)[i % 2]
    if bounded:
        kw["bounds"] = BOX
    jac = JACS[i % 5]
    if jac == "sparse":  # matrix-free CG steps, J by colour groups
        kw["jac_sparsity"] = np.ones((T.size, 3))
        jac = "2-point"
    return kw, jac


@pytest.mark.parametrize(
    "i,method,loss,bounded",
    [(i, *case) for i, case in enumerate(CASES)],
    ids=[
        f"{m}-{getattr(loss, '__name__', loss)}-{'box' if b else 'free'}"
        for m, loss, b in CASES
    ],
)
def test_matches_scipy(i, method, loss, bounded):
    kw, jac = _options(i, method, loss, bounded)
    calls = []
    if method != "lm" and i % 4 == 1:  # a callback that watches (stops nothing)
        kw["callback"] = calls.append
    ours = least_squares(res_jnp, X0, jac_jnp if jac == "callable" else jac, **kw)
    watched = kw.pop("callback", None) is not None
    ref = so.least_squares(res_np, X0, jac_np, **kw)
    assert ours.success and ref.success, (ours.message, ref.message)
    if method == "lm":  # MINPACK both: the same iterates
        assert_allclose(ours.x, ref.x, rtol=1e-10)
        assert ours.nfev == ref.nfev
        return
    # The same minimum: the cost within the tolerances' reach, the point to the
    # conditioning (the cost is flat to ~1e-12 relative within ~1e-6 of x).
    assert ours.cost <= ref.cost * (1 + 1e-9) + 1e-15
    assert_allclose(ours.x, ref.x, rtol=1e-5, atol=1e-6)
    assert_allclose(ours.cost, ref.cost, rtol=1e-9)
    np.testing.assert_array_equal(ours.active_mask, ref.active_mask)
    if watched:  # called after every accepted step, the last at the returned x
        assert len(calls) >= 1 and np.allclose(calls[-1], ours.x, rtol=1e-12)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_small_budget_matches_scipy(method):  # (max_nfev=1: test_least_squares)
    kw = dict(method=method, max_nfev=3)
    if method != "lm":
        kw.update(loss="soft_l1", bounds=BOX)
    ours = least_squares(res_jnp, X0, jac_jnp, **kw)
    ref = so.least_squares(res_np, X0, jac_np, **kw)
    assert (ours.status, ours.message, ours.success) == (
        ref.status,
        ref.message,
        ref.success,
    )
    assert ours.nfev == ref.nfev
    assert ours.cost <= 0.5 * np.sum(res_np(X0) ** 2)  # never worse than the start


HOST_CASES = [  # (method, jac, loss, bounded, x_scale): a plain-numpy fun
    ("lm", "2-point", "linear", False, 1.0),
    ("lm", "3-point", "linear", False, "jac"),
    ("trf", "2-point", "soft_l1", True, 1.0),
    ("trf", "cs", "linear", False, "jac"),
    ("trf", "callable", cubic_np, True, np.array([1.0, 0.5, 2.0])),
    ("dogbox", "3-point", "cauchy", False, 1.0),
    ("dogbox", "2-point", "linear", True, "jac"),
    ("dogbox", "cs", "huber", True, 1.0),
]


@pytest.mark.filterwarnings("ignore::jaxlsq.HostFallbackWarning")
@pytest.mark.parametrize(
    "method,jac,loss,bounded,x_scale",
    HOST_CASES,
    ids=[f"{c[0]}-{c[1]}-{getattr(c[2], '__name__', c[2])}" for c in HOST_CASES],
)
def test_host_path_matches_scipy(method, jac, loss, bounded, x_scale):
    """The same matrix on the host path (a numpy ``fun``: scipy's finite
    differences, or the numpy Jacobian), against scipy with the same scheme: the
    same minimum (lm: MINPACK's point), and both succeed."""
    kw = dict(method=method, loss=loss, x_scale=x_scale, **TIGHT)
    if loss != "linear":
        kw["f_scale"] = 0.5
    if bounded:
        kw["bounds"] = BOX
    jac = jac_np if jac == "callable" else jac
    ours = least_squares(res_np, X0, jac, **kw)
    ref = so.least_squares(res_np, X0, jac, **kw)
    assert ours.success and ref.success, (ours.message, ref.message)
    if method == "lm":  # MINPACK's iterates on the same differences
        assert_allclose(ours.x, ref.x, rtol=1e-8)
        return
    # differences are accurate to ~sqrt(eps) (2-point) or eps^(2/3): the minimum
    # itself is found to the tolerances, as with exact Jacobians above
    assert ours.cost <= ref.cost * (1 + 1e-9) + 1e-15
    assert_allclose(ours.x, ref.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours.active_mask, ref.active_mask)
