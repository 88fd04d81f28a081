"""Per-iteration reports to the host: the ``monitor`` option of `jaxlsq.solve`.

The LM loop runs inside one compiled ``lax.while_loop``, so nothing of Python runs
between its iterations. ``monitor`` is a host function that the loop calls through
``jax.experimental.io_callback``:

* at the start of the fit and after every accepted step, when the Jacobian at the
  new point (hence the gradient) is known -- at the top of the next iteration;
* once more at the end when the last iteration accepted a step (``final``).

It receives a `Progress` (numpy values) and returns whether to stop: a truthy
return, or raising ``StopIteration``, ends the fit at the reported point with
`Status.STOPPED`. Any other exception also stops the fit; an eager `jaxlsq.solve`
(and the scipy shims) then re-raises it after the loop, as the user's own.

Cost: one host round trip per accepted step (a device sync: the loop waits for
the answer), plus, for a robust loss, one residual evaluation (not counted in
``nfev``) to report ``fun``'s own residuals. Without ``monitor`` nothing of this is
compiled. For single fits only: JAX cannot batch an ``io_callback`` inside a
``while_loop`` under ``vmap`` (`jaxlsq.solve` raises ``ValueError`` there).

float64 values cross the callback boundary as uint32 pairs: JAX converts callback
operands to the default dtypes of the thread that runs the callback, which is not
always the caller's (XLA may run it on its own threads, where a caller's
``jax.enable_x64(True)`` does not apply) and would round float64 to float32.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import io_callback

from .status import Status


class Progress(NamedTuple):
    """One report of a running fit (host side, numpy).

    Attributes
    ----------
    nit : int
        Accepted steps so far (0 at the start).
    nfev, njev : int
        Residual and Jacobian evaluations so far.
    cost : float
        The cost the loop minimises at ``x`` (robust for a robust loss).
    x : ndarray (n,)
        The current point (flat, in the order of ``ravel_pytree(x0)``).
    fun : ndarray (m,)
        ``fun``'s own residuals at ``x``, flattened.
    grad : ndarray (n,)
        Gradient of ``cost`` at ``x``.
    final : bool
        True for the report after the loop (its return value is ignored).
    """

    nit: int
    nfev: int
    njev: int
    cost: float
    x: np.ndarray
    fun: np.ndarray
    grad: np.ndarray
    final: bool


def bits_of(x: jax.Array) -> jax.Array:
    """float64 (k,) -> uint32 (k, 2), the same bits (traced side)."""
    return lax.bitcast_convert_type(jnp.asarray(x, jnp.float64), jnp.uint32)


def from_bits(bits) -> np.ndarray:
    """uint32 (k, 2) -> float64 (k,), the same bits (host side)."""
    bits = np.ascontiguousarray(np.asarray(bits), dtype=np.uint32)
    return bits.view(np.float64).reshape(bits.shape[:-1])


def to_bits(a) -> np.ndarray:
    """float64 (...) -> uint32 (..., 2), the same bits (host side)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a.view(np.uint32).reshape(*a.shape, 2)


# Exceptions the monitors raised, by monitor, until an eager caller collects them.
_ERRORS: dict[int, BaseException] = {}
_LOCK = threading.Lock()


def take_error(monitor: Callable) -> BaseException | None:
    """The first exception ``monitor`` raised since the last call (then cleared)."""
    with _LOCK:
        return _ERRORS.pop(id(monitor), None)


def report(
    monitor: Callable[[Progress], object],
    counts: tuple[jax.Array, jax.Array, jax.Array],
    cost: jax.Array,
    x: jax.Array,
    fun: jax.Array,
    grad: jax.Array,
    final: bool,
) -> jax.Array:
    """Call ``monitor`` on the host with ``Progress(nit, nfev, njev, cost, x, fun,
    grad, final)`` (``counts = (nit, nfev, njev)``); a bool () array: stop."""
    n, m = x.shape[0], fun.shape[0]
    floats = jnp.concatenate([jnp.reshape(cost, (1,)), x, fun, grad])
    floats = lax.stop_gradient(floats)
    wide = floats.dtype == jnp.float64
    ints = jnp.stack([jnp.asarray(c, jnp.int32) for c in counts])

    def on_host(ints_h, floats_h):
        nit, nfev, njev = (int(c) for c in np.asarray(ints_h))
        v = from_bits(floats_h) if wide else np.asarray(floats_h, np.float64)
        progress = Progress(
            nit, nfev, njev, float(v[0]), v[1 : 1 + n], v[1 + n : 1 + n + m],
            v[1 + n + m :], final,
        )  # fmt: skip
        try:
            stop = bool(monitor(progress))
        except StopIteration:
            stop = True
        except Exception as err:  # stop; an eager caller re-raises it (take_error)
            with _LOCK:
                _ERRORS.setdefault(id(monitor), err)
            stop = True
        return np.asarray(stop, dtype=np.bool_)

    out = jax.ShapeDtypeStruct((), jnp.bool_)
    return io_callback(on_host, out, ints, bits_of(floats) if wide else floats)


def traced_monitor(model, args: tuple, monitor: Callable | None):
    """``monitor`` as the loop calls it, ``(st, grad, final) -> stop``, for the
    `jaxlsq.core.model.Model` ``model`` with arguments ``args``; None without a
    monitor. It reports ``fun``'s own residuals (for a robust loss evaluated once
    more at the point, uncounted) and the loop's cost."""
    if monitor is None:
        return None

    def traced(st, grad, final):
        f = st.f if model.loss == "linear" else model.raw_residual_fn(st.x, args)
        counts = (st.n_iter, st.nfev, st.njev)
        cost = 0.5 * jnp.sum(st.f * st.f)
        return report(monitor, counts, cost, st.x, f, grad, final)

    return traced


def check_in(monitor: Callable | None, st, grad: jax.Array, fresh: jax.Array):
    """The loop state ``st`` (an `LMState`) after reporting it to ``monitor`` (a
    traced ``(st, grad, final) -> stop`` from `jaxlsq.core.solve`) when its
    point is new (``fresh``) and the fit is running; ``Status.STOPPED`` if the
    monitor asks to stop. Without a monitor, ``st`` unchanged (nothing compiled)."""
    if monitor is None:
        return st
    call = fresh & (st.status == int(Status.RUNNING))
    stop = lax.cond(
        call, lambda: monitor(st, grad, False), lambda: jnp.zeros((), jnp.bool_)
    )
    stopped = jnp.asarray(int(Status.STOPPED), st.status.dtype)
    return st._replace(status=jnp.where(call & stop, stopped, st.status))


def check_out(monitor: Callable | None, st, moved: jax.Array, flat_fun) -> None:
    """The final report of the returned state ``st`` (its Jacobian current) when
    its point was not reported yet (``moved``: the last iteration accepted a
    step). A matrix-free fit has no J: its gradient is one vjp of ``flat_fun``
    at the returned point."""
    if monitor is not None:
        if st.jac is None:
            grad = jax.vjp(flat_fun, st.x)[1](st.f)[0]
        else:
            grad = st.jac.T @ st.f
        lax.cond(
            moved, lambda: monitor(st, grad, True), lambda: jnp.zeros((), jnp.bool_)
        )
