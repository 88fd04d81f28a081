"""Warnings of the scipy shims (jaxlsq.leastsq / curve_fit)."""


class OptimizeWarning(UserWarning):
    """The covariance of the parameters could not be estimated (as scipy's)."""


class HostFallbackWarning(UserWarning):
    """A residual function could not be traced by JAX and runs on the host instead."""
