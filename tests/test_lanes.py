"""Lane independence: a curve's result does not depend on the rest of its batch.

The same curve is fitted inside two batches of the same compiled program: one with
well-conditioned neighbours (every lane takes the batched Gram/LDL^T steps), one
with an ill-conditioned neighbour (its steps need the SVD) and a NaN curve. The
curve's params, cost, nfev, njev and status must be bit-identical.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq

X = jnp.linspace(0.0, 5.0, 40)


def two_exponentials(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] * jnp.exp(-p[3] * x) - y


def _curve(a, k, b, q, seed):
    rng = np.random.default_rng(seed)
    y = a * np.exp(-k * np.asarray(X)) + b * np.exp(-q * np.asarray(X))
    return y + 1e-3 * rng.standard_normal(X.shape)


TARGET = _curve(2.0, 0.5, 1.0, 3.0, seed=0)
GOOD_START = np.array([1.0, 1.0, 1.0, 2.0])
# Equal rates at the start: the two pairs of Jacobian columns are identical, the
# scaled Gram matrix singular, so this lane needs the SVD steps.
SINGULAR_START = np.array([1.0, 1.0, 1.0, 1.0])


def _batches():
    good = [_curve(1.5 + i, 0.4 + 0.1 * i, 1.0, 2.5 + i, seed=i + 1) for i in range(3)]
    calm_y = np.stack([TARGET, *good])
    calm_p0 = np.stack([GOOD_START] * 4)
    rough_y = np.stack([TARGET, good[0], np.full(X.shape, np.nan), good[2]])
    rough_p0 = np.stack([GOOD_START, SINGULAR_START, GOOD_START, GOOD_START])
    return (calm_p0, calm_y), (rough_p0, rough_y)


def _fields(sols, i):
    return {
        name: np.asarray(getattr(sols, name)[i])
        for name in ("params", "cost", "nfev", "njev", "status")
    }


@pytest.mark.parametrize(
    "schedule,kw",
    [("vmap", dict(chunk_size=None)), ("refill", dict(chunk_size=2, slots=2))],
)
def test_a_curve_is_bit_identical_in_any_batch(schedule, kw):
    calm, rough = _batches()
    run = dict(in_axes=(0, (None, 0)), schedule=schedule, **kw)
    a = jaxlsq.solve_batch(two_exponentials, calm[0], (X, calm[1]), **run)
    b = jaxlsq.solve_batch(two_exponentials, rough[0], (X, rough[1]), **run)
    # The neighbours did what they are there for.
    assert bool(a.success.all())
    assert int(b.status[2]) == int(jaxlsq.Status.NONFINITE)
    # ...and the target did not notice them.
    for name, value in _fields(a, 0).items():
        np.testing.assert_array_equal(_fields(b, 0)[name], value, err_msg=name)
    # Every curve shared by both batches, not only the first.
    for name, value in _fields(a, 3).items():
        np.testing.assert_array_equal(_fields(b, 3)[name], value, err_msg=name)


def test_batched_result_equals_a_solo_fit_to_the_fits_accuracy():
    calm, _ = _batches()
    a = jaxlsq.solve_batch(
        two_exponentials, calm[0], (X, calm[1]), in_axes=(0, (None, 0))
    )
    solo = jaxlsq.solve(two_exponentials, GOOD_START, (X, TARGET))
    # Another program (vectorised linear algebra) rounds differently; the fit is
    # determined to about sqrt(eps) * kappa relative, far below 1e-6 here.
    np.testing.assert_allclose(a.params[0], solo.params, rtol=1e-6)
    assert int(a.status[0]) in (1, 2, 3, 4) and bool(solo.success)


def test_an_svd_lane_is_bit_identical_alone_or_among_many():
    # Only the lanes that need an SVD compute one, SVD_ROUND at a time: a lane's
    # SVD steps must not depend on how many others need one, nor on its round.
    from jaxlsq.core.factorize import SVD_ROUND

    size = 3 * SVD_ROUND
    curves = [_curve(1.5 + 0.01 * i, 0.4, 1.0, 2.5, seed=i + 1) for i in range(size)]
    alone_y = np.stack([TARGET, *curves[1:]])
    alone_p0 = np.stack([SINGULAR_START] + [GOOD_START] * (size - 1))
    many_y = np.stack(curves)
    at = 2 * SVD_ROUND + 3  # in the third round
    many_y[at] = TARGET
    many_p0 = np.stack([SINGULAR_START] * size)
    run = dict(in_axes=(0, (None, 0)), schedule="vmap", chunk_size=None)
    a = jaxlsq.solve_batch(two_exponentials, alone_p0, (X, alone_y), **run)
    b = jaxlsq.solve_batch(two_exponentials, many_p0, (X, many_y), **run)
    assert bool(a.success[0]) and bool(b.success.all())
    for name, value in _fields(a, 0).items():
        np.testing.assert_array_equal(_fields(b, at)[name], value, err_msg=name)
    # ...and it is the fit: the same solution as a solo fit, to the fit's accuracy.
    solo = jaxlsq.solve(two_exponentials, SINGULAR_START, (X, TARGET))
    np.testing.assert_allclose(a.params[0], solo.params, rtol=1e-6)


def test_a_batch_of_batches_gives_the_flat_batchs_fits():
    # vmap of vmap (multi-start batches, a batch's profiles): the SVD lanes' rule
    # folds the outer axis into the lanes, so the rounds still skip on one count;
    # the fits are those of the flat batch, bit for bit.
    import jax

    from jaxlsq.core.factorize import SVD_ROUND

    size = 2 * SVD_ROUND
    curves = [_curve(1.5 + 0.01 * i, 0.4, 1.0, 2.5, seed=i + 1) for i in range(size)]
    ys = np.stack(curves)
    p0 = np.stack([SINGULAR_START if i % 3 == 0 else GOOD_START for i in range(size)])

    def one(p, y):
        return jaxlsq.solve(two_exponentials, p, (X, y))

    flat = jax.jit(jax.vmap(one))(p0, ys)
    nested = jax.jit(jax.vmap(jax.vmap(one)))(
        p0.reshape(4, -1, 4), ys.reshape(4, -1, X.size)
    )
    assert bool(flat.success.all())
    for name in ("params", "cost", "nfev", "njev", "status"):
        got = np.asarray(getattr(nested, name))
        np.testing.assert_array_equal(
            got.reshape(np.shape(getattr(flat, name))), getattr(flat, name), name
        )
