"""Warnings of the scipy shims (jaxlsq.leastsq / curve_fit).

``OptimizeWarning`` *is* ``scipy.optimize.OptimizeWarning`` when scipy is installed,
so ``warnings.filterwarnings("ignore", category=scipy.optimize.OptimizeWarning)``
and ``pytest.warns(scipy.optimize.OptimizeWarning)`` see jaxlsq's warnings too (the
one-line import switch keeps the user's filters). scipy is not a dependency and
importing ``scipy.optimize`` takes ~0.7 s, so it is looked up only when asked for
(`optimize_warning`, or the attribute ``jaxlsq.OptimizeWarning``); without scipy
it is jaxlsq's own `_OptimizeWarning`.
"""

from __future__ import annotations

import functools


class _OptimizeWarning(UserWarning):
    """The covariance of the parameters could not be estimated (as scipy's)."""


@functools.cache
def optimize_warning() -> type[Warning]:
    """scipy's ``OptimizeWarning`` class, or jaxlsq's own where scipy is absent."""
    try:
        from scipy.optimize import OptimizeWarning
    except ImportError:  # pragma: no cover (the tests have scipy)
        return _OptimizeWarning
    return OptimizeWarning


class HostFallbackWarning(UserWarning):
    """A residual function could not be traced by JAX and runs on the host instead."""
