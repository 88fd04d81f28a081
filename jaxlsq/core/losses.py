"""Robust loss functions, with scipy ``least_squares``' definitions.

scipy minimises ``0.5 * f_scale**2 * sum(rho((f / f_scale)**2))`` for a residual vector
``f``, with

==========  ======================================
``loss``    ``rho(z)``
==========  ======================================
linear      ``z``
soft_l1     ``2 * (sqrt(1 + z) - 1)``
huber       ``z`` if ``z <= 1`` else ``2 * sqrt(z) - 1``
cauchy      ``log(1 + z)``
arctan      ``arctan(z)``
==========  ======================================

jaxlsq minimises *the same function* with the unchanged Levenberg-Marquardt loop, by
handing it the transformed residuals

    f_robust = f * sqrt(rho(z) / z),        z = (f / f_scale)**2,

whose half sum of squares is exactly that cost (``0.5 * f**2 * rho / z = 0.5 *
f_scale**2 * rho``). Same cost, so same minimisers, same reported ``cost`` as scipy;
the Jacobian of ``f_robust`` comes from JAX like any other. ``rho(z) / z`` is smooth and
in ``(0, 1]`` for every loss here; it is written so that neither it nor its derivatives
divide 0 by 0 at ``z = 0`` (series near 0 where the closed form cancels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .compiler import jit

#: Names accepted by ``loss=`` (a callable is accepted too: see `rho_over_z`).
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")

# Below this z, log1p(z)/z and arctan(z)/z are evaluated from their Taylor series: the
# closed forms are exact there, but their derivatives cancel catastrophically. Five
# terms leave a truncation error below z**5 ~ 1e-15, under float64 rounding.
_SERIES_Z = 1e-3


def check_loss(name: str, loss) -> None:
    """Raise ValueError naming ``name`` unless ``loss`` is one of `LOSSES` or a
    callable."""
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"{name} must be one of {LOSSES} or a callable, got {loss!r}")


def rho_over_z(z, loss, xp=jnp):
    """``rho(z) / z`` for ``z >= 0`` (shape of ``z``), equal to 1 at ``z = 0``.

    The one definition of each loss: `rho` is ``z * rho_over_z(z)``, the loop's
    residual transform is ``f * sqrt(rho_over_z(z))``. Written so that neither the
    value nor its derivatives (of any order, under AD) divide 0 by 0 or cancel near
    ``z = 0``. ``xp`` is the array namespace (``numpy`` for host-side values).

    ``loss`` is one of `LOSSES`, or a callable with scipy's convention:
    ``loss(z)`` (z of shape (m,)) returns an array (3, m) of ``rho(z)``,
    ``rho'(z)`` and ``rho''(z)``, or ``rho(z)`` alone (its derivatives then by
    autodiff: `loss_rows`). In the loop it must be traceable by JAX (the scipy
    shims run a numpy one on the host); the loop's Jacobian comes from AD of the
    rows.
    """
    if callable(loss):
        return _callable_rho_over_z(z, loss, xp)
    if loss == "linear":
        return xp.ones_like(z)
    if loss == "soft_l1":  # 2 (sqrt(1+z) - 1) / z, rationalised: no cancellation
        return 2 / (xp.sqrt(1 + z) + 1)
    if loss == "huber":
        big = z > 1
        z_big = xp.where(big, z, 1)  # keep the untaken branch finite for AD
        return xp.where(big, (2 * xp.sqrt(z_big) - 1) / z_big, 1)
    small = z < _SERIES_Z
    z_big = xp.where(small, 1, z)
    if loss == "cauchy":  # log1p(z) / z = 1 - z/2 + z^2/3 - z^3/4 + z^4/5 ...
        series = 1 - z * (1 / 2 - z * (1 / 3 - z * (1 / 4 - z / 5)))
        return xp.where(small, series, xp.log1p(z_big) / z_big)
    if loss == "arctan":  # arctan(z) / z = 1 - z^2/3 + z^4/5 - z^6/7 ...
        z2 = z * z
        series = 1 - z2 * (1 / 3 - z2 * (1 / 5 - z2 / 7))
        return xp.where(small, series, xp.arctan(z_big) / z_big)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _callable_rho_over_z(z, loss, xp):
    """`rho_over_z` of a user's ``loss``. For ``z <= eps^(1/3)`` its Taylor form
    ``rho'(z) - z rho''(z) / 2`` (error O(z^2) <= eps^(2/3)) replaces ``rho / z``:
    no 0 / 0 at ``z = 0``, and no worse than the error ``eps / z`` a closed-form
    ``rho`` (say ``2 (sqrt(1 + z) - 1)``) has there by cancellation."""
    rows = loss_rows(loss, z, xp)
    small = z <= xp.finfo(rows.dtype).eps ** (1 / 3)
    z_safe = xp.where(small, 1, z)
    return xp.where(small, rows[1] - z * rows[2] / 2, rows[0] / z_safe)


def loss_rows(loss, z, xp=jnp):
    """The rows ``rho, rho', rho''`` (3, m) of a callable ``loss`` at ``z`` (m,): as
    it returns them (scipy's convention), or, for a loss that returns ``rho``
    alone (shape of ``z``; it must then be elementwise and traceable by JAX), its
    derivatives by autodiff."""
    rows = loss(z)
    if xp.shape(rows) != xp.shape(z):
        return xp.asarray(rows)
    return xp.asarray(_rows_by_autodiff(loss, z))


@jit(static_argnums=0)  # (one dispatch, also for host values)
def _rows_by_autodiff(loss, z):
    """``rho, rho', rho''`` (3, m) of an elementwise ``rho`` at ``z`` (m,)."""
    ones = jnp.ones_like(z)

    def d_rho(z_):
        return jax.jvp(loss, (z_,), (ones,))[1]

    rho1, rho2 = jax.jvp(d_rho, (z,), (ones,))
    return jnp.stack([loss(z), rho1, rho2])


def robust_residuals(f: jax.Array, loss, f_scale: jax.Array) -> jax.Array:
    """Transformed residuals whose half sum of squares is the robust cost.

    Parameters
    ----------
    f : Array, shape (m,)
        Raw residuals.
    loss : str or callable
        One of `LOSSES`, or a callable (see `rho_over_z`).
    f_scale : Array, shape ()
        Soft margin between inlier and outlier residuals (units of ``f``), > 0.

    Returns
    -------
    Array, shape (m,)
        ``f * sqrt(rho(z) / z)`` with ``z = (f / f_scale)**2``; ``f`` itself for
        ``"linear"``.
    """
    if loss == "linear":
        return f
    z = (f / f_scale) ** 2
    return f * jnp.sqrt(rho_over_z(z, loss))


def robust_cost(f, loss, f_scale, xp=jnp):
    """scipy's ``0.5 * f_scale**2 * sum(rho((f / f_scale)**2))`` for residuals ``f``
    (m,): the loop's cost and the scipy shims' reported one (``xp=numpy``)."""
    if loss == "linear":
        return 0.5 * xp.sum(f * f)
    return 0.5 * xp.sum(f * f * rho_over_z((f / f_scale) ** 2, loss, xp))


def rho(z, loss, xp=jnp):
    """scipy's ``rho(z)`` and its first two derivatives, ``(rho, rho', rho'')``.

    Parameters
    ----------
    z : array, ``z >= 0``
        Squared scaled residuals ``(f / f_scale)**2``.
    loss : str or callable
        One of `LOSSES`, or a callable: its own three rows (see `rho_over_z`).
    xp : module, default ``jax.numpy``
        The array namespace: ``numpy`` for host-side results (the scipy shims'
        reported values), ``jax.numpy`` inside programs. One implementation, both.

    Notes
    -----
    ``rho`` itself is ``z * rho_over_z(z)`` (the loss's one definition); the
    derivatives are written out here, as scipy writes them.
    """
    if callable(loss):
        rows = loss_rows(loss, z, xp)
        return rows[0], rows[1], rows[2]
    value = z * rho_over_z(z, loss, xp)
    if loss == "linear":
        return value, xp.ones_like(z), xp.zeros_like(z)
    if loss == "soft_l1":
        t = 1 + z
        return value, t**-0.5, -0.5 * t**-1.5
    if loss == "huber":
        big = z > 1
        zb = xp.where(big, z, 1)  # keep the untaken branch finite (and its AD)
        return value, xp.where(big, zb**-0.5, 1), xp.where(big, -0.5 * zb**-1.5, 0)
    if loss == "cauchy":
        t = 1 + z
        return value, 1 / t, -1 / t**2
    t = 1 + z * z  # arctan
    return value, 1 / t, -2 * z / t**2


#: scipy's floor on the robust Jacobian's row weights (float64 eps, any dtype).
_WEIGHT_FLOOR = 2.220446049250313e-16


def loss_scaled_jacobian(jac, f, loss, f_scale, xp=jnp):
    """scipy's ``scale_for_robust_loss_function``: the rows of ``jac`` (m, n)
    scaled by ``sqrt(max(rho' + 2 rho'' f**2 / f_scale**2, eps))`` with rho of
    ``z = (f / f_scale)**2`` (f: (m,) raw residuals). ``J^T J`` of the result is
    the Gauss-Newton Hessian of the robust cost: what scipy's ``least_squares``
    reports as ``jac`` and ``curve_fit`` inverts for ``pcov``."""
    if loss == "linear":
        return jac
    _, rho1, rho2 = rho((f / f_scale) ** 2, loss, xp)
    scale = rho1 + 2 * (rho2 / f_scale**2) * f**2
    scale = xp.where(scale < _WEIGHT_FLOOR, _WEIGHT_FLOOR, scale)
    return jac * xp.sqrt(scale)[:, None]
