"""Implicit differentiation of `jaxlsq.solve` with respect to ``args`` (adjoint=...)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlsq import solve

X = jnp.linspace(0.0, 2.0, 50)
P0 = jnp.array([1.0, 1.0, 0.0])


def decay(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


def noisy_curve(seed, noise=0.1):
    rng = np.random.default_rng(seed)
    clean = 2.0 * np.exp(-1.3 * np.asarray(X)) + 0.5
    return jnp.asarray(clean + noise * rng.standard_normal(X.shape))


def fit_params(y, **kw):
    return solve(decay, P0, (X, y), **kw).params


def test_linear_least_squares_is_pseudo_inverse():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((20, 4)))
    b = jnp.asarray(rng.standard_normal(20))

    def params(b):
        return solve(lambda p, a, b: a @ p - b, jnp.zeros(4), (a, b)).params

    expected = np.linalg.pinv(np.asarray(a))
    np.testing.assert_allclose(jax.jacrev(params)(b), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(params)(b), expected, rtol=1e-10, atol=1e-12)


def test_nonzero_residuals_match_finite_differences_and_not_gauss_newton():
    y = noisy_curve(0)
    sol = solve(decay, P0, (X, y))
    assert bool(sol.success) and float(sol.cost) > 0.1  # residuals are not small
    d_ad = np.asarray(jax.jacrev(fit_params)(y))  # (3, 50)

    # Central differences of tight re-fits, all 2m of them in one vmap. The re-fits
    # agree with each other to ~3e-11 in the parameters (eps times the conditioning),
    # so the step must be large: at h = 1e-5 that noise is already 2e-4 of the
    # derivative; at h = 1e-3 it is 2e-6 and the O(h^2) truncation is smaller still.
    h = 1e-3
    eye = jnp.eye(y.size)
    ys = jnp.concatenate([y + h * eye, y - h * eye])
    refit = jax.vmap(lambda yy: fit_params(yy, ftol=1e-15, xtol=1e-15))(ys)
    d_fd = np.asarray((refit[: y.size] - refit[y.size :]).T / (2 * h))
    scale = np.abs(d_fd).max()
    np.testing.assert_allclose(d_ad, d_fd, rtol=1e-5, atol=1e-5 * scale)

    # Gauss-Newton only: dp/dy = (J^T J)^-1 J^T. It misses sum r_i Hess r_i.
    j = np.asarray(sol.jac)
    d_gn = np.linalg.solve(j.T @ j, j.T)
    rel = np.abs(d_gn - d_fd).max() / scale
    assert rel > 0.01, rel


def test_forward_equals_reverse():
    y = noisy_curve(2)
    jr = jax.jacrev(fit_params)(y)
    jf = jax.jacfwd(fit_params)(y)
    np.testing.assert_allclose(jf, jr, rtol=1e-10, atol=1e-13)
    v = jnp.asarray(np.random.default_rng(3).standard_normal(y.size))
    _, tangent = jax.jvp(fit_params, (y,), (v,))
    np.testing.assert_allclose(tangent, jr @ v, rtol=1e-10, atol=1e-13)


def test_derived_outputs_carry_derivatives():
    y = noisy_curve(4)
    sol = solve(decay, P0, (X, y))
    # d cost / dy = r . dr/dy = -r (the params term vanishes at a minimum)
    g = jax.grad(lambda y: solve(decay, P0, (X, y)).cost)(y)
    np.testing.assert_allclose(g, -sol.residuals, rtol=1e-7, atol=1e-9)
    # the values themselves are the loop's: same as without the implicit wrapper
    plain = solve(decay, P0, (X, y), adjoint="unrolled")
    for name in ("params", "residuals", "cost", "jac", "grad"):
        np.testing.assert_allclose(getattr(sol, name), getattr(plain, name), rtol=1e-14)


def test_jit_vmap_grad_matches_solo():
    ys = jnp.stack([noisy_curve(s) for s in range(4)])

    def loss(y):
        p = fit_params(y)
        return jnp.sum(p**2)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(ys)
    # Batched and solo fits factorise differently (jaxlsq.core.steps) and may stop one
    # step apart, so they agree to the fit's accuracy, not to the last bit.
    for i in range(ys.shape[0]):
        np.testing.assert_allclose(
            batched[i], jax.grad(loss)(ys[i]), rtol=1e-7, atol=1e-8
        )


def test_pytree_args():
    y = noisy_curve(5)

    def fun(p, d):
        return p[0] * jnp.exp(-p[1] * X * d["scale"]) + p[2] - d["y"]

    def params(d):
        return solve(fun, P0, (d,)).params

    d = {"scale": jnp.asarray(1.0), "y": y}
    p = params(d)
    jr = jax.jacrev(params)(d)
    jf = jax.jacfwd(params)(d)
    # the model depends on p1 * scale only: dp1/dscale = -p1 / scale, others 0
    np.testing.assert_allclose(jr["scale"], [0.0, -p[1], 0.0], atol=1e-7)
    np.testing.assert_allclose(jf["scale"], jr["scale"], atol=1e-9)
    np.testing.assert_allclose(jr["y"], jax.jacrev(fit_params)(y), atol=1e-9)
    np.testing.assert_allclose(jf["y"], jr["y"], atol=1e-9)


@pytest.mark.parametrize("linear_solver", ["svd", "eigh"])
def test_unrolled_forward_mode_agrees(linear_solver):
    y = noisy_curve(6)
    v = jnp.asarray(np.random.default_rng(7).standard_normal(y.size))
    _, t_imp = jax.jvp(fit_params, (y,), (v,))
    _, t_unr = jax.jvp(
        lambda y: fit_params(y, adjoint="unrolled", linear_solver=linear_solver),
        (y,),
        (v,),
    )
    np.testing.assert_allclose(t_unr, t_imp, rtol=1e-5, atol=1e-8)
    # jacfwd = vmap of jvp: the batched-SVD rule sees unbatched inputs here.
    j_unr = jax.jacfwd(
        lambda y: fit_params(y, adjoint="unrolled", linear_solver=linear_solver)
    )(y)
    np.testing.assert_allclose(j_unr, jax.jacfwd(fit_params)(y), rtol=1e-4, atol=1e-7)


def test_unrolled_reverse_mode_raises():
    y = noisy_curve(6)
    with pytest.raises(ValueError, match="Linearization failed|Reverse-mode"):
        jax.grad(lambda y: fit_params(y, adjoint="unrolled").sum())(y)


def test_invalid_adjoint():
    with pytest.raises(ValueError, match="adjoint"):
        solve(decay, P0, (X, noisy_curve(0)), adjoint="backprop")


def test_float32():
    y = noisy_curve(8)
    p32 = P0.astype(jnp.float32)

    def params32(y):
        return solve(decay, p32, (X.astype(jnp.float32), y)).params

    j32 = jax.jacrev(params32)(y.astype(jnp.float32))
    assert j32.dtype == jnp.float32
    j64 = jax.jacrev(fit_params)(y)
    np.testing.assert_allclose(j32, j64, rtol=1e-2, atol=1e-3 * np.abs(j64).max())


def test_grad_wrt_x0_is_zero():
    y = noisy_curve(9)
    g = jax.grad(lambda p0: jnp.sum(solve(decay, p0, (X, y)).params))(P0)
    np.testing.assert_array_equal(g, jnp.zeros(3))


def test_column_by_column_hessian_gives_the_same_derivatives(monkeypatch):
    """Past `SEQUENTIAL_HESSIAN_ENTRIES` the implicit rule builds H from n
    Hessian-vector products one at a time (O(m) memory, for one fit of 10^7
    points) instead of `jax.hessian`'s n tangents at once: the same H, so the same
    derivatives to rounding (forward and reverse mode), and the finite-difference
    oracle of the test above still holds for them."""
    import jaxlsq.core.implicit as implicit

    y = noisy_curve(0)

    def dp_dy(residuals):  # a new function each time: traced afresh
        return jax.jacrev(lambda yy: solve(residuals, P0, (X, yy)).params)(y)

    def forward(residuals):
        return jax.jacfwd(lambda yy: solve(residuals, P0, (X, yy)).params)(y)

    def fresh():
        return lambda p, x, yy: decay(p, x, yy)

    dense_rev, dense_fwd = dp_dy(fresh()), forward(fresh())
    monkeypatch.setattr(implicit, "SEQUENTIAL_HESSIAN_ENTRIES", 0)
    seq_rev, seq_fwd = dp_dy(fresh()), forward(fresh())
    # H's columns are the same sums in another order: eps-level differences,
    # amplified by H's conditioning (~1e3 here) in the solve
    scale = float(np.abs(dense_rev).max())
    tol = 1e3 * np.finfo(np.float64).eps * scale
    np.testing.assert_allclose(seq_rev, dense_rev, rtol=0, atol=tol)
    np.testing.assert_allclose(seq_fwd, dense_fwd, rtol=0, atol=tol)
