"""`jaxlsq.fit_batch`: the same fits as `fit` curve by curve (and as scipy's
curve_fit), on both schedules, with shared or per-curve inputs; isolation of bad
curves; validation; progress bar; derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit

import jaxlsq
from jaxlsq import Status

from .test_fit import P0, decay, decay_jac, decay_np

X = np.linspace(0.0, 4.0, 40)


def curves(n, seed=0):
    """``n`` noisy decays on X and per-point standard deviations (n, 40)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 4.0, (n, 1))
    k = rng.uniform(0.5, 2.0, (n, 1))
    sig = 0.02 * (1.0 + X) * rng.uniform(0.5, 2.0, (n, 1))
    y = a * np.exp(-k * X) + 0.5 + sig * rng.standard_normal((n, X.size))
    return y, sig


def assert_same_fit(batch, solo, rtol=1e-7):
    """Fit ``i`` of a batch against the same fit done alone: same parameters and
    standard errors to the fit's accuracy, same outcome."""
    for name in ("a", "k", "c"):
        np.testing.assert_allclose(batch.params[name], solo.params[name], rtol=rtol)
        np.testing.assert_allclose(batch.stderr[name], solo.stderr[name], rtol=1e-5)
    np.testing.assert_allclose(batch.chisq, solo.chisq, rtol=1e-9)
    assert bool(batch.success) == bool(solo.success)


@pytest.mark.parametrize("schedule", ["vmap", "refill"])
def test_matches_fit_curve_by_curve_and_curve_fit(schedule):
    ys, sigs = curves(11)
    res = jaxlsq.fit_batch(
        decay,
        X,
        ys,
        P0,
        sigma=sigs,
        in_axes=(None, 0, None, 0),
        chunk_size=4,  # 11 fits: 3 chunks (the last padded), or a pool of 4
        schedule=schedule,
    )
    assert res.params["k"].shape == (11,) and res.covariance.shape == (11, 3, 3)
    assert res.batch_shape == (11,) and res.dof == 37
    for i in range(11):
        assert_same_fit(res[i], jaxlsq.fit(decay, X, ys[i], P0, sigma=sigs[i]))
    for i in (0, 7):  # scipy's curve_fit (MINPACK) on the same curves
        popt, pcov = curve_fit(
            decay_np, X, ys[i], p0=[1.0, 1.0, 0.0], sigma=sigs[i], jac=decay_jac
        )
        got = [float(res.params[k][i]) for k in ("a", "k", "c")]
        np.testing.assert_allclose(got, popt, rtol=1e-6)
        order = [0, 2, 1]  # flat (ravel_pytree) order of the dict: a, c, k
        np.testing.assert_allclose(
            res.covariance[i], pcov[np.ix_(order, order)], rtol=1e-4
        )


def test_nan_curve_is_isolated():
    ys, _ = curves(6, seed=1)
    ys[2, 5] = np.nan
    res = jaxlsq.fit_batch(decay, X, ys, P0, chunk_size=3)
    assert int(res.status[2]) == Status.NONFINITE and not bool(res.success[2])
    for i in (0, 1, 3, 4, 5):
        assert_same_fit(res[i], jaxlsq.fit(decay, X, ys[i], P0))


def test_shared_covariance_sigma_batched_x_and_starts():
    """A covariance-matrix sigma shared by the batch, per-curve abscissae and
    per-curve starting points (a dict of (B,) leaves)."""
    ys, sigs = curves(4, seed=2)
    xs = np.stack([X * s for s in (1.0, 0.9, 1.1, 1.0)])
    ys = np.stack([decay_np(xs[i], 2.0 + i, 1.2, 0.5) for i in range(4)])
    ys = ys + 0.01 * np.random.default_rng(3).standard_normal(ys.shape)
    i = np.arange(X.size)
    cov = np.outer(sigs[0], sigs[0]) * 0.6 ** np.abs(i[:, None] - i[None, :])
    starts = {"a": jnp.arange(1.0, 5.0), "k": jnp.ones(4), "c": jnp.zeros(4)}
    res = jaxlsq.fit_batch(
        decay, xs, ys, starts, sigma=cov, in_axes=(0, 0, 0, None), chunk_size=2
    )
    for b in range(4):
        p0 = {k: float(v[b]) for k, v in starts.items()}
        assert_same_fit(res[b], jaxlsq.fit(decay, xs[b], ys[b], p0, sigma=cov))


def test_bounds_fixed_and_loss_reach_every_fit():
    ys, _ = curves(5, seed=4)
    ys[1, ::7] += 1.0  # outliers for the robust loss
    options = dict(
        bounds=({"a": 0.0, "k": 0.0, "c": -1.0}, {"a": 10.0, "k": 1.0, "c": 1.0}),
        fixed={"a": False, "k": False, "c": True},
        loss="soft_l1",
        f_scale=0.1,
    )
    res = jaxlsq.fit_batch(decay, X, ys, {"a": 1.0, "k": 0.5, "c": 0.5}, **options)
    assert res.nfree == 2 and res.loss == "soft_l1"
    np.testing.assert_array_equal(res.params["c"], 0.5)  # fixed
    assert float(jnp.max(res.params["k"])) <= 1.0  # bounded
    for i in range(5):
        solo = jaxlsq.fit(decay, X, ys[i], {"a": 1.0, "k": 0.5, "c": 0.5}, **options)
        np.testing.assert_allclose(res.params["a"][i], solo.params["a"], rtol=1e-7)
        np.testing.assert_allclose(res.params["k"][i], solo.params["k"], rtol=1e-7)
        np.testing.assert_allclose(res.cost[i], solo.cost, rtol=1e-9)
        np.testing.assert_array_equal(res.active_mask[i], solo.active_mask)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(in_axes=(None, 0)), ValueError, r"structure of \(x, y, p0, sigma\)"),
        (dict(in_axes=None), ValueError, "at least one input"),
        (dict(sigma=np.ones(7), in_axes=(None, 0, None, None)), ValueError, "sigma"),
        (dict(starts=np.ones((2, 3))), TypeError, "starts"),
        (dict(loss="l2"), ValueError, "loss"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    ys, _ = curves(3, seed=5)
    with pytest.raises(error, match=match):
        jaxlsq.fit_batch(decay, X, ys, P0, **kwargs)


def test_batch_sizes_and_model_shape_checked():
    ys, sigs = curves(3, seed=6)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        jaxlsq.fit_batch(decay, X, ys, P0, sigma=sigs[:2], in_axes=(None, 0, None, 0))
    with pytest.raises(ValueError, match="shape"):
        jaxlsq.fit_batch(decay, X[:30], ys, P0)


def test_progress_bar(capsys):
    ys, _ = curves(5, seed=7)
    res = jaxlsq.fit_batch(decay, X, ys, P0, chunk_size=2, progress=True)
    err = capsys.readouterr().err  # "auto" with a bar: chunks, a tick per chunk
    assert "5 fits" in err and "3/3" in err, err
    pooled = jaxlsq.fit_batch(
        decay, X, ys, P0, slots=2, schedule="refill", progress=True
    )
    err = capsys.readouterr().err  # the pool: a tick per finished fit
    assert "5/5" in err and "fit" in err, err
    for name in res.params:
        np.testing.assert_allclose(pooled.params[name], res.params[name], rtol=1e-8)
    assert bool(res.success.all())


def test_grad_through_fit_batch_equals_per_curve_grads():
    ys, _ = curves(3, seed=8)

    def batch_loss(ys):
        res = jaxlsq.fit_batch(decay, X, ys, P0)
        return jnp.sum(res.params["k"] ** 2 + res.stderr["k"])

    def curve_loss(y):
        res = jaxlsq.fit(decay, X, y, P0)
        return res.params["k"] ** 2 + res.stderr["k"]

    g_batch = jax.grad(batch_loss)(jnp.asarray(ys))
    g_each = jnp.stack([jax.grad(curve_loss)(jnp.asarray(y)) for y in ys])
    # Batched and solo solves factorise differently and may stop a step apart, at
    # points that agree to ~1e-8: derivatives there agree to ~1e-6.
    np.testing.assert_allclose(g_batch, g_each, rtol=1e-5, atol=1e-9)
