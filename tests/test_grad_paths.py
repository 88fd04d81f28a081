"""Derivatives through the batched entry point and in float32.

Oracles: the per-curve implicit derivative of `solve` (itself tested against finite
differences in test_implicit.py) and central finite differences of re-fits.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

X = jnp.linspace(0.0, 2.0, 30)
P0 = jnp.array([1.0, 1.0, 0.0])


def decay(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


def curves(n, seed=0):
    rng = np.random.default_rng(seed)
    amp = rng.uniform(1.0, 3.0, n)[:, None]
    rate = rng.uniform(0.5, 2.0, n)[:, None]
    clean = amp * np.exp(-rate * np.asarray(X)) + 0.5
    return jnp.asarray(clean + 0.05 * rng.standard_normal((n, X.size)))


def test_grad_through_solve_batch_equals_per_curve_grads():
    ys = curves(5)

    def batch_loss(ys):
        sol = jaxlsq.solve_batch(decay, P0, (X, ys), in_axes=(None, (None, 0)))
        return jnp.sum(sol.params[:, 1] ** 2)  # e.g. a loss on the fitted rates

    def curve_loss(y):
        return jaxlsq.solve(decay, P0, (X, y)).params[1] ** 2

    g_batch = jax.grad(batch_loss)(ys)
    g_each = jnp.stack([jax.grad(curve_loss)(y) for y in ys])
    # Batched and solo fits factorise differently (jaxlsq.core.steps) and may stop a
    # step apart, at points that agree to ~1e-8 (the fit's accuracy): derivatives
    # taken there agree to ~1e-7, not to the last bit.
    np.testing.assert_allclose(g_batch, g_each, rtol=1e-6, atol=1e-9)


def test_grad_through_solve_batch_chunked_and_jitted():
    ys = curves(7, seed=1)

    @jax.jit
    def batch_loss(ys):
        sol = jaxlsq.solve_batch(
            decay, P0, (X, ys), in_axes=(None, (None, 0)), chunk_size=3
        )
        return jnp.sum(sol.params[:, 0])

    unchunked = jax.grad(
        lambda ys: jnp.sum(
            jax.vmap(lambda y: jaxlsq.solve(decay, P0, (X, y)).params[0])(ys)
        )
    )(ys)
    np.testing.assert_allclose(jax.grad(batch_loss)(ys), unchunked, rtol=1e-8)


def test_float32_bounded_derivative_matches_float64():
    y = curves(1, seed=2)[0]
    bounds = (jnp.array([0.0, 0.0, 0.6]), jnp.array([10.0, 10.0, 5.0]))
    start = jnp.array([1.0, 1.0, 1.0])

    def params(y, dtype):
        lo, hi = (b.astype(dtype) for b in bounds)
        return jaxlsq.solve(
            decay, start.astype(dtype), (X.astype(dtype), y), bounds=(lo, hi)
        ).params

    sol = jaxlsq.solve(decay, start, (X, y), bounds=bounds)
    assert int(sol.active_mask[2]) == -1  # the offset sits on its lower bound
    j64 = jax.jacrev(lambda y: params(y, jnp.float64))(y)
    j32 = jax.jacrev(lambda y: params(y, jnp.float32))(y.astype(jnp.float32))
    assert j32.dtype == jnp.float32
    np.testing.assert_array_equal(j32[2], 0.0)
    np.testing.assert_allclose(j32, j64, rtol=2e-3, atol=2e-4 * np.abs(j64).max())


def test_second_derivatives_through_the_fit():
    # The implicit rule must itself be differentiable (x_star, f and jac depend on s).
    y = curves(1, seed=3)[0]
    tight = dict(ftol=1e-15, xtol=1e-15)

    # (1) analytic oracle: s only rescales the rate, so p(s) = (a, c / s, b) and
    # d2p/ds2 = (0, 2 c / s^3, 0)
    def scaled(p, x, y, s):
        return p[0] * jnp.exp(-p[1] * x * s) + p[2] - y

    def params(s):
        return jaxlsq.solve(scaled, P0, (X, y, s), **tight).params

    c = float(params(1.0)[1])
    d2p = jax.jacfwd(jax.jacrev(params))(1.0)
    np.testing.assert_allclose(d2p, [0.0, 2 * c, 0.0], atol=1e-7 * c)
    np.testing.assert_allclose(jax.hessian(params)(1.0), d2p, rtol=1e-10, atol=1e-12)

    # (2) Hessian of the fitted cost w.r.t. a data-side parameter vs differences of
    # its gradient (the gradient is r . dr/ds by the envelope theorem)
    def drifted(p, x, y, s):
        return p[0] * jnp.exp(-p[1] * x) + p[2] + s * x**2 - y

    def cost(s):
        return jaxlsq.solve(drifted, P0, (X, y, s), **tight).cost

    h = 1e-3
    hess = jax.hessian(cost)(0.1)
    hess_fd = (jax.grad(cost)(0.1 + h) - jax.grad(cost)(0.1 - h)) / (2 * h)
    np.testing.assert_allclose(hess, hess_fd, rtol=1e-4)  # O(h^2) ~ 1e-5


def test_forward_mode_through_the_unrolled_loop():
    """jacfwd differentiates the loop itself (``adjoint="unrolled"``): a jvp of the
    batched-or-not factorisations, which must pass through their custom_vmap rules;
    at convergence it equals the implicit derivative."""
    y = curves(1, seed=3)[0]

    def params(y, adjoint):
        return jaxlsq.solve(decay, P0, (X, y), adjoint=adjoint).params

    unrolled = jax.jacfwd(lambda y: params(y, "unrolled"))(y)
    implicit = jax.jacfwd(lambda y: params(y, "implicit"))(y)
    # The unrolled derivative converges with the iterates: equal to ~1e-8 here.
    np.testing.assert_allclose(unrolled, implicit, rtol=1e-6, atol=1e-7)
