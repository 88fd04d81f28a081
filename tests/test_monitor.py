"""The ``monitor`` option (per-iteration reports from inside the compiled loop) and
what the scipy shim builds on it: ``least_squares``' ``callback`` and ``verbose=2``.

Oracles: the residuals, cost and gradient recomputed with numpy at each reported
point (analytic Jacobian); the same fit without a monitor (bit for bit: reporting
does not change the loop); scipy's ``least_squares`` for the callback contract
(status -2, its message, ``success``, the signatures it accepts, the table header).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from numpy.testing import assert_allclose, assert_array_equal

import jaxlsq
from jaxlsq import Status
from jaxlsq._testing import TERMINATION_MESSAGES
from jaxlsq.scipy import least_squares

T = np.linspace(0.0, 3.0, 40)
Y = 2.0 * np.exp(-1.3 * T) + 0.3 + 0.01 * np.sin(17 * T)
X0 = np.array([1.0, 1.0, 0.0])


def res(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def res_np(p, t=T, y=Y):
    return p[0] * np.exp(-p[1] * t) + p[2] - y


def jac_np(p, t=T):
    e = np.exp(-p[1] * t)
    return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)


class Recorder:
    """A monitor that keeps every report and stops after ``stop_at`` steps."""

    def __init__(self, stop_at=None):
        self.reports, self.stop_at = [], stop_at

    def __call__(self, p):
        self.reports.append(p)
        return self.stop_at is not None and p.nit >= self.stop_at


def test_reports_every_accepted_step_with_the_true_cost_and_gradient():
    rec = Recorder()
    sol = jaxlsq.solve(res, X0, (T, Y), monitor=rec)
    plain = jaxlsq.solve(res, X0, (T, Y))
    for field in ("params", "cost", "nfev", "njev", "n_iter", "status"):
        assert_array_equal(getattr(sol, field), getattr(plain, field))
    nits = [p.nit for p in rec.reports]
    assert nits == list(range(len(nits))) and nits[-1] == int(sol.n_iter)
    assert rec.reports[0].nfev == 1 and np.all(np.diff([p.nfev for p in rec.reports]))
    eps = np.finfo(float).eps
    for p in rec.reports:
        f = res_np(p.x)
        err = 64 * eps * (np.abs(f + Y).max() + np.abs(Y).max())  # f's rounding
        assert_allclose(p.fun, f, rtol=0, atol=err)
        assert_allclose(p.cost, 0.5 * f @ f, rtol=0, atol=err * np.abs(f).sum())
        j = jac_np(p.x)  # the gradient J^T f, to its rounding
        assert_allclose(p.grad, j.T @ f, rtol=0, atol=err * np.abs(j).sum())
    # final=True only when the last iteration accepted a step (not reported yet)
    assert [p.final for p in rec.reports].count(True) <= 1
    assert_array_equal(rec.reports[-1].x, sol.params)


def test_a_true_return_stops_at_the_reported_point():
    rec = Recorder(stop_at=2)
    sol = jaxlsq.solve(res, X0, (T, Y), monitor=rec)
    assert int(sol.status) == Status.STOPPED and not bool(sol.success)
    assert "monitor" in sol.message and int(sol.n_iter) == 2
    assert_array_equal(sol.params, rec.reports[2].x)
    assert int(sol.nfev) == rec.reports[2].nfev


def test_stop_iteration_stops_and_other_exceptions_propagate():
    def stop(p):
        if p.nit == 1:
            raise StopIteration

    assert int(jaxlsq.solve(res, X0, (T, Y), monitor=stop).status) == Status.STOPPED

    def broken(p):
        if p.nit == 1:
            raise KeyError("from the monitor")

    with pytest.raises(KeyError, match="from the monitor"):
        jaxlsq.solve(res, X0, (T, Y), monitor=broken)


def test_robust_loss_reports_fun_residuals_and_the_robust_cost():
    rec = Recorder()
    y = Y.copy()
    y[::7] += 1.0
    sol = jaxlsq.solve(res, X0, (T, y), monitor=rec, loss="soft_l1", f_scale=0.1)
    assert sol.success
    last = rec.reports[-1]
    assert_allclose(last.fun, sol.residuals, rtol=1e-12, atol=1e-14)
    assert_allclose(last.cost, sol.cost, rtol=1e-12)
    z = (res_np(last.x, y=y) / 0.1) ** 2  # scipy's soft_l1, independently
    assert_allclose(last.cost, 0.5 * 0.1**2 * np.sum(2 * (np.sqrt(1 + z) - 1)), 1e-12)


def test_under_jit_and_float32_not_vmap():
    rec = Recorder(stop_at=1)
    solve = jax.jit(lambda y: jaxlsq.solve(res, X0, (T, y), monitor=rec))
    assert int(solve(Y).status) == Status.STOPPED and rec.reports[-1].nit == 1

    # JAX cannot batch a host callback in a while_loop: a clear error instead
    with pytest.raises(ValueError, match="monitor cannot be used under jax.vmap"):
        jax.vmap(lambda y: jaxlsq.solve(res, X0, (T, y), monitor=rec))(np.stack([Y, Y]))

    rec32 = Recorder()
    x0, t, y = (jnp.asarray(a, jnp.float32) for a in (X0, T, Y))
    sol32 = jaxlsq.solve(res, x0, (t, y), monitor=rec32)
    assert sol32.success and rec32.reports[-1].x.dtype == np.float64
    assert_array_equal(rec32.reports[-1].x.astype(np.float32), sol32.params)


def test_fit_passes_it_through_and_batches_refuse_it():
    rec = Recorder(stop_at=1)
    model = lambda t, p: p[0] * jnp.exp(-p[1] * t) + p[2]  # noqa: E731
    r = jaxlsq.fit(model, T, Y, X0, monitor=rec)
    assert int(r.status) == Status.STOPPED and rec.reports
    with pytest.raises(ValueError, match="monitor"):
        jaxlsq.solve_batch(res, X0, (T, np.stack([Y, Y])), in_axes=(None, (None, 0)),
                           monitor=rec)  # fmt: skip
    with pytest.raises(TypeError, match="monitor"):
        jaxlsq.solve(res, X0, (T, Y), monitor=3)


# ----------------------------------------------------------------------------------
# least_squares: callback and verbose=2, against scipy


@pytest.mark.parametrize("fun", [res, res_np], ids=["jax", "host"])
def test_callback_stop_iteration_gives_scipys_status_and_point(fun):
    def run(lib, f):
        seen = []

        def callback(intermediate_result):
            seen.append(intermediate_result)
            if intermediate_result.nit == 3:
                raise StopIteration

        args = (T, Y) if f is res else ()
        return lib.least_squares(f, X0, args=args, callback=callback), seen

    ours, seen = run(jaxlsq.scipy, fun)
    ref, ref_seen = run(so, res_np)
    assert (ours.status, ours.message, ours.success) == (
        ref.status,
        ref.message,
        ref.success,
    )
    assert [r.nit for r in seen] == [r.nit for r in ref_seen] == [1, 2, 3]
    assert set(seen[0]) == set(ref_seen[0])  # x, fun, nit, nfev, cost
    assert_array_equal(ours.x, seen[-1].x)
    for r in seen:
        assert_allclose(r.fun, res_np(r.x), rtol=0, atol=1e-14)
        assert_allclose(r.cost, 0.5 * res_np(r.x) @ res_np(r.x), rtol=1e-14)


def test_callback_of_x_with_bounds_and_dogbox():
    xs, ref_xs = [], []
    kw = dict(bounds=([0, 0, 0], [10, 10, 0.2]), method="dogbox")
    ours = least_squares(res, X0, args=(T, Y), callback=xs.append, **kw)
    ref = so.least_squares(res_np, X0, callback=ref_xs.append, **kw)
    assert ours.success and ref.success
    assert all(isinstance(x, np.ndarray) and x.shape == (3,) for x in xs)
    assert_allclose(xs[-1], ours.x, rtol=1e-12)
    assert_allclose(ours.x, ref.x, rtol=1e-5)  # the same solution (x[2] on a bound)

    def broken(x):
        raise ZeroDivisionError("in the callback")

    with pytest.raises(ZeroDivisionError, match="in the callback"):
        least_squares(res, X0, args=(T, Y), callback=broken)


def test_verbose_2_prints_scipys_table(capsys):
    so.least_squares(res_np, X0, verbose=2)
    ref = capsys.readouterr().out.splitlines()
    least_squares(res, X0, args=(T, Y), verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ref[0]  # the header
    rows = out[1:-2]
    assert re.fullmatch(r"\s+0\s+1\s+\S+\s+\S+\s*", rows[0])  # no reduction, step
    numbers = [line.split() for line in rows[1:]]
    assert all(len(r) == 6 for r in numbers)
    assert [int(r[0]) for r in numbers] == list(range(1, len(rows)))
    costs = [float(r[2]) for r in numbers]
    assert costs == sorted(costs, reverse=True)  # accepted steps reduce the cost
    # then scipy's termination report (its test may differ: another algorithm)
    assert (
        out[-2] in TERMINATION_MESSAGES.values()
        and ref[-2] in TERMINATION_MESSAGES.values()
    )
    assert out[-1].startswith("Function evaluations ")
