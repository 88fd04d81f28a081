"""jaxlsq: a JAX-native, MINPACK-grade Levenberg-Marquardt least-squares solver."""

from ._solution import MESSAGES, Solution, Status
from ._solve import solve

__all__ = ["MESSAGES", "Solution", "Status", "solve"]
__version__ = "0.1.0"
