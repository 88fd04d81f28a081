"""`float64`: the shims' ``jax.enable_x64(True)`` scope, made safe for an x64-off
process.

The shims compute in float64 whatever the global ``jax_enable_x64`` (JAX's default
is off). Tracing a residual that closes over the user's numpy arrays inside
``jax.enable_x64(True)`` goes through JAX's canonicalisation of numpy constants,
which memoises its result in a cache weak on both the array and the result, and
whose key does not hold the x64 state (jax/jaxlib 0.10.2). The float64 copy made
while tracing stays alive as a constant of the cached jaxprs, so afterwards, with
x64 off, ``jnp.asarray(x)`` returns float64 and ``jax.jit(g)(x)`` feeds a float64
buffer to a float32 program: ``RuntimeProgramInputMismatch`` (for instance
``jaxlsq.fit(model, x, y, p0)`` after ``jaxlsq.leastsq`` on the same ``x``, ``y``).
The pure-JAX reproducer, with ``JAX_ENABLE_X64=0``::

    x = np.linspace(0.0, 5.0, 50)
    f = lambda p: p * x                   # kept alive, as a fitted residual is
    with jax.enable_x64(True):
        jax.make_jaxpr(f)(np.float64(1))  # the trace canonicalises x to float64
    jnp.asarray(x).dtype                  # float64, with x64 off
    jax.jit(lambda t: t * 2)(x)           # JaxRuntimeError: RuntimeProgramInputMismatch

The workaround: when the scope was entered with x64 off and something was traced
inside it (JAX's trace event fired), JAX's staging caches (jaxprs, lowerings, not
the compiled executables of jitted functions) are cleared on the way out, so the
float64 copies die with them and the memo forgets them. A warm shim call traces
nothing and clears nothing (it runs from the compiled fit's own cache), so the cost
is paid once per new problem: about 1 ms here, plus a re-trace for any other
function whose next call misses its compiled-program cache.
"""

from __future__ import annotations

import contextlib
import threading

import jax

# The event JAX records once per traced program (jax._src.dispatch.JAXPR_TRACE_EVENT);
# a jit inside the trace (the LM loop's while_loop, the user's function) is part of it.
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"

_lock = threading.Lock()
_traces = 0  # trace events seen since the listener was registered
_listening = False


def _on_event(event: str, duration: float, **kwargs) -> None:
    global _traces
    if event == _TRACE_EVENT:
        _traces += 1  # (an int add: atomic enough for a "changed or not" test)


def _listen() -> None:
    global _listening
    with _lock:
        if not _listening:  # registered on first use: importing jaxlsq adds nothing
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _listening = True


@contextlib.contextmanager
def float64():
    """``jax.enable_x64(True)``; on leaving it, where the caller's x64 is off and
    the block traced a program, clear JAX's staging caches (see the module doc)."""
    if jax.config.jax_enable_x64:  # x64 already on (or an outer scope): nothing leaks
        yield
        return
    _listen()
    before = _traces
    try:
        with jax.enable_x64(True):
            yield
    finally:
        if _traces != before:
            _clear_staging_caches()


def _clear_staging_caches() -> None:
    """JAX's jaxpr/lowering caches, keeping compiled executables (so warm calls of
    every jitted function stay warm); all of JAX's caches where this JAX has no such
    split (a private function: the fallback is the public ``jax.clear_caches``)."""
    try:
        from jax._src.util import clear_all_caches
    except ImportError:  # pragma: no cover (another jax version)
        jax.clear_caches()
    else:
        clear_all_caches()
