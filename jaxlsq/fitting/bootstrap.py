"""Bootstrap errors and percentile intervals of a fit: ``B`` refits in one vmap.

Two resampling schemes (Efron & Tibshirani, "An Introduction to the Bootstrap",
ch. 9):

* ``"residual"``: new data ``y* = best_fit + sigma * r*``, ``r*`` drawn with
  replacement from the fit's standardised residuals ``(y - best_fit) / sigma``
  (``sigma = 1`` unweighted). For ``estimator="poisson"`` the residuals of counts
  are not exchangeable, so ``y*`` is drawn from ``Poisson(best_fit)`` instead (the
  parametric bootstrap).
* ``"pairs"``: the data points ``(x_i, y_i, sigma_i)`` themselves, drawn with
  replacement (robust to a wrong error model; ``x`` must be an array whose first
  axis runs over the data points, like ``y``'s).

Every resample is refitted from the fit's parameters with the fit's options, all
``B`` in one ``jax.vmap(fit)``; each refit keeps its own status (failed refits
are left out of the statistics and counted).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .bands import level_probability
from .checks import unflatten
from .fit import fit
from .result import flat_params

KINDS = ("residual", "pairs")


class Bootstrap(NamedTuple):
    """What `bootstrap` returns.

    ``params``: pytree like the fit's, each leaf with a leading (B,) axis;
    ``success``: (B,) bool; ``indices``: (B, m) int, the data points each resample
    drew (``y*``'s residuals for ``"residual"``, the points for ``"pairs"``; for
    the Poisson parametric bootstrap, None) -- replaying them reproduces every
    resample; ``stderr``: pytree, the standard deviation of the successful
    refits; ``intervals``: ``name -> [(prob, value), ...]`` as `conf_interval`'s
    (percentiles of the successful refits, the fit's value in the middle). For a
    batch of N fits every field has a leading (N,) axis more: (N, B, ...), (N,
    B), (N, B, m), stderr leaves (N, ...), interval values (N,).
    """

    params: Any
    success: jax.Array
    indices: jax.Array | None
    stderr: Any
    intervals: dict


def bootstrap(
    result,
    x,
    y,
    *,
    n_samples: int = 1000,
    kind: str = "residual",
    key=None,
    sigmas=(1, 2),
    sigma: Any = None,
    **fit_options: Any,
) -> Bootstrap:
    """Bootstrap a fit, or every fit of a batch: resample, refit ``n_samples`` times
    in one vmapped call.

    Parameters
    ----------
    result : FitResult
        One fit (`jaxlsq.fit`), or a batch with one leading axis (N,) (`fit_batch`
        over the curves ``y``, ``x`` shared).
    x, y : the fit's data (``y`` flat (m,) or any shape; for ``"pairs"`` ``x`` an
        array of shape (m, ...) and ``y`` (m,)). A batch: ``y`` with the leading
        axis (N, ...), ``x`` shared.
    n_samples : int, default 1000
        Resamples B (per fit).
    kind : {"residual", "pairs"}, default "residual"
    key : jax.random key, optional
        Default ``jax.random.key(0)`` (reproducible). A batch's fit ``i`` uses
        ``jax.random.split(key, N)[i]``: the resamples ``fits[i].bootstrap(...,
        key=that)`` would draw.
    sigmas : sequence of float, default (1, 2)
        Percentile interval levels (``>= 1`` standard deviations, ``< 1`` a
        probability).
    sigma, **fit_options
        The fit's ``sigma`` (a batch: numpy broadcasting against ``y`` (N, m):
        ``(m,)`` shared, ``(N, 1)``/``(N, m)`` per curve, ``(N,)`` per curve when
        ``N != m``),
        ``bounds``, ``loss``, solve options... (``fixed``, ``estimator`` and
        ``absolute_sigma`` come from ``result``).

    Returns
    -------
    Bootstrap
        For a batch every field gains the leading axis (N,) after none: ``params``
        leaves (N, B, ...), ``success`` (N, B), ``indices`` (N, B, m), ``stderr``
        leaves (N, ...), interval values (N,) (NaN for a fit without two
        successful refits).
    """
    if len(result.batch_shape) > 1:
        raise ValueError(f"bootstrap takes one batch axis, got {result.batch_shape}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    key = jax.random.key(0) if key is None else key
    y = jnp.asarray(y, result.best_fit.dtype)
    options = dict(fit_options, estimator=result.estimator)
    options["absolute_sigma"] = result.absolute_sigma
    if any(result.fixed):  # the fit's own mask, as a pytree like its params
        leaves, treedef = jax.tree_util.tree_flatten(result.params)
        shapes = tuple(np.shape(leaf) for leaf in leaves)
        if result.batch_shape:
            shapes = tuple(s[1:] for s in shapes)
        options["fixed"] = unflatten(np.asarray(result.fixed), treedef, shapes)
    args = (int(n_samples), kind, options)
    if not result.batch_shape:
        fits, indices = _resample_and_refit(result, x, y, sigma, key, *args)
        return _summarise(result, fits, indices, sigmas)
    n = result.batch_shape[0]
    if y.shape[:1] != (n,):
        raise ValueError(
            f"y must have the batch's leading axis ({n},), got shape {y.shape}"
        )
    batched_sigma = _sigma_is_batched(sigma, y)
    if batched_sigma and np.ndim(sigma) == y.ndim:  # (N, 1): each curve's (m,)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape)
    fits, indices = jax.vmap(
        lambda res, y_i, s_i, k: _resample_and_refit(res, x, y_i, s_i, k, *args),
        in_axes=(0, 0, 0 if batched_sigma else None, 0),
    )(result, y, sigma, jax.random.split(key, n))
    return _summarise(result, fits, indices, sigmas)


def _sigma_is_batched(sigma, y) -> bool:
    """Whether a batch's ``sigma`` has the batch axis: numpy broadcasting against
    ``y`` (N, ...): ``(N, 1)`` or ``(N, m)`` per curve, ``()`` or ``(m,)`` shared.
    ``(N,)`` with ``N != m`` (one sigma per curve, as ``fit_batch`` takes it with
    ``in_axes``) is read as per curve; with ``N == m`` it is ambiguous: refused."""
    if sigma is None:
        return False
    shape, (n, *point) = np.shape(sigma), y.shape
    if len(shape) == len(y.shape) and shape[0] == n:
        return True
    if len(shape) == 1 and shape[0] == n and len(point) == 1:
        if n == point[0]:
            raise ValueError(
                f"sigma of shape {shape} is ambiguous for {n} curves of {n} points: "
                "give sigma[:, None] (one per curve) or sigma[None, :] (one per point)"
            )
        return True
    try:
        np.broadcast_shapes(shape, tuple(point))
    except ValueError:
        raise ValueError(
            f"sigma of shape {shape} fits neither the batch {y.shape} nor one curve "
            f"{tuple(point)}"
        ) from None
    return False


def _resample_and_refit(result, x, y, sigma, key, n_samples, kind, options):
    """``(fits, indices)`` of one fit: ``n_samples`` resamples of ``(x, y, sigma)``
    refitted in one ``vmap`` (see `bootstrap`)."""
    best_fit = jnp.reshape(result.best_fit, y.shape)
    m = y.size

    def refit(x_b, y_b, sigma_b):
        return fit(result.model, x_b, y_b, result.params, sigma=sigma_b, **options)

    if kind == "residual" and result.estimator == "poisson":
        samples = jax.random.poisson(key, best_fit, (n_samples, *y.shape))
        return jax.vmap(lambda yb: refit(x, yb.astype(y.dtype), None))(samples), None
    if kind == "residual":
        if result.sigma_kind == "2d":
            raise ValueError(
                "kind='residual' takes a scalar or per-point sigma, not a covariance"
            )
        scale = jnp.ones_like(y) if sigma is None else jnp.broadcast_to(sigma, y.shape)
        standard = ((y - best_fit) / scale).reshape(-1)
        indices = jax.random.randint(key, (n_samples, m), 0, m)
        samples = best_fit + scale * standard[indices].reshape((n_samples, *y.shape))
        return jax.vmap(lambda yb: refit(x, yb, sigma))(samples), indices
    x = jnp.asarray(x)
    if y.ndim != 1 or x.shape[:1] != (m,):
        raise ValueError(
            "kind='pairs' needs y of shape (m,) and x of shape (m, ...) (the data "
            f"points along the first axis), got y {y.shape} and x {x.shape}"
        )
    indices = jax.random.randint(key, (n_samples, m), 0, m)
    sig = None if sigma is None else jnp.broadcast_to(jnp.asarray(sigma), (m,))
    fits = jax.vmap(
        lambda idx: refit(x[idx], y[idx], None if sig is None else sig[idx])
    )(indices)
    return fits, indices


def _summarise(result, fits, indices, sigmas) -> Bootstrap:
    """The refits' standard deviations and percentile intervals over the sample
    axis (the last of ``fits``' leading axes), successful refits only."""
    ok = np.asarray(fits.success)  # (B,) or (N, B)

    def spread(leaf):  # NaN for a fit without two successful refits
        leaf = np.asarray(leaf)
        mask = ok.reshape(ok.shape + (1,) * (leaf.ndim - ok.ndim))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sd = np.nanstd(np.where(mask, leaf, np.nan), axis=ok.ndim - 1, ddof=1)
        return jnp.asarray(sd, leaf.dtype)

    stderr = jax.tree_util.tree_map(spread, fits.params)
    flat = np.asarray(flat_params(fits))  # (..., B, n)
    flat = np.where(ok[..., None], flat, np.nan)
    best = np.asarray(flat_params(result))  # (..., n)
    probs = [level_probability(s) for s in sigmas]
    intervals = {}
    for j, name in enumerate(result.names):
        if result.fixed[j]:
            continue
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN fits: NaN
            lower = [(p, np.nanpercentile(flat[..., j], 50 * (1 - p), axis=-1))
                     for p in probs[::-1]]  # fmt: skip
            upper = [(p, np.nanpercentile(flat[..., j], 50 * (1 + p), axis=-1))
                     for p in probs]  # fmt: skip
        intervals[name] = lower + [(0.0, best[..., j])] + upper
    return Bootstrap(fits.params, fits.success, indices, stderr, intervals)
