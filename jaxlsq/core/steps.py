"""The damped step for a given damping, and MINPACK's lmpar (the damping for a
trust-region radius), from a factorisation `StepSystem` (see
`jaxlsq.core.factorize`).

Every trial step and every Newton iteration on ``par`` costs O(n^2) (O(n^3) for
tiny n by unrolled LDL^T), never a pass over the Jacobian.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .factorize import StepSystem
from .scaling import power_of_two
from .unrolled import ldl, unit_lower_solve, unit_upper_solve

# Moré's lmpar stops after this many Newton iterations on ``par``.
_MAX_PAR_ITERATIONS = 10


def _damped_coefficients(system: StepSystem, par: jax.Array):
    """``(c, q)`` for damping ``par >= 0``: ``c`` (n,) solves ``(M + par I) c = g``
    and ``q = c^T (M + par I)^+ c`` (the derivative term of lmpar's Newton step).

    A zero pivot (a zero row of ``M`` with ``par == 0``) gives ``c = 0`` there: the
    pseudo-inverse solution, since ``g`` is 0 there too.
    """
    par = jnp.asarray(par, system.g.dtype)
    if system.m.ndim == system.g.ndim:
        return _diagonal_coefficients(system.m, system.g, par)
    return _dense_coefficients(system.m, system.g, par)


def _diagonal_coefficients(w, g, par):
    """`_damped_coefficients` for ``M = diag(w)``. The where-guards keep every
    division off zero instead of blending an inf away afterwards (0 * inf is NaN)."""
    denom = w + par
    ok = denom > 0
    safe = jnp.where(ok, denom, 1)
    c = jnp.where(ok, g / safe, 0)
    return c, jnp.sum(jnp.where(ok, c * c / safe, 0))


@jax.custom_batching.custom_vmap
def _dense_coefficients(m, g, par):
    """`_damped_coefficients` for an (n, n) ``M``.

    An (n, n) M that is not batched is diagonal: `_small_system` returns a general
    one only for a batch (its Gram path). So a single fit takes the diagonal formula
    (a much smaller program to compile), and a batch the unrolled LDL^T solve,
    `_ldl_coefficients`; ``custom_vmap`` tells the two apart.
    """
    return _diagonal_coefficients(jnp.diagonal(m), g, par)


@_dense_coefficients.def_vmap
def _dense_coefficients_batched(axis_size, in_batched, m, g, par):
    if not any(in_batched):  # (happens under jvp) one diagonal M: see above
        return _diagonal_coefficients(jnp.diagonal(m), g, par), (False, False)
    axes = tuple(0 if b else None for b in in_batched)
    if in_batched[0]:
        solve = jax.vmap(_ldl_coefficients, in_axes=axes, axis_size=axis_size)
        return solve(m, g, par), (True, True)
    # M shared by every lane: unbatched, hence diagonal (see above).
    solve = jax.vmap(_diagonal_coefficients, in_axes=axes, axis_size=axis_size)
    return solve(jnp.diagonal(m), g, par), (True, True)


def _ldl_coefficients(m, g, par):
    """`_damped_coefficients` for a general symmetric (n, n) ``M`` >= 0, by an
    unrolled LDL^T factorisation of ``M + par I`` (elementwise across a batch)."""
    n = g.shape[-1]
    a = [[m[i, j] for j in range(n)] for i in range(n)]
    for j in range(n):
        a[j][j] = a[j][j] + par
    lower, pivots = ldl(a)
    ok = [d > 0 for d in pivots]
    safe = [jnp.where(o, d, 1) for o, d in zip(ok, pivots, strict=True)]
    # c = L^-T D^-1 L^-1 g, then q = || D^-1/2 L^-1 c ||^2.
    y = unit_lower_solve(lower, [g[i] for i in range(n)])
    y = [jnp.where(o, yi / d, 0) for o, yi, d in zip(ok, y, safe, strict=True)]
    c = unit_upper_solve(lower, y)
    u = unit_lower_solve(lower, c)
    q = sum(jnp.where(o, ui * ui / d, 0) for o, ui, d in zip(ok, u, safe, strict=True))
    return jnp.stack(c), q


def scaled_jacobian_norm(system: StepSystem, z: jax.Array) -> jax.Array:
    """``||Js z||`` for a scaled step ``z`` (n,), in O(n^2) from the factorisation.

    The predicted reduction needs ``||J p|| = ||Js z||``; this avoids another pass
    over the m x n Jacobian for every trial step.
    """
    # z scaled by a power of 2 first (exact): its squares neither underflow nor
    # overflow when the step is tiny or huge.
    scale = power_of_two(jnp.max(jnp.abs(z)))
    y = system.v.T @ (z / scale)
    if system.m.ndim == y.ndim:
        return scale * jnp.sqrt(jnp.sum(system.m * y * y))
    return scale * jnp.sqrt(jnp.maximum(y @ (system.m @ y), 0))


def damped_step(system: StepSystem, par: jax.Array) -> jax.Array:
    """The scaled LM step ``z = D p`` (n,) for damping ``par >= 0``."""
    return -(system.v @ _damped_coefficients(system, par)[0])


def trust_region_par(system: StepSystem, delta: jax.Array, par0: jax.Array):
    """Find ``par`` so that the scaled step length ``||z(par)||`` matches ``delta``.

    Moré's algorithm (MINPACK ``lmpar``): return ``par = 0`` when the Gauss-Newton step
    is inside ``1.1 * delta``; otherwise Newton iterations on
    ``phi(par) = ||z(par)|| - delta``, safeguarded by the bounds ``[parl, paru]``, until
    ``|phi| <= 0.1 delta`` or 10 iterations.

    Parameters
    ----------
    system : StepSystem
        Factorisation of the scaled Jacobian at the current point.
    delta : Array, shape ()
        Trust-region radius (> 0) in the scaled norm.
    par0 : Array, shape ()
        Previous damping, used as the starting guess (as MINPACK does).

    Returns
    -------
    par : Array, shape ()
        The damping parameter (0 for a Gauss-Newton step).
    z : Array, shape (n,)
        The scaled step ``D p`` for that ``par``.
    """
    # The problem is homogeneous: (g, delta) -> (g / s, delta / s) leaves par
    # unchanged and scales the step by 1 / s. With s the power of 2 above delta
    # (exact), the norms and squares below are of order 1 whatever the scale of
    # the problem, and in range the result is bit for bit the unscaled one.
    scale = power_of_two(delta)
    system = system._replace(g=system.g / scale)
    delta = delta / scale
    dtype = system.g.dtype
    dwarf = jnp.finfo(dtype).tiny
    zero = jnp.zeros((), dtype)

    coef0, q0 = _damped_coefficients(system, zero)
    dxnorm0 = jnp.linalg.norm(coef0)
    fp0 = dxnorm0 - delta
    gauss_newton_ok = fp0 <= 0.1 * delta

    # Lower bound: the Newton step from par = 0, defined when Js has full rank.
    m_diag = system.m if system.m.ndim == system.g.ndim else jnp.diagonal(system.m)
    full_rank = jnp.all(m_diag > 0)
    parl0 = jnp.where(full_rank & (q0 > 0), (fp0 / delta) * dxnorm0**2 / q0, zero)
    # Upper bound: ||Js^T f|| / delta.
    gnorm = jnp.linalg.norm(system.g)
    paru0 = gnorm / delta
    paru0 = jnp.where(paru0 == 0, dwarf / jnp.minimum(delta, 0.1), paru0)

    par = jnp.clip(par0, parl0, paru0)
    par = jnp.where(par == 0, gnorm / jnp.where(dxnorm0 > 0, dxnorm0, 1), par)

    def cond(state):
        return ~state[4]

    def body(state):
        par, parl, paru, fp_old, _, it, _ = state
        par = jnp.where(par == 0, jnp.maximum(dwarf, 0.001 * paru), par)
        coef, q = _damped_coefficients(system, par)
        dxnorm = jnp.linalg.norm(coef)
        fp = dxnorm - delta
        done = (
            (jnp.abs(fp) <= 0.1 * delta)
            | ((parl == 0) & (fp <= fp_old) & (fp_old < 0))
            | (it + 1 >= _MAX_PAR_ITERATIONS)
        )
        # Newton correction for the secular equation (Moré 1978, eq. 5.5).
        parc = jnp.where(q > 0, (fp / delta) * dxnorm**2 / jnp.where(q > 0, q, 1), 0)
        parl = jnp.where(fp > 0, jnp.maximum(parl, par), parl)
        paru = jnp.where(fp < 0, jnp.minimum(paru, par), paru)
        new_par = jnp.where(done, par, jnp.maximum(parl, par + parc))
        # Once done, par is left alone, so coef belongs to the returned par.
        return new_par, parl, paru, fp, done, it + 1, coef

    # The carried coef starts as the Gauss-Newton one (par = 0), which is what is
    # returned when that step is short enough (the loop does not run then).
    start = (par, parl0, paru0, fp0, gauss_newton_ok, jnp.zeros((), jnp.int32), coef0)
    par, *_, coef = lax.while_loop(cond, body, start)
    par = jnp.where(gauss_newton_ok, zero, par)
    return par, -(system.v @ coef) * scale
