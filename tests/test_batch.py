"""`jaxlsq.solve_batch`: same answers as vmap and as solo fits, chunked or not, one
compile per shape, isolation of bad curves, in_axes and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq
from jaxlsq import Status

from . import XLA_TEST_FLAGS
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
    from jaxlsq._testing import count_compiles

    kw = dict(in_axes=(None, (None, 0)), chunk_size=16)
    jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=2)), **kw)
    with count_compiles() as new_data:
        jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=3)), **kw)
    assert new_data[0] == 0
    jaxlsq.solve_batch(expdecay, P0, (X50, _batch(seed=4)), ftol=1e-10, **kw)
    with count_compiles() as new_values:  # traced options: values, not programs
        jaxlsq.solve_batch(
            expdecay, P0, (X50, _batch(seed=5)), ftol=1e-9, max_nfev=50, **kw
        )
    assert new_values[0] == 0


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
        (dict(in_axes=None), "at least one input"),
        (dict(chunk_size=0), "chunk_size must be a positive int"),
        (dict(chunk_size=2.5), "chunk_size must be a positive int"),
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


_SHARDED_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import jaxlsq

assert len(jax.devices()) == 4, jax.devices()
x = jnp.linspace(0.0, 5.0, 50)
rng = np.random.default_rng(0)
truth = np.array([2.0, 1.5, 0.5]) * rng.uniform(0.8, 1.2, (32, 3))
ys = truth[:, :1] * np.exp(-truth[:, 1:2] * np.asarray(x)) + truth[:, 2:]
ys = jnp.asarray(ys + 0.05 * rng.standard_normal(ys.shape)).at[3, 5].set(jnp.nan)

def res(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y

def model(x, p):
    return p[0] * jnp.exp(-p[1] * x) + p[2]

kw = dict(in_axes=(None, (None, 0)), chunk_size=4)
single = jaxlsq.solve_batch(res, jnp.ones(3), (x, ys), **kw)
fits = jaxlsq.fit_batch(model, x, ys, jnp.ones(3), chunk_size=4)
# 32 curves, then the first 30 (padded to a multiple of 4 devices): each curve's
# result is the single-device one (a lane never depends on its neighbours)
for n in (32, 30):
    sharded = jaxlsq.solve_batch(res, jnp.ones(3), (x, ys[:n]), devices=4, **kw)
    np.testing.assert_allclose(sharded.params, single.params[:n], rtol=1e-8)
    np.testing.assert_array_equal(sharded.success, single.success[:n])
    assert int(sharded.status[3]) == int(jaxlsq.Status.NONFINITE)
    print(n, "DEVICES", len(sharded.params.sharding.device_set))

    fits4 = jaxlsq.fit_batch(model, x, ys[:n], jnp.ones(3), chunk_size=4, devices=4)
    np.testing.assert_allclose(fits4.params, fits.params[:n], rtol=1e-8)
    np.testing.assert_allclose(fits4.stderr, fits.stderr[:n], rtol=1e-6)
    assert int(fits4.status[3]) == int(jaxlsq.Status.NONFINITE)
    print(n, "FIT DEVICES", len(fits4.params.sharding.device_set))
"""


@pytest.mark.slow
def test_sharding_over_four_simulated_devices():
    """32 and 30 curves (one subprocess: the device count is fixed at start-up)."""
    import os
    import subprocess
    import sys

    flags = f"{XLA_TEST_FLAGS} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags)
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()  # 32 curves, not padded: spread over 4 devices
    assert "32 DEVICES 4" in lines and "32 FIT DEVICES 4" in lines, out.stdout
    assert "30 FIT DEVICES" in " ".join(lines), out.stdout  # the padded batch ran


def test_bad_devices_raise():
    ys = _batch(n=4, seed=9)
    for bad in (0, 10_000, ["cpu"]):
        with pytest.raises(ValueError, match="devices"):
            jaxlsq.solve_batch(
                expdecay, P0, (X50, ys), in_axes=(None, (None, 0)), devices=bad
            )


def test_progress_bar_counts_chunks(capsys):
    ys = _batch(n=10, seed=10)
    kw = dict(in_axes=(None, (None, 0)), chunk_size=4, schedule="vmap")
    plain = jaxlsq.solve_batch(expdecay, P0, (X50, ys), **kw)
    shown = jaxlsq.solve_batch(expdecay, P0, (X50, ys), progress=True, **kw)
    err = capsys.readouterr().err
    assert "10 fits" in err and "3/3" in err, err  # 10 fits in 3 chunks of 4
    np.testing.assert_array_equal(shown.params, plain.params)


def test_interleaved_progress_bars_each_count_their_own_call(monkeypatch):
    """Two progress=True calls in flight at once (two threads) each advance their
    own bar, to their own total."""
    import threading

    tqdm_module = pytest.importorskip("tqdm")
    bars = []

    class Recorded(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm_module, "tqdm", Recorded)
    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)
    kw = dict(in_axes=(None, (None, 0)), progress=True, schedule="vmap")
    big, small = _batch(n=12, seed=12), _batch(n=6, seed=13)
    jaxlsq.solve_batch(expdecay, P0, (X50, big), chunk_size=2, **kw)  # compile
    jaxlsq.solve_batch(expdecay, P0, (X50, small), chunk_size=2, **kw)
    bars.clear()
    start = threading.Barrier(2)

    def run(ys):
        start.wait()
        jaxlsq.solve_batch(expdecay, P0, (X50, ys), chunk_size=2, **kw)

    threads = [threading.Thread(target=run, args=(ys,)) for ys in (big, small)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = sorted((bar.total, bar.n) for bar in bars)
    assert totals == [(3, 3), (6, 6)], totals  # 6 and 12 fits in chunks of 2


def masked_expdecay(p, x, y, mask):
    """Ragged curves padded to a common length: padded points weigh 0."""
    return mask * (p[0] * jnp.exp(-p[1] * x) + p[2] - y)


def test_ragged_batch_with_mask_equals_fits_of_the_unpadded_curves():
    rng = np.random.default_rng(11)
    lengths = [50, 23, 37, 12]
    xs = np.zeros((4, 50))
    ys = np.zeros((4, 50))
    masks = np.zeros((4, 50))
    for i, m in enumerate(lengths):
        x = np.sort(rng.uniform(0, 5, m))
        xs[i, :m] = x
        ys[i, :m] = 2 * np.exp(-1.5 * x) + 0.5 + 0.05 * rng.standard_normal(m)
        masks[i, :m] = 1.0
        xs[i, m:] = 123.0  # padding values are irrelevant: the mask zeroes them
    sols = jaxlsq.solve_batch(masked_expdecay, P0, (xs, ys, masks), in_axes=(None, 0))
    for i, m in enumerate(lengths):
        solo = jaxlsq.solve(expdecay, P0, args=(xs[i, :m], ys[i, :m]))
        np.testing.assert_allclose(sols.params[i], solo.params, rtol=1e-7)
        np.testing.assert_allclose(sols.cost[i], solo.cost, rtol=1e-10)
        assert bool(sols.success[i])
