"""Which path a scipy-shim call takes, decided once per (func, Dfun, col_deriv, n,
argument shapes) and cached: the JAX path (func traceable) or the host path (numpy
func through callbacks, with a one-time `HostFallbackWarning`)."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.caches import HOST_WARNED as _WARNED
from ..core.caches import SHIM_PLANS as _JAX_PLANS
from . import host as _host
from .errors import HostFallbackWarning

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


@dataclasses.dataclass(frozen=True)
class _Transposed:
    """``Dfun`` with ``col_deriv=True`` seen as an (m, n) Jacobian; equal per Dfun."""

    dfun: Any

    def __call__(self, x, *args):
        return jnp.transpose(jnp.asarray(self.dfun(x, *args)))


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


def _plan(
    func, Dfun, col_deriv, x0, args, *, stacklevel: int, jac_desc: str | None = None
) -> _Plan:
    """The cached path for ``func``; ``jac_desc`` names the host-path Jacobian in the
    `HostFallbackWarning` (default: "your Dfun" or MINPACK's forward differences)."""
    n = x0.size
    sig = _args_signature(args)
    key = None
    if sig is not None and _hashable(func) and _hashable(Dfun):
        key = (func, Dfun, bool(col_deriv), n, sig)
        cached = _JAX_PLANS.get(key)
        if isinstance(cached, _Plan):
            return cached
        if cached is None:
            with _untraced_attributes(func):
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
    _warn_host(func, Dfun, err, stacklevel=stacklevel + 1, jac_desc=jac_desc)
    return plan


@contextlib.contextmanager
def _untraced_attributes(func):
    """Put back, after the trial traces, every attribute of the user's function
    (``func.__dict__``, through the shims' wrappers) that they left holding a JAX
    tracer: a model that stores a value on itself (``m.last = a``) and reads it
    on its next call would otherwise read the leaked tracer on the host path and
    raise ``UnexpectedTracerError``; put back, it reads what scipy's first call
    reads. Attributes set to plain values (a trace-time counter) are kept."""
    origin = getattr(func, "_jaxlsq_origin", func)
    attrs = getattr(origin, "__dict__", None)
    if not isinstance(attrs, dict):  # no attributes of its own (or a mappingproxy)
        yield
        return
    before = dict(attrs)
    try:
        yield
    finally:
        for name, value in list(attrs.items()):
            if any(isinstance(leaf, jax.core.Tracer) for leaf in _leaves(value)):
                if name in before:
                    attrs[name] = before[name]
                else:
                    del attrs[name]


def _leaves(value) -> list:
    try:
        return jax.tree_util.tree_leaves(value)
    except Exception:  # an object JAX cannot flatten: look at it alone
        return [value]


def _try_jax_plan(func, Dfun, col_deriv, x0, args):
    """Trace ``func`` (and ``Dfun`` or ``jacfwd(func)``) once; None if JAX cannot."""
    n = x0.size
    spec = jax.ShapeDtypeStruct((n,), jnp.float64)
    try:
        with jax.checking_leaks():  # side effects keep tracers: the host path
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


def _warn_host(
    func, Dfun, err, *, stacklevel: int, jac_desc: str | None = None
) -> None:
    origin = getattr(func, "_jaxlsq_origin", func)
    key = (origin if _hashable(origin) else id(origin),)
    if _WARNED.get(key) is not None:
        return
    _WARNED.put(key, True)
    name = getattr(origin, "__name__", type(origin).__name__)
    why = f" ({type(err).__name__}: {str(err).splitlines()[0][:200]})" if err else ""
    jac = "your Dfun" if Dfun is not None else "MINPACK's forward differences"
    jac = jac if jac_desc is None else jac_desc
    warnings.warn(
        f"jaxlsq: {name!r} cannot be traced by JAX{why}; it runs on the host through "
        f"callbacks, with {jac} for the Jacobian. Write it with jax.numpy (jnp.exp, "
        "jnp.where instead of Python `if`) for exact Jacobians and compiled speed.",
        HostFallbackWarning,
        stacklevel=stacklevel,
    )
