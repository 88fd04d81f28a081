"""The solvers being compared, each behind the same small interface.

A *batched* method (jaxlsq, optimistix, jaxopt) is built once per problem into a
jitted, vmapped function ``fit(p0, y) -> dict`` of device arrays with keys
``params`` (N, n), ``iters`` (N,), ``success`` (N,) bool and ``status`` (N,) int,
where a solver has no such output the entry is ``None``. A *loop* method (scipy) fits
curves one by one in Python. Optional peers are imported defensively: a missing or
broken install gives a method with ``unavailable`` set, which the runner prints as a
row instead of crashing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy
from problems import Problem
from scipy.optimize import leastsq

try:
    import optimistix as optx

    OPTX_ERROR = None
except ImportError:
    optx, OPTX_ERROR = None, "not installed"

try:
    import jaxopt

    JAXOPT_ERROR = None
except ImportError:
    jaxopt, JAXOPT_ERROR = None, "not installed"
except Exception as err:  # an install broken against this jax version
    jaxopt, JAXOPT_ERROR = None, f"import failed: {type(err).__name__}: {err}"


@dataclasses.dataclass(frozen=True)
class BatchedMethod:
    """A solver run as ``jit(vmap(fit))`` over the batch."""

    key: str  # for --methods
    name: str  # for the table
    build: Callable  # build(problem, x, tol) -> jitted fit(p0, y)
    iters_label: str
    unavailable: str | None = None


@dataclasses.dataclass(frozen=True)
class LoopMethod:
    """A solver called once per curve in a Python loop."""

    key: str
    name: str
    use_dfun: bool
    unavailable: str | None = None


def peer_versions() -> dict[str, str]:
    """Installed versions of the compared packages (or why they are missing)."""
    return {
        "scipy": scipy.__version__,
        "optimistix": _version("optimistix", OPTX_ERROR),
        "jaxopt": _version("jaxopt", JAXOPT_ERROR),
    }


def _version(package: str, error: str | None) -> str:
    if error:
        return error
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


# ----------------------------------------------------------------------------------
# batched (JAX) methods


def _jaxlsq_outputs(sol) -> dict:
    return {
        "params": sol.params,
        "iters": sol.njev,
        "success": sol.success,
        "status": sol.status,
    }


def _build_jaxlsq(
    linear_solver: str,
    scipy_tols: bool = False,
    chunked: bool = False,
    schedule: str = "vmap",
) -> Callable:
    """``jit(vmap(jaxlsq.solve))``, or ``jaxlsq.solve_batch`` (chunks of 1024) when
    ``chunked``, with the given ``schedule`` (``"vmap"``: lock-step chunks;
    ``"refill"``: a pool of 1024 slots refilled from the queue of fits as each
    finishes).

    With jaxlsq's own defaults, or with ``scipy_tols``: scipy leastsq's defaults
    (``ftol = xtol = sqrt(eps)``, ``factor = 100``, ``max_nfev = 100 (n + 1)``), for
    a like-for-like comparison with MINPACK.
    """

    def build(problem: Problem, x, tol):
        import jaxlsq

        fun = problem.residual_jax
        options = {"linear_solver": linear_solver}
        if scipy_tols:
            sqrt_eps = float(np.sqrt(np.finfo(x.dtype).eps))
            n = problem.n_params
            options.update(
                ftol=sqrt_eps, xtol=sqrt_eps, factor=100.0, max_nfev=100 * (n + 1)
            )

        def fit(p0, y):
            sol = jaxlsq.solve(fun, p0, args=(x, y), **options)
            return _jaxlsq_outputs(sol)

        if not chunked:
            return jax.jit(jax.vmap(fit))

        def fit_batch(p0, y):
            sol = jaxlsq.solve_batch(
                fun, p0, (x, y), in_axes=(0, (None, 0)), schedule=schedule, **options
            )
            return _jaxlsq_outputs(sol)

        return jax.jit(fit_batch)

    return build


def _build_jaxlsq_fit_batch(problem: Problem, x, tol):
    """``jaxlsq.fit_batch`` with scipy leastsq's tolerances (as the "scipy tols"
    rows): the solves of ``solve_batch`` plus every fit's covariance, standard errors
    and statistics."""
    import jaxlsq

    sqrt_eps = float(np.sqrt(np.finfo(x.dtype).eps))
    options = dict(
        ftol=sqrt_eps,
        xtol=sqrt_eps,
        factor=100.0,
        max_nfev=100 * (problem.n_params + 1),
    )

    def model(x, p):
        return problem.model(p, x, jnp)

    def fit(p0, y):
        res = jaxlsq.fit_batch(model, x, y, p0, in_axes=(None, 0, 0, None), **options)
        return {
            "params": res.params,
            "iters": res.njev,
            "success": res.success,
            "status": res.status,
        }

    return jax.jit(fit)


def _build_optimistix(problem: Problem, x, tol):
    """``optimistix.least_squares`` with ``LevenbergMarquardt(rtol=tol, atol=tol)``."""
    solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)
    residual = problem.residual_jax

    def fn(p, args):
        return residual(p, *args)

    def fit(p0, y):
        sol = optx.least_squares(fn, solver, p0, args=(x, y), throw=False)
        return {
            "params": sol.value,
            "iters": sol.stats["num_steps"],
            "success": sol.result == optx.RESULTS.successful,
            "status": None,
        }

    return jax.jit(jax.vmap(fit))


#: The bare Gauss-Newton reference: iterations and curves per block.
SOL_ITERS, SOL_BLOCK = 10, 500


def _build_speed_of_light(problem: Problem, x, tol):
    """NOT A SOLVER: the arithmetic floor of a batched LM on this machine.

    ``SOL_ITERS`` plain Gauss-Newton steps on the whole batch at once, in blocks of
    ``SOL_BLOCK`` curves under ``lax.map``: each Jacobian column by one ``jvp`` of
    the batched model, the Gram matrix and ``J^T r`` as reductions over the points,
    an unrolled Cholesky of the n x n systems. No damping, no stopping tests, no
    bounds or status: what the robust loop's per-iteration work should cost.
    """
    n = problem.n_params

    def model(p):  # (B, n) -> (B, m): the problem's model broadcasts over rows
        return problem.model(p, x, jnp)

    def step(p, y):
        r = model(p) - y
        basis = jnp.eye(n, dtype=p.dtype)
        cols = [
            jax.jvp(model, (p,), (jnp.broadcast_to(basis[i], p.shape),))[1]
            for i in range(n)
        ]
        gram = [[jnp.sum(cols[i] * cols[j], -1) for j in range(n)] for i in range(n)]
        rhs = [-jnp.sum(c * r, -1) for c in cols]
        low = [[None] * n for _ in range(n)]  # Cholesky, entry by entry, (B,) each
        for j in range(n):
            d = gram[j][j] - sum(low[j][k] ** 2 for k in range(j))
            low[j][j] = jnp.sqrt(d)
            for i in range(j + 1, n):
                off = gram[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
                low[i][j] = off / low[j][j]
        z = []
        for i in range(n):  # L z = rhs
            z.append((rhs[i] - sum(low[i][k] * z[k] for k in range(i))) / low[i][i])
        d = [None] * n
        for i in reversed(range(n)):  # L^T d = z
            acc = z[i] - sum(low[k][i] * d[k] for k in range(i + 1, n))
            d[i] = acc / low[i][i]
        return p + jnp.stack(d, axis=-1)

    def block(args):
        p, y = args
        return jax.lax.fori_loop(0, SOL_ITERS, lambda _, q: step(q, y), p)

    def fit(p0, y):
        count = p0.shape[0]
        size = min(SOL_BLOCK, count)
        blocks = -(-count // size)
        pad = blocks * size - count
        p_pad = jnp.concatenate([p0, jnp.repeat(p0[-1:], pad, 0)])
        y_pad = jnp.concatenate([y, jnp.repeat(y[-1:], pad, 0)])
        out = jax.lax.map(
            block,
            (p_pad.reshape(blocks, size, n), y_pad.reshape(blocks, size, -1)),
        )
        params = out.reshape(blocks * size, n)[:count]
        return {
            "params": params,
            "iters": jnp.full(count, SOL_ITERS),
            "success": None,
            "status": None,
        }

    return jax.jit(fit)


def jaxopt_maxiter(n_params: int) -> int:
    """jaxopt's iteration cap: MINPACK's default ``max_nfev = 100 (n + 1)``."""
    return 100 * (n_params + 1)


def _build_jaxopt(problem: Problem, x, tol):
    """jaxopt's LM at its best: Madsen-Nielsen stopping, dense Jacobian, Cholesky.

    jaxopt reports no status; ``success`` here means "stopped before maxiter".
    """
    maxiter = jaxopt_maxiter(problem.n_params)
    solver = jaxopt.LevenbergMarquardt(
        problem.residual_jax,
        stop_criterion="madsen-nielsen",
        materialize_jac=True,
        solver="cholesky",
        tol=tol,
        xtol=tol,
        gtol=tol,
        maxiter=maxiter,
    )

    def fit(p0, y):
        params, state = solver.run(p0, x, y)
        return {
            "params": params,
            "iters": state.iter_num,
            "success": state.iter_num < maxiter,
            "status": None,
        }

    return jax.jit(jax.vmap(fit))


BATCHED_METHODS = (
    BatchedMethod("jaxlsq", "jaxlsq (svd)", _build_jaxlsq("svd"), "njev"),
    BatchedMethod("jaxlsq-eigh", "jaxlsq (eigh)", _build_jaxlsq("eigh"), "njev"),
    BatchedMethod(
        "jaxlsq-scipytols",
        "jaxlsq (svd, scipy tols)",
        _build_jaxlsq("svd", True),
        "njev",
    ),
    BatchedMethod(
        "jaxlsq-batch",
        "jaxlsq solve_batch",
        _build_jaxlsq("svd", chunked=True),
        "njev",
    ),
    BatchedMethod(
        "jaxlsq-batch-refill",
        "jaxlsq solve_batch refill",
        _build_jaxlsq("svd", chunked=True, schedule="refill"),
        "njev",
    ),
    BatchedMethod(
        "jaxlsq-batch-scipytols",
        "jaxlsq solve_batch (scipy tols)",
        _build_jaxlsq("svd", True, chunked=True, schedule="auto"),
        "njev",
    ),
    BatchedMethod(
        "jaxlsq-fit-batch",
        "jaxlsq fit_batch (scipy tols)",
        _build_jaxlsq_fit_batch,
        "njev",
    ),
    BatchedMethod(
        "optimistix", "optimistix", _build_optimistix, "num_steps", OPTX_ERROR
    ),
    BatchedMethod("jaxopt", "jaxopt", _build_jaxopt, "iter_num", JAXOPT_ERROR),
    BatchedMethod(
        "speed-of-light",
        f"speed of light: bare GN x{SOL_ITERS} (NOT a solver)",
        _build_speed_of_light,
        "steps",
    ),
)

LOOP_METHODS = (
    LoopMethod("scipy-dfun", "scipy leastsq + Dfun", use_dfun=True),
    LoopMethod("scipy-fd", "scipy leastsq (FD)", use_dfun=False),
)


# ----------------------------------------------------------------------------------
# loop (scipy) methods


def scipy_fit(problem: Problem, p0, y, use_dfun: bool, full_output: bool = False):
    """One ``scipy.optimize.leastsq`` fit in float64 with MINPACK's default options."""
    dfun = problem.jacobian_np if use_dfun else None
    return leastsq(
        problem.residual_np,
        np.asarray(p0, np.float64),
        args=(problem.x, np.asarray(y, np.float64)),
        Dfun=dfun,
        full_output=full_output,
    )


def scipy_loop(problem: Problem, p0s, ys, use_dfun: bool, budget_s: float):
    """Fit curves in order until all are done or ``budget_s`` has elapsed.

    Returns ``(params (k, n), ier (k,), seconds)`` for the ``k >= 1`` curves fitted.
    """
    params, iers = [], []
    start = time.perf_counter()
    for p0, y in zip(p0s, ys, strict=True):
        p, ier = scipy_fit(problem, p0, y, use_dfun)
        params.append(p)
        iers.append(ier)
        if time.perf_counter() - start > budget_s:
            break
    seconds = time.perf_counter() - start
    return np.array(params), np.array(iers), seconds


def minpack_reference(problem: Problem, p0s, ys):
    """scipy + analytic Dfun on every curve: ``(params, cost64, njev, ier)``."""
    params, njev, ier = [], [], []
    for p0, y in zip(p0s, ys, strict=True):
        p, _, info, _, code = scipy_fit(problem, p0, y, True, full_output=True)
        params.append(p)
        njev.append(info["njev"])
        ier.append(code)
    params = np.array(params)
    return params, problem.cost64(params, ys), np.array(njev), np.array(ier)
