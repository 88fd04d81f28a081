"""The private testing surface: what jaxlsq's own tests need beyond the public API.

Not part of the public API. Tests exercise behaviour through the public entry points;
what those cannot show is reached through this one module, never by importing the
layers' modules directly, so that moving code between modules changes this file and
no test:

* instruments: `count_compiles` (XLA compilations in a block), `pool_shape` (the
  refill pool's geometry);
* the numerical kernels, each tested against an independent oracle (LAPACK, numpy,
  scipy's own private helpers, finite differences): the step system and damped steps,
  the unrolled factorisations, the dense linearization and the bare loop, the robust
  losses, the covariance rules, MINPACK's QR and covariance on the host, finite
  differences;
* tables the shims' tests compare with scipy's (messages, option names).
"""

from __future__ import annotations

import contextlib
import threading

import jax

from .batch.solve_batch import pool_shape
from .core import caches
from .core.caches import BoundedCache
from .core.factorize import StepSystem, factorize
from .core.factorize import _scaled_gram as scaled_gram
from .core.linearization import (
    DenseJacobian,
    JacobianStrategy,
    Linearization,
    linearize_dense,
)
from .core.loop import run_lm
from .core.losses import LOSSES, loss_scaled_jacobian, robust_cost, robust_residuals
from .core.options import STATIC_OPTIONS, TRACED_OPTIONS
from .core.steps import _damped_coefficients as damped_coefficients
from .core.steps import damped_step
from .fitting.checks import param_names
from .fitting.report import _percent as percent
from .fitting.statistics import _gram_pinv as gram_pinv
from .fitting.statistics import covariance
from .scipy._leastsq import _messages as leastsq_messages
from .scipy.differences import approx_jacobian
from .scipy.host import _from_bits as from_bits
from .scipy.host import _to_bits as to_bits
from .scipy.host import covariance_from_r, forward_difference, minpack_qr, qrfac
from .scipy.lsq_result import TERMINATION_MESSAGES

__all__ = [
    # instruments
    "count_compiles",
    "pool_shape",
    "caches",
    "BoundedCache",
    # core kernels
    "StepSystem",
    "factorize",
    "scaled_gram",
    "damped_coefficients",
    "damped_step",
    "DenseJacobian",
    "JacobianStrategy",
    "Linearization",
    "linearize_dense",
    "run_lm",
    "LOSSES",
    "loss_scaled_jacobian",
    "robust_cost",
    "robust_residuals",
    "STATIC_OPTIONS",
    "TRACED_OPTIONS",
    # fitting layer
    "covariance",
    "gram_pinv",
    "param_names",
    "percent",
    # scipy layer
    "leastsq_messages",
    "TERMINATION_MESSAGES",
    "approx_jacobian",
    "forward_difference",
    "covariance_from_r",
    "minpack_qr",
    "qrfac",
    "from_bits",
    "to_bits",
]

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_counters: list[list[int]] = []
_lock = threading.Lock()


def _on_event(event: str, duration: float, **_) -> None:
    if event == _COMPILE_EVENT:
        with _lock:
            for counter in _counters:
                counter[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations inside the block: ``with count_compiles() as n: ...``
    then ``n[0]`` is the number of programs compiled (jit cache misses)."""
    counter = [0]
    with _lock:
        _counters.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _counters.remove(counter)
