"""jaxlsq: a JAX-native, MINPACK-grade Levenberg-Marquardt least-squares solver.

The package is layered; imports point down only (see README, "How it is built"):
``scipy`` (scipy's contract) -> ``fitting`` (curve fitting) -> ``batch`` (many
fits) -> ``core`` (options, the LM loop, steps, losses, implicit differentiation).
This module only re-exports the public API (after `jaxlsq._jax_import`, which
imports JAX without changing numpy's global random state).
"""

from . import _jax_import  # noqa: F401  (first of all: see its docstring)
from .batch.lanes import finite_lanes, masked_mean, where_lanes
from .batch.sharding import gather_batch, local_batch, shard_batch
from .batch.solve_batch import solve_batch
from .core.compiler import CPU_COMPILER_OPTIONS, enable_compilation_cache
from .core.options import SolveOptions
from .core.solve import solve
from .core.sparsity import SparsityPattern
from .core.sparsity import as_pattern as sparsity_pattern
from .core.status import MESSAGES, Solution, Status
from .fitting.degeneracy import DegenerateFitWarning
from .fitting.fit import fit
from .fitting.fit_batch import fit_batch
from .fitting.poisson import poisson_deviance_residuals
from .fitting.result import FitResult
from .scipy import (
    HostFallbackWarning,
    curve_fit,
    least_squares,
    leastsq,
)

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "DegenerateFitWarning",
    "MESSAGES",
    "FitResult",
    "HostFallbackWarning",
    "OptimizeWarning",
    "Solution",
    "SolveOptions",
    "SparsityPattern",
    "Status",
    "curve_fit",
    "enable_compilation_cache",
    "finite_lanes",
    "fit",
    "fit_batch",
    "gather_batch",
    "least_squares",
    "leastsq",
    "local_batch",
    "masked_mean",
    "poisson_deviance_residuals",
    "shard_batch",
    "solve",
    "solve_batch",
    "sparsity_pattern",
    "where_lanes",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "OptimizeWarning":  # scipy's class when installed, looked up lazily
        from .scipy.errors import optimize_warning

        return optimize_warning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
