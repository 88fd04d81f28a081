"""A small testing surface: what jaxlsq's own tests need beyond the public API.

Not part of the public API; kept small on purpose so that tests exercise behaviour
through public entry points and only count what those cannot show.
"""

from __future__ import annotations

import contextlib
import threading

import jax

from .batch.solve_batch import pool_shape

__all__ = ["count_compiles", "pool_shape"]

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
