"""The loop consumes a linearization: strategies that never hand the loop J.

A strategy that returns only a triangular factor R (as a chunked TSQR strategy
will) or only the Gram matrix must give the fit of the dense strategy, through the
same loop, with and without bounds, alone and under vmap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlsq import SolveOptions
from jaxlsq._testing import (
    DenseJacobian,
    JacobianStrategy,
    Linearization,
    linearize_dense,
    run_lm,
)

X = jnp.linspace(0.0, 4.0, 40)
Y = 3.0 * jnp.exp(-1.3 * X) + 0.5 + 0.01 * jnp.sin(17.0 * X)
P0 = jnp.array([1.0, 1.0, 0.0])


def residuals(p, y=Y):
    return p[0] * jnp.exp(-p[1] * X) + p[2] - y


@dataclasses.dataclass(frozen=True)
class OnlyR(JacobianStrategy):
    """J reduced to its QR factor R: what a chunked (TSQR) strategy returns."""

    jac_fun: Callable
    carries_jacobian = False

    def __call__(self, x, f):
        jac = self.jac_fun(x)
        r = jnp.linalg.qr(jac, mode="r")
        return Linearization(jac.T @ f, jnp.linalg.norm(jac, axis=0), r=r), None

    def jacobian(self, x):
        return self.jac_fun(x)


@dataclasses.dataclass(frozen=True)
class OnlyGram(JacobianStrategy):
    """J reduced to the normal equations."""

    jac_fun: Callable
    carries_jacobian = False

    def __call__(self, x, f):
        jac = self.jac_fun(x)
        lin = linearize_dense(jac, f)
        return Linearization(lin.jtf, lin.col_norms, gram=jac.T @ jac), None

    def jacobian(self, x):
        return self.jac_fun(x)


def _fit(strategy, y=Y, **options):
    fun = lambda p: residuals(p, y)  # noqa: E731
    opts = SolveOptions(**options).resolve(P0, 3, P0.dtype)
    return run_lm(fun, strategy(jax.jacfwd(fun)), P0, opts)


@pytest.mark.parametrize("strategy", [OnlyR, OnlyGram])
@pytest.mark.parametrize("bounded", [False, True])
def test_factor_only_strategies_give_the_dense_fit(strategy, bounded):
    kw = dict(bounds=(-jnp.inf, jnp.array([jnp.inf, 1.2, jnp.inf]))) if bounded else {}
    dense = _fit(DenseJacobian, **kw)
    other = _fit(strategy, **kw)
    assert int(dense.status) in (1, 2, 3, 4) and int(other.status) in (1, 2, 3, 4)
    # kappa(J) ~ 30 here: the factor's rounding moves the fit by ~kappa^2 eps.
    np.testing.assert_allclose(other.x, dense.x, rtol=1e-9)
    if bounded:
        assert float(other.x[1]) == 1.2  # the bound is reached exactly
    # The loop never holds J for a strategy that does not hand it over...
    assert other.jac is None or other.jac.shape == (40, 3)  # (lm_finalize's J)


def test_factor_only_strategy_under_vmap():
    ys = jnp.stack([Y, 2 * Y, Y + 1])
    dense = jax.vmap(lambda y: _fit(DenseJacobian, y).x)(ys)
    other = jax.vmap(lambda y: _fit(OnlyR, y).x)(ys)
    np.testing.assert_allclose(other, dense, rtol=1e-9)


def test_linearization_without_frozen_columns():
    rng = np.random.default_rng(0)
    jac = jnp.asarray(rng.standard_normal((20, 4)))
    f = jnp.asarray(rng.standard_normal(20))
    frozen = jnp.array([False, True, False, True])
    lin = linearize_dense(jac, f).without(frozen)
    masked = jnp.where(frozen[None, :], 0, jac)
    ref = linearize_dense(masked, f)
    for name in ("jtf", "col_norms", "gram", "jac_t"):
        np.testing.assert_array_equal(getattr(lin, name), getattr(ref, name))
    # the model terms of a step, from J, from R and from the Gram matrix alike
    s = jnp.asarray(rng.standard_normal(4))
    exact = (f @ (masked @ s), (masked @ s) @ (masked @ s))
    r = jnp.linalg.qr(jac, mode="r")
    from_r = Linearization(lin.jtf, lin.col_norms, r=r).without(frozen)
    from_gram = Linearization(lin.jtf, lin.col_norms, gram=jac.T @ jac).without(frozen)
    for version in (lin, from_r, from_gram):
        np.testing.assert_allclose(version.jac_dot(s, f), exact, rtol=1e-12)


@pytest.mark.parametrize("n", [3, 12])  # per-column sums (n <= 8), one reduction
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jtf_is_j_transpose_f_alone_and_in_a_batch(n, dtype):
    """``J^T f`` of `linearize_dense`, whichever reduction the dtype and n take:
    against numpy's float64 product to the dtype's rounding (m terms, each bound
    by |J| |f|), alone and as lanes of a batch."""
    rng = np.random.default_rng(n)
    jac = rng.normal(size=(8, 50, n))
    f = rng.normal(size=(8, 50))
    eps = float(jnp.finfo(dtype).eps)
    batch = jax.jit(jax.vmap(lambda j, r: linearize_dense(j, r).jtf))(
        jnp.asarray(jac, dtype), jnp.asarray(f, dtype)
    )
    for k in range(8):
        alone = jax.jit(lambda j, r: linearize_dense(j, r).jtf)(
            jnp.asarray(jac[k], dtype), jnp.asarray(f[k], dtype)
        )
        want = jac[k].T @ f[k]
        bound = 50 * eps * (np.abs(jac[k]).T @ np.abs(f[k]))
        for got in (alone, batch[k]):
            assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)
