"""jaxlsq: a JAX-native, MINPACK-grade Levenberg-Marquardt least-squares solver."""

from ._batch import solve_batch
from ._fit import FitResult, fit
from ._fit_batch import fit_batch
from ._masking import finite_lanes, masked_mean, where_lanes
from ._solution import MESSAGES, Solution, Status
from ._solve import solve
from .scipy import (
    HostFallbackWarning,
    OptimizeWarning,
    curve_fit,
    least_squares,
    leastsq,
)

__all__ = [
    "MESSAGES",
    "FitResult",
    "HostFallbackWarning",
    "OptimizeWarning",
    "Solution",
    "Status",
    "curve_fit",
    "finite_lanes",
    "fit",
    "fit_batch",
    "least_squares",
    "leastsq",
    "masked_mean",
    "solve",
    "solve_batch",
    "where_lanes",
]
__version__ = "0.1.0"
