"""`least_squares`' view of the user's functions: ``f(x, *args, **kwargs)`` as the
loop's ``f(x, args, kwargs)``, padded to ``m >= n`` rows, and whether JAX can trace a
user ``jac``. Each wrapper is a frozen dataclass (equal per its fields), so one
compiled loop serves every call with the same functions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core.caches import JAC_TRACES as _JAC_TRACES
from ..core.caches import LOSS_TRACES as _LOSS_TRACES
from .host import _bits_of, _from_bits, _to_bits
from .plan import _args_signature, _hashable


@dataclasses.dataclass(frozen=True)
class _Bound:
    """``f(x, *args, **kwargs)`` called as ``f(x, args, kwargs)``.

    ``args`` and ``kwargs`` travel as data (traced on the JAX path, in the per-call
    context on the host path), so one compiled loop serves every call; instances
    are equal per ``(f, role, static)``. ``static`` holds the arguments that are
    not data (strings, None, callables: `_split_static`) as ``(position or name,
    value)`` pairs, put back in place of the ``None`` they left in ``args``/``kwargs``.
    ``role`` "fun" enforces scipy's 1-D rule for the residuals; "jac" densifies a
    sparse Jacobian on the host.
    """

    f: Callable
    role: str
    static: tuple = ()

    @property
    def _jaxlsq_origin(self):
        return getattr(self.f, "_jaxlsq_origin", self.f)

    def __call__(self, x, args, kwargs):
        out = self.raw(x, args, kwargs)
        if self.role == "jac" and not isinstance(out, jax.Array):
            if hasattr(out, "toarray"):  # scipy.sparse
                out = out.toarray()
            elif hasattr(out, "matvec"):  # a LinearOperator: its columns
                out = out.matmat(np.eye(out.shape[1]))
        return out

    def raw(self, x, args, kwargs):
        """The user's function's own output (``jac``'s not densified)."""
        if self.static:
            args, kwargs = list(args), dict(kwargs)
            for key, value in self.static:
                if isinstance(key, int):
                    args[key] = value
                else:
                    kwargs[key] = value
        out = self.f(x, *args, **kwargs)
        if self.role == "fun":
            if np.ndim(out) > 1:
                raise ValueError(
                    "`fun` must return at most 1-d array_like. "
                    f"f0.shape: {np.shape(out)}"
                )
        return out


def _split_static(args: tuple, kwargs: dict):
    """``(dynamic_args, dynamic_kwargs, static)``: strings, None and callables among
    the arguments become static (part of the compiled function's identity; a string
    option such as ``kwargs={"model": "exp"}`` would otherwise force the host path),
    replaced by None in the data."""
    static = []
    dyn_args = list(args)
    for i, value in enumerate(args):
        if _is_static(value):
            static.append((i, value))
            dyn_args[i] = None
    dyn_kwargs = dict(kwargs)
    for name, value in kwargs.items():
        if _is_static(value):
            static.append((name, value))
            dyn_kwargs[name] = None
    return tuple(dyn_args), dyn_kwargs, tuple(static)


def _is_static(value) -> bool:
    return (isinstance(value, str) or callable(value)) and _hashable(value)


@dataclasses.dataclass(frozen=True)
class _Padded:
    """``f`` with ``pad`` zero residuals (rows of the Jacobian) appended.

    jaxlsq's LM needs ``m >= n``; zero residuals change neither the cost, nor the
    gradient, nor ``J^T J``, so padding an ``m < n`` problem (which trf/dogbox accept)
    solves the same problem.
    """

    f: Callable
    pad: int
    n: int

    @property
    def _jaxlsq_origin(self):
        return getattr(self.f, "_jaxlsq_origin", self.f)

    def __call__(self, x, args, kwargs):
        out = self.f(x, args, kwargs)
        xp = jnp if isinstance(out, jax.Array) else np
        if self.f.role == "fun":
            return xp.concatenate([xp.ravel(xp.asarray(out)), xp.zeros(self.pad)])
        out = xp.reshape(xp.asarray(out), (-1, self.n))
        return xp.concatenate([out, xp.zeros((self.pad, self.n))])


def _trace_jac(jac_w, x0, call_args):
    """``(shape, None)`` if JAX can trace the user's ``jac``, else ``(None, error)``."""
    sig = _args_signature(call_args)
    key = (jac_w, x0.size, sig) if sig is not None and _hashable(jac_w) else None
    cached = _JAC_TRACES.get(key) if key is not None else None
    if cached is not None:
        return cached
    spec = jax.ShapeDtypeStruct(x0.shape, jnp.float64)
    try:
        out = jax.eval_shape(jac_w, spec, *call_args)
        result = (tuple(out.shape), None)
    except Exception as err:  # numpy inside, sparse output, ...: host path
        result = (None, err.with_traceback(None))  # cached: keep no frames alive
    if key is not None:
        _JAC_TRACES.put(key, result)
    return result


def _check_jac_shape(shape, m: int, n: int) -> None:
    shape = np.atleast_2d(np.empty(shape, dtype=np.int8)).shape
    if shape != (m, n):
        raise ValueError(
            f"The return value of `jac` has wrong shape: expected {(m, n)}, "
            f"actual {shape}."
        )


def _loop_loss(loss, m: int):
    """The ``loss`` the loop gets for scipy's callable ``loss`` (z (m,) -> rows
    ``rho, rho', rho''`` (3, m)): the callable itself where JAX can trace it
    (which may then return ``rho`` (m,) alone: its derivatives by autodiff),
    else a `_HostLoss`. A string loss is returned as it is. Raises ValueError
    naming ``loss`` for any other shape."""
    if not callable(loss):
        return loss
    key = (loss, m) if _hashable(loss) else None
    cached = _LOSS_TRACES.get(key) if key is not None else None
    if cached is None:
        cached = _trace_loss(loss, m)
        if key is not None:
            _LOSS_TRACES.put(key, cached)
    return cached


def _trace_loss(loss, m: int):
    """`_loop_loss` of a callable ``loss``, uncached."""
    spec = jax.ShapeDtypeStruct((m,), jnp.float64)
    try:
        shape = tuple(jax.eval_shape(lambda z: jnp.asarray(loss(z)), spec).shape)
        if shape == (m,):
            return loss
        loop_loss = loss
    except Exception:  # numpy inside (in-place rows, say): the host
        shape = np.shape(loss(np.zeros(m)))
        loop_loss = _HostLoss(loss)
    if shape != (3, m):
        alone = " (rho alone only from a loss JAX can trace)" if shape == (m,) else ""
        raise ValueError(
            f"`loss` must return an array of shape (3, m) = {(3, m)} (rows rho, "
            f"rho', rho''){alone}, got {shape}."
        )
    return loop_loss


@dataclasses.dataclass(frozen=True)
class _HostLoss:
    """A numpy ``loss`` for the compiled loop: evaluated on the host (a
    ``pure_callback``, one per residual evaluation), differentiated from its own
    rows (``d rho = rho' dz``, ``d rho' = rho'' dz``), as scipy uses them. Equal per
    ``loss``, so one compiled loop serves every call with it."""

    loss: Callable

    def __call__(self, z):
        return _host_rows(self.loss, z)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _host_rows(loss, z):
    """``loss(z)`` (3, m) computed on the host in float64 (z crosses as its bits,
    as the host residuals do: see `jaxlsq.scipy.host`)."""
    shape = jax.ShapeDtypeStruct((3, *z.shape, 2), jnp.uint32)

    def on_host(bits):
        with jax.enable_x64(True):  # a jax.numpy loss computes in float64 here too
            rows = np.asarray(loss(_from_bits(bits)), dtype=np.float64)
        return _to_bits(rows.reshape(shape.shape[:-1]))

    bits = jax.pure_callback(on_host, shape, _bits_of(z), vmap_method="sequential")
    return lax.bitcast_convert_type(bits, jnp.float64).astype(z.dtype)


@_host_rows.defjvp
def _host_rows_jvp(loss, primals, tangents):
    (z,), (dz,) = primals, tangents
    rows = _host_rows(loss, z)
    # The third derivative is not known: taken as 0. It enters only the loop's
    # Jacobian of the transformed residuals, near z = 0 and to O(z): never the
    # cost or the result.
    return rows, jnp.stack([rows[1] * dz, rows[2] * dz, jnp.zeros_like(dz)])
