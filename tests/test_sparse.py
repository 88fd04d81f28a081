"""Sparse Jacobians by colour groups (`jac_sparsity`) and matrix-free steps
(`linear_solver="cg"`).

Oracles: ``jax.jacfwd`` (the colouring must recover J exactly), scipy's own greedy
colouring, the dense solver (`linear_solver="svd"`, itself checked against NIST
and scipy), NIST certified values, and scipy ``least_squares(tr_solver="lsmr",
jac_sparsity=...)`` on a global fit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import least_squares

import jaxlsq
from jaxlsq.core import krylov
from jaxlsq.core.krylov import (
    OperatorJacobian,
    SparseJacobian,
    nonzero_operator,
    trust_region_cg,
)
from jaxlsq.core.linearization import JacobianOperator
from jaxlsq.core.sparsity import (
    as_pattern,
    colored_jacobian,
    colored_values,
    column_norms,
    compressed_products,
)

from . import nist

EPS = np.finfo(np.float64).eps


def patterned(w):
    """A nonlinear function whose Jacobian has exactly the nonzeros of ``w``."""
    w = jnp.asarray(w, jnp.float64)
    return lambda x: w @ jnp.sin(x) + (w @ x) ** 2


def patterns():
    rng = np.random.default_rng(3)
    banded = sum(np.eye(30, 20, k) for k in (-2, -1, 0, 1))
    block = np.kron(np.eye(6), np.ones((5, 3)))
    block[:, 0] = 1  # one column shared by every block (a global parameter)
    scattered = rng.random((50, 40)) < 0.08
    return {"banded": banded, "block": block, "scattered": scattered}


@pytest.mark.parametrize("kind", ["banded", "block", "scattered"])
def test_colouring_recovers_the_dense_jacobian(kind):
    mask = patterns()[kind] != 0
    w = mask * np.random.default_rng(0).uniform(0.5, 2.0, mask.shape)
    fun = patterned(w)
    x = jnp.linspace(-1.0, 1.5, mask.shape[1])
    pattern = as_pattern(sp.csr_matrix(mask))
    expected = jax.jacfwd(fun)(x)
    got = colored_jacobian(fun, pattern, jnp.float64)(x)
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=16 * EPS * scale)
    # Columns of one group never share a row, and the groups are scipy's greedy
    # ones in column order (same algorithm, same groups).
    for g in range(pattern.n_groups):
        assert (mask[:, pattern.groups == g].sum(axis=1) <= 1).all()
    from scipy.optimize._numdiff import group_columns

    np.testing.assert_array_equal(
        pattern.groups, group_columns(mask, order=np.arange(mask.shape[1]))
    )
    if kind == "banded":  # 4 diagonals: 4 groups, whatever the size
        assert pattern.n_groups == 4


def test_patterns_from_any_input_are_one_pattern_and_share_their_colouring():
    # A COO matrix with a repeated entry and an explicit zero, its dense form and
    # the same matrix as CSR are one pattern (the repeat counted once, the
    # explicit zero not structural), and the host-side colouring is computed once.
    coo = sp.coo_matrix(
        ([1.0, 2.0, 0.0, 1.0, 3.0], ([0, 2, 1, 0, 1], [0, 1, 1, 0, 2])), shape=(3, 3)
    )
    dense = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    pats = [as_pattern(coo), as_pattern(dense), as_pattern(coo.tocsr())]
    assert pats[0] == pats[1] == pats[2] and len({hash(p) for p in pats}) == 1
    np.testing.assert_array_equal(pats[0].dense(), dense != 0)
    assert pats[0].groups is pats[1].groups
    index, piece_cols = pats[0].pieces()
    assert sorted(piece_cols) == list(piece_cols) and index.shape[0] == 3


def test_column_norms_neither_overflow_nor_lose_small_columns():
    # Entries 1e200 (their squares overflow) in a long column spread over several
    # pieces, next to a column of 1e-200: norms as numpy's scaled ones.
    mask = np.zeros((300, 3), bool)
    mask[:, 0] = True
    mask[::7, 1] = True
    mask[5:9, 2] = True
    jac = np.where(mask, 1.0, 0.0) * np.array([1e200, 3.0, 1e-200])
    jac[::3, 0] *= -0.5
    pattern = as_pattern(mask)
    product = jax.jit(lambda seed: jnp.asarray(jac) @ seed)
    got = column_norms(compressed_products(product, pattern, jnp.float64), pattern)
    want = [np.linalg.norm(jac[:, j] / s) * s for j, s in enumerate([1e200, 1, 1e-200])]
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_sparse_and_operator_linearizations_match_the_dense_one():
    mask = patterns()["block"] != 0
    fun = patterned(mask * 1.7)
    x = jnp.linspace(-1.0, 1.0, mask.shape[1])
    f = fun(x)
    jac = np.asarray(jax.jacfwd(fun)(x))
    pattern = as_pattern(mask)
    sparse, _ = SparseJacobian(fun, pattern)(x, f)
    vals = colored_values(lambda s: jax.jvp(fun, (x,), (s,))[1], pattern, x.dtype)
    nonzero = sparse._replace(operator=nonzero_operator(vals, pattern))
    with pytest.MonkeyPatch.context() as mp:  # several blocks of unit vectors
        mp.setattr(krylov, "_BLOCK_ENTRIES", 2 * mask.shape[0])
        operator, _ = OperatorJacobian(fun)(x, f)
    v = np.random.default_rng(1).standard_normal(mask.shape[1])
    u = np.random.default_rng(2).standard_normal(mask.shape[0])
    for lin in (sparse, nonzero, operator):
        tol = dict(rtol=1e-13, atol=1e-13 * np.abs(jac).max())
        np.testing.assert_allclose(lin.col_norms, np.linalg.norm(jac, axis=0), **tol)
        np.testing.assert_allclose(lin.jtf, jac.T @ np.asarray(f), rtol=1e-12)
        np.testing.assert_allclose(lin.operator.matvec(v), jac @ v, rtol=1e-12)
        np.testing.assert_allclose(lin.operator.rmatvec(u), jac.T @ u, rtol=1e-12)


def test_trust_region_cg_is_gauss_newton_inside_and_steihaug_on_the_boundary():
    rng = np.random.default_rng(4)
    jac = rng.standard_normal((12, 5))
    f = rng.standard_normal(12)
    diag = rng.uniform(0.5, 2.0, 5)
    op = JacobianOperator(lambda v: jnp.asarray(jac) @ v, lambda u: jac.T @ u)
    gn = np.linalg.lstsq(jac, -f, rcond=None)[0] * diag  # z = D p
    z, cut = trust_region_cg(op, diag, f, 10 * np.linalg.norm(gn), 1e-12, 50)
    np.testing.assert_allclose(z, gn, rtol=1e-9)
    assert not bool(cut)
    delta = 0.3 * np.linalg.norm(gn)
    z, cut = trust_region_cg(op, diag, f, delta, 1e-12, 50)
    assert bool(cut)
    np.testing.assert_allclose(np.linalg.norm(z), delta, rtol=1e-12)

    def model(z):  # the linear least-squares model
        return np.sum((f + jac @ (np.asarray(z) / diag)) ** 2)

    g = (jac.T @ f) / diag  # Steihaug's first step is the Cauchy point's direction
    cauchy = -delta * g / np.linalg.norm(g)
    assert model(z) <= model(cauchy) * (1 + 1e-12)
    assert model(z) < model(np.zeros(5))


# --------------------------------------------------------------------------------
# whole fits: cg against the dense solver and NIST


def decay(p, x, y):
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


X = jnp.linspace(0.0, 4.0, 30)
Y = decay(jnp.array([3.0, 1.3, 0.5]), X, 0.0) + 0.01 * jnp.sin(7 * X)
P0 = jnp.array([1.0, 1.0, 0.0])

VARIANTS = {
    "plain": {},
    "bounded, cauchy": dict(bounds=(-1.0, [10.0, 1.2, 10.0]), loss="cauchy"),
    "fixed": dict(fixed=[False, False, True]),
    "soft_l1": dict(loss="soft_l1", f_scale=0.02),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("sparsity", [None, np.ones((30, 3))], ids=["jvp", "pattern"])
def test_cg_fit_equals_the_dense_fit(variant, sparsity):
    opts = VARIANTS[variant]
    dense = jaxlsq.solve(decay, P0, (X, Y), **opts)
    cg = jaxlsq.solve(
        decay, P0, (X, Y), linear_solver="cg", jac_sparsity=sparsity, **opts
    )
    assert bool(cg.success) and bool(dense.success)
    # Both converge to rounding: the minimiser agrees to its conditioning
    # (kappa(J) ~ 30 here), the cost to a few eps.
    np.testing.assert_allclose(cg.params, dense.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cg.cost, dense.cost, rtol=1e-12)
    np.testing.assert_array_equal(cg.active_mask, dense.active_mask)
    assert cg.jac is None  # matrix-free: no dense J, not even at the end
    # Both stopped where the relative reduction is at most ftol = 10 eps: the
    # gradient is then small to sqrt(ftol * ||f||^2) * ||J|| (a Newton step's size).
    scale = np.sqrt(10 * EPS * 2 * float(dense.cost)) * np.abs(dense.jac).sum(0).max()
    np.testing.assert_allclose(cg.grad, dense.grad, atol=scale)


WELL_CONDITIONED = ["Misra1a", "Chwirut2", "DanWood", "Misra1b", "Kirby2", "Gauss1"]
WELL_CONDITIONED += ["Nelson", "Rat43", "Eckerle4", "BoxBOD", "Thurber", "MGH10"]


@pytest.mark.slow
@pytest.mark.parametrize("name", WELL_CONDITIONED)
def test_cg_reaches_nist_certified_values(name):
    problem = nist.load(name)
    start = 2  # (MGH10 from start 1 needs the dense solver's accuracy: see README)
    sol = jaxlsq.solve(
        problem.residuals,
        jnp.asarray(problem.starts[start - 1]),
        args=(jnp.asarray(problem.x), jnp.asarray(problem.y)),
        linear_solver="cg",
    )
    assert bool(sol.success), sol.message
    assert nist.min_lre(sol.params, problem.certified) >= 6
    assert 2 * float(sol.cost) <= problem.certified_rss * (1 + 1e-6) + 1e-20


def global_decays(k, points=20, seed=0):
    """k decay curves sharing one lifetime: params [tau, a_1..a_k, b_1..b_k]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 5.0, points)
    a, b = rng.uniform(1, 3, k), rng.uniform(-0.5, 0.5, k)
    ys = a[:, None] * np.exp(-t / 1.3) + b[:, None]
    ys = ys + 0.01 * rng.standard_normal(ys.shape)
    rows = np.arange(k * points)
    curve = rows // points
    pattern = sp.csr_matrix(
        (
            np.ones(3 * rows.size),
            (np.r_[rows, rows, rows], np.r_[0 * rows, 1 + curve, 1 + k + curve]),
        ),
        shape=(rows.size, 2 * k + 1),
    )
    p0 = np.r_[1.0, np.ones(k), np.zeros(k)]
    return t, ys, pattern, p0


def global_residuals(p, t, ys):
    k = ys.shape[0]
    return (p[1 : k + 1, None] * jnp.exp(-t / p[0]) + p[k + 1 :, None] - ys).ravel()


def test_global_fit_matches_scipy_lsmr_and_the_dense_solver():
    t, ys, pattern, p0 = global_decays(40)
    args = (jnp.asarray(t), jnp.asarray(ys))
    cg = jaxlsq.solve(
        global_residuals, jnp.asarray(p0), args, linear_solver="cg",
        jac_sparsity=pattern,
    )  # fmt: skip
    assert as_pattern(pattern).n_groups == 3  # 81 parameters, 3 products per J
    dense = jaxlsq.solve(global_residuals, jnp.asarray(p0), args, jac_sparsity=pattern)
    ref = least_squares(
        lambda p: np.asarray(global_residuals(p, t, ys)), p0, jac_sparsity=pattern,
        tr_solver="lsmr", ftol=1e-14, xtol=1e-14, gtol=1e-14,
    )  # fmt: skip
    assert bool(cg.success) and ref.success
    np.testing.assert_allclose(cg.cost, ref.cost, rtol=1e-10)
    np.testing.assert_allclose(cg.params, dense.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cg.params[0], ref.x[0], rtol=1e-7)


def test_a_pattern_converted_once_gives_the_same_fit_as_the_matrix():
    # jaxlsq.sparsity_pattern(S) once, then every call skips S's conversion.
    t, ys, pattern, p0 = global_decays(12)
    args, x0 = (jnp.asarray(t), jnp.asarray(ys)), jnp.asarray(p0)
    once = jaxlsq.sparsity_pattern(pattern)
    assert isinstance(once, jaxlsq.SparsityPattern) and once.shape == pattern.shape
    kw = dict(linear_solver="cg")
    a = jaxlsq.solve(global_residuals, x0, args, jac_sparsity=pattern, **kw)
    b = jaxlsq.solve(global_residuals, x0, args, jac_sparsity=once, **kw)
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="jac_sparsity"):
        jaxlsq.sparsity_pattern("not a pattern")


def test_a_residual_jax_cannot_transpose_falls_back_to_the_nonzeros():
    # A while_loop has no transpose, so J^T cannot come from jax.linearize; with a
    # pattern the products then run over J's nonzeros (forward jvps only).
    t, ys, pattern, p0 = global_decays(8)

    def looped(p, t, ys):  # global_residuals, computed inside a while_loop
        def body(carry):
            i, _ = carry
            return i + 1, global_residuals(p, t, ys)

        zeros = jnp.zeros(ys.size, p.dtype)
        return jax.lax.while_loop(lambda c: c[0] < 1, body, (0, zeros))[1]

    args, x0 = (jnp.asarray(t), jnp.asarray(ys)), jnp.asarray(p0)
    with pytest.raises(ValueError, match="Reverse-mode"):
        krylov.linearized_operator(lambda p: looped(p, *args), x0)
    got = jaxlsq.solve(looped, x0, args, linear_solver="cg", jac_sparsity=pattern)
    want = jaxlsq.solve(global_residuals, x0, args, linear_solver="cg",
                        jac_sparsity=pattern)  # fmt: skip
    assert bool(got.success)
    np.testing.assert_allclose(got.params, want.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.cost, want.cost, rtol=1e-12)


def test_cg_under_vmap_and_jit_keeps_every_lane_its_own():
    ys = jnp.stack([Y, 1.1 * Y, Y.at[3].set(jnp.nan), 0.9 * Y])

    def one(y):
        return jaxlsq.solve(decay, P0, (X, y), linear_solver="cg")

    batch = jax.jit(jax.vmap(one))(ys)
    status = np.asarray(batch.status)
    assert status[2] == int(jaxlsq.Status.NONFINITE)
    assert all(s in (1, 2, 3, 4) for s in status[[0, 1, 3]])
    for i in (0, 1, 3):
        alone = one(ys[i])
        np.testing.assert_allclose(batch.params[i], alone.params, rtol=1e-10)
    # Another neighbour (no NaN lane) leaves a lane's result bit for bit unchanged.
    other = jax.jit(jax.vmap(one))(ys.at[2].set(Y * 1.3))
    np.testing.assert_array_equal(other.params[0], batch.params[0])


def test_gradient_through_a_cg_fit_equals_the_dense_one():
    def tau(y, **kw):
        return jaxlsq.solve(decay, P0, (X, y), **kw).params[1]

    g_cg = jax.grad(lambda y: tau(y, linear_solver="cg"))(Y)
    g_dense = jax.grad(tau)(Y)
    np.testing.assert_allclose(g_cg, g_dense, rtol=1e-7, atol=1e-9)
    step = 1e-6 * np.eye(30)[5]  # and finite differences of the fit itself
    fd = (tau(Y + step, linear_solver="cg") - tau(Y - step, linear_solver="cg")) / 2e-6
    np.testing.assert_allclose(g_cg[5], fd, rtol=1e-5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: jaxlsq.solve(decay, P0, (X, Y), jac_sparsity=np.ones((29, 3))),
         r"jac_sparsity must have the Jacobian's shape \(m, n\) = \(30, 3\)"),
        (lambda: jaxlsq.solve(decay, P0, (X, Y), jac_sparsity=np.ones(3)),
         "jac_sparsity must be an"),
        (lambda: jaxlsq.solve(decay, P0, (X, Y), jac_sparsity=np.ones((30, 3)),
                              jac=jax.jacfwd(decay)),
         "jac_sparsity cannot be used with a callable jac"),
        (lambda: jaxlsq.solve(decay, P0, (X, Y), linear_solver="cg",
                              jac=jax.jacfwd(decay)),
         "linear_solver='cg' cannot be used with a callable jac"),
        (lambda: jaxlsq.solve(decay, P0, (X, Y), linear_solver="cg", chunk_points=5),
         "chunk_points cannot be used with jac_sparsity or linear_solver='cg'"),
        (lambda: jaxlsq.fit(lambda x, p: decay(p, x, 0.0), X, Y, P0,
                            linear_solver="cg"),
         "fit: linear_solver='cg' forms no Jacobian"),
        (lambda: jaxlsq.solve_batch(decay, P0, (X, jnp.stack([Y, Y])),
                                    in_axes=(None, (None, 0)), linear_solver="cg",
                                    schedule="refill"),
         "linear_solver='cg': the refill schedule"),
    ],
)  # fmt: skip
def test_bad_combinations_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
