"""Drop-in replacements for ``scipy.optimize.leastsq`` and ``scipy.optimize.curve_fit``.

Numpy in, numpy (float64) out, scipy's signatures, defaults, return values, messages,
warnings and errors; the fit itself is `jaxlsq.solve` (MINPACK's lmder, compiled once
per problem shape). Change only the import::

    from jaxlsq.scipy import leastsq, curve_fit   # was: from scipy.optimize import ...

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
``jax_enable_x64`` setting; the global flag is never changed. scipy itself is not
needed (it is the tests' oracle).
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _host
from ._solution import MESSAGES, Status
from ._solve import solve

_SOLVE = solve  # `_fit` calls it eagerly if this module's `solve` is replaced

__all__ = [
    "NONFINITE_IER",
    "HostFallbackWarning",
    "OptimizeWarning",
    "curve_fit",
    "leastsq",
]


class OptimizeWarning(UserWarning):
    """The covariance of the parameters could not be estimated (as scipy's)."""


class HostFallbackWarning(UserWarning):
    """A residual function could not be traced by JAX and runs on the host instead."""


_LEASTSQ_SUCCESS = (1, 2, 3, 4)
_LEASTSQ_FAILURE = (5, 6, 7, 8)
#: ``ier`` reported when jaxlsq stops on non-finite residuals or Jacobian
#: (``Status.NONFINITE``), which MINPACK cannot detect: a failure code, with its own
#: message, so that ``ier in (1, 2, 3, 4)`` is never true for a NaN result.
NONFINITE_IER = 6


def _messages(ftol, xtol, gtol, maxfev) -> dict[int, str]:
    """scipy's ``leastsq`` message table, word for word."""
    return {ier: _message(ier, ftol, xtol, gtol, maxfev) for ier in range(9)}


def _message(ier: int, ftol, xtol, gtol, maxfev) -> str:
    """scipy's ``leastsq`` message for ``ier`` (0-8), word for word."""
    if ier == 0:
        return "Improper input parameters."
    if ier == 1:
        return (
            "Both actual and predicted relative reductions "
            f"in the sum of squares\n  are at most {ftol:f}"
        )
    if ier == 2:
        return (
            f"The relative error between two consecutive iterates is at most {xtol:f}"
        )
    if ier == 3:
        return (
            "Both actual and predicted relative reductions in "
            f"the sum of squares\n  are at most {ftol:f} and the "
            "relative error between two consecutive "
            f"iterates is at \n  most {xtol:f}"
        )
    if ier == 4:
        return (
            "The cosine of the angle between func(x) and any "
            f"column of the\n  Jacobian is at most {gtol:f} in "
            "absolute value"
        )
    if ier == 5:
        return f"Number of calls to function has reached maxfev = {maxfev}."
    if ier == 6:
        return (
            f"ftol={ftol:f} is too small, no further reduction "
            "in the sum of squares\n  is possible."
        )
    if ier == 7:
        return (
            f"xtol={xtol:f} is too small, no further improvement in "
            "the approximate\n  solution is possible."
        )
    if ier == 8:
        return (
            f"gtol={gtol:f} is too small, func(x) is orthogonal to the "
            "columns of\n  the Jacobian to machine precision."
        )
    raise KeyError(ier)


# ----------------------------------------------------------------------------------
# leastsq


def leastsq(
    func: Callable[..., Any],
    x0: Any,
    args: Any = (),
    Dfun: Callable[..., Any] | None = None,
    full_output: bool = False,
    col_deriv: bool = False,
    ftol: float = 1.49012e-08,
    xtol: float = 1.49012e-08,
    gtol: float = 0.0,
    maxfev: int = 0,
    epsfcn: float | None = None,
    factor: float = 100,
    diag: Any = None,
):
    """Minimise the sum of squares of ``func(x, *args)``: ``scipy.optimize.leastsq``.

    Same signature, defaults and results as scipy's; the fit is `jaxlsq.solve`
    (MINPACK's lmder). A ``func`` written with ``jax.numpy`` is compiled once and
    differentiated exactly; a numpy ``func`` runs on the host with MINPACK's forward
    differences (see the module docstring and `HostFallbackWarning`).

    Parameters
    ----------
    func : callable
        ``func(x, *args)`` with ``x`` of shape (n,), returning ``m >= n`` residuals
        (any shape; flattened).
    x0 : array_like
        Starting point; flattened to shape (n,) and cast to float64.
    args : tuple, default ()
        Extra arguments of ``func`` and ``Dfun``; a non-tuple is wrapped in a tuple.
    Dfun : callable, optional
        ``Dfun(x, *args)``: the Jacobian, (m, n) (derivatives across the rows), or
        (n, m) when ``col_deriv`` is true. Default: exact (``jax.jacfwd``) on the JAX
        path, forward differences on the host path.
    full_output : bool, default False
        Return ``(x, cov_x, infodict, mesg, ier)`` instead of ``(x, ier)``.
    col_deriv : bool, default False
        ``Dfun`` returns the transposed Jacobian, shape (n, m).
    ftol, xtol : float, default 1.49012e-08
        Relative tolerances on the sum of squares and on the parameters (MINPACK's).
    gtol : float, default 0.0
        Tolerance on the cosine between the residuals and the Jacobian's columns.
    maxfev : int, default 0
        Maximum number of calls of ``func``; ``<= 0`` means ``200 * (n + 1)`` without
        ``Dfun`` and ``100 * (n + 1)`` with it. On the JAX path only residual
        evaluations exist (the Jacobian is exact); on the host path the limit applies
        to the LM loop's residual evaluations and the forward-difference calls are
        counted in ``infodict["nfev"]`` but not against ``maxfev`` (see Notes).
    epsfcn : float, optional
        Forward-difference step: ``sqrt(max(epsfcn, eps)) * |x_j|`` (host path
        without ``Dfun`` only). Default: machine epsilon of ``func``'s output dtype.
    factor : float, default 100
        Initial trust-region radius, relative to ``||diag * x0||``.
    diag : array_like (n,), optional
        Positive variable scale factors; default: MINPACK's automatic scaling.

    Returns
    -------
    x : ndarray, shape (n,), float64
        The solution (the last iterate if the fit failed).
    cov_x : ndarray, shape (n, n), or None
        ``inv(J^T J)`` from the pivoted R factor of the final Jacobian, as scipy
        computes it; ``None`` if ``R`` is singular or ``ier`` is not in 1-4. Only with
        ``full_output``.
    infodict : dict
        ``fvec`` (m,) residuals at ``x``; ``nfev`` (int) calls of ``func``; ``njev``
        (int, only with ``Dfun``) calls of ``Dfun``; ``fjac`` (n, m) MINPACK's
        transposed QR storage of the final Jacobian (R in the upper triangle of
        ``fjac.T[:n]``); ``ipvt`` (n,) int32, 0-based column pivots
        (``J[:, ipvt] = Q R``); ``qtf`` (n,) the first n entries of ``Q^T fvec``.
        Only with ``full_output``.
    mesg : str
        Why the fit stopped (scipy's texts). Only with ``full_output``.
    ier : int
        1-4 success; 5-8 failure; 0 improper input (with ``full_output`` only;
        otherwise an error is raised). ``6`` is also used when the residuals or the
        Jacobian become non-finite (jaxlsq's ``Status.NONFINITE``), with a message
        saying so: MINPACK has no such code and would report NaN results as
        converged.

    Raises
    ------
    TypeError
        ``m < n`` (scipy's message); ``Dfun`` of the wrong shape (scipy's message);
        improper input (negative tolerance, ``factor <= 0``, ``diag`` entries
        ``<= 0``) without ``full_output``.
    ValueError
        ``diag`` whose length is not n (scipy silently accepts it).

    Warns
    -----
    RuntimeWarning
        Without ``full_output``, when ``ier`` is not in 1-4 (as scipy).
    HostFallbackWarning
        Once per function that JAX cannot trace.

    Notes
    -----
    Deviations from scipy, all deliberate:

    * On the JAX path the Jacobian is exact, so ``nfev`` counts residual evaluations
      only and is typically several times smaller than scipy's (which includes n
      forward-difference calls per Jacobian). The final Jacobian is evaluated at the
      returned ``x`` (MINPACK's ``fjac`` belongs to the last point at which it
      computed a Jacobian, usually the one before), so ``njev`` may exceed scipy's by
      one and the host path's ``nfev`` by ``n``.
    * Non-finite residuals never yield ``ier`` 1-4 (see ``ier``); a non-finite ``x0``
      returns ``x0`` with ``ier = 6`` without running the fit.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxlsq.scipy import leastsq
    >>> def func(x):
    ...     return 2 * (x - 3) ** 2 + 1
    >>> x, ier = leastsq(func, 0)
    >>> x.round(4), ier in (1, 2, 3, 4)
    (array([3.]), True)
    """
    res = _leastsq(
        func, x0, args, Dfun, full_output, col_deriv, ftol, xtol, gtol, maxfev,
        epsfcn, factor, diag, stacklevel=3,
    )  # fmt: skip
    ier, mesg = res["ier"], res["mesg"]
    if full_output:
        return res["x"], res["cov_x"], res["infodict"], mesg, ier
    if ier in _LEASTSQ_FAILURE:
        warnings.warn(mesg, RuntimeWarning, stacklevel=2)
    elif ier == 0:
        raise TypeError(mesg)
    return res["x"], ier


def _leastsq(
    func, x0, args, Dfun, full_output, col_deriv, ftol, xtol, gtol, maxfev, epsfcn,
    factor, diag, *, stacklevel: int,
) -> dict[str, Any]:  # fmt: skip
    """``leastsq`` without the warnings/raising; returns a dict of results."""
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    if Dfun is not None and not callable(Dfun):
        raise TypeError(f"Dfun must be callable or None, got {type(Dfun).__name__}")
    x0 = np.asarray(x0).flatten()
    if np.iscomplexobj(x0):
        raise TypeError(f"x0 must be real, got dtype {x0.dtype}")
    x0 = x0.astype(np.float64)
    n = x0.size
    if n == 0:
        raise ValueError("x0 must contain at least one parameter, got size 0")
    if not isinstance(args, tuple):
        args = (args,)

    with jax.enable_x64(True):
        plan = _plan(func, Dfun, col_deriv, x0, args, stacklevel=stacklevel + 1)
        m = plan.m
        if n > m:
            raise TypeError(
                f"Improper input: func input vector length N={n} must"
                f" not exceed func output vector length M={m}"
            )
        if maxfev <= 0:
            maxfev = 200 * (n + 1) if Dfun is None else 100 * (n + 1)
        maxfev = int(maxfev)
        if epsfcn is None:
            epsfcn = float(np.finfo(plan.out_dtype).eps)
        if diag is not None:
            diag = np.asarray(diag, dtype=np.float64).ravel()
            if diag.size != n:
                raise ValueError(f"diag must have n={n} entries, got {diag.size}")

        improper = ftol < 0 or xtol < 0 or gtol < 0 or factor <= 0
        improper = improper or (diag is not None and bool(np.any(diag <= 0)))
        if improper or not np.isfinite(x0).all():
            fvec = plan.f0 if plan.f0 is not None else _eval_jax(func, x0, args)
            ier = 0 if improper else NONFINITE_IER
            mesg = _message(0, 0, 0, 0, 0) if improper else MESSAGES[Status.NONFINITE]
            fill = 0.0 if improper else np.nan
            infodict = {"fvec": fvec, "nfev": 0}
            if Dfun is not None:
                infodict["njev"] = 0
            infodict["fjac"] = np.full((n, m), fill)
            infodict["ipvt"] = np.arange(n, dtype=np.int32)
            infodict["qtf"] = np.full(n, fill)
            jac = np.full((m, n), np.nan)
            return dict(x=x0, cov_x=None, infodict=infodict, mesg=mesg, ier=ier,
                        jac=jac)  # fmt: skip

        options = dict(
            ftol=float(ftol),
            xtol=float(xtol),
            gtol=float(gtol),
            max_nfev=maxfev,
            factor=float(factor),
            diag=diag,
        )
        if plan.host is None:
            fit = _fit(func, plan.jac, x0, args, options, m)
            nfev, njev = fit.nfev, fit.njev
        else:
            token, ctx = _host.HostProblem.open(args, epsfcn)
            try:
                fit = _fit(
                    plan.host.fun, plan.host.jac, x0, (np.int32(token),), options, m
                )
            finally:
                _host.HostProblem.close(token)
            nfev, njev = ctx.nfev, ctx.njev

    status = fit.status
    if status == Status.NONFINITE:
        ier, mesg = NONFINITE_IER, MESSAGES[Status.NONFINITE]
    else:
        ier, mesg = status, _message(status, ftol, xtol, gtol, maxfev)
    x, fvec, jac = fit.x, fit.fvec, fit.jac
    out = dict(x=x, cov_x=None, infodict=None, mesg=mesg, ier=ier, jac=jac)
    if full_output:
        infodict = {"fvec": fvec, "nfev": nfev}
        if Dfun is not None:
            infodict["njev"] = njev
        fjac, ipvt, qtf = _host.minpack_qr(jac, fvec)
        infodict.update(fjac=fjac, ipvt=ipvt, qtf=qtf)
        out["infodict"] = infodict
        if ier in _LEASTSQ_SUCCESS:
            out["cov_x"] = _host.covariance_from_r(fjac, ipvt)
    return out


def _eval_jax(func, x0, args) -> np.ndarray:
    return np.asarray(jnp.ravel(func(jnp.asarray(x0), *args)), dtype=np.float64)


# ----------------------------------------------------------------------------------
# running the fit: one compiled call, one transfer


class _Fit(NamedTuple):
    """The host-side results of one fit (numpy, float64; Python ints)."""

    status: int
    nfev: int
    njev: int
    x: np.ndarray  # (n,)
    fvec: np.ndarray  # (m,)
    jac: np.ndarray  # (m, n)


def _fit(fun, jac, x0, args, options, m) -> _Fit:
    """Run `jaxlsq.solve` on ``fun`` and bring the results to the host.

    Called inside ``jax.enable_x64(True)``. The fast path is one dispatch of
    `_solve_packed` (``solve`` traced inside a jit, so its Python validation runs
    once per compilation instead of once per call) and one device-to-host transfer
    of a single packed float64 vector. Taken when ``solve`` could not raise on the
    options (the shim has already checked ``x0``, ``diag``, ``m >= n`` and the signs
    of the tolerances; what remains is NaN options and a zero ``max_nfev``), and when
    this module's ``solve`` is `jaxlsq.solve` itself (not replaced, e.g. by a test's
    spy). Otherwise ``solve`` is called eagerly, with identical results and errors.
    """
    n = x0.size
    o = options
    diag = o["diag"]
    if (
        solve is _SOLVE
        and o["ftol"] >= 0
        and o["xtol"] >= 0
        and o["gtol"] >= 0
        and o["factor"] > 0
        and o["max_nfev"] > 0
        and (diag is None or bool((diag > 0).all()))
    ):
        packed = _solve_packed(
            fun, jac, x0, args,
            o["ftol"], o["xtol"], o["gtol"], o["max_nfev"], o["factor"], diag,
        )  # fmt: skip
        return _unpack(np.array(packed), n, m)  # the one transfer (a writable copy)
    sol = jax.device_get(solve(fun, x0, args, jac=jac, **options))
    return _Fit(
        int(sol.status), int(sol.nfev), int(sol.njev),
        np.asarray(sol.params, dtype=np.float64),
        np.asarray(sol.residuals, dtype=np.float64),
        np.asarray(sol.jac, dtype=np.float64),
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 1))
def _solve_packed(fun, jac, x0, args, ftol, xtol, gtol, max_nfev, factor, diag):
    """``solve(...)`` packed as ``[status, nfev, njev, x, fvec, jac.ravel()]`` (f64)."""
    sol = solve(
        fun, x0, args, jac=jac, ftol=ftol, xtol=xtol, gtol=gtol,
        max_nfev=max_nfev, factor=factor, diag=diag,
    )  # fmt: skip
    head = jnp.stack([sol.status, sol.nfev, sol.njev])
    parts = (head, sol.params, sol.residuals, sol.jac)
    return jnp.concatenate([jnp.ravel(p).astype(jnp.float64) for p in parts])


def _unpack(packed: np.ndarray, n: int, m: int) -> _Fit:
    """The inverse of `_solve_packed` (views of one writable host array)."""
    status, nfev, njev = (int(v) for v in packed[:3].tolist())
    x = packed[3 : 3 + n]
    fvec = packed[3 + n : 3 + n + m]
    return _Fit(status, nfev, njev, x, fvec, packed[3 + n + m :].reshape(m, n))


# ----------------------------------------------------------------------------------
# choosing the path, once per (func, Dfun, col_deriv, n, argument shapes)


class _Plan:
    """How to run one problem: ``jac`` for the JAX path, or ``host`` (a HostProblem)."""

    __slots__ = ("f0", "host", "jac", "m", "out_dtype")

    def __init__(self, m, out_dtype, jac=None, host=None, f0=None):
        self.m = m
        self.out_dtype = out_dtype
        self.jac = jac
        self.host = host
        self.f0 = f0


class _LRU:
    """A small thread-safe LRU mapping (strong references, bounded)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


_JAX_PLANS = _LRU(512)  # key -> _Plan (JAX path) or "host"
_WARNED = _LRU(4096)  # functions already warned about


class _Transposed:
    """``Dfun`` with ``col_deriv=True`` seen as an (m, n) Jacobian; equal per Dfun."""

    def __init__(self, dfun):
        self.dfun = dfun

    def __call__(self, x, *args):
        return jnp.transpose(jnp.asarray(self.dfun(x, *args)))

    def __eq__(self, other):
        return type(other) is _Transposed and other.dfun == self.dfun

    def __hash__(self):
        return hash((_Transposed, self.dfun))


def _args_signature(args: tuple):
    """Hashable shapes/dtypes of ``args``, or None if some leaf is not an array."""
    # fast path for the common case, a flat tuple of numpy arrays (and None / Python
    # numbers): the same entries as below, with a marker in place of the treedef
    sig = []
    for arg in args:
        if type(arg) is np.ndarray and arg.dtype.kind in "biufc":
            sig.append((arg.shape, arg.dtype))
        elif arg is None:
            sig.append(None)
        elif type(arg) in (bool, int, float, complex):
            sig.append(type(arg))
        else:
            break
    else:
        return "flat", tuple(sig)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    sig = []
    for leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            if leaf.dtype.kind not in "biufc":
                return None
            sig.append((tuple(leaf.shape), str(leaf.dtype)))
        elif isinstance(leaf, (bool, int, float, complex)):
            sig.append(type(leaf))
        else:
            return None
    return treedef, tuple(sig)


def _hashable(obj) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _plan(func, Dfun, col_deriv, x0, args, *, stacklevel: int) -> _Plan:
    n = x0.size
    sig = _args_signature(args)
    key = None
    if sig is not None and _hashable(func) and _hashable(Dfun):
        key = (func, Dfun, bool(col_deriv), n, sig)
        cached = _JAX_PLANS.get(key)
        if isinstance(cached, _Plan):
            return cached
        if cached is None:
            plan, err = _try_jax_plan(func, Dfun, col_deriv, x0, args)
            if plan is not None:
                _JAX_PLANS.put(key, plan)
                return plan
        else:
            err = None
    elif sig is None:
        err = TypeError("args hold values that are not arrays or numbers")
    else:
        err = TypeError("func or Dfun is not hashable")
    plan = _host_plan(func, Dfun, col_deriv, x0, args)
    if key is not None:
        _JAX_PLANS.put(key, "host")
    _warn_host(func, Dfun, err, stacklevel=stacklevel + 1)
    return plan


def _try_jax_plan(func, Dfun, col_deriv, x0, args):
    """Trace ``func`` (and ``Dfun`` or ``jacfwd(func)``) once; None if JAX cannot."""
    n = x0.size
    spec = jax.ShapeDtypeStruct((n,), jnp.float64)
    try:
        out = jax.eval_shape(func, spec, *args)
        leaves = jax.tree_util.tree_leaves(out)
        if len(leaves) != 1 or not jnp.issubdtype(leaves[0].dtype, jnp.floating):
            return None, TypeError("func does not return one floating-point array")
        out_shape = np.atleast_1d(np.empty(leaves[0].shape, dtype=np.int8)).shape
        m = int(np.prod(out_shape))
        if Dfun is None:
            jax.eval_shape(jax.jacfwd(func), spec, *args)
            jac_shape = None
        else:
            jac_out = jax.eval_shape(Dfun, spec, *args)
            jac_shape = np.shape(jac_out)
    except Exception as err:  # not traceable: numpy ufuncs, Python control flow...
        return None, err
    jac: Any = "auto"
    if Dfun is not None and n <= m:
        _check_dfun_shape(Dfun, jac_shape, col_deriv, out_shape, n)
        jac = _Transposed(Dfun) if col_deriv else Dfun
    return _Plan(m, np.dtype(leaves[0].dtype), jac=jac), None


def _host_plan(func, Dfun, col_deriv, x0, args) -> _Plan:
    """Evaluate ``func`` (and ``Dfun``) once at ``x0`` on the host, as scipy does."""
    f0 = np.atleast_1d(func(x0.copy(), *args))
    out_dtype = f0.dtype if np.issubdtype(f0.dtype, np.inexact) else np.dtype(float)
    f0 = np.asarray(f0, dtype=np.float64)
    m = f0.size
    if Dfun is not None and x0.size <= m:
        jac0 = np.atleast_1d(Dfun(x0.copy(), *args))
        _check_dfun_shape(Dfun, jac0.shape, col_deriv, f0.shape, x0.size)
    problem = _host.HostProblem.get(func, Dfun, col_deriv, m, x0.size)
    return _Plan(m, out_dtype, host=problem, f0=f0.ravel())


def _check_dfun_shape(Dfun, shape, col_deriv, out_shape, n) -> None:
    """scipy's ``_check_func`` test for ``Dfun``, then that it has m * n entries."""
    m = out_shape[0] if out_shape else 1
    expected = (n, m) if col_deriv else (m, n)
    shape = tuple(np.atleast_1d(np.empty(shape, dtype=np.int8)).shape)
    if shape != expected and expected[0] != 1 and expected[1] != 1:
        msg = (
            "leastsq: there is a mismatch between the input and output shape of "
            "the 'Dfun' argument"
        )
        name = getattr(Dfun, "__name__", None)
        msg += f" '{name}'." if name else "."
        msg += f"Shape should be {expected} but it is {shape}."
        raise TypeError(msg)
    if int(np.prod(shape)) != m * n:
        raise TypeError(
            f"leastsq: Dfun returned {int(np.prod(shape))} values (shape {shape}); "
            f"expected {m * n} (shape {expected})."
        )


def _warn_host(func, Dfun, err, *, stacklevel: int) -> None:
    origin = getattr(func, "_jaxlsq_origin", func)
    key = origin if _hashable(origin) else id(origin)
    if _WARNED.get(key) is not None:
        return
    _WARNED.put(key, True)
    name = getattr(origin, "__name__", type(origin).__name__)
    why = f" ({type(err).__name__}: {str(err).splitlines()[0][:200]})" if err else ""
    jac = "your Dfun" if Dfun is not None else "MINPACK's forward differences"
    warnings.warn(
        f"jaxlsq: {name!r} cannot be traced by JAX{why}; it runs on the host through "
        f"callbacks, with {jac} for the Jacobian. Write it with jax.numpy (jnp.exp, "
        "jnp.where instead of Python `if`) for exact Jacobians and compiled speed.",
        HostFallbackWarning,
        stacklevel=stacklevel,
    )


# ----------------------------------------------------------------------------------
# curve_fit


class _ModelResiduals:
    """``transform (f(xdata, *params) - ydata)``, for numpy and JAX alike.

    Instances compare equal per ``(f, kind)`` so the compiled loop is reused.
    ``kind`` is None (no sigma), ``"1d"`` (``transform = 1 / sigma``) or ``"2d"``
    (``transform = L``, the Cholesky factor of the covariance: solve ``L r' = r``).
    """

    def __init__(self, f, kind):
        self.f = f
        self.kind = kind
        self._jaxlsq_origin = f

    def __call__(self, params, xdata, ydata, transform):
        return _transform(self.f(xdata, *params) - ydata, transform, self.kind, 1)

    def __eq__(self, other):
        return (
            type(other) is type(self) and other.f == self.f and other.kind == self.kind
        )

    def __hash__(self):
        return hash((type(self), self.f, self.kind))


class _ModelJacobian(_ModelResiduals):
    """``transform jac(xdata, *params)``, the Jacobian of `_ModelResiduals`."""

    def __call__(self, params, xdata, ydata, transform):
        jac = self.f(xdata, *params)
        jac = jnp.asarray(jac) if _is_jax(jac) else np.asarray(jac)
        return _transform(jac, transform, self.kind, 2)


def _is_jax(value) -> bool:
    return isinstance(value, jax.Array)


def _transform(r, transform, kind, ndim):
    if kind is None:
        return r
    if kind == "1d":
        if ndim == 2 and np.ndim(transform) == 1:
            return transform[:, None] * r
        return transform * r
    if _is_jax(r) or _is_jax(transform):
        return jax.scipy.linalg.solve_triangular(transform, r, lower=True)
    return np.linalg.solve(transform, np.asarray(r))


def _n_params_from_signature(f) -> int:
    sig = inspect.signature(f)
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2:
        raise ValueError("Unable to determine number of fit parameters.")
    return len(positional) - 1


def _contains_nan(a, nan_policy: str) -> bool:
    a = np.asarray(a)
    if a.size == 0:
        return False
    if np.issubdtype(a.dtype, np.inexact):
        contains = bool(np.isnan(a).any())
    elif a.dtype == object:
        contains = any(
            np.issubdtype(type(el), np.number) and np.isnan(el) for el in a.ravel()
        )
    else:
        return False
    if nan_policy == "raise" and contains:
        raise ValueError("The input contains nan values")
    return contains


#: least_squares' status codes and messages, for method "trf"/"dogbox".
_LSQ_STATUS = {1: 2, 2: 3, 3: 4, 4: 1, 5: 0}
_LSQ_MESSAGES = {
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}
_LSQ_KWARGS = ("ftol", "xtol", "gtol", "max_nfev", "maxfev", "verbose")


def curve_fit(
    f: Callable[..., Any],
    xdata: Any,
    ydata: Any,
    p0: Any = None,
    sigma: Any = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: Any = (-np.inf, np.inf),
    method: str | None = None,
    jac: Callable[..., Any] | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    **kwargs: Any,
):
    """Fit ``f(xdata, *params)`` to ``ydata``: ``scipy.optimize.curve_fit`` (method lm).

    Same signature, defaults and results as scipy's, on top of `leastsq`. ``f`` may be
    written with ``jax.numpy`` (compiled, exact Jacobian) or plain numpy (host path,
    forward differences; see `HostFallbackWarning`).

    Parameters
    ----------
    f : callable
        ``f(xdata, *params)``: the model, returning M values.
    xdata : array_like or object
        Independent variable, passed to ``f`` unchanged (lists, tuples and arrays are
        converted to float64 arrays, as scipy does).
    ydata : array_like, shape (M,)
        Data; converted to float64.
    p0 : array_like (N,), optional
        Starting point; default all ones, N read from ``f``'s signature.
    sigma : None, scalar, array (M,) or array (M, M), optional
        Scalar or 1-D: standard deviations of ``ydata`` (residuals are divided by
        them). 2-D: covariance of ``ydata``; residuals are multiplied by ``L^-1``
        with ``L`` its lower Cholesky factor.
    absolute_sigma : bool, default False
        If False, ``pcov`` is scaled by the reduced chi-square ``sum(r**2)/(M - N)``.
    check_finite : bool, optional
        Raise ValueError on NaN/inf in ``xdata``/``ydata``. Default True unless
        ``nan_policy`` is given.
    bounds : 2-tuple or object with ``lb``/``ub``, default (-inf, inf)
        Only infinite bounds are supported for now.
    method : {None, "lm", "trf", "dogbox"}, optional
        ``"lm"`` (default). ``"trf"``/``"dogbox"`` with infinite bounds solve the same
        unconstrained problem by LM but return ``least_squares``' contract (status
        codes and messages, pseudo-inverse covariance, ``infodict`` with ``nfev`` and
        ``fvec`` only).
    jac : callable, optional
        ``jac(xdata, *params)`` -> (M, N), scaled by ``sigma`` like the residuals.
    full_output : bool, default False
        Also return ``infodict``, ``mesg`` and ``ier``.
    nan_policy : {None, "raise", "omit"}, optional
        ``"raise"``: error on NaN in the data; ``"omit"``: drop those points (and the
        matching ``sigma`` entries). ``"propagate"`` is rejected, as in scipy.
    **kwargs
        Passed to `leastsq` (e.g. ``maxfev``, ``ftol``, ``epsfcn``).

    Returns
    -------
    popt : ndarray, shape (N,)
        Best-fit parameters.
    pcov : ndarray, shape (N, N)
        Their estimated covariance (``cov_x`` of `leastsq`, scaled unless
        ``absolute_sigma``); filled with ``inf`` (and an `OptimizeWarning`) when it
        cannot be estimated.
    infodict, mesg, ier
        As from `leastsq` (only with ``full_output``).

    Raises
    ------
    ValueError
        NaN/inf data with ``check_finite``; NaN data with ``nan_policy="raise"``; bad
        ``nan_policy``; ``sigma`` of a wrong shape or not positive definite; empty
        ``ydata``; ``args`` in ``kwargs``; ``method="lm"`` with finite bounds; an
        unknown ``method``.
    TypeError
        More parameters than data points.
    RuntimeError
        The fit failed (``ier`` not in 1-4): "Optimal parameters not found: ...".
    NotImplementedError
        Finite bounds (with ``method`` None, "trf" or "dogbox"): not supported yet.

    Warns
    -----
    OptimizeWarning
        The covariance could not be estimated.

    Examples
    --------
    >>> import numpy as np
    >>> import jax.numpy as jnp
    >>> from jaxlsq.scipy import curve_fit
    >>> def model(x, a, b):
    ...     return a * jnp.exp(-b * x)
    >>> x = np.linspace(0.0, 2.0, 20)
    >>> y = 3.0 * np.exp(-1.5 * x)
    >>> popt, pcov = curve_fit(model, x, y, absolute_sigma=True)
    >>> popt.round(6), pcov.shape
    (array([3. , 1.5]), (2, 2))
    """
    if p0 is None:
        n = _n_params_from_signature(f)
    else:
        p0 = np.atleast_1d(p0)
        n = p0.size

    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lb, ub = bounds.lb, bounds.ub
    else:
        lb, ub = (np.asarray(b, dtype=float) for b in bounds)
    lb, ub = np.asarray(lb, dtype=float), np.asarray(ub, dtype=float)
    if lb.ndim == 0:
        lb = np.full(n, lb)
    if ub.ndim == 0:
        ub = np.full(n, ub)
    if p0 is None:
        p0 = np.ones(n)

    bounded_problem = bool(((lb > -np.inf) | (ub < np.inf)).any())
    if method is not None and method not in ("lm", "trf", "dogbox"):
        raise ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    if method == "lm" and bounded_problem:
        raise ValueError(
            "Method 'lm' only works for unconstrained problems. "
            "Use 'trf' or 'dogbox' instead."
        )
    if bounded_problem:
        raise NotImplementedError(
            "jaxlsq.curve_fit does not support finite bounds yet (got "
            f"lb={lb}, ub={ub}); use bounds=(-np.inf, np.inf), or "
            "scipy.optimize.curve_fit for a bounded fit."
        )
    if method is None:
        method = "lm"

    if check_finite is None:
        check_finite = nan_policy is None

    if check_finite:
        ydata = np.asarray_chkfinite(ydata, float)
    else:
        ydata = np.asarray(ydata, float)

    if isinstance(xdata, (list, tuple, np.ndarray)):
        if check_finite:
            xdata = np.asarray_chkfinite(xdata, float)
        else:
            xdata = np.asarray(xdata, float)

    if ydata.size == 0:
        raise ValueError("`ydata` must not be empty!")

    if not check_finite and nan_policy is not None:
        if nan_policy == "propagate":
            raise ValueError(
                "`nan_policy='propagate'` is not supported by this function."
            )
        if nan_policy not in ("raise", "omit"):
            raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
        x_contains_nan = _contains_nan(xdata, nan_policy)
        y_contains_nan = _contains_nan(ydata, nan_policy)
        if (x_contains_nan or y_contains_nan) and nan_policy == "omit":
            has_nan = np.isnan(xdata)
            has_nan = has_nan.any(axis=tuple(range(has_nan.ndim - 1)))
            has_nan |= np.isnan(ydata)
            xdata = xdata[..., ~has_nan]
            ydata = ydata[~has_nan]
            if sigma is not None:
                sigma = np.asarray(sigma)
                if sigma.ndim == 1:
                    sigma = sigma[~has_nan]
                elif sigma.ndim == 2:
                    sigma = sigma[~has_nan, :]
                    sigma = sigma[:, ~has_nan]

    kind = None
    transform = None
    if sigma is not None:
        sigma = np.asarray(sigma)
        if sigma.size == 1 or sigma.shape == (ydata.size,):
            transform = 1.0 / np.asarray(sigma, dtype=float)
            kind = "1d"
        elif sigma.shape == (ydata.size, ydata.size):
            sigma = np.asarray(sigma, dtype=float)
            if not np.all(np.isfinite(sigma)):
                raise ValueError("array must not contain infs or NaNs")
            try:
                transform = np.linalg.cholesky(sigma)
            except np.linalg.LinAlgError as e:
                raise ValueError("`sigma` must be positive definite.") from e
            kind = "2d"
        else:
            raise ValueError("`sigma` has incorrect shape.")

    func = _ModelResiduals(f, kind)
    if callable(jac):
        dfun = _ModelJacobian(jac, kind)
    elif jac is None or method != "lm":
        dfun = None  # "2-point" etc. for trf/dogbox: we differentiate exactly / by FD
    else:
        raise TypeError(f"jac must be callable or None for method 'lm', got {jac!r}")

    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")

    if ydata.size != 1 and n > ydata.size:
        raise TypeError(
            f"The number of func parameters={n} must not"
            f" exceed the number of data points={ydata.size}"
        )
    fit_args = (xdata, ydata, transform)

    if method == "lm":
        res = _leastsq(
            func, p0, fit_args, dfun, True, False,
            kwargs.pop("ftol", 1.49012e-08), kwargs.pop("xtol", 1.49012e-08),
            kwargs.pop("gtol", 0.0), kwargs.pop("maxfev", 0),
            kwargs.pop("epsfcn", None), kwargs.pop("factor", 100),
            kwargs.pop("diag", None), stacklevel=3,
        )  # fmt: skip
        if kwargs:
            raise TypeError(
                f"leastsq() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        popt, pcov, infodict = res["x"], res["cov_x"], res["infodict"]
        errmsg, ier = res["mesg"], res["ier"]
        ysize = len(infodict["fvec"])
        cost = np.sum(infodict["fvec"] ** 2)
        if ier not in _LEASTSQ_SUCCESS:
            raise RuntimeError("Optimal parameters not found: " + errmsg)
    else:
        unknown = sorted(set(kwargs) - set(_LSQ_KWARGS))
        if unknown or kwargs.get("verbose", 0):
            raise NotImplementedError(
                f"method={method!r} is served by Levenberg-Marquardt here; the "
                f"least_squares options {unknown or ['verbose']} are not supported."
            )
        maxfev = kwargs.get("max_nfev", kwargs.get("maxfev", None)) or 0
        res = _leastsq(
            func, p0, fit_args, dfun, True, False,
            kwargs.get("ftol", 1e-8), kwargs.get("xtol", 1e-8),
            kwargs.get("gtol", 1e-8), maxfev, None, 100, None, stacklevel=3,
        )  # fmt: skip
        status = res["ier"]
        if status == 5:
            raise RuntimeError("Optimal parameters not found: " + _LSQ_MESSAGES[0])
        if status not in _LEASTSQ_SUCCESS:
            raise RuntimeError("Optimal parameters not found: " + res["mesg"])
        ier = _LSQ_STATUS[status]
        errmsg = _LSQ_MESSAGES[ier]
        popt = res["x"]
        fvec = res["infodict"]["fvec"]
        infodict = dict(nfev=res["infodict"]["nfev"], fvec=fvec)
        ysize = len(fvec)
        cost = np.sum(fvec**2)
        _, s, vt = np.linalg.svd(res["jac"], full_matrices=False)
        threshold = np.finfo(float).eps * max(res["jac"].shape) * s[0]
        s = s[s > threshold]
        vt = vt[: s.size]
        pcov = np.dot(vt.T / s**2, vt)

    warn_cov = False
    if pcov is None or np.isnan(pcov).any():
        pcov = np.zeros((len(popt), len(popt)), dtype=float)
        pcov.fill(np.inf)
        warn_cov = True
    elif not absolute_sigma:
        if ysize > p0.size:
            s_sq = cost / (ysize - p0.size)
            pcov = pcov * s_sq
        else:
            pcov.fill(np.inf)
            warn_cov = True

    if warn_cov:
        warnings.warn(
            "Covariance of the parameters could not be estimated",
            category=OptimizeWarning,
            stacklevel=2,
        )

    if full_output:
        return popt, pcov, infodict, errmsg, ier
    return popt, pcov
