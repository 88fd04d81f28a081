"""`FitResult`: what `fit` and `fit_batch` return (a pytree: jit and vmap pass)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_pytree_node_class

from ..core.status import status_message


@register_pytree_node_class
class FitResult:
    """Result of `fit`: a pytree, so it passes through ``jit`` and ``vmap``.

    Under ``jax.vmap`` every array field gains leading batch axes; `report` then
    summarises the batch. Parameter names, the fixed mask and the counts (``ndata``,
    ``nfree``, ``dof``) are static (part of the tree structure).

    Attributes
    ----------
    params : pytree
        Best-fit parameters, structure and dtype of ``p0``.
    stderr : pytree
        Standard errors ``sqrt(diag(covariance))`` in the structure of ``p0``: 0 for
        fixed parameters, ``inf`` for parameters that cannot be estimated (rank-
        deficient Jacobian, or ``dof <= 0`` without ``absolute_sigma``).
    covariance : Array, shape (n, n)
        Covariance of the flat parameters (``jax.flatten_util.ravel_pytree`` order),
        as ``scipy.optimize.curve_fit``'s ``pcov``. Rows/columns of fixed parameters
        are 0; those of parameters that cannot be estimated are ``inf``.
    correlation : Array, shape (n, n)
        ``cov_ij / sqrt(cov_ii cov_jj)`` (independent of the ``chisq / dof`` scaling).
        Rows/columns of fixed parameters are 0, those of non-estimable ones NaN.
    chisq : Array, shape ()
        ``sum(residuals**2)``, the weighted sum of squares (also with a robust loss);
        the deviance with ``estimator="poisson"``.
    pearson_chisq : Array, shape ()
        Pearson's ``sum((y - mu)^2 / var)``: ``chisq`` itself for least squares,
        ``sum((y - mu)^2 / mu)`` for the Poisson estimator.
    redchi : Array, shape ()
        ``chisq / dof`` (``inf`` when ``dof <= 0``).
    r_squared : Array, shape ()
        ``1 - chisq / chisq_0`` with ``chisq_0`` the weighted sum of squares of the
        best constant model (``y``'s mean, weighted by ``sigma`` as the fit is); NaN
        for constant data. Poisson: the deviance pseudo-R^2 (``chisq_0`` the
        deviance of the constant mean).
    aic, bic : Array, shape ()
        lmfit's definitions: ``m log(chisq / m) + 2 nfree`` and
        ``m log(chisq / m) + log(m) nfree`` (``m = ndata``); for the Poisson
        estimator ``-2 log L + 2 nfree`` and ``-2 log L + log(m) nfree`` with the
        full Poisson log-likelihood ``log L``.
    cost : Array, shape ()
        The minimised cost: ``chisq / 2``, or scipy's robust cost with a ``loss``.
    residuals : Array, shape of ``y``
        Weighted residuals at the solution (``(model - y) / sigma``, or
        ``L^-1 (model - y)`` reshaped for a covariance ``sigma``); the deviance
        residuals for the Poisson estimator.
    best_fit : Array, shape of ``y``
        ``model(x, params)``.
    status, success, nfev, njev, n_iter : Array, shape ()
        From `jaxlsq.solve` (of the best start, with ``starts``).
    active_mask : Array, int32, shape (n,)
        -1 where a parameter ended on its lower bound, +1 on its upper, else 0.
    n_success : Array, int32, shape ()
        How many of the ``n_starts`` fits succeeded.
    degeneracy : Array, int32, shape ()
        0 for a sound fit; for a successful but degenerate one a bit mask of
        `jaxlsq.fitting.degeneracy`'s flags: 1 a parameter cannot be estimated, 2
        two parameters correlated beyond 0.999, 4 ``R^2 < 0.05``, 8 (Poisson) the
        model is 0 at a zero-count point. See `degenerate`.
    names : tuple of str
        Parameter names (flat order): dict keys / pytree paths, ``[i]`` suffixes for
        array leaves.
    fixed : tuple of bool
        Which flat parameters were held fixed.
    ndata, nfree, dof : int
        Number of residuals ``m``, free parameters, and ``m - nfree``.
    n_starts : int
        Number of starting points fitted (1 without ``starts``).
    loss : str
        The loss used.
    estimator : str
        ``"least_squares"`` or ``"poisson"`` (maximum likelihood for counts).
    model : callable or None
        The fitted ``model(x, params)`` (for `eval` and the bands).
    sigma_kind : str or None
        How the residuals were weighted: None (unit weights), ``"1d"`` (sigma),
        ``"2d"`` (a covariance matrix) or ``"poisson"``.
    absolute_sigma : bool
        Whether ``covariance`` is absolute (``absolute_sigma=True``, or the
        Poisson estimator) rather than scaled by ``chisq / dof``.
    """

    _DATA = (
        "params", "stderr", "covariance", "correlation", "chisq", "pearson_chisq",
        "redchi", "r_squared", "aic", "bic", "cost", "residuals", "best_fit",
        "status", "success", "nfev", "njev", "n_iter", "active_mask", "n_success",
        "degeneracy",
    )  # fmt: skip
    _META = (
        "names", "fixed", "ndata", "nfree", "dof", "n_starts", "loss", "estimator",
        "model", "sigma_kind", "absolute_sigma",
    )  # fmt: skip

    def __init__(self, **fields: Any):
        missing = set(self._DATA + self._META) - set(fields)
        if missing:
            raise TypeError(f"FitResult missing fields {sorted(missing)}")
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key, value):
        raise AttributeError("FitResult is immutable; use .replace(...)")

    def replace(self, **changes: Any) -> FitResult:
        """A copy with some fields replaced."""
        fields = {k: getattr(self, k) for k in self._DATA + self._META}
        fields.update(changes)
        return FitResult(**fields)

    def tree_flatten(self):
        data = tuple(getattr(self, k) for k in self._DATA)
        meta = tuple(getattr(self, k) for k in self._META)
        return data, meta

    @classmethod
    def tree_unflatten(cls, meta, data):
        return cls(
            **dict(zip(cls._DATA, data, strict=True)),
            **dict(zip(cls._META, meta, strict=True)),
        )

    def __getitem__(self, index) -> FitResult:
        """One fit (or a sub-batch) of a batched result: ``fits[i]``, ``fits[:10]``.

        Indexes the leading batch axes of every array field.
        """
        if not self.batch_shape:
            raise IndexError("a single FitResult cannot be indexed (no batch axis)")
        return jax.tree_util.tree_map(lambda v: v[index], self)

    def eval(self, x) -> jax.Array:
        """``model(x, params)`` at new abscissae ``x`` (for a batch: every fit at
        the same ``x``, shape ``batch_shape + out``)."""
        from .bands import evaluate

        return evaluate(self, x)

    def eval_uncertainty(self, x, sigma: float = 1.0) -> jax.Array:
        """Half-width of the model's confidence band at ``x`` (lmfit's method of
        this name, with exact derivatives): see `jaxlsq.fitting.bands`.
        ``sigma``: standard deviations (>= 1) or a probability (< 1)."""
        from .bands import confidence_band

        return confidence_band(self, x, sigma)

    def prediction_band(self, x, sigma: float = 1.0, noise=None) -> jax.Array:
        """Half-width of the band where a new observation at ``x`` falls: the
        confidence band plus the noise (``redchi``, ``mu(x)`` for counts, or
        ``noise`` given in ``y``'s units); see `jaxlsq.fitting.bands`."""
        from .bands import prediction_band

        return prediction_band(self, x, sigma, noise)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (``()`` for a single fit)."""
        return tuple(np.shape(self.status))

    def conf_interval(self, x, y, **kwargs) -> dict:
        """Profile-likelihood confidence intervals (lmfit's ``conf_interval``):
        ``name -> [(prob, value), ...]``. ``x``, ``y`` and the fit's ``sigma``,
        ``bounds``, ``f_scale`` and solve options as given to the fit; see
        `jaxlsq.fitting.profile.conf_interval`."""
        from .profile import conf_interval

        return conf_interval(self, x, y, **kwargs)

    def bootstrap(self, x, y, **kwargs):
        """Bootstrap errors and percentile intervals: resample (``kind="residual"``
        or ``"pairs"``) and refit ``n_samples`` times in one vmapped call (every fit
        of a batch at once); see `jaxlsq.fitting.bootstrap.bootstrap`."""
        from .bootstrap import bootstrap

        return bootstrap(self, x, y, **kwargs)

    def plot(self, x=None, y=None, sigma=None, **kwargs):
        """A matplotlib figure of the fit: for one fit `jaxlsq.fitting.plots.plot_fit`
        (``x``, ``y`` required: data, fit, band, residuals); for a batch
        `plot_batch` (histograms, statuses, example fits when ``x``, ``y`` given)."""
        from .plots import plot_batch, plot_fit

        if self.batch_shape:
            return plot_batch(self, x, y, **kwargs)
        if x is None or y is None:
            raise TypeError("plot() of one fit needs the data: result.plot(x, y)")
        return plot_fit(self, x, y, sigma, **kwargs)

    @property
    def degenerate(self):
        """``degeneracy != 0``: the fit succeeded but its optimum is poorly
        determined (`jaxlsq.fitting.degeneracy`; the report says why)."""
        return self.degeneracy != 0

    @property
    def message(self) -> str | np.ndarray:
        """Why the (best) fit stopped (host side; needs a concrete status)."""
        return status_message(self.status)

    def report(self, correl_threshold: float = 0.1) -> str:
        """Text report in the spirit of lmfit's ``fit_report``.

        A single fit: fit statistics, values with standard errors (and percent),
        fixed/at-bound marks, correlations with ``|C| > correl_threshold``, status
        and message. A batched result: counts by status and, per parameter, mean,
        std, min, median and max over the successful fits.
        """
        from .report import batch_report, fit_report

        if self.batch_shape:
            return batch_report(self)
        return fit_report(self, correl_threshold)

    def __str__(self) -> str:
        if _is_traced(self):
            return repr(self)
        return self.report()

    def __repr__(self) -> str:
        if _is_traced(self):
            return f"FitResult(<traced>, names={self.names})"
        if self.batch_shape:
            return (
                f"FitResult(batch_shape={self.batch_shape}, names={self.names}, "
                f"n_success={int(np.sum(np.asarray(self.success)))})"
            )
        values = ", ".join(
            f"{name}={value:.6g}"
            for name, value in zip(
                self.names, np.asarray(flat_params(self)), strict=True
            )
        )
        return (
            f"FitResult({values}, chisq={float(self.chisq):.6g}, "
            f"status={int(self.status)})"
        )

    def _repr_html_(self) -> str:
        from .report import batch_report_html, fit_report_html

        if _is_traced(self):
            return f"<pre>{repr(self)}</pre>"
        if self.batch_shape:
            return batch_report_html(self)
        return fit_report_html(self)


def _is_traced(result: FitResult) -> bool:
    return isinstance(result.status, jax.core.Tracer)


def flat_params(result: FitResult, field: str = "params") -> jax.Array:
    """``result.params`` (or ``stderr``) flattened: shape ``batch_shape + (n,)``."""
    tree = getattr(result, field)
    batch = result.batch_shape
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate(
        [jnp.reshape(leaf, batch + (-1,)) for leaf in leaves], axis=-1
    )
