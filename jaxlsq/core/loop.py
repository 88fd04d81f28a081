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

import jax
import jax.numpy as jnp
from jax import lax

from .factorize import factorize
from .krylov import cg_trial
from .linearization import as_strategy, model_terms
from .monitor import check_in, check_out
from .options import SolveOptions
from .scaling import jacobian_unit, residual_unit
from .scaling import scaled_norm as _norm
from .state import (
    LMState,
    box_of,
    is_running,
    lm_init,
    positive_or_one,
    scalar_options,
    status_code,
    with_jacobian,
    with_linearization,
)
from .status import Status
from .steps import scaled_jacobian_norm, trust_region_par


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
    ftol, xtol, gtol, factor, max_nfev = scalar_options(options, dtype)
    user_diag = options.diag
    lower, upper = box_of(options, dtype)
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
    unit = residual_unit(st.fnorm)  # once: the strategy's f / u and the steps below
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
        diag = jnp.where(first, positive_or_one(acnorm), st.diag)
        diag = jnp.maximum(diag, acnorm)
    else:  # mode 2: the user's fixed scaling
        diag = jnp.asarray(user_diag, dtype)

    def first_radius(diag: jax.Array):
        xnorm0 = _norm(diag * st.x)
        return xnorm0, jnp.where(xnorm0 > 0, factor * xnorm0, factor)

    # Only the first iteration reads ||D x||: a cond, not a where, so that a single
    # fit skips the norm on every later iteration (under vmap both are computed).
    xnorm, delta = lax.cond(first, first_radius, lambda _: (st.xnorm, st.delta), diag)
    st = st._replace(xnorm=xnorm, delta=delta)
    # gtol test: largest |cos| between f and a column of J (0 when f == 0), from
    # J^T (f / u) and ||f|| / u: no underflow where J^T f would have one.
    fnorm_safe = positive_or_one(st.fnorm / unit)
    cosines = jnp.abs(jtf_unit) / (positive_or_one(acnorm) * fnorm_safe)
    cosines = jnp.where(acnorm > 0, cosines, 0)
    gnorm = jnp.where(st.fnorm > 0, jnp.max(cosines), 0)
    status = jnp.where(
        is_running(st) & (gnorm <= gtol), status_code(Status.GTOL), st.status
    )
    # The step system is of Js / s (s = jac_unit, exact, 1 in range): in its units
    # z' = s z, delta' = s delta and par' = par / s^2 (st.par is carried in them).
    s = jacobian_unit(acnorm, diag)
    diag_s = diag * s
    matrix_free = lin.operator is not None  # CG on products: no factorisation
    if not matrix_free:
        system = factorize(lin, diag_s, options.linear_solver, is_running(st), unit)
    par0 = st.par * (st.jac_unit / s) ** 2
    st = st._replace(diag=diag, gnorm=gnorm, status=status, par=par0, jac_unit=s)

    def trial(st: LMState) -> LMState:
        """One damped step from ``st.x``: accepted or rejected, then lmder's tests."""
        fnorm = positive_or_one(st.fnorm)
        if matrix_free:  # CG's step, and the linear model's own value there
            par, step = cg_trial(lin, diag, st.f / unit, st.delta / unit, options)
            step = step * unit
            x_trial = st.x + step
            pnorm = _norm(diag * step)
            prered, dirder = model_terms(lin, step / unit, st.f / unit, fnorm / unit)
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

            def projected_terms(_):  # the model at the step actually taken
                actual = x_trial - st.x
                pre, dir_ = model_terms(lin, actual / unit, st.f / unit, fnorm / unit)
                return _norm(diag * actual), pre, dir_

            # (a cond: a single fit evaluates the model only for a clipped step)
            pnorm, prered, dirder = lax.cond(
                clipped, projected_terms, lambda _: (pnorm, prered, dirder), None
            )
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
        status = jnp.where(ftol_met, status_code(Status.FTOL), status)
        status = jnp.where(xtol_met, status_code(Status.XTOL), status)
        status = jnp.where(
            ftol_met & xtol_met, status_code(Status.FTOL_AND_XTOL), status
        )
        stop = status != int(Status.RUNNING)
        small = st.status
        small = jnp.where(nfev >= max_nfev, status_code(Status.MAX_NFEV), small)
        eps_met = (jnp.abs(actred) <= eps) & (prered <= eps) & (0.5 * ratio <= 1)
        small = jnp.where(eps_met, status_code(Status.FTOL_TOO_SMALL), small)
        small = jnp.where(
            delta <= eps * xnorm, status_code(Status.XTOL_TOO_SMALL), small
        )
        small = jnp.where(st.gnorm <= eps, status_code(Status.GTOL_TOO_SMALL), small)
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
    tried = lax.cond(is_running(st), trial, lambda st: st, st._replace(jac=None))
    return tried._replace(jac=st.jac)


def lm_finalize(jacobian, st: LMState, keep_jac: bool = True) -> LMState:
    """The Jacobian at the returned point (for Solution.jac, grad and covariances):
    the loop's own when it belongs to the final x, else evaluated (and counted).
    A strategy whose linearization carries no J (``st.jac`` None) has it formed
    here, counted only if x moved since the last linearization; a matrix-free one
    forms none (``st.jac`` stays None), and none is formed without ``keep_jac``
    (the caller returns no J: one fit of 10^7 points then never holds (m, n))."""
    if not as_strategy(jacobian).forms_jacobian or not keep_jac:
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

    final = lax.while_loop(is_running, outer_body, state)
    done = lm_finalize(strategy, final, options.keep_jac)
    check_out(monitor, done, ~final.jac_current & (final.n_iter > 0), flat_fun)
    return done
