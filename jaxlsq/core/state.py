"""The state of the LM loop (`LMState`), its start (`lm_init`: the input checks
and one residual evaluation) and its Jacobian at the current point
(`with_linearization`, `with_jacobian`). The iteration itself is
`jaxlsq.core.loop`."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .linearization import Linearization, as_strategy
from .options import SolveOptions
from .scaling import scaled_norm as _norm
from .status import Status


class LMState(NamedTuple):
    """Carry of the outer loop. ``f`` belongs to ``x``; ``jac`` does when
    ``jac_current`` (it is stale after an accepted step until the next evaluation).

    ``par`` is in the units of ``Js / jac_unit`` (`jacobian_unit`).
    Shapes: x (n,), f (m,), jac (m, n), diag (n,); everything else ().
    """

    x: jax.Array
    f: jax.Array
    fnorm: jax.Array
    jac: jax.Array
    jac_current: jax.Array
    diag: jax.Array
    delta: jax.Array
    par: jax.Array
    jac_unit: jax.Array
    xnorm: jax.Array
    gnorm: jax.Array
    nfev: jax.Array
    njev: jax.Array
    n_iter: jax.Array
    status: jax.Array


def positive_or_one(v: jax.Array) -> jax.Array:
    """``v`` with its non-positive entries replaced by 1 (a safe divisor)."""
    return jnp.where(v > 0, v, jnp.ones_like(v))


def status_code(status: Status) -> jax.Array:
    return jnp.asarray(int(status), jnp.int32)


def is_running(st: LMState) -> jax.Array:
    return st.status == int(Status.RUNNING)


def scalar_options(options: SolveOptions, dtype):
    """``(ftol, xtol, gtol, factor)`` in ``dtype`` and ``max_nfev`` as int32."""
    o = options
    ftol, xtol, gtol, factor = (
        jnp.asarray(v, dtype) for v in (o.ftol, o.xtol, o.gtol, o.factor)
    )
    return ftol, xtol, gtol, factor, jnp.asarray(o.max_nfev, jnp.int32)


def box_of(options: SolveOptions, dtype):
    """``(lower, upper)`` in ``dtype``, or ``(None, None)`` without bounds."""
    if options.lower is None:
        return None, None
    return jnp.asarray(options.lower, dtype), jnp.asarray(options.upper, dtype)


def lm_init(
    flat_fun: Callable[[jax.Array], jax.Array], x0: jax.Array, options: SolveOptions
) -> LMState:
    """The state at ``x0`` (n,): one residual evaluation and the input checks.

    The status is ``RUNNING``, or already final: ``IMPROPER_INPUT`` (bad options,
    bounds or non-finite ``x0``) or ``NONFINITE`` (residuals at ``x0``).
    """
    dtype = x0.dtype
    ftol, xtol, gtol, factor, max_nfev = scalar_options(options, dtype)
    user_diag = options.diag

    # --- initial point: one residual evaluation --------------------------------
    # The Jacobian at x0 is the first thing the loop computes, as in lmder, so the
    # program holds one copy of the Jacobian inside the loop and one after it.
    f0 = flat_fun(x0)
    options_ok = (ftol >= 0) & (xtol >= 0) & (gtol >= 0) & (factor > 0) & (max_nfev > 0)
    options_ok &= jnp.asarray(options.nfev_per_jac) >= 0
    if user_diag is not None:
        options_ok &= jnp.all(user_diag > 0)
    if options.loss != "linear":  # (f_scale is ignored by the linear loss)
        options_ok &= jnp.asarray(options.f_scale, dtype) > 0
    lower, upper = box_of(options, dtype)
    if lower is not None:
        # NaN bounds fail both comparisons, so they are improper input too.
        options_ok &= jnp.all(lower < upper) & jnp.all((x0 >= lower) & (x0 <= upper))
    input_ok = options_ok & jnp.all(jnp.isfinite(x0))
    status0 = jnp.where(
        input_ok,
        jnp.where(
            jnp.all(jnp.isfinite(f0)),
            status_code(Status.RUNNING),
            status_code(Status.NONFINITE),
        ),
        status_code(Status.IMPROPER_INPUT),
    )
    n = x0.shape[0]
    return LMState(
        x=x0,
        f=f0,
        fnorm=_norm(f0),
        jac=jnp.zeros((f0.shape[0], n), dtype),
        jac_current=jnp.zeros((), bool),
        diag=jnp.ones((n,), dtype),
        delta=jnp.zeros((), dtype),
        par=jnp.zeros((), dtype),
        jac_unit=jnp.ones((), dtype),
        xnorm=jnp.zeros((), dtype),
        gnorm=jnp.zeros((), dtype),
        nfev=jnp.ones((), jnp.int32),
        njev=jnp.zeros((), jnp.int32),
        n_iter=jnp.zeros((), jnp.int32),
        status=status0,
    )


def with_linearization(
    jacobian, st: LMState, unit: jax.Array
) -> tuple[LMState, Linearization]:
    """The linearization at ``st.x`` from the Jacobian strategy ``jacobian`` (or an
    ``x -> J`` function; see `jaxlsq.core.linearization`), and the state holding its
    carry (the dense J) as ``st.jac``. NaN/inf in J stops the fit.

    The strategy is handed ``f / u`` (``u = unit``, `residual_unit` of ``||f||``), so
    ``lin.jtf`` is ``J^T (f / u)``: the gtol cosines come from it without the
    underflow of ``J^T f`` (tiny f and J would read as a converged gradient); the
    steps multiply by ``u`` (exact wherever ``J^T f`` is in range).
    """
    lin, carry = as_strategy(jacobian)(st.x, st.f / unit)
    finite = lin.is_finite()
    keep = finite | (st.status == int(Status.IMPROPER_INPUT))
    status = jnp.where(keep, st.status, status_code(Status.NONFINITE))
    st = st._replace(
        jac=carry, jac_current=jnp.ones((), bool), njev=st.njev + 1, status=status
    )
    return st, lin


def with_jacobian(jacobian, st: LMState) -> LMState:
    """Evaluate J at ``st.x`` (for the solution); NaN/inf in it stops the fit."""
    jac = as_strategy(jacobian).jacobian(st.x)
    finite = jnp.all(jnp.isfinite(jac))
    keep = finite | (st.status == int(Status.IMPROPER_INPUT))
    status = jnp.where(keep, st.status, status_code(Status.NONFINITE))
    return st._replace(
        jac=jac, jac_current=jnp.ones((), bool), njev=st.njev + 1, status=status
    )
