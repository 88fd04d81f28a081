"""`jaxlsq.solve_batch`: same answers as vmap and as solo fits, chunked or not, one
compile per shape, isolation of bad curves, in_axes and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq
from jaxlsq import Status

from .test_solve import P0, X50, expdecay, expdecay_data


def _batch(n=37, seed=0):
    ys = expdecay_data(seed, n_curves=n)
    return ys.at[4, 7].set(jnp.nan)  # one bad curve


def _assert_same_fits(a, b, rtol=1e-8):
    np.testing.assert_allclose(a.params, b.params, rtol=rtol)
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-10)
    # A differently vectorised program rounds differently in the last bit, which can
    # flip a convergence test at the 10*eps level (status 1 vs 3): compare outcomes.
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_array_equal(
        a.status == Status.NONFINITE, b.status == Status.NONFINITE
    )


def test_matches_vmap_chunked_and_unchunked():
    ys = _batch()
    ref = jax.jit(jax.vmap(lambda y: jaxlsq.solve(expdecay, P0, args=(X50, y))))(ys)
    kw = dict(in_axes=(None, (None, 0)))
    whole = jaxlsq.solve_batch(expdecay, P0, (X50, ys), chunk_size=None, **kw)
    chunked = jaxlsq.solve_batch(expdecay, P0, (X50, ys), chunk_size=8, **kw)
    assert chunked.params.shape == (37, 3) and chunked.status.shape == (37,)
    _assert_same_fits(whole, ref)
    _assert_same_fits(chunked, ref)  # 37 = 4 chunks of 8 + a padded chunk
    assert int(chunked.status[4]) == Status.NONFINITE
    assert int(np.sum(~np.asarray(chunked.success))) == 1


def test_matches_solo_fits_with_batched_starts():
    ys = _batch(n=6, seed=1)
    starts = jnp.stack([P0 * s for s in (1.0, 0.5, 1.5, 2.0, 1.0, 0.8)])
    sols = jaxlsq.solve_batch(expdecay, starts, (X50, ys), in_axes=(0, (None, 0)))
    for i in range(6):
        solo = jaxlsq.solve(expdecay, starts[i], args=(X50, ys[i]))
        np.testing.assert_allclose(sols.params[i], solo.params, rtol=1e-8)
        assert bool(sols.success[i]) == bool(solo.success)


def test_one_compile_for_repeated_calls_and_new_data():
    from jaxlsq._batch import _solve_batch_jit

    kw = dict(in_axes=(None, (None, 0)), chunk_size=16)
    jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=2)), **kw)
    size = _solve_batch_jit._cache_size()
    for seed in (3, 4):
        jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=seed)), ftol=1e-10, **kw)
    assert _solve_batch_jit._cache_size() == size + 1  # ftol given: one new signature
    jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=5)), ftol=1e-9, **kw)
    assert _solve_batch_jit._cache_size() == size + 1  # a new value is not a recompile


def test_options_reach_every_fit():
    ys = _batch(n=5, seed=6)
    sols = jaxlsq.solve_batch(
        expdecay, P0, (X50, ys), in_axes=(None, (None, 0)), max_nfev=2, chunk_size=2
    )
    np.testing.assert_array_equal(sols.status[np.arange(5) != 4], Status.MAX_NFEV)


def test_float32_batch():
    ys = _batch(n=9, seed=7).astype(jnp.float32)
    sols = jaxlsq.solve_batch(
        expdecay,
        P0.astype(jnp.float32),
        (X50.astype(jnp.float32), ys),
        in_axes=(None, (None, 0)),
        chunk_size=4,
    )
    assert sols.params.dtype == jnp.float32
    assert int(np.sum(np.asarray(sols.success))) == 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_axes=None), "at least one batched leaf"),
        (dict(chunk_size=0), "chunk_size must be a positive int"),
        (dict(chunk_size=2.5), "chunk_size must be a positive int"),
        (dict(tol=1e-3), "unknown solve option"),
        (dict(in_axes=(None, (None, 3))), "out of range"),
    ],
)
def test_bad_input_raises(kwargs, match):
    ys = _batch(n=4, seed=8)
    kwargs.setdefault("in_axes", (None, (None, 0)))
    with pytest.raises(ValueError, match=match):
        jaxlsq.solve_batch(expdecay, P0, (X50, ys), **kwargs)


def test_batch_sizes_must_agree():
    with pytest.raises(ValueError, match="disagree on the batch size"):
        jaxlsq.solve_batch(
            expdecay, jnp.ones((3, 3)), (X50, _batch(n=4)), in_axes=(0, (None, 0))
        )
