"""The shims' compiled call: one dispatch of `jaxlsq.solve`, one transfer back.

`leastsq` and `least_squares` (and `curve_fit` through them) run every fit here,
on the JAX path and the host path alike (there ``fun``/``jac`` are a
`jaxlsq.scipy.host.HostProblem`'s callbacks). ``solve`` is traced inside one jit,
so its Python validation runs once per compilation instead of once per call, and
the results come back as a single packed float64 vector.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.chunked import chunked_strategy, resolve_chunk_points
from ..core.compiler import jit
from ..core.monitor import take_error
from ..core.options import SolveOptions
from ..core.solve import solve
from ..core.sparsity import colored_values


class HostFit(NamedTuple):
    """The host-side results of one fit (numpy float64 arrays; Python ints)."""

    status: int
    nfev: int
    njev: int
    cost: float
    x: np.ndarray  # (n,)
    fun: np.ndarray  # (m,)
    grad: np.ndarray  # (n,)
    active_mask: np.ndarray  # (n,) int
    jac: Any  # (m, n): ndarray, or scipy.sparse CSR with ``jac_sparsity`` and cg;
    # with ``compress_jac`` granted: R (n, n), upper triangular, R^T R = J^T J
    jac_is_r: bool = False


def run_fit(
    fun,
    x0: np.ndarray,
    args: tuple,
    m: int,
    where: str,
    compress_jac: bool = False,
    **options,
) -> HostFit:
    """Fit ``fun`` from ``x0`` (n,) with `jaxlsq.solve`'s ``options`` (checked here
    first, eagerly, so a bad value raises what ``solve`` raises; ``where`` names
    the shim); call inside ``jax.enable_x64(True)``.

    ``compress_jac``: the caller needs J only through ``J^T J`` (a covariance).
    Where the fit runs chunked (one large fit, `jaxlsq.core.chunked`) with the
    linear loss, the (m, n) J is then never formed: ``jac`` is R (n, n) by TSQR
    (``jac_is_r``), and nothing of size m x n crosses to the host.
    """
    opts = SolveOptions.build(where=where, **options)
    opts = resolve_chunk_points(fun, x0, args, m, opts)  # eagerly: "auto" sees values
    compress = (
        compress_jac
        and isinstance(opts.chunk_points, int)
        and opts.loss == "linear"
        and opts.linear_solver != "cg"
    )
    if compress:
        opts = dataclasses.replace(opts, keep_jac=False)
    packed = np.array(_solve_packed(fun, x0, args, opts))  # the one transfer (a copy)
    error = None if opts.monitor is None else take_error(opts.monitor)
    if error is not None:  # the monitor's own exception (it stopped the fit)
        raise error
    n = x0.size
    status, nfev, njev = (int(v) for v in packed[:3].tolist())
    parts, i = [], 4
    for size in (n, m, n, n):
        parts.append(packed[i : i + size])
        i += size
    x, f, grad, active = parts
    pattern = opts.jac_sparsity
    if opts.linear_solver == "cg" and pattern is not None:  # J's nonzeros
        from scipy.sparse import csr_array

        jac = csr_array((packed[i:], (pattern.rows, pattern.cols)), shape=(m, n))
    else:
        jac = packed[i:].reshape(n if compress else m, n)
    return HostFit(
        status, nfev, njev, packed[3], x, f, grad, active.astype(int), jac, compress
    )


@jit(static_argnums=(0,))
def _solve_packed(fun, x0, args, options):
    """``solve(...)`` packed as ``[status, nfev, njev, cost, x, f, grad, active,
    jac.ravel()]`` (float64). A matrix-free fit (``linear_solver="cg"``) has no
    J: fun's own J at the solution is computed once here, as its nonzeros (nnz,)
    by colour groups with ``jac_sparsity``, dense by ``jacfwd`` without. A chunked
    fit with ``keep_jac=False`` packs R (n, n) of J at the solution instead."""
    sol = solve(fun, x0, args, options=options)
    jac = sol.jac
    if not options.keep_jac:
        blocks = chunked_strategy(
            fun, lambda x: x, x0, (args, 1.0), options.chunk_points, "linear",
            sol.residuals.size, None,
        )  # fmt: skip
        jac = blocks.r_factor(sol.params)
    elif jac is None:

        def flat(x):
            return jnp.ravel(fun(x, *args)).astype(x.dtype)

        if options.jac_sparsity is None:
            jac = jax.jacfwd(flat)(sol.params)
        else:
            jac = colored_values(
                lambda seed: jax.jvp(flat, (sol.params,), (seed,))[1],
                options.jac_sparsity, sol.params.dtype,
            )  # fmt: skip
    head = jnp.stack([sol.status, sol.nfev, sol.njev]).astype(jnp.float64)
    parts = (head, sol.cost, sol.params, sol.residuals, sol.grad, sol.active_mask,
             jac)  # fmt: skip
    return jnp.concatenate([jnp.ravel(p).astype(jnp.float64) for p in parts])
