"""Host (numpy) side of the scipy shim: MINPACK's output formats and the callback path.

Two jobs, both outside the jitted LM loop:

* MINPACK's output formats, computed from the final Jacobian: the column-pivoted
  Householder QR of ``qrfac`` (``fjac``, ``ipvt``, ``qtf``) and the covariance that
  scipy derives from it (``cov_x``).
* The host path for residual functions that JAX cannot trace (numpy ufuncs on the
  parameters, Python branching on values): `HostProblem` wraps such a function, and
  optionally a numpy Jacobian, in ``jax.pure_callback`` so that the unchanged LM loop of
  `jaxlsq.solve` can drive it. Without a Jacobian it differentiates by MINPACK's
  forward differences (``fdjac2``) on the host.

Everything here is numpy; scipy is not needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..core.caches import HOST_PROBLEMS as _PROBLEMS

# float64 crosses the callback boundary as uint32 pairs (see jaxlsq.core.monitor)
from ..core.monitor import bits_of as _bits_of
from ..core.monitor import from_bits as _from_bits
from ..core.monitor import to_bits as _to_bits

# ----------------------------------------------------------------------------------
# MINPACK output formats


def qrfac(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-pivoted Householder QR of ``a`` (m, n), m >= n, as MINPACK's ``qrfac``.

    Returns ``(h, ipvt, rdiag)``: ``h`` (m, n) holds the strict upper triangle of ``R``
    above the diagonal and the Householder vectors on and below it (MINPACK's
    overwritten storage), ``ipvt`` (n,) the 0-based column permutation (``a[:, ipvt]
    = Q R``) and ``rdiag`` (n,) the diagonal of ``R``. The pivot is the column of
    largest remaining norm (first one on ties, first NaN as ``np.argmax``), with
    MINPACK's downdating of the norms.

    The norms live in Python floats: the O(n^2) scalar work is several times slower
    on numpy scalars, and it is a good part of a small fit's ``full_output`` cost.
    Every value comes from the same IEEE operations as with numpy scalars (``dot``
    then ``sqrt`` is how ``np.linalg.norm`` computes a vector's norm), so the result
    is the same bit for bit.
    """
    a = np.array(a, dtype=np.float64, order="F")
    m, n = a.shape
    ipvt = list(range(n))
    rdiag = np.sqrt(np.add.reduce(a * a, axis=0)).tolist()  # np.linalg.norm(axis=0)
    wa = list(rdiag)
    for j in range(min(m, n)):
        kmax = _argmax_from(rdiag, j)
        if kmax != j:
            a[:, j], a[:, kmax] = a[:, kmax], a[:, j].copy()
            rdiag[kmax] = rdiag[j]
            wa[kmax] = wa[j]
            ipvt[j], ipvt[kmax] = ipvt[kmax], ipvt[j]
        col = a[j:, j]
        ajnorm = math.sqrt(col.dot(col))
        if ajnorm != 0.0:
            if a[j, j] < 0.0:
                ajnorm = -ajnorm
            col /= ajnorm
            a[j, j] += 1.0
            if j + 1 < n:
                rest = a[j:, j + 1 :]
                rest -= col[:, None] * ((col @ rest) / a[j, j])[None, :]  # np.outer
                row = a[j].tolist()
                for k in range(j + 1, n):
                    rk = rdiag[k]
                    if rk == 0.0:
                        continue
                    temp = row[k] / rk
                    rk *= math.sqrt(max(0.0, 1.0 - temp * temp))
                    rdiag[k] = rk
                    wk = wa[k]
                    # (numpy would give inf or NaN for wk == 0: the test is False)
                    if wk != 0.0 and 0.05 * ((rk / wk) * (rk / wk)) <= _EPSMCH:
                        tail = a[j + 1 :, k]
                        rdiag[k] = wa[k] = math.sqrt(tail.dot(tail))
        rdiag[j] = -ajnorm
    return a, np.array(ipvt), np.array(rdiag, dtype=np.float64)


_EPSMCH = float(np.finfo(np.float64).eps)


def _argmax_from(values: list, j: int) -> int:
    """``j + np.argmax(values[j:])`` for a list of floats: first max, or first NaN."""
    kmax, best = j, values[j]
    if best != best:
        return j
    for k in range(j + 1, len(values)):
        v = values[k]
        if v != v:
            return k
        if v > best:
            kmax, best = k, v
    return kmax


def minpack_qr(jac: np.ndarray, fvec: np.ndarray):
    """MINPACK's ``fjac`` (n, m), ``ipvt`` (n,) and ``qtf`` (n,) of ``jac``, ``fvec``.

    ``fjac`` is the transpose of lmder's Fortran array, as scipy returns it: the upper
    triangle of ``fjac.T[:n]`` is ``R`` with ``J[:, ipvt] = Q R``; below the diagonal
    are the Householder vectors. ``qtf`` is the first n entries of ``Q^T fvec``.
    """
    h, ipvt, rdiag = qrfac(jac)
    n = h.shape[1]
    wa = np.array(fvec, dtype=np.float64)
    qtf = np.empty(n)
    for j in range(n):
        v = h[j:, j]
        hjj = v[0]
        if hjj != 0.0:
            temp = -(v @ wa[j:]) / hjj
            wa[j:] += v * temp
        qtf[j] = wa[j]
    h[range(n), range(n)] = rdiag  # (step j reads only rows >= j of column j)
    return np.ascontiguousarray(h.T), ipvt.astype(np.int32), qtf


def covariance_from_r(fjac: np.ndarray, ipvt: np.ndarray) -> np.ndarray | None:
    """``inv(J^T J)`` from MINPACK's factors, as scipy's ``leastsq`` computes ``cov_x``.

    ``R^-1`` by back substitution (LAPACK ``trtri`` in scipy), rows permuted back with
    ``ipvt``, then ``R^-1 R^-T``. ``None`` when ``R`` has an exactly zero diagonal entry
    (the rule of ``trtri``).
    """
    n = len(ipvt)
    # R is the upper triangle of this (n, n) block, the only part read below; a C
    # copy, as np.triu made, so that the row products round as they always have
    r = np.ascontiguousarray(fjac.T[:n])
    diag = r.diagonal()
    if (diag == 0.0).any():
        return None
    inv = np.eye(n)
    with np.errstate(all="ignore"):
        for i in range(n - 1, -1, -1):
            inv[i] = (inv[i] - r[i, i + 1 :] @ inv[i + 1 :]) / diag[i]
        out = np.empty_like(inv)
        out[ipvt] = inv
        return out @ out.T


def forward_difference(
    func: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    fx: np.ndarray,
    epsfcn: float,
) -> np.ndarray:
    """MINPACK ``fdjac2``: forward-difference Jacobian (m, n) of ``func`` at ``x``.

    Column j uses the step ``h = sqrt(max(epsfcn, eps)) * |x_j|``, or
    ``sqrt(max(epsfcn, eps))`` itself when ``x_j == 0``. Costs n calls of ``func``.
    """
    step = np.sqrt(max(float(epsfcn), np.finfo(np.float64).eps))
    jac = np.empty((fx.size, x.size))
    xh = np.array(x, dtype=np.float64)
    for j in range(x.size):
        temp = xh[j]
        h = step * abs(temp)
        if h == 0.0:
            h = step
        xh[j] = temp + h
        jac[:, j] = (func(xh) - fx) / h
        xh[j] = temp
    return jac


# ----------------------------------------------------------------------------------
# the callback path


class _CallContext:
    """What one ``leastsq`` call on the host path needs inside the callbacks."""

    def __init__(self, args: tuple, epsfcn: float, difference=None):
        self.args = args
        self.epsfcn = epsfcn
        # ``difference(func, x, fx) -> (m, n)`` replaces MINPACK's forward differences
        # (``least_squares``' 2-point/3-point/cs schemes); None: `forward_difference`
        self.difference = difference
        self.nfev = 0  # calls of func made by the LM loop (residuals and differences)
        self.njev = 0  # calls of Dfun
        self.last_x: np.ndarray | None = None
        self.last_f: np.ndarray | None = None
        # The first exception the user's functions raised inside a callback: JAX
        # reports it as its own runtime error, `HostProblem.call` re-raises this.
        self.error: BaseException | None = None


_CONTEXTS: dict[int, _CallContext] = {}
_TOKENS = itertools.count()
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class HostProblem:
    """A numpy residual function (and optional numpy Jacobian) as JAX callbacks.

    ``fun(x, token)`` and ``jac(x, token)`` have the signatures `jaxlsq.solve` expects
    (``token`` is the one extra argument); they call the user's functions on the host
    through ``jax.pure_callback``. The extra arguments of the user's function do not go
    through JAX at all: they live in a per-call context looked up by ``token``, so they
    may be any Python objects, and the compiled loop depends only on ``(func, Dfun,
    col_deriv, m, n)``. Instances compare equal on that key, so a new instance for the
    same problem hits `jaxlsq.solve`'s compilation cache.
    """

    func: Callable
    dfun: Callable | None
    col_deriv: bool
    m: int
    n: int

    @property
    def _key(self) -> tuple:
        return (self.func, self.dfun, bool(self.col_deriv), self.m, self.n)

    @classmethod
    def get(cls, func, dfun, col_deriv: bool, m: int, n: int) -> HostProblem:
        """The cached instance for this problem (a new one if func is unhashable).

        Reusing the instance keeps ``fun``/``jac`` (bound methods, compared by the
        identity of the instance) equal across calls, so nothing recompiles.
        """
        problem = cls(func, dfun, col_deriv, m, n)
        try:
            hash(problem._key)
        except TypeError:
            return problem
        with _LOCK:
            cached = _PROBLEMS.get(problem._key)
            if cached is None:
                _PROBLEMS.put(problem._key, problem)
                cached = problem
            return cached

    # -- per-call context ------------------------------------------------------------

    @staticmethod
    def open(args: tuple, epsfcn: float, difference=None) -> tuple[int, _CallContext]:
        """Register a call's context; returns ``(token, context)``.

        ``difference(func, x, fx)``, if given, computes the Jacobian when there is no
        ``Dfun``, instead of MINPACK's forward differences with ``epsfcn``.
        """
        ctx = _CallContext(args, epsfcn, difference)
        with _LOCK:
            token = next(_TOKENS) % (2**31 - 1)
            _CONTEXTS[token] = ctx
        return token, ctx

    @staticmethod
    def close(token: int) -> None:
        _CONTEXTS.pop(token, None)

    @staticmethod
    @contextlib.contextmanager
    def call(args: tuple, epsfcn: float, difference=None):
        """``with HostProblem.call(args, epsfcn) as (token, ctx):`` -- `open` and
        `close` around one fit; an exception the user's function raised on the
        host comes out as itself (as scipy propagates it), not as JAX's
        ``JaxRuntimeError`` that wraps it."""
        token, ctx = HostProblem.open(args, epsfcn, difference)
        try:
            yield token, ctx
        except Exception:
            if ctx.error is not None:
                raise ctx.error from None
            raise
        finally:
            HostProblem.close(token)

    # -- host side ---------------------------------------------------------------------

    def _residuals(self, ctx: _CallContext, x: np.ndarray) -> np.ndarray:
        if ctx.last_x is not None and np.array_equal(x, ctx.last_x):
            return ctx.last_f
        f = np.asarray(self.func(np.array(x), *ctx.args), dtype=np.float64).ravel()
        ctx.nfev += 1
        self._check_size(f)
        ctx.last_x = np.array(x)
        ctx.last_f = f
        return f

    def _check_size(self, f: np.ndarray) -> None:
        if f.size != self.m:
            raise ValueError(
                "The array returned by a function changed size between calls "
                f"({f.size} values here, {self.m} at x0)"
            )

    # (x64 on: this thread may not be the caller's, and a residual written with
    # jax.numpy that landed here, a side-effecting one say, must compute in float64)
    def _host_fun(self, x, token):
        ctx = _CONTEXTS[int(token)]
        with _keep_error(ctx), jax.enable_x64(True):
            return _to_bits(self._residuals(ctx, _from_bits(x)))

    def _host_jac(self, x, token):
        ctx = _CONTEXTS[int(token)]
        with _keep_error(ctx), jax.enable_x64(True):
            return self._jacobian(ctx, _from_bits(x))

    def _jacobian(self, ctx: _CallContext, x: np.ndarray):
        if self.dfun is None:
            fx = self._residuals(ctx, x)

            def func(xh):
                out = np.asarray(self.func(np.array(xh), *ctx.args), dtype=np.float64)
                ctx.nfev += 1
                self._check_size(out)
                return out.ravel()

            if ctx.difference is not None:
                return _to_bits(ctx.difference(func, x, fx))
            return _to_bits(forward_difference(func, x, fx, ctx.epsfcn))
        jac = np.asarray(self.dfun(np.array(x), *ctx.args), dtype=np.float64)
        ctx.njev += 1
        if jac.size != self.m * self.n:
            raise ValueError(
                f"Dfun returned {jac.size} values, expected m*n = {self.m * self.n}"
            )
        if self.col_deriv:
            return _to_bits(jac.reshape(self.n, self.m).T)
        return _to_bits(jac.reshape(self.m, self.n))

    # -- JAX side (what `solve` calls) -------------------------------------------------

    def fun(self, x, token):
        shape = jax.ShapeDtypeStruct((self.m, 2), jnp.uint32)
        bits = jax.pure_callback(
            self._host_fun, shape, _bits_of(x), token, vmap_method="sequential"
        )
        return lax.bitcast_convert_type(bits, jnp.float64)

    def jac(self, x, token):
        shape = jax.ShapeDtypeStruct((self.m, self.n, 2), jnp.uint32)
        bits = jax.pure_callback(
            self._host_jac, shape, _bits_of(x), token, vmap_method="sequential"
        )
        return lax.bitcast_convert_type(bits, jnp.float64)


@contextlib.contextmanager
def _keep_error(ctx: _CallContext):
    """Record the first exception of a callback in ``ctx`` (and let it propagate)."""
    try:
        yield
    except Exception as err:
        if ctx.error is None:
            ctx.error = err
        raise
