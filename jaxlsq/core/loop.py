"""The Levenberg-Marquardt loop: MINPACK's lmder, written as one ``lax.while_loop``.

Reference: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory"
(1978), and MINPACK's ``lmder.f``. The trust-region radius ``delta``, the scaling
``diag``, the damping update and the ``ftol``/``xtol``/``gtol`` tests follow lmder line
by line, so a status code here means what scipy's ``ier`` means.

Shape of the loop: one ``while_loop`` whose every iteration tries one damped step.
lmder's inner loop of trial steps (until one is accepted) is unrolled into it: the
Jacobian is new only after an accepted step (a rejected step leaves x,
hence J, unchanged), so the iterates, ``nfev`` and ``njev`` are lmder's. A rejected
step costs a residual, a Jacobian (not counted) and a factorisation; under ``vmap`` no
lane waits in an inner loop for the batch's most-rejecting lane.

Two deviations from lmder, both about non-finite numbers:
* a trial point with NaN/inf residuals is a failed step (the region shrinks by 10x);
  MINPACK compares NaNs and can stop "successfully";
* NaN/inf residuals or Jacobian at an accepted point stop the fit with
  ``Status.NONFINITE`` instead of a meaningless convergence code.

Box bounds and fixed parameters (both optional, both compiled only when given) use an
active set on top of lmder, the projected Levenberg-Marquardt idea: at every Jacobian,
a parameter that is fixed, or that sits on a bound with the gradient pushing it
outwards, is *frozen* -- its Jacobian column is zeroed, so the damped step, the scaling
and the gtol test (a projected gradient) all ignore it. Trial points are projected onto
the box (``clip``), which lands parameters exactly on their bounds; when a projection
changed the step, the predicted reduction is computed from the model with that actual
step (one J @ p) instead of lmpar's closed form, and a step whose model predicts no
decrease is rejected. Small steps from a feasible point are never clipped in the free
directions, so lmder's convergence argument carries over; with no bound active the
iterates are lmder's.

Under ``jax.vmap`` the loop runs until the slowest lane stops; JAX's batching of
``while_loop`` keeps the carry of a finished lane unchanged, and every step is
computed lane by lane (see `jaxlsq.core.steps`), so a lane's answer does not depend
on the other lanes of its batch: bit-identical in any batch run by the same compiled
program. It equals the same fit solved alone to the fit's accuracy, not bit for bit
(a batch takes other, vectorised, linear algebra; see `jaxlsq.core.steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .factorize import factorize
from .krylov import trust_region_cg
from .linearization import Linearization, as_strategy
from .monitor import check_in, check_out
from .options import SolveOptions
from .scaling import jacobian_unit, residual_unit
from .scaling import scaled_norm as _norm
from .status import Status
from .steps import scaled_jacobian_norm, trust_region_par


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


def _positive_or_one(v: jax.Array) -> jax.Array:
    """``v`` with its non-positive entries replaced by 1 (a safe divisor)."""
    return jnp.where(v > 0, v, jnp.ones_like(v))


def _code(status: Status) -> jax.Array:
    return jnp.asarray(int(status), jnp.int32)


def _running(st: LMState) -> jax.Array:
    return st.status == int(Status.RUNNING)


def _scalar_options(options: SolveOptions, dtype):
    """``(ftol, xtol, gtol, factor)`` in ``dtype`` and ``max_nfev`` as int32."""
    o = options
    ftol, xtol, gtol, factor = (
        jnp.asarray(v, dtype) for v in (o.ftol, o.xtol, o.gtol, o.factor)
    )
    return ftol, xtol, gtol, factor, jnp.asarray(o.max_nfev, jnp.int32)


def _bounds(options: SolveOptions, dtype):
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
    ftol, xtol, gtol, factor, max_nfev = _scalar_options(options, dtype)
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
    lower, upper = _bounds(options, dtype)
    if lower is not None:
        # NaN bounds fail both comparisons, so they are improper input too.
        options_ok &= jnp.all(lower < upper) & jnp.all((x0 >= lower) & (x0 <= upper))
    input_ok = options_ok & jnp.all(jnp.isfinite(x0))
    status0 = jnp.where(
        input_ok,
        jnp.where(
            jnp.all(jnp.isfinite(f0)), _code(Status.RUNNING), _code(Status.NONFINITE)
        ),
        _code(Status.IMPROPER_INPUT),
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

    The strategy is handed ``f / u`` (``u = unit``, `residual_unit` of ``f``), so
    ``lin.jtf`` is ``J^T (f / u)``: the gtol cosines come from it without the
    underflow of ``J^T f`` (tiny f and J would read as a converged gradient); the
    steps multiply by ``u`` (exact wherever ``J^T f`` is in range).
    """
    lin, carry = as_strategy(jacobian)(st.x, st.f / unit)
    finite = lin.is_finite() if carry is None else jnp.all(jnp.isfinite(carry))
    keep = finite | (st.status == int(Status.IMPROPER_INPUT))
    status = jnp.where(keep, st.status, _code(Status.NONFINITE))
    st = st._replace(
        jac=carry, jac_current=jnp.ones((), bool), njev=st.njev + 1, status=status
    )
    return st, lin


def with_jacobian(jacobian, st: LMState) -> LMState:
    """Evaluate J at ``st.x`` (for the solution); NaN/inf in it stops the fit."""
    jac = as_strategy(jacobian).jacobian(st.x)
    finite = jnp.all(jnp.isfinite(jac))
    keep = finite | (st.status == int(Status.IMPROPER_INPUT))
    status = jnp.where(keep, st.status, _code(Status.NONFINITE))
    return st._replace(
        jac=jac, jac_current=jnp.ones((), bool), njev=st.njev + 1, status=status
    )


def lm_iteration(
    flat_fun: Callable[[jax.Array], jax.Array],
    jacobian,
    options: SolveOptions,
    st: LMState,
    monitor: Callable | None = None,
) -> LMState:
    """One iteration of a running fit: the Jacobian at ``st.x`` and its
    factorisation, then one damped trial step. ``monitor`` (traced, see
    `jaxlsq.core.monitor`) is told of each new point and may stop the fit.

    Only meaningful for ``st.status == RUNNING`` (`run_lm` calls it on those only).
    ``st.jac`` is not read (it may be None); the returned state holds the Jacobian
    evaluated at the iteration's starting point.
    """
    dtype = st.x.dtype
    eps = jnp.finfo(dtype).eps
    ftol, xtol, gtol, factor, max_nfev = _scalar_options(options, dtype)
    user_diag = options.diag
    lower, upper = _bounds(options, dtype)
    bounded = lower is not None
    fixed = options.fixed

    def frozen_columns(x: jax.Array, jtf: jax.Array) -> jax.Array | None:
        """(n,) bool: fixed parameters, and those on a bound that the gradient
        ``jtf`` pushes outwards (a descent step would leave the box)."""
        frozen = fixed
        if bounded:
            pushed_out = ((x <= lower) & (jtf > 0)) | ((x >= upper) & (jtf < 0))
            frozen = pushed_out if frozen is None else frozen | pushed_out
        return frozen

    # The Jacobian at x. After a rejected step x has not moved, so this is the same
    # Jacobian as before: evaluated again (not counted in njev, as lmder's inner loop
    # would not evaluate it) rather than carried, because under vmap a skip would
    # be a select that evaluates it anyway. A lane's rejected step thus costs one
    # iteration of the batch, not an inner loop of trials running as long as the
    # batch's most-rejecting lane (1.9x the fits/s on 2-D Gaussians with the default
    # tolerances; same iterates, nfev and njev).
    fresh = ~st.jac_current
    unit = residual_unit(st.f)  # once: the strategy's f / u and the steps below
    evaluated, lin = with_linearization(jacobian, st, unit)
    jac_cost = jnp.where(fresh, jnp.asarray(options.nfev_per_jac, jnp.int32), 0)
    st = evaluated._replace(
        njev=jnp.where(fresh, evaluated.njev, st.njev), nfev=st.nfev + jac_cost
    )
    st = check_in(monitor, st, lin.jtf * unit, fresh)
    # The loop sees J without its frozen columns (the frozen test reads J^T f; lin.jtf
    # is J^T (f / u), with J^T f's signs: see with_linearization).
    lin = lin.without(frozen_columns(st.x, lin.jtf))
    jtf_unit, acnorm = lin.jtf, lin.col_norms
    first = fresh & (st.njev == 1)  # a resumed first iteration keeps its radius
    if user_diag is None:  # MINPACK mode 1: column norms, zero columns scaled by 1
        diag = jnp.where(first, _positive_or_one(acnorm), st.diag)
        diag = jnp.maximum(diag, acnorm)
    else:  # mode 2: the user's fixed scaling
        diag = jnp.asarray(user_diag, dtype)
    xnorm0 = _norm(diag * st.x)
    delta0 = jnp.where(xnorm0 > 0, factor * xnorm0, factor)
    st = st._replace(
        xnorm=jnp.where(first, xnorm0, st.xnorm),
        delta=jnp.where(first, delta0, st.delta),
    )
    # gtol test: largest |cos| between f and a column of J (0 when f == 0), from
    # J^T (f / u) and ||f|| / u: no underflow where J^T f would have one.
    fnorm_safe = _positive_or_one(st.fnorm / unit)
    cosines = jnp.abs(jtf_unit) / (_positive_or_one(acnorm) * fnorm_safe)
    cosines = jnp.where(acnorm > 0, cosines, 0)
    gnorm = jnp.where(st.fnorm > 0, jnp.max(cosines), 0)
    status = jnp.where(_running(st) & (gnorm <= gtol), _code(Status.GTOL), st.status)
    # The step system is of Js / s (s = jac_unit, exact, 1 in range): in its units
    # z' = s z, delta' = s delta and par' = par / s^2 (st.par is carried in them).
    s = jacobian_unit(acnorm, diag)
    diag_s = diag * s
    matrix_free = lin.operator is not None  # CG on products: no factorisation
    if not matrix_free:
        system = factorize(lin, diag_s, options.linear_solver, _running(st), unit)
    par0 = st.par * (st.jac_unit / s) ** 2
    st = st._replace(diag=diag, gnorm=gnorm, status=status, par=par0, jac_unit=s)

    def trial(st: LMState) -> LMState:
        """One damped step from ``st.x``: accepted or rejected, then lmder's tests."""
        fnorm = _positive_or_one(st.fnorm)
        if matrix_free:  # the model's own value at the CG step (over u^2)
            cg_tol = jnp.asarray(options.cg_tol, dtype)
            z_u, cut = trust_region_cg(
                lin.operator, diag, st.f / unit, st.delta / unit, cg_tol,
                jnp.asarray(options.cg_maxiter, jnp.int32),
            )  # fmt: skip
            par = cut.astype(dtype)  # 0: an interior (Gauss-Newton) step, as lmpar's
            step = (z_u / diag) * unit
            x_trial = st.x + step
            pnorm = _norm(z_u) * unit
            f_jp, jp_jp = lin.jac_dot(z_u / diag, st.f / unit)
            fnorm_u2 = (fnorm / unit) ** 2
            prered = -(2 * f_jp + jp_jp) / fnorm_u2
            dirder = f_jp / fnorm_u2
        else:
            par, z_s = trust_region_par(system, st.delta * s, st.par)
            step = z_s / diag_s
            x_trial = st.x + step
            znorm_s = _norm(z_s)
            pnorm = znorm_s / s
            # Predicted relative reduction and directional derivative, in lmpar's
            # closed form (valid for the unprojected damped step).
            temp1 = scaled_jacobian_norm(system, z_s) / fnorm  # ||J step|| / ||f||
            temp2 = jnp.sqrt(par) * znorm_s / fnorm
            prered = temp1**2 + 2 * temp2**2
            dirder = -(temp1**2 + temp2**2)
        if bounded:  # project onto the box; recompute the model if that bit
            projected = jnp.clip(x_trial, lower, upper)
            clipped = jnp.any(projected != x_trial)
            x_trial = projected
            actual_step = x_trial - st.x
            # f . J s and ||J s||^2, both over u^2 (as fnorm_u^2): no underflow
            f_jp, jp_jp = lin.jac_dot(actual_step / unit, st.f / unit)
            fnorm_u = fnorm / unit
            fjp = f_jp / fnorm_u**2
            pnorm = jnp.where(clipped, _norm(diag * actual_step), pnorm)
            prered = jnp.where(clipped, -2 * fjp - jp_jp / fnorm_u**2, prered)
            dirder = jnp.where(clipped, fjp, dirder)
        # Before the first accepted step the radius never exceeds the step tried.
        delta = jnp.where(st.n_iter == 0, jnp.minimum(st.delta, pnorm), st.delta)
        f_trial = flat_fun(x_trial)
        fnorm1 = _norm(f_trial)
        nfev = st.nfev + 1

        # Actual relative reduction; a step the model says cannot help (possible
        # only after a projection) is rejected.
        actred = jnp.where(0.1 * fnorm1 < st.fnorm, 1 - (fnorm1 / fnorm) ** 2, -1)
        ratio = jnp.where(prered > 0, actred / jnp.where(prered > 0, prered, 1), 0)

        # Radius update (lmder): shrink on a poor step, double on a good one.
        shrink = ratio <= 0.25
        denom = dirder + 0.5 * actred
        safe_denom = jnp.where(denom != 0, denom, -1)
        temp = jnp.where(actred >= 0, 0.5, 0.5 * dirder / safe_denom)
        temp = jnp.where((0.1 * fnorm1 >= st.fnorm) | (temp < 0.1), 0.1, temp)
        grow = ~shrink & ((par == 0) | (ratio >= 0.75))
        grown = jnp.where(grow, pnorm / 0.5, delta)
        delta = jnp.where(shrink, temp * jnp.minimum(delta, pnorm / 0.1), grown)
        par = jnp.where(shrink, par / temp, jnp.where(grow, 0.5 * par, par))

        accepted = ratio >= 1e-4
        x = jnp.where(accepted, x_trial, st.x)
        f = jnp.where(accepted, f_trial, st.f)
        fnorm_new = jnp.where(accepted, fnorm1, st.fnorm)
        xnorm = jnp.where(accepted, _norm(diag * x_trial), st.xnorm)

        # Convergence tests, then the "tolerance too small" tests; later ones win,
        # exactly in lmder's order.
        ftol_met = (jnp.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1)
        xtol_met = delta <= xtol * xnorm
        status = st.status
        status = jnp.where(ftol_met, _code(Status.FTOL), status)
        status = jnp.where(xtol_met, _code(Status.XTOL), status)
        status = jnp.where(ftol_met & xtol_met, _code(Status.FTOL_AND_XTOL), status)
        stop = status != int(Status.RUNNING)
        small = st.status
        small = jnp.where(nfev >= max_nfev, _code(Status.MAX_NFEV), small)
        eps_met = (jnp.abs(actred) <= eps) & (prered <= eps) & (0.5 * ratio <= 1)
        small = jnp.where(eps_met, _code(Status.FTOL_TOO_SMALL), small)
        small = jnp.where(delta <= eps * xnorm, _code(Status.XTOL_TOO_SMALL), small)
        small = jnp.where(st.gnorm <= eps, _code(Status.GTOL_TOO_SMALL), small)
        status = jnp.where(stop, status, small)

        return st._replace(
            x=x,
            f=f,
            fnorm=fnorm_new,
            delta=delta,
            par=par,
            xnorm=xnorm,
            nfev=nfev,
            n_iter=st.n_iter + accepted.astype(jnp.int32),
            status=status,
            jac_current=st.jac_current & ~accepted,
        )

    # The gtol test may have stopped the fit: then no step is tried. (J stays out of
    # the cond, which under vmap selects its outputs lane by lane.)
    tried = lax.cond(_running(st), trial, lambda st: st, st._replace(jac=None))
    return tried._replace(jac=st.jac)


def lm_finalize(jacobian, st: LMState) -> LMState:
    """The Jacobian at the returned point (for Solution.jac, grad and covariances):
    the loop's own when it belongs to the final x, else evaluated (and counted).
    A strategy whose linearization carries no J (``st.jac`` None) has it formed
    here, counted only if x moved since the last linearization; a matrix-free one
    forms none (``st.jac`` stays None)."""
    if not as_strategy(jacobian).forms_jacobian:
        return st
    if st.jac is None:
        evaluated = with_jacobian(jacobian, st)
        njev = jnp.where(st.jac_current, st.njev, evaluated.njev)
        return evaluated._replace(njev=njev)
    return lax.cond(st.jac_current, lambda st: st, partial(with_jacobian, jacobian), st)


def run_lm(
    flat_fun: Callable[[jax.Array], jax.Array],
    jacobian,
    x0: jax.Array,
    options: SolveOptions,
    monitor: Callable | None = None,
) -> LMState:
    """Minimise ``0.5 * ||flat_fun(x)||^2`` from ``x0`` (n,); return the final state.
    ``monitor``: see `lm_iteration`.

    ``jacobian`` is a Jacobian strategy or an ``x -> J`` function (see
    `jaxlsq.core.linearization`). `lm_init`, a ``while_loop`` of `lm_iteration`
    while the status is ``RUNNING``, then `lm_finalize`.
    """
    strategy = as_strategy(jacobian)
    state = lm_init(flat_fun, x0, options)
    if not strategy.carries_jacobian:  # no J in the loop state
        state = state._replace(jac=None)

    def outer_body(st: LMState) -> LMState:
        return lm_iteration(flat_fun, strategy, options, st, monitor)

    final = lax.while_loop(_running, outer_body, state)
    done = lm_finalize(strategy, final)
    check_out(monitor, done, ~final.jac_current & (final.n_iter > 0))
    return done
