"""``least_squares``' ``callback`` and ``verbose=2``, through the loop's monitor.

scipy calls ``callback(intermediate_result)`` after every iteration of trf/dogbox
(``OptimizeResult`` with ``x``, ``fun``, ``nit``, ``nfev``, ``cost``; or
``callback(x)``, chosen by introspection) and stops with status -2 when it raises
``StopIteration``; ``verbose=2`` prints one line per iteration. Here both run in
the compiled loop's ``monitor`` (`jaxlsq.core.monitor`): an ``io_callback`` after
every accepted step. One module-level function, `relay`, is the monitor of every
call, so a new callback does not compile a new program; it reads the call's
`Watch`, registered for the duration of the fit (one monitored fit at a time per
process: `watching` holds a lock).
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import numpy as np

from ..core.monitor import Progress
from .lsq_result import _optimality, _optimize_result

_LOCK = threading.Lock()
_ACTIVE: list = [None]


class Watch:
    """One fit's callback and verbosity, and what the printed lines need.

    ``lb``, ``ub`` (n,) are the bounds (for the optimality measure), ``m`` the
    number of the user's residuals (the loop may pad them to n); ``halt`` stops
    the fit at its first report (x0)."""

    def __init__(self, callback, verbose, method, lb, ub, bounded, m, halt=False):
        # halt: stop at x0, before any trial step (trf/dogbox with max_nfev=1:
        # scipy counts fun(x0) against max_nfev, so no evaluation is left)
        self.halt = halt
        self.callback = _wrap(callback) if callback is not None else None
        self.verbose, self.method, self.m = verbose, method, m
        self.lb, self.ub, self.bounded = lb, ub, bounded
        self.last: Progress | None = None  # the previous report (for the lines)

    def __call__(self, p: Progress) -> bool:
        if self.verbose == 2:
            self._print(p)
        self.last = p
        if self.halt:
            return True
        if self.callback is None or p.nit < 1:  # scipy calls it after iterations
            return False
        res = _optimize_result(
            x=p.x.copy(), fun=p.fun[: self.m].copy(), nit=p.nit, nfev=p.nfev
        )
        res["cost"] = p.cost
        try:
            self.callback(res)
        except StopIteration:
            return True
        return False

    def _print(self, p: Progress) -> None:
        if self.last is None:
            print(
                "{:^15}{:^15}{:^15}{:^15}{:^15}{:^15}".format(
                    "Iteration", "Total nfev", "Cost", "Cost reduction",
                    "Step norm", "Optimality",
                )
            )  # fmt: skip
            reduction = step = " " * 15
        else:
            reduction = f"{self.last.cost - p.cost:^15.2e}"
            step = f"{np.linalg.norm(p.x - self.last.x):^15.2e}"
        active = np.zeros(p.x.shape, int)
        if self.bounded:
            active = (p.x >= self.ub).astype(int) - (p.x <= self.lb).astype(int)
        optimality = _optimality(
            self.method, p.x, p.grad, self.lb, self.ub, active, self.bounded
        )
        print(f"{p.nit:^15}{p.nfev:^15}{p.cost:^15.4e}{reduction}{step}"
              f"{optimality:^15.2e}")  # fmt: skip


def _wrap(callback):
    """scipy's introspection: ``callback(intermediate_result=res)`` when that is
    its only parameter, else ``callback(x)``."""
    try:
        params = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):
        params = set()
    if params == {"intermediate_result"}:
        return lambda res: callback(intermediate_result=res)
    return lambda res: callback(np.copy(res.x))


def relay(progress: Progress) -> bool:
    """The monitor of every shim fit: the active `Watch`'s answer."""
    watch = _ACTIVE[0]
    return False if watch is None else watch(progress)


@contextlib.contextmanager
def watching(watch: Watch | None):
    """``with watching(watch) as monitor:`` -- `relay` (None without a watch),
    with ``watch`` active for the duration of the block."""
    if watch is None:
        yield None
        return
    with _LOCK:
        _ACTIVE[0] = watch
        try:
            yield relay
        finally:
            _ACTIVE[0] = None
