"""The differentiable pipeline (`examples/calibration_pipeline.py`): gradients through a
batch of fits, optax learning a shared calibration, and failed fits masked out.

Every call goes through the example's one jitted ``loss_and_grad`` with batches of 16
curves (and one of 19), so the whole file compiles the fits twice.
"""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlsq import Status, finite_lanes, masked_mean, where_lanes

pytestmark = pytest.mark.slow

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples"
_SPEC = importlib.util.spec_from_file_location(
    "calibration_pipeline", _PATH / "calibration_pipeline.py"
)
cp = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cp)

N_CURVES = 16  # one shape for every test below but the poisoned batch


def test_pipeline_recovers_the_true_calibration(capsys):
    res = cp.main(["--curves", str(N_CURVES), "--steps", "150", "--log-every", "50"])
    out = capsys.readouterr().out
    assert "within tolerance: yes" in out and "fits ok 14/16" in out, out
    assert res["within_tolerance"]
    # the generating values, to the stated tolerance and to a few standard errors
    assert abs(res["t0"] - cp.TRUE_T0) <= cp.T0_TOL
    assert abs(res["width"] / cp.TRUE_WIDTH - 1) <= cp.WIDTH_RTOL
    assert abs(res["t0"] - cp.TRUE_T0) <= 4 * res["se_t0"]
    assert abs(res["width"] - cp.TRUE_WIDTH) <= 4 * res["se_width"]
    loss = res["history"].loss
    assert loss[0] > 20 and abs(loss[-1] - 1) < 0.05  # reduced chi2: noise level
    # the point of calibrating: the fitted lifetimes go from useless to ~1%
    assert res["lifetime_error_before"] > 0.5 and res["lifetime_error_after"] < 0.03


@pytest.mark.parametrize("calib", [(1.0, 0.4), (1.45, 0.25)])
def test_gradient_matches_central_differences_of_refits(calib):
    data = cp.simulate(N_CURVES, nan_curves=2, seed=0)  # the pipeline's own batch
    x0 = cp.initial_guess(jnp.nan_to_num(data.y))
    calib = jnp.array([calib[0], np.log(calib[1])])
    (loss, (_, ok)), grad = cp.loss_and_grad(calib, data, x0)
    assert int(ok.sum()) == N_CURVES - 2 and np.all(np.isfinite(grad))
    # Every evaluation re-fits all curves from the same cold start to solve's default
    # tolerance (ftol = xtol = 10 eps): the loss is then good to ~1e-14 relative,
    # so h = 1e-5 leaves ~1e-8 of noise in the difference and O(h^2) truncation.
    h = 1e-5
    fd = []
    for j in range(2):
        e = jnp.zeros(2).at[j].set(h)
        plus = cp.loss_and_grad(calib + e, data, x0)[0][0]
        minus = cp.loss_and_grad(calib - e, data, x0)[0][0]
        fd.append(float(plus - minus) / (2 * h))
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * float(loss))

    # The trap the pipeline avoids: masking only the loss (the NaN curves fitted as
    # they are) gives the same value but a NaN gradient. If this starts to pass
    # through finite, the library has made failed lanes safe: update the docs.
    (naive, _), naive_grad = cp.loss_and_grad(calib, data, x0, sanitize=False)
    assert float(naive) == float(loss) and np.all(np.isnan(naive_grad))


def test_masked_loss_gradient_is_finite_and_ignores_failed_fits():
    good = cp.simulate(N_CURVES, nan_curves=0, seed=1)
    calib = jnp.array([1.45, np.log(0.25)])
    # warm starts at the converged fits: with a budget of 8 evaluations they converge
    (_, (warm, _)), _ = cp.loss_and_grad(calib, good, cp.initial_guess(good.y))
    budget = 8
    (ref_loss, (ref_fits, ref_ok)), ref_grad = cp.loss_and_grad(
        calib, good, warm.params, budget
    )
    assert bool(ref_ok.all()) and np.all(np.isfinite(ref_grad))

    # The same 16 curves and three lanes that fail three ways: a dead pixel (NaN
    # curve), a NaN starting point, and a cold start that runs out of evaluations.
    y = jnp.concatenate([good.y, jnp.full((1, good.t.size), jnp.nan), good.y[:2]])
    x0 = jnp.concatenate(
        [
            warm.params,
            warm.params[:1],
            jnp.full((1, 3), jnp.nan),
            jnp.array([[0.1, 10.0, 1.0]]),
        ]
    )
    poisoned = good._replace(y=y)
    (loss, (fits, ok)), grad = cp.loss_and_grad(calib, poisoned, x0, budget)
    np.testing.assert_array_equal(ok, [True] * N_CURVES + [False] * 3)
    assert int(fits.status[-1]) == Status.MAX_NFEV
    assert np.all(np.isfinite(grad))
    # exactly the loss over the good curves only, value and gradient
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fits.params[:N_CURVES], ref_fits.params, rtol=1e-12)


def test_masking_helpers():
    tree = {"a": jnp.array([[1.0, jnp.nan], [2.0, 3.0]]), "b": jnp.array([4.0, 5.0])}
    ok = finite_lanes(tree)
    np.testing.assert_array_equal(ok, [False, True])
    clean = where_lanes(ok, tree, fill={"a": jnp.array([7.0, 8.0]), "b": 0.0})
    np.testing.assert_array_equal(clean["a"], [[7.0, 8.0], [2.0, 3.0]])
    np.testing.assert_array_equal(clean["b"], [0.0, 5.0])
    assert float(masked_mean(jnp.ones((3, 2)), jnp.zeros(3, bool))) == 0.0
    with pytest.raises(ValueError, match="mask"):
        masked_mean(jnp.ones(3), jnp.ones(2, bool))
    with pytest.raises(ValueError, match="batch axis"):
        where_lanes(jnp.ones(2, bool), jnp.ones(3))
