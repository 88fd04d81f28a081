"""Weights: how ``sigma`` turns ``model(x, p) - y`` into the residuals a fit minimises.

scipy ``curve_fit``'s rules: no sigma (unit weights); a scalar or ``y``-shaped
sigma (standard deviations: ``r / sigma``); an (m, m) covariance matrix (``L^-1 r``
with ``L`` its lower Cholesky factor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..core.validate import check_concrete
from .poisson import poisson_deviance_residuals


@dataclasses.dataclass(frozen=True)
class Residuals:
    """Weighted residuals ``W (model(x, params) - y)`` in the calling convention of
    `jaxlsq.solve`: ``residuals(params, x, y, transform)``. Equal (and hashing
    alike) per ``(model, kind, unpack)``, so compiled loops are reused across calls.

    ``kind``: `sigma_kind`'s None, ``"1d"`` or ``"2d"``, or ``"poisson"`` (no
    weights: the Poisson deviance residuals of `jaxlsq.fitting.poisson`).

    ``unpack``: the model is called ``model(x, *params)`` (scipy ``curve_fit``'s
    convention) instead of ``model(x, params)`` (`jaxlsq.fit`'s). Works on JAX
    arrays (traced) and on numpy arrays (the scipy shim's host path) alike.

    ``points_last``: the model takes ``x`` of shape (k, M), its points last (as
    scipy's ``curve_fit`` does for several independent variables), and ``x`` is
    held as (M, k): the points lead, so the chunked Jacobian can split ``x``
    into blocks of points; each call hands the model ``moveaxis(x, 0, -1)``.
    """

    model: Callable
    kind: str | None
    unpack: bool = False
    points_last: bool = False

    @property
    def _jaxlsq_origin(self):  # what the shims' warnings name
        return self.model

    def __call__(self, params, x, y, transform):
        xp = jnp if isinstance(y, jax.Array) else np
        x = points_last(x) if self.points_last else x
        out = self.model(x, *params) if self.unpack else self.model(x, params)
        out = xp.asarray(out).astype(y.dtype)
        if self.kind == "poisson":  # counts: deviance residuals (maximum likelihood)
            return poisson_deviance_residuals(out, y)
        return whiten(out - y, transform, self.kind)


@dataclasses.dataclass(frozen=True)
class WeightedJacobian:
    """``W jac(x, *params)``: the Jacobian of `Residuals` (``unpack`` convention)
    from the user's model Jacobian ``jac`` (m, n)."""

    jac: Callable
    kind: str | None
    points_last: bool = False  # as `Residuals`'

    @property
    def _jaxlsq_origin(self):
        return self.jac

    def __call__(self, params, x, y, transform):
        out = self.jac(points_last(x) if self.points_last else x, *params)
        out = jnp.asarray(out) if isinstance(out, jax.Array) else np.asarray(out)
        return whiten(out, transform, self.kind, jacobian=True)


def points_last(x):
    """``x`` held points first, (M, k), as the model takes it: (k, M)."""
    return (jnp if isinstance(x, jax.Array) else np).moveaxis(x, 0, -1)


def whiten(r, transform, kind, *, jacobian: bool = False):
    """``W r``: ``r`` itself, ``r * (1 / sigma)`` or ``L^-1 r`` (flattened).

    ``transform`` is None, ``1 / sigma`` (scipy's: a product, like ``curve_fit``)
    broadcast to ``r``'s shape, or the lower Cholesky factor ``L`` (m, m) of the
    data covariance. ``jacobian=True``: ``r`` is a Jacobian (m, n) whose rows are
    weighted. numpy in, numpy out (the host path); JAX arrays otherwise.
    """
    if kind is None:
        return r
    traced = isinstance(r, jax.Array) or isinstance(transform, jax.Array)
    if kind == "1d":
        if jacobian and r.ndim == 2 and transform.ndim == 1:
            return transform[:, None] * r
        return transform * r
    if traced:
        rhs = r if jacobian else jnp.ravel(r)
        return jax.scipy.linalg.solve_triangular(transform, rhs, lower=True)
    return np.linalg.solve(transform, np.asarray(r) if jacobian else np.ravel(r))


def sigma_kind(sigma, y) -> str | None:
    """How ``sigma`` weights ``y``: None (no sigma), ``"1d"`` (standard deviations:
    a scalar or ``y``'s shape) or ``"2d"`` (an (m, m) covariance matrix). Looks at
    dtypes and shapes only."""
    if sigma is None:
        return None
    s = jnp.asarray(sigma) if not hasattr(sigma, "shape") else sigma
    if not jnp.issubdtype(s.dtype, jnp.number) or jnp.issubdtype(
        s.dtype, jnp.complexfloating
    ):
        raise TypeError(f"sigma must be real numbers, got dtype {s.dtype}")
    m = int(np.prod(y.shape))
    if s.ndim == 0 or tuple(s.shape) == tuple(y.shape):
        return "1d"
    if tuple(s.shape) == (m, m):
        return "2d"
    raise ValueError(
        f"sigma must be a scalar, an array of y's shape {tuple(y.shape)}, or an "
        f"({m}, {m}) covariance matrix; got shape {tuple(s.shape)}"
    )


def sigma_transform(sigma, y, dtype):
    """``(kind, transform)``: None, ``("1d", 1 / sigma)`` (broadcast to ``y``'s
    shape) or ``("2d", cholesky(sigma))``; see `whiten`."""
    kind = sigma_kind(sigma, y)
    if kind is None:
        return None, None
    s = jnp.asarray(sigma).astype(dtype)
    if kind == "1d":
        check_concrete(
            s, "sigma", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
        )
        check_concrete(s, "sigma", lambda v: np.all(v > 0), "must be > 0")
        return "1d", jnp.broadcast_to(1 / s, y.shape)
    check_concrete(
        s, "sigma", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
    )
    chol = jnp.linalg.cholesky(s)
    check_concrete(
        chol,
        "sigma (a covariance matrix)",
        lambda v: np.all(np.isfinite(v)),
        "must be symmetric positive definite (its Cholesky factorisation failed)",
    )
    return "2d", chol
