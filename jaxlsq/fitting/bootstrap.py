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
    (percentiles of the successful refits, the fit's value in the middle).
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
    """Bootstrap a fit: resample, refit ``n_samples`` times in one vmapped call.

    Parameters
    ----------
    result : FitResult
        One fit (`jaxlsq.fit`).
    x, y : the fit's data (``y`` flat (m,) or any shape; for ``"pairs"`` ``x`` an
        array of shape (m, ...) and ``y`` (m,)).
    n_samples : int, default 1000
        Resamples B.
    kind : {"residual", "pairs"}, default "residual"
    key : jax.random key, optional
        Default ``jax.random.key(0)`` (reproducible).
    sigmas : sequence of float, default (1, 2)
        Percentile interval levels (``>= 1`` standard deviations, ``< 1`` a
        probability).
    sigma, **fit_options
        The fit's ``sigma``, ``bounds``, ``loss``, solve options... (``fixed``,
        ``estimator`` and ``absolute_sigma`` come from ``result``).

    Returns
    -------
    Bootstrap
    """
    if result.batch_shape:
        raise ValueError("bootstrap takes one fit (index a batch: fits[i])")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    key = jax.random.key(0) if key is None else key
    y = jnp.asarray(y, result.best_fit.dtype)
    best_fit = jnp.reshape(result.best_fit, y.shape)
    m = y.size
    options = dict(fit_options, estimator=result.estimator)
    options["absolute_sigma"] = result.absolute_sigma
    if any(result.fixed):  # the fit's own mask, as a pytree like its params
        leaves, treedef = jax.tree_util.tree_flatten(result.params)
        shapes = tuple(np.shape(leaf) for leaf in leaves)
        options["fixed"] = unflatten(np.asarray(result.fixed), treedef, shapes)

    def refit(x_b, y_b, sigma_b):
        return fit(result.model, x_b, y_b, result.params, sigma=sigma_b, **options)

    indices = None
    if kind == "residual" and result.estimator == "poisson":
        samples = jax.random.poisson(key, best_fit, (n_samples, *y.shape))
        fits = jax.vmap(lambda yb: refit(x, yb.astype(y.dtype), None))(samples)
    elif kind == "residual":
        if result.sigma_kind == "2d":
            raise ValueError(
                "kind='residual' takes a scalar or per-point sigma, not a covariance"
            )
        scale = jnp.ones_like(y) if sigma is None else jnp.broadcast_to(sigma, y.shape)
        standard = ((y - best_fit) / scale).reshape(-1)
        indices = jax.random.randint(key, (n_samples, m), 0, m)
        samples = best_fit + scale * standard[indices].reshape((n_samples, *y.shape))
        fits = jax.vmap(lambda yb: refit(x, yb, sigma))(samples)
    else:
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
    return _summarise(result, fits, indices, sigmas)


def _summarise(result, fits, indices, sigmas) -> Bootstrap:
    ok = np.asarray(fits.success)
    stderr = jax.tree_util.tree_map(
        lambda leaf: jnp.std(jnp.asarray(leaf)[ok], axis=0, ddof=1), fits.params
    )
    flat = np.asarray(flat_params(fits))[ok]
    best = np.asarray(flat_params(result))
    probs = [level_probability(s) for s in sigmas]
    intervals = {}
    for j, name in enumerate(result.names):
        if result.fixed[j]:
            continue
        lower = [(p, np.percentile(flat[:, j], 50 * (1 - p))) for p in probs[::-1]]
        upper = [(p, np.percentile(flat[:, j], 50 * (1 + p))) for p in probs]
        intervals[name] = lower + [(0.0, best[j])] + upper
    return Bootstrap(fits.params, fits.success, indices, stderr, intervals)
