"""`solve_batch(schedule="refill")`: a pool of slots refilled from the queue gives
every fit the answer of the lock-step vmap schedule, whatever the scheduling.

The reference is the vmap schedule with ``chunk_size`` equal to the pool size: XLA
may round a vmapped program differently at a different batch width (last bits, which
can flip a 10*eps convergence test), so equal widths make the comparison exact in
status and iteration counts. With ``slots=8`` the pool's tail (the last fits, once
the queue is empty) runs at width 1, and these curves come out the same there too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq
from jaxlsq import Status

from . import XLA_TEST_FLAGS
from .test_solve import P0, X50, expdecay, expdecay_data

AXES = (0, (None, 0))


def _starts_and_curves(n, seed):
    """Curves with one NaN point (curve 4) and starts from near to far, so the fits
    need very different numbers of iterations."""
    ys = expdecay_data(seed, n_curves=n).at[4, 7].set(jnp.nan)
    scale = np.geomspace(0.5, 20.0, n)[np.random.default_rng(seed).permutation(n)]
    starts = jnp.asarray(np.asarray(P0) * scale[:, None])
    return starts, ys


def _both(fun, x0, args, slots, in_axes=AXES, **kw):
    vm = jaxlsq.solve_batch(
        fun, x0, args, in_axes=in_axes, chunk_size=slots, schedule="vmap", **kw
    )
    pool = jaxlsq.solve_batch(
        fun, x0, args, in_axes=in_axes, schedule="refill", slots=slots, **kw
    )
    return vm, pool


def _assert_same(pool, ref, rtol=1e-7):
    for a, b in zip(
        jax.tree_util.tree_leaves(pool.params),
        jax.tree_util.tree_leaves(ref.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)
    np.testing.assert_array_equal(pool.status, ref.status)
    for field in ("success", "nfev", "njev", "n_iter", "active_mask"):
        np.testing.assert_array_equal(getattr(pool, field), getattr(ref, field))
    np.testing.assert_allclose(pool.cost, ref.cost, rtol=1e-9)
    np.testing.assert_allclose(pool.jac, ref.jac, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(pool.grad, ref.grad, rtol=1e-5, atol=1e-9)


def test_refill_matches_vmap_with_nan_curve_and_uneven_iterations():
    starts, ys = _starts_and_curves(37, seed=0)  # 37 = 4 pools of 8 + 5
    vm, pool = _both(expdecay, starts, (X50, ys), slots=8)
    assert pool.params.shape == (37, 3) and pool.status.shape == (37,)
    _assert_same(pool, vm)
    assert int(pool.status[4]) == Status.NONFINITE  # isolated: the others succeed
    assert int(np.sum(~np.asarray(pool.success))) == 1
    njev = np.asarray(pool.njev)[np.asarray(pool.success)]
    assert njev.max() - njev.min() >= 8  # really uneven work per fit
    for i in (0, 4, int(np.argmax(pool.njev))):  # and solo fits agree
        solo = jaxlsq.solve(expdecay, starts[i], args=(X50, ys[i]))
        np.testing.assert_allclose(pool.params[i], solo.params, rtol=1e-7)
        assert int(pool.status[i]) == int(solo.status)


def test_fewer_problems_than_slots():
    starts, ys = _starts_and_curves(5, seed=2)
    vm = jaxlsq.solve_batch(expdecay, starts, (X50, ys), in_axes=AXES, schedule="vmap")
    pool = jaxlsq.solve_batch(
        expdecay, starts, (X50, ys), in_axes=AXES, schedule="refill", slots=64
    )
    _assert_same(pool, vm)  # the pool shrinks to N slots


def test_bounds_fixed_and_loss_pass_through():
    starts, ys = _starts_and_curves(12, seed=3)
    ys = ys.at[0, 10].add(3.0)  # an outlier for the robust loss
    kw = dict(
        bounds=(jnp.array([0.0, 1.45, -1.0]), jnp.array([100.0, 100.0, 100.0])),
        fixed=jnp.array([False, False, True]),
        loss="huber",
        f_scale=0.1,
    )
    starts = starts.at[:, 1].set(jnp.maximum(starts[:, 1], 1.45))
    vm, pool = _both(expdecay, starts, (X50, ys), slots=4, **kw)
    _assert_same(pool, vm)
    np.testing.assert_array_equal(pool.params[:, 2], starts[:, 2])  # fixed
    assert np.any(np.asarray(pool.active_mask)[:, 1] == -1)  # some fits on the bound
    for i in (0,):
        solo = jaxlsq.solve(expdecay, starts[i], args=(X50, ys[i]), **kw)
        np.testing.assert_allclose(pool.params[i], solo.params, rtol=1e-7)
        np.testing.assert_allclose(pool.cost[i], solo.cost, rtol=1e-9)


def pytree_model(p, x, y):
    return p["amp"] * jnp.exp(-p["rate_offset"][0] * x) + p["rate_offset"][1] - y


def test_pytree_params_with_shared_start():
    _, ys = _starts_and_curves(10, seed=4)
    x0 = {"amp": jnp.array(1.0), "rate_offset": jnp.array([1.0, 1.0])}
    vm, pool = _both(pytree_model, x0, (X50, ys), slots=4, in_axes=(None, (None, 0)))
    assert pool.params["rate_offset"].shape == (10, 2)
    _assert_same(pool, vm)


def test_grad_through_refill_matches_vmap():
    starts, ys = _starts_and_curves(10, seed=5)
    ys = ys.at[4, 7].set(1.0)  # no NaN here: its gradient would be NaN

    def loss(ys, schedule):
        sols = jaxlsq.solve_batch(
            expdecay,
            starts,
            (X50, ys),
            in_axes=AXES,
            schedule=schedule,
            slots=4,
            chunk_size=4,
        )
        return jnp.sum(sols.params[:, 1] ** 2) + jnp.sum(sols.cost)

    g_vmap = jax.grad(loss)(ys, "vmap")
    g_pool = jax.jit(jax.grad(loss), static_argnums=1)(ys, "refill")
    np.testing.assert_allclose(g_pool, g_vmap, rtol=1e-6, atol=1e-10)
    assert np.all(np.isfinite(g_pool)) and np.any(np.asarray(g_pool) != 0)


def test_auto_schedule_picks_refill_for_several_chunks():
    from jaxlsq._testing import pool_shape

    def auto(n_batch, chunk_size, progress=False, adjoint="implicit", n_devices=1):
        options = jaxlsq.SolveOptions(adjoint=adjoint)
        return pool_shape(
            "auto", n_batch, chunk_size, None, n_devices, progress, options
        )

    # The pool holds dense Jacobians: the matrix-free solver takes vmap chunks.
    cg = jaxlsq.SolveOptions(linear_solver="cg")
    assert pool_shape("auto", 6, 4, None, 1, False, cg) is None

    assert auto(6, 4) == (4, 1)  # more fits than one chunk: the pool
    assert auto(6, 8) is None and auto(6, None) is None  # one chunk: vmap
    assert auto(6, 4, progress=True) is None  # a bar: chunks (cheaper ticks)
    assert auto(6, 4, adjoint="unrolled") is None  # the pool is implicit-only
    assert auto(6, 4, n_devices=2) is None  # 3 fits per device fit one chunk
    assert auto(5000, 1024) == (1024, 64)


def test_progress_ticks_once_per_finished_fit(monkeypatch, capsys):
    """The refill pool's bar advances as fits finish (a NaN start finishes at
    once, when its slot starts): the ticks add up to the batch, arrive in several
    updates, and the results are those without a bar."""
    from jaxlsq.batch import progress

    starts, ys = _starts_and_curves(12, seed=11)
    starts = starts.at[5, 0].set(jnp.nan)
    counts = []
    advance = progress._advance
    monkeypatch.setattr(
        progress, "_advance", lambda t, c, a: (counts.append(int(c)), advance(t, c, a))
    )
    kw = dict(in_axes=AXES, schedule="refill", slots=4)
    shown = jaxlsq.solve_batch(expdecay, starts, (X50, ys), progress=True, **kw)
    plain = jaxlsq.solve_batch(expdecay, starts, (X50, ys), **kw)
    assert sum(counts) == 12 and len(counts) > 2, counts
    err = capsys.readouterr().err
    assert "12 fits" in err and "12/12" in err and "fit/s" in err, err
    np.testing.assert_array_equal(shown.params, plain.params)
    np.testing.assert_array_equal(shown.status, plain.status)
    assert int(shown.status[5]) == int(jaxlsq.Status.IMPROPER_INPUT)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(schedule="lockstep"), "schedule must be one of"),
        (dict(schedule="refill", slots=0), "slots must be a positive int"),
    ],
)
def test_bad_schedule_options_raise(kwargs, match):
    starts, ys = _starts_and_curves(5, seed=6)
    with pytest.raises(ValueError, match=match):
        jaxlsq.solve_batch(expdecay, starts, (X50, ys), in_axes=AXES, **kwargs)


_SHARDED_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import jaxlsq

assert len(jax.devices()) == 4, jax.devices()
x = jnp.linspace(0.0, 5.0, 50)
rng = np.random.default_rng(0)
truth = np.array([2.0, 1.5, 0.5]) * rng.uniform(0.8, 1.2, (30, 3))
ys = truth[:, :1] * np.exp(-truth[:, 1:2] * np.asarray(x)) + truth[:, 2:]
ys = jnp.asarray(ys + 0.05 * rng.standard_normal(ys.shape)).at[3, 5].set(jnp.nan)
starts = jnp.asarray(rng.uniform(0.5, 5.0, (30, 3)))

def res(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y

kw = dict(in_axes=(0, (None, 0)), schedule="refill", slots=4)
single = jaxlsq.solve_batch(res, starts, (x, ys), **kw)
sharded = jaxlsq.solve_batch(res, starts, (x, ys), devices=4, **kw)
np.testing.assert_allclose(sharded.params, single.params, rtol=1e-7)
np.testing.assert_array_equal(sharded.success, single.success)
assert int(sharded.status[3]) == int(jaxlsq.Status.NONFINITE)
assert int(np.sum(~np.asarray(sharded.success))) == 1

# Poisson MLE over the devices: photon counts of the same decays (the single-device
# fit_batch is the oracle; test_poisson checks it against scipy.optimize.minimize)
mu = truth[:, :1] * np.exp(-truth[:, 1:2] * np.asarray(x)) + truth[:, 2:]
counts = jnp.asarray(rng.poisson(20.0 * mu).astype(float))
def decay(x, p):
    return 20.0 * (p[0] * jnp.exp(-p[1] * x) + p[2])
p0 = jnp.asarray(truth)
fkw = dict(in_axes=(None, 0, 0, None), estimator="poisson", schedule="refill",
           slots=4)
one = jaxlsq.fit_batch(decay, x, counts, p0, **fkw)
four = jaxlsq.fit_batch(decay, x, counts, p0, devices=4, **fkw)
assert bool(np.all(np.asarray(one.success))), np.asarray(one.status)
np.testing.assert_allclose(four.params, one.params, rtol=1e-7)
np.testing.assert_allclose(four.stderr, one.stderr, rtol=1e-6)
np.testing.assert_allclose(four.chisq, one.chisq, rtol=1e-9)
print("OK")
"""


@pytest.mark.slow
def test_refill_sharded_over_four_simulated_devices():
    """Each device runs its own pool on its shard (30 fits: padded to 32), least
    squares and the Poisson MLE of `fit_batch`."""
    import os
    import subprocess
    import sys

    flags = f"{XLA_TEST_FLAGS} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags)
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
