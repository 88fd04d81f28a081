"""`SolveOptions`: every option of the LM solver, declared once.

Each option is one dataclass field. Its metadata says

* whether it is **static** (it selects code: a new value compiles a new program;
  part of the pytree structure) or **traced** (a value inside the program: any new
  value reuses the compiled loop; a pytree leaf);
* how it is checked: the allowed values of a static option, the sign of a traced
  scalar. A concrete bad value raises an error that names the option; a traced one
  is reported by the loop as ``Status.IMPROPER_INPUT``.

Every entry point (`jaxlsq.solve`, `jaxlsq.solve_batch` and its refill pool,
`jaxlsq.fit`, `jaxlsq.fit_batch`, multi-start, the scipy shims) builds one
`SolveOptions` from its keywords (`SolveOptions.build`) and passes it down; the
loop reads it after `SolveOptions.resolve` has filled the defaults that depend on
the problem (``n``, the dtype) and flattened the per-parameter options to (n,).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .factorize import LINEAR_SOLVERS
from .implicit import ADJOINTS
from .jacobian import JAC_MODES
from .krylov import MATRIX_FREE_SOLVERS
from .losses import check_loss
from .sparsity import as_pattern
from .validate import check_bounds, check_concrete, flat_bounds, flat_like


def _option(default, *, static: bool, allowed=None, check=None, convert=None):
    """A field of `SolveOptions`: ``check(name, value)`` raises for a bad value;
    ``convert(value)`` is the form stored (a static option must be hashable)."""
    meta = {"static": static, "allowed": allowed, "check": check, "convert": convert}
    return dataclasses.field(default=default, metadata=meta)


def _nonnegative(name, value):
    if value is not None:
        check_concrete(value, name, lambda v: np.all(v >= 0), "must be >= 0")


def _positive(name, value):
    if value is not None:
        check_concrete(value, name, lambda v: np.all(v > 0), "must be > 0")


def _positive_int(name, value):
    _integer(name, value)
    _positive(name, value)


def _nonnegative_int(name, value):
    _integer(name, value)
    _nonnegative(name, value)


def _integer(name, value):
    if isinstance(value, numbers.Number) and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")


def _chunk(name, value):
    if value is not None and not (isinstance(value, str) and value == "auto"):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{name} must be 'auto', a positive int or None, got {value!r}"
            )
        if value < 1:
            raise ValueError(
                f"{name} must be 'auto', a positive int or None, got {value!r}"
            )


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _monitor(name, value):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be None or a callable, got {value!r}")


def _jac_mode(name, value):
    if not callable(value) and value not in JAC_MODES:
        raise ValueError(
            f"{name} must be one of {JAC_MODES} or a callable, got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """The options of `jaxlsq.solve` (see its docstring for their meaning).

    Static (select code): ``jac``, ``linear_solver``, ``loss``, ``adjoint``,
    ``chunk_points``, ``monitor``, ``jac_sparsity`` (stored as a hashable
    `jaxlsq.core.sparsity.SparsityPattern`), ``keep_jac``.
    Traced (values; never recompile): ``ftol``, ``xtol``, ``gtol``, ``max_nfev``,
    ``nfev_per_jac``, ``factor``, ``f_scale``, ``diag``, ``bounds``, ``fixed``,
    ``cg_tol``, ``cg_maxiter``.
    Whether ``diag``, ``bounds`` or ``fixed`` is given at all (None or not) is
    static.

    As built from user keywords, ``None`` tolerances and ``max_nfev`` mean "the
    default for this problem", and ``bounds``/``fixed``/``diag`` are in the user's
    format (scalars or pytrees like ``x0``). `resolve` returns the form the loop
    reads: every scalar an array of the working dtype (``max_nfev`` int32),
    ``bounds`` a pair of flat (n,) arrays, ``fixed`` a flat (n,) bool mask, ``diag``
    an (n,) array.
    """

    jac: str | Callable = _option("auto", static=True, check=_jac_mode)
    linear_solver: str = _option(
        "svd", static=True, allowed=LINEAR_SOLVERS + MATRIX_FREE_SOLVERS
    )
    loss: str | Callable = _option("linear", static=True, check=check_loss)
    adjoint: str = _option("implicit", static=True, allowed=ADJOINTS)
    chunk_points: int | str | None = _option("auto", static=True, check=_chunk)
    monitor: Callable | None = _option(None, static=True, check=_monitor)
    jac_sparsity: Any = _option(None, static=True, convert=as_pattern)
    keep_jac: bool = _option(True, static=True, check=_flag)
    ftol: Any = _option(None, static=False, check=_nonnegative)
    xtol: Any = _option(None, static=False, check=_nonnegative)
    gtol: Any = _option(None, static=False, check=_nonnegative)
    max_nfev: Any = _option(None, static=False, check=_positive_int)
    nfev_per_jac: Any = _option(0, static=False, check=_nonnegative_int)
    factor: Any = _option(10.0, static=False, check=_positive)
    f_scale: Any = _option(1.0, static=False, check=_positive)
    diag: Any = _option(None, static=False)
    bounds: Any = _option(None, static=False)
    fixed: Any = _option(None, static=False)
    cg_tol: Any = _option(None, static=False, check=_nonnegative)
    cg_maxiter: Any = _option(None, static=False, check=_positive_int)

    def __post_init__(self):  # the stored form of the options that have one
        for name, convert in _CONVERT.items():
            object.__setattr__(self, name, convert(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option's name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(
        cls, options: SolveOptions | None = None, /, where: str = "solve", **kwargs
    ) -> SolveOptions:
        """``options`` (default: all defaults) with ``kwargs`` replaced, checked.

        Raises ``TypeError`` naming an unknown keyword (``where`` names the entry
        point), ``ValueError`` naming an option with a bad concrete value.
        """
        unknown = set(kwargs).difference(_FIELDS)
        if unknown:
            raise TypeError(
                f"{where}() got unknown solve option(s) {sorted(unknown)}; the "
                f"options are {list(cls.names())}"
            )

        if options is None:  # the defaults are valid: check what is given
            built = cls(**kwargs) if kwargs else _DEFAULT
            built.check(kwargs)
            return built
        if not isinstance(options, SolveOptions):
            raise TypeError(
                f"options must be a SolveOptions, got {type(options).__name__}"
            )
        built = dataclasses.replace(options, **kwargs) if kwargs else options
        built.check()
        return built

    def check(self, names=None) -> None:
        """Raise for a bad static value or a bad concrete traced scalar (of the
        options ``names``, default all)."""
        for name in _FIELDS if names is None else names:
            allowed, check = _FIELDS[name]
            value = getattr(self, name)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
            if check is not None:
                check(name, value)

    def replace(self, **changes) -> SolveOptions:
        """A copy with some options replaced (checked like `build`)."""
        return SolveOptions.build(self, **changes)

    def static_items(self) -> tuple:
        """``((name, value), ...)`` of the static options: hashable."""
        return tuple((name, getattr(self, name)) for name in _STATIC)

    def with_defaults(self, n: int, dtype) -> SolveOptions:
        """The scalar options with their defaults for ``n`` parameters of ``dtype``
        filled in (`scalar_defaults`). Entry points call this before tracing, so
        that giving a traced option or leaving it to its default compiles the same
        program."""
        defaults = scalar_defaults(n, dtype)
        return dataclasses.replace(
            self,
            **{k: v for k, v in defaults.items() if getattr(self, k) is None},
        )

    def resolve(self, x0: Any, n: int, dtype) -> SolveOptions:
        """The options the loop reads, for parameters like ``x0`` (n entries of
        ``dtype``): defaults filled in, per-parameter options flat (n,), bounds
        checked against ``x0`` (concrete values raise, traced ones are checked by
        the loop)."""
        defaults = scalar_defaults(n, dtype)
        traced = _is_traced(x0) or _is_traced(self)
        xp = jnp if traced else np

        def scalar(name, kind=dtype):
            value = getattr(self, name)
            return xp.asarray(defaults[name] if value is None else value, kind)

        diag = self.diag
        if diag is not None:
            diag = xp.asarray(diag, dtype)
            if diag.shape != (n,):
                raise ValueError(f"diag must have shape ({n},), got {diag.shape}")
            check_concrete(diag, "diag", lambda d: np.all(d > 0), "entries must be > 0")
        if self.bounds is not None:
            bounds = flat_bounds(self.bounds, x0, n, dtype)
            check_bounds(*bounds, x0)
        elif not traced:
            # A single fit without bounds runs the bounded program with +-inf
            # bounds: adding bounds later (a notebook's next cell) then compiles
            # nothing. Same iterates (the 54 NIST fits bit for bit), same warm time
            # (279 against 278-344 us, expdecay). Batches (traced here, inside
            # vmap) keep the unbounded program: +-inf cost them 8% (131k against
            # 131-145k fits/s, 2e4 decays, 2-core CPU).
            bounds = (np.full(n, -np.inf, dtype), np.full(n, np.inf, dtype))
        else:
            bounds = None
        fixed = None
        if self.fixed is not None:
            fixed = flat_like(self.fixed, x0, n, bool, "fixed")
        return dataclasses.replace(  # the scalar defaults filled in the same pass
            self,
            ftol=scalar("ftol"),
            xtol=scalar("xtol"),
            gtol=scalar("gtol"),
            factor=scalar("factor"),
            f_scale=scalar("f_scale"),
            max_nfev=scalar("max_nfev", jnp.int32),
            cg_tol=scalar("cg_tol"),
            cg_maxiter=scalar("cg_maxiter", jnp.int32),
            nfev_per_jac=xp.asarray(self.nfev_per_jac, jnp.int32),
            diag=diag,
            bounds=bounds,
            fixed=fixed,
        )

    @property
    def lower(self):
        """Flat lower bounds (n,) of resolved options, or None."""
        return None if self.bounds is None else self.bounds[0]

    @property
    def upper(self):
        """Flat upper bounds (n,) of resolved options, or None."""
        return None if self.bounds is None else self.bounds[1]


_FIELDS = {
    f.name: (f.metadata["allowed"], f.metadata["check"])
    for f in dataclasses.fields(SolveOptions)
}
_CONVERT = {
    f.name: f.metadata["convert"]
    for f in dataclasses.fields(SolveOptions)
    if f.metadata["convert"] is not None
}
_DEFAULT = SolveOptions()
_STATIC = tuple(
    f.name for f in dataclasses.fields(SolveOptions) if f.metadata["static"]
)
_TRACED = tuple(
    f.name for f in dataclasses.fields(SolveOptions) if not f.metadata["static"]
)
jax.tree_util.register_dataclass(
    SolveOptions, data_fields=list(_TRACED), meta_fields=list(_STATIC)
)


def scalar_defaults(n: int, dtype) -> dict:
    """The defaults of the scalar options for ``n`` parameters of ``dtype``:
    ``ftol = xtol = 10 eps``, ``gtol = eps``, ``max_nfev = 500 (n + 1)`` (see
    `jaxlsq.solve` for why), ``cg_tol = sqrt(eps)``, ``cg_maxiter = n``, and the
    declared ``factor`` and ``f_scale``."""
    eps = float(jnp.finfo(dtype).eps)
    return dict(
        ftol=10 * eps,
        xtol=10 * eps,
        gtol=eps,
        max_nfev=500 * (n + 1),
        cg_tol=eps**0.5,
        cg_maxiter=n,
        factor=_DEFAULT.factor,
        f_scale=_DEFAULT.f_scale,
    )


#: Names of the static and the traced options.
STATIC_OPTIONS, TRACED_OPTIONS = _STATIC, _TRACED


def _is_traced(tree) -> bool:
    return any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree)
    )
