"""Drop-in replacements for scipy.optimize: leastsq, least_squares and curve_fit.

Numpy in, numpy (float64) out, scipy's signatures, defaults, return values, messages,
warnings and errors; the fit itself is `jaxlsq.solve` (MINPACK's lmder, compiled once
per problem shape). Change only the import::

    from jaxlsq.scipy import leastsq, least_squares, curve_fit  # was: scipy.optimize

Two paths, chosen once per function (and argument shapes), never by the user:

* **JAX path.** A residual function JAX can trace (written with ``jax.numpy``, or with
  plain operators that work on JAX arrays) is compiled together with the LM loop and
  gets an exact Jacobian (``jax.jacfwd``) unless ``Dfun`` is given. Repeated calls with
  the same function and shapes reuse the compiled loop: a warm call is one dispatch of
  it and one transfer of its results, plus MINPACK's QR factors with ``full_output``.
* **Host path.** A function JAX cannot trace (numpy ufuncs on the parameters, Python
  ``if`` on their values, ``float(p[0])``, in-place writes, non-array ``args``) runs on
  the host through ``jax.pure_callback``, driven by the same compiled LM loop, with
  MINPACK's forward-difference Jacobian (``epsfcn``) or a numpy ``Dfun``. A
  `HostFallbackWarning` says so, once per function.

All work is done in float64 inside ``jax.enable_x64(True)``, whatever the global
``jax_enable_x64`` setting; the global flag is never changed (`jaxlsq.scipy.x64`:
with it off, what that scope leaves in JAX's caches is cleared). scipy itself is
not needed (it is the tests' oracle).
"""

from ._curve_fit import curve_fit
from ._least_squares import least_squares
from ._leastsq import NONFINITE_IER, leastsq
from .errors import HostFallbackWarning, optimize_warning

__all__ = [
    "NONFINITE_IER",
    "HostFallbackWarning",
    "OptimizeWarning",
    "curve_fit",
    "least_squares",
    "leastsq",
]


def __getattr__(name: str):
    if name == "OptimizeWarning":  # scipy's class, looked up on first use
        return optimize_warning()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
