"""The Levenberg-Marquardt loop: MINPACK's lmder, written as one ``lax.while_loop``.

Reference: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory"
(1978), and MINPACK's ``lmder.f``. The trust-region radius ``delta``, the scaling
``diag``, the damping update and the ``ftol``/``xtol``/``gtol`` tests follow lmder line
by line, so a status code here means what scipy's ``ier`` means.

Shape of the loop: the outer ``while_loop`` runs one iteration per Jacobian; inside it a
second ``while_loop`` tries damped steps until one is accepted (or a test stops the
fit). The Jacobian is factorised once per outer iteration and every trial step reuses
the factorisation, so a rejected step costs one residual evaluation and O(n^2) work.

Two deviations from lmder, both about non-finite numbers:
* a trial point with NaN/inf residuals is a failed step (the region shrinks by 10x);
  MINPACK compares NaNs and can stop "successfully";
* NaN/inf residuals or Jacobian at an accepted point stop the fit with
  ``Status.NONFINITE`` instead of a meaningless convergence code.

Under ``jax.vmap`` both loops run until the slowest lane stops; JAX's batching of
``while_loop`` keeps the carry of a finished lane unchanged, so each lane's answer is
that of the same fit solved alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._linalg import factorize, trust_region_par
from ._solution import Status


class LMOptions(NamedTuple):
    """Dynamic (traced) options of the loop; see `jaxlsq.solve` for their meaning.

    All scalars have shape (); ``diag`` is (n,) or None (automatic scaling).
    """

    ftol: jax.Array
    xtol: jax.Array
    gtol: jax.Array
    factor: jax.Array
    max_nfev: jax.Array
    diag: jax.Array | None


class LMState(NamedTuple):
    """Carry of the outer loop. ``f`` and ``jac`` always belong to ``x``.

    Shapes: x (n,), f (m,), jac (m, n), diag (n,); everything else ().
    """

    x: jax.Array
    f: jax.Array
    fnorm: jax.Array
    jac: jax.Array
    diag: jax.Array
    delta: jax.Array
    par: jax.Array
    xnorm: jax.Array
    gnorm: jax.Array
    nfev: jax.Array
    njev: jax.Array
    n_iter: jax.Array
    status: jax.Array


def _norm(v: jax.Array) -> jax.Array:
    """Euclidean norm that is +inf (never NaN) when ``v`` holds a non-finite entry."""
    return jnp.where(jnp.all(jnp.isfinite(v)), jnp.linalg.norm(v), jnp.inf)


def _positive_or_one(v: jax.Array) -> jax.Array:
    """``v`` with its non-positive entries replaced by 1 (a safe divisor)."""
    return jnp.where(v > 0, v, jnp.ones_like(v))


def _code(status: Status) -> jax.Array:
    return jnp.asarray(int(status), jnp.int32)


def run_lm(
    flat_fun: Callable[[jax.Array], jax.Array],
    jac_fun: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    options: LMOptions,
    linear_solver: str,
) -> LMState:
    """Minimise ``0.5 * ||flat_fun(x)||^2`` from ``x0`` (n,); return the final state."""
    dtype = x0.dtype
    eps = jnp.finfo(dtype).eps
    ftol, xtol, gtol, factor = (jnp.asarray(o, dtype) for o in options[:4])
    max_nfev = jnp.asarray(options.max_nfev, jnp.int32)
    user_diag = options.diag

    # --- initial point: one residual and one Jacobian evaluation -------------------
    f0 = flat_fun(x0)
    jac0 = jac_fun(x0)
    options_ok = (ftol >= 0) & (xtol >= 0) & (gtol >= 0) & (factor > 0) & (max_nfev > 0)
    if user_diag is not None:
        options_ok &= jnp.all(user_diag > 0)
    input_ok = options_ok & jnp.all(jnp.isfinite(x0))
    finite0 = jnp.all(jnp.isfinite(f0)) & jnp.all(jnp.isfinite(jac0))
    status0 = jnp.where(
        input_ok,
        jnp.where(finite0, _code(Status.RUNNING), _code(Status.NONFINITE)),
        _code(Status.IMPROPER_INPUT),
    )
    acnorm0 = jnp.linalg.norm(jac0, axis=0)
    if user_diag is None:  # MINPACK mode 1: column norms, zero columns scaled by 1
        diag0 = _positive_or_one(acnorm0)
    else:  # mode 2: the user's fixed scaling
        diag0 = jnp.asarray(user_diag, dtype)
    xnorm0 = jnp.linalg.norm(diag0 * x0)
    delta0 = jnp.where(xnorm0 > 0, factor * xnorm0, factor)

    state = LMState(
        x=x0,
        f=f0,
        fnorm=_norm(f0),
        jac=jac0,
        diag=diag0,
        delta=delta0,
        par=jnp.zeros((), dtype),
        xnorm=xnorm0,
        gnorm=jnp.zeros((), dtype),
        nfev=jnp.ones((), jnp.int32),
        njev=jnp.ones((), jnp.int32),
        n_iter=jnp.zeros((), jnp.int32),
        status=status0,
    )

    def running(st: LMState) -> jax.Array:
        return st.status == int(Status.RUNNING)

    def outer_body(st: LMState) -> LMState:
        acnorm = jnp.linalg.norm(st.jac, axis=0)
        # gtol test: largest |cos| between f and a column of J (0 when f == 0).
        fnorm_safe = _positive_or_one(st.fnorm)
        cosines = jnp.abs(st.jac.T @ st.f) / (_positive_or_one(acnorm) * fnorm_safe)
        cosines = jnp.where(acnorm > 0, cosines, 0)
        gnorm = jnp.where(st.fnorm > 0, jnp.max(cosines), 0)
        status = jnp.where(gnorm <= gtol, _code(Status.GTOL), st.status)
        diag = st.diag if user_diag is not None else jnp.maximum(st.diag, acnorm)
        spec = factorize(st.jac / diag, st.f, linear_solver)
        st = st._replace(diag=diag, gnorm=gnorm, status=status)

        def trial_running(carry):
            st, accepted = carry
            return running(st) & ~accepted

        def trial_body(carry):
            st, _ = carry
            par, z = trust_region_par(spec, st.delta, st.par)
            step = z / diag
            pnorm = jnp.linalg.norm(z)
            # Before the first accepted step the radius never exceeds the step tried.
            delta = jnp.where(st.n_iter == 0, jnp.minimum(st.delta, pnorm), st.delta)
            x_trial = st.x + step
            f_trial = flat_fun(x_trial)
            fnorm1 = _norm(f_trial)
            nfev = st.nfev + 1

            # Actual and predicted relative reductions, directional derivative.
            fnorm = _positive_or_one(st.fnorm)
            actred = jnp.where(0.1 * fnorm1 < st.fnorm, 1 - (fnorm1 / fnorm) ** 2, -1)
            temp1 = jnp.linalg.norm(st.jac @ step) / fnorm
            temp2 = jnp.sqrt(par) * pnorm / fnorm
            prered = temp1**2 + 2 * temp2**2
            dirder = -(temp1**2 + temp2**2)
            ratio = jnp.where(
                prered != 0, actred / jnp.where(prered != 0, prered, 1), 0
            )

            # Radius update (lmder): shrink on a poor step, double on a good one.
            shrink = ratio <= 0.25
            denom = dirder + 0.5 * actred
            temp = jnp.where(
                actred >= 0, 0.5, 0.5 * dirder / jnp.where(denom != 0, denom, -1)
            )
            temp = jnp.where((0.1 * fnorm1 >= st.fnorm) | (temp < 0.1), 0.1, temp)
            grow = ~shrink & ((par == 0) | (ratio >= 0.75))
            delta = jnp.where(
                shrink,
                temp * jnp.minimum(delta, pnorm / 0.1),
                jnp.where(grow, pnorm / 0.5, delta),
            )
            par = jnp.where(shrink, par / temp, jnp.where(grow, 0.5 * par, par))

            accepted = ratio >= 1e-4
            x = jnp.where(accepted, x_trial, st.x)
            f = jnp.where(accepted, f_trial, st.f)
            fnorm_new = jnp.where(accepted, fnorm1, st.fnorm)
            xnorm = jnp.where(accepted, jnp.linalg.norm(diag * x_trial), st.xnorm)

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

            st = st._replace(
                x=x,
                f=f,
                fnorm=fnorm_new,
                delta=delta,
                par=par,
                xnorm=xnorm,
                nfev=nfev,
                n_iter=st.n_iter + accepted.astype(jnp.int32),
                status=status,
            )
            return st, accepted

        st, accepted = lax.while_loop(
            trial_running, trial_body, (st, jnp.zeros((), bool))
        )

        # One Jacobian per accepted step, at the new point (also needed at the end).
        def new_jacobian(st):
            jac = jac_fun(st.x)
            finite = jnp.all(jnp.isfinite(jac))
            status = jnp.where(finite, st.status, _code(Status.NONFINITE))
            return st._replace(jac=jac, njev=st.njev + 1, status=status)

        return lax.cond(accepted, new_jacobian, lambda st: st, st)

    return lax.while_loop(running, outer_body, state)
