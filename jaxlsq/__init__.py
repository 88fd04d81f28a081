"""jaxlsq: a JAX-native, MINPACK-grade Levenberg-Marquardt least-squares solver."""

from ._batch import solve_batch
from ._solution import MESSAGES, Solution, Status
from ._solve import solve
from .scipy import HostFallbackWarning, OptimizeWarning, curve_fit, leastsq

__all__ = [
    "MESSAGES",
    "HostFallbackWarning",
    "OptimizeWarning",
    "Solution",
    "Status",
    "curve_fit",
    "leastsq",
    "solve",
    "solve_batch",
]
__version__ = "0.1.0"
