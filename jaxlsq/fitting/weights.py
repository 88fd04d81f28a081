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


@dataclasses.dataclass(frozen=True)
class Residuals:
    """Weighted residuals ``W (model(x, params) - y)`` in the calling convention of
    `jaxlsq.solve`. Equal (and hashing alike) per ``(model, kind)``, so compiled
    loops are reused across calls."""

    model: Callable
    kind: str | None

    def __call__(self, params, x, y, transform):
        predicted = jnp.asarray(self.model(x, params)).astype(y.dtype)
        return whiten(predicted - y, transform, self.kind)


def whiten(r, transform, kind):
    """``W r``: ``r`` itself, ``r / sigma``, or ``L^-1 r`` (flattened)."""
    if kind is None:
        return r
    if kind == "1d":
        return r / transform
    return jax.scipy.linalg.solve_triangular(transform, jnp.ravel(r), lower=True)


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
    """``(kind, transform)``: None, ``("1d", sigma)`` or ``("2d", cholesky(sigma))``."""
    kind = sigma_kind(sigma, y)
    if kind is None:
        return None, None
    s = jnp.asarray(sigma).astype(dtype)
    if kind == "1d":
        check_concrete(
            s, "sigma", lambda v: np.all(np.isfinite(v)), "must be finite (NaN/inf)"
        )
        check_concrete(s, "sigma", lambda v: np.all(v > 0), "must be > 0")
        return "1d", jnp.broadcast_to(s, y.shape)
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
