"""One options model: every option of `solve` through every entry point.

The oracle for an entry point is `jaxlsq.solve` itself with the same option (solve
is checked against scipy and NIST elsewhere); each option value is chosen so that
it changes the result of this problem (checked too, so a dropped option fails).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq
from jaxlsq import SolveOptions
from jaxlsq._testing import STATIC_OPTIONS, TRACED_OPTIONS, count_compiles

X = jnp.linspace(0.0, 4.0, 30)
P0 = jnp.array([1.0, 1.0, 0.0])
TRUE = np.array([3.0, 1.3, 0.5])
SUCCESS = (1, 2, 3, 4)


def model(x, p):
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def residuals(p, x, y):
    return model(x, p) - y


def curves(n=3):
    rng = np.random.default_rng(0)
    ys = [
        model(X, TRUE * s) + 0.01 * rng.standard_normal(X.shape) for s in (1, 1.1, 0.9)
    ]
    ys = np.stack(ys[:n])
    ys[:, 7] += 2.0  # an outlier: robust losses move the fit
    return jnp.asarray(ys)


def scaled_jacobian(p, x, y):  # a wrong (halved) Jacobian: LM takes other steps
    return 0.5 * jax.jacfwd(residuals)(p, x, y)


def stop_after_one_step(progress):  # a monitor (host function): stop at nit 1
    return progress.nit >= 1


# option -> a value that changes this problem's result ("changes": compared with
# the defaults), or None for options that by design give the same fit.
CASES = {
    "ftol": (1e-3, "changes"),
    "xtol": (1e-2, "changes"),
    "gtol": (0.3, "changes"),
    "max_nfev": (3, "changes"),
    "factor": (0.01, "changes"),
    "diag": (jnp.array([1.0, 100.0, 0.01]), "changes"),
    "bounds": ((-np.inf, np.array([np.inf, 1.0, np.inf])), "changes"),
    "fixed": (np.array([False, False, True]), "changes"),
    "nfev_per_jac": (3, "changes"),  # nfev grows by 3 per Jacobian
    "loss": ("cauchy", "changes"),
    "f_scale": (0.05, "changes"),  # with loss="soft_l1", see below
    "jac": ("rev", "same"),
    "linear_solver": ("eigh", "same"),
    "adjoint": ("unrolled", "same"),
    "chunk_points": (5, "same"),  # J in 6 blocks of 5 points: the same fit
    "monitor": (stop_after_one_step, "changes"),  # single fits only
    "jac_sparsity": (np.ones((30, 3)), "same"),  # J by 1 colour group: the same fit
    "cg_tol": (0.5, "changes"),  # with linear_solver="cg" (see _with)
    "cg_maxiter": (1, "changes"),
    "keep_jac": (False, "same"),  # no Solution.jac: the same fit
}


def test_the_table_covers_every_option():
    assert set(CASES) == set(SolveOptions.names())
    assert set(STATIC_OPTIONS) | set(TRACED_OPTIONS) == set(SolveOptions.names())


def _with(name, value):
    opts = {name: value}
    if name == "f_scale":
        opts["loss"] = "soft_l1"
    if name.startswith("cg_"):
        opts["linear_solver"] = "cg"
    return opts


def _baseline(name):
    """The options a "changes" case is compared with: the defaults, and the
    matrix-free solver for its own options."""
    return {"linear_solver": "cg"} if name.startswith("cg_") else {}


def _solve(y, **opts):
    sol = jaxlsq.solve(residuals, P0, (X, y), **opts)
    return np.asarray(sol.params), int(sol.status), int(sol.nfev)


def _entry(entry, ys, **opts):
    """(params (N, 3), status (N,), nfev (N,)) of each curve through ``entry``."""
    if entry == "solve":
        out = [_solve(y, **opts) for y in ys]
        return tuple(np.array(v) for v in zip(*out, strict=True))
    if entry in ("solve_batch/vmap", "solve_batch/refill"):
        schedule = entry.split("/")[1]
        sols = jaxlsq.solve_batch(
            residuals, P0, (X, ys), in_axes=(None, (None, 0)), schedule=schedule,
            chunk_size=2, **opts,
        )  # fmt: skip
        return np.asarray(sols.params), np.asarray(sols.status), np.asarray(sols.nfev)
    if entry == "fit":
        res = [jaxlsq.fit(model, X, y, P0, **opts) for y in ys]
    elif entry == "fit/starts":
        res = [jaxlsq.fit(model, X, y, P0, starts=P0[None], **opts) for y in ys]
    elif entry in ("fit_batch/vmap", "fit_batch/refill"):
        schedule = entry.split("/")[1]
        r = jaxlsq.fit_batch(model, X, ys, P0, schedule=schedule, chunk_size=2, **opts)
        return np.asarray(r.params), np.asarray(r.status), np.asarray(r.nfev)
    return (
        np.stack([np.asarray(r.params) for r in res]),
        np.array([int(r.status) for r in res]),
        np.array([int(r.nfev) for r in res]),
    )


ENTRIES = [
    "solve",
    "solve_batch/vmap",
    "solve_batch/refill",
    "fit",
    "fit/starts",
    "fit_batch/vmap",
]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("entry", ENTRIES)
def test_every_option_is_honoured_by_every_entry_point(entry, name):
    value, effect = CASES[name]
    opts = _with(name, value)
    if name == "adjoint" and entry.endswith("/refill"):
        with pytest.raises(ValueError, match="adjoint='implicit' only"):
            _entry(entry, curves(), **opts)
        return
    if name == "monitor" and ("_batch" in entry or entry == "fit/starts"):
        with pytest.raises(ValueError, match="monitor"):  # single fits only
            _entry(entry, curves(), **opts)
        return
    if name.startswith("cg_") and (entry.startswith("fit") or "refill" in entry):
        with pytest.raises(ValueError, match="linear_solver='cg'"):  # no dense J
            _entry(entry, curves(), **opts)
        return
    if name == "keep_jac" and (entry.startswith("fit") or "refill" in entry):
        with pytest.raises(ValueError, match="keep_jac=False"):  # they need J
            _entry(entry, curves(), **opts)
        return
    if name == "jac" and entry.startswith("fit"):
        opts["jac"] = "rev"  # fit takes no callable jac (it would be the weighted one)
    elif name == "jac":
        opts["jac"] = scaled_jacobian
        effect = "changes"
    ys = curves()
    params, status, nfev = _entry(entry, ys, **opts)
    expected = [_solve(y, **opts) for y in ys]
    for i, (p, s, _) in enumerate(expected):
        # Another program rounds differently: compare to the fit's accuracy. Near
        # convergence ftol and xtol can then fire an iteration apart (another
        # success code, another nfev); a failure code must be the same.
        np.testing.assert_allclose(params[i], p, rtol=1e-6, atol=1e-9)
        if s in SUCCESS or status[i] in SUCCESS:
            assert status[i] in SUCCESS and s in SUCCESS, (i, status[i], s)
        else:
            assert status[i] == s, (i, status[i], s)
    if effect == "changes":
        default = [_solve(y, **_baseline(name)) for y in ys]
        moved = [
            not np.allclose(p, d[0], rtol=1e-6) or s != d[1] or nf != d[2]
            for (p, s, nf), d in zip(expected, default, strict=True)
        ]
        assert any(moved), f"{name}={value!r} did not change this problem"


@pytest.mark.parametrize(
    "entry",
    ["solve", "solve_batch", "fit", "fit_batch"],
)
def test_unknown_option_is_named(entry):
    ys = curves()
    call = {
        "solve": lambda: jaxlsq.solve(residuals, P0, (X, ys[0]), tol=1e-3),
        "solve_batch": lambda: jaxlsq.solve_batch(
            residuals, P0, (X, ys), in_axes=(None, (None, 0)), tol=1e-3
        ),
        "fit": lambda: jaxlsq.fit(model, X, ys[0], P0, tol=1e-3),
        "fit_batch": lambda: jaxlsq.fit_batch(model, X, ys, P0, tol=1e-3),
    }[entry]
    with pytest.raises(TypeError, match=r"unknown solve option\(s\) \['tol'\]"):
        call()


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("ftol", -1.0, "ftol must be >= 0"),
        ("max_nfev", 2.5, "max_nfev must be an integer"),
        ("max_nfev", 0, "max_nfev must be > 0"),
        ("nfev_per_jac", -1, "nfev_per_jac must be >= 0"),
        ("nfev_per_jac", 1.5, "nfev_per_jac must be an integer"),
        ("factor", 0.0, "factor must be > 0"),
        ("cg_maxiter", 0, "cg_maxiter must be > 0"),
        ("cg_tol", -1.0, "cg_tol must be >= 0"),
        ("f_scale", -1.0, "f_scale must be > 0"),
        ("loss", "l2", "loss must be one of"),
        ("linear_solver", "qr", "linear_solver must be one of"),
        ("adjoint", "reverse", "adjoint must be one of"),
        ("jac", "central", "jac must be one of"),
        ("keep_jac", "no", "keep_jac must be True or False"),
    ],
)
@pytest.mark.parametrize("entry", ["solve", "solve_batch", "fit"])
def test_bad_option_values_name_the_option(entry, name, value, match):
    ys = curves()
    opts = {name: value}
    call = {
        "solve": lambda: jaxlsq.solve(residuals, P0, (X, ys[0]), **opts),
        "solve_batch": lambda: jaxlsq.solve_batch(
            residuals, P0, (X, ys), in_axes=(None, (None, 0)), **opts
        ),
        "fit": lambda: jaxlsq.fit(model, X, ys[0], P0, **opts),
    }[entry]
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --------------------------------------------------------------------------------
# traced options never recompile


TRACED_CHANGES = [
    dict(ftol=1e-9, xtol=1e-9, gtol=1e-12),
    dict(factor=3.0, max_nfev=77),
    dict(bounds=(-10.0, 10.0)),
    dict(bounds=(-20.0, 20.0)),
]


@pytest.mark.parametrize(
    "entry", ["solve", "solve_batch/vmap", "solve_batch/refill", "fit", "fit/starts"]
)
def test_new_values_of_traced_options_do_not_recompile(entry):
    ys = curves()
    first = dict(ftol=1e-8, bounds=(-5.0, 5.0))
    _entry(entry, ys, **first)  # compiles, with bounds present
    for change in TRACED_CHANGES:
        opts = {**first, **change}
        with count_compiles() as compiles:
            _entry(entry, ys, **opts)
        assert compiles[0] == 0, (entry, change)


def test_new_sigma_values_do_not_recompile():
    ys = curves()
    sigma = np.full(X.shape, 0.1)
    jaxlsq.fit(model, X, ys[0], P0, sigma=sigma)
    jaxlsq.fit_batch(model, X, ys, P0, sigma=sigma)
    with count_compiles() as compiles:
        jaxlsq.fit(model, X, ys[0], P0, sigma=sigma * 2)
        jaxlsq.fit_batch(model, X, ys, P0, sigma=sigma * 3)
    assert compiles[0] == 0


def test_options_value_and_keywords_combine():
    ys = curves()
    base = SolveOptions(ftol=1e-3, loss="cauchy")
    a = jaxlsq.solve(residuals, P0, (X, ys[0]), options=base, max_nfev=4)
    b = jaxlsq.solve(residuals, P0, (X, ys[0]), ftol=1e-3, loss="cauchy", max_nfev=4)
    np.testing.assert_array_equal(a.params, b.params)
    assert int(a.status) == int(b.status) == int(jaxlsq.Status.MAX_NFEV)
    with pytest.raises(TypeError, match="options must be a SolveOptions"):
        jaxlsq.solve(residuals, P0, (X, ys[0]), options={"ftol": 1e-3})
    # the same value through the other entry points
    c = jaxlsq.fit(model, X, ys[0], P0, options=SolveOptions(ftol=1e-3), max_nfev=4)
    d = jaxlsq.solve_batch(
        residuals, P0, (X, ys), in_axes=(None, (None, 0)), options=base, max_nfev=4
    )
    e = jaxlsq.solve(residuals, P0, (X, ys[0]), ftol=1e-3, max_nfev=4)
    np.testing.assert_allclose(c.params, e.params, rtol=1e-9)
    assert int(c.status) == int(e.status)
    assert int(d.status[0]) == int(jaxlsq.Status.MAX_NFEV)
    np.testing.assert_allclose(d.params[0], a.params, rtol=1e-9)
    with pytest.raises(TypeError, match="give bounds, fixed, loss and f_scale"):
        jaxlsq.fit(model, X, ys[0], P0, options=base)


def test_solve_options_is_a_pytree_with_static_structure():
    a = SolveOptions(ftol=1e-3, loss="cauchy")
    b = SolveOptions(ftol=2e-3, loss="cauchy")
    c = SolveOptions(ftol=1e-3, loss="huber")
    tree = jax.tree_util.tree_structure
    assert tree(a) == tree(b) and tree(a) != tree(c)
    leaves = jax.tree_util.tree_leaves(a)
    # ftol, nfev_per_jac, factor, f_scale (None: no leaf)
    assert leaves == [1e-3, 0, 10.0, 1.0]


@pytest.mark.parametrize("entry", ["solve", "fit", "least_squares"])
def test_adding_bounds_to_a_single_fit_compiles_nothing(entry):
    """A single fit without bounds runs the bounded program with +-inf bounds, so a
    notebook's next cell that adds bounds reuses it (it recompiled before); with
    bounds that do not bind, the fit is the unbounded one, bit for bit."""
    y = curves()[0]
    box = (np.full(3, -10.0), np.full(3, 10.0))

    def fun(p):  # one function for both calls (a new one would compile anew)
        return residuals(p, X, y)

    def run(bounds):
        if entry == "solve":
            return np.asarray(jaxlsq.solve(residuals, P0, (X, y), bounds=bounds).params)
        if entry == "fit":
            return np.asarray(jaxlsq.fit(model, X, y, P0, bounds=bounds).params)
        kw = {} if bounds is None else {"bounds": bounds}
        return jaxlsq.least_squares(fun, P0, **kw).x

    free = run(None)
    with count_compiles() as compiles:
        boxed = run(box)
    assert compiles[0] == 0, compiles[0]
    np.testing.assert_array_equal(boxed, free)
