"""Pictures of fits: `plot_fit` (one fit and its residuals) and `plot_batch`.

matplotlib is an optional dependency (``pip install jaxlsq[plots]``), imported
when a plot is asked for. Both functions return the ``matplotlib.figure.Figure``
(in Jupyter it displays itself) and draw nothing the result does not contain: the
curve is ``result.eval``, the band ``result.eval_uncertainty`` (the delta method,
see `jaxlsq.fitting.bands`), the lower panel ``result.residuals``.
"""

from __future__ import annotations

import numpy as np

from ..core.status import Status
from .result import flat_params


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # an optional extra: say which
        raise ImportError(
            "plotting needs matplotlib: pip install matplotlib (or jaxlsq[plots])"
        ) from err
    return plt


def plot_fit(result, x, y, sigma=None, *, band=2.0, n_points=400, ax=None):
    """Data, fitted curve, confidence band and residuals of one fit.

    Parameters
    ----------
    result : FitResult
        One fit (no batch axes: index a batch first, ``fits[i]``).
    x : array, shape (m,) or any pytree the model takes
        The abscissae of the fit. A 1-D ``x`` of the data's length draws the curve
        on ``n_points`` points spanning it; any other ``x`` (images, several
        inputs) plots data and model against the data point index.
    y : array, shape (m,) (or the data's shape)
        The data the fit was made to.
    sigma : array (m,), float or None
        Error bars. None: none for least squares, ``sqrt(model)`` (the Poisson
        standard deviation) for ``estimator="poisson"``.
    band : float or None, default 2
        The confidence band drawn around the curve, as
        ``result.eval_uncertainty(x, sigma=band)`` (>= 1: standard deviations,
        < 1: a probability); None draws none.
    n_points : int, default 400
        Points of the smooth curve (1-D ``x`` only).
    ax : pair of matplotlib Axes, optional
        ``(main, residual)`` axes to draw into (``residual`` may be None: no
        residual panel); default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: data (with error bars), the fit and its band; below, the fit's
        residuals (weighted, or deviance residuals for counts) with a zero line.
    """
    if result.batch_shape:
        raise ValueError(
            f"plot_fit takes one fit, got a batch of shape {result.batch_shape}: "
            "use fits[i].plot(...) or fits.plot()"
        )
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)}, figsize=(6, 4.5)
        )
    main, lower = ax
    y = np.asarray(y)
    x_arr = np.asarray(x) if np.ndim(x) == 1 else None
    curve_1d = x_arr is not None and x_arr.shape == y.shape
    at = x_arr if curve_1d else np.arange(y.size)
    if sigma is None and result.estimator == "poisson":
        sigma = np.sqrt(np.maximum(np.asarray(result.best_fit), 0))
    err = None if sigma is None else np.broadcast_to(np.asarray(sigma), y.shape)
    main.errorbar(
        at, y.reshape(-1), yerr=None if err is None else err.reshape(-1),
        fmt="o", ms=3, color="0.3", label="data", zorder=1,
    )  # fmt: skip
    if curve_1d:
        grid = np.linspace(x_arr.min(), x_arr.max(), n_points)
        curve = np.asarray(result.eval(grid))
        main.plot(grid, curve, color="C0", label="fit", zorder=3)
        if band is not None:
            half = np.asarray(result.eval_uncertainty(grid, sigma=band))
            label = f"±{band:g}σ band" if band >= 1 else f"{band:.0%} band"
            main.fill_between(
                grid, curve - half, curve + half, color="C0", alpha=0.25,
                label=label, zorder=2,
            )  # fmt: skip
    else:
        main.plot(at, np.asarray(result.best_fit).reshape(-1), "-", color="C0",
                  label="fit", zorder=3)  # fmt: skip
    main.legend(loc="best", fontsize="small")
    main.set_ylabel("y")
    if lower is not None:
        kind = "deviance" if result.estimator == "poisson" else "weighted"
        lower.axhline(0.0, color="0.5", lw=0.8)
        lower.plot(at, np.asarray(result.residuals).reshape(-1), "o", ms=3, color="C1")
        lower.set_ylabel(f"{kind} residual", fontsize="small")
        lower.set_xlabel("x" if curve_1d else "data point")
    main.set_title(f"{Status(int(result.status)).name}, χ² = {float(result.chisq):.4g}")
    return main.figure


def plot_batch(fits, x=None, y=None, *, examples=4, bins=40):
    """Summary of a batch of fits: parameter histograms, statuses, example fits.

    Parameters
    ----------
    fits : FitResult
        A batch (`fit_batch`, or ``jax.vmap(fit)``), one leading batch axis.
    x, y : optional
        The shared abscissae and the (B, m) data: with both, the first
        ``examples`` fits are drawn with `plot_fit`'s main panel.
    examples : int, default 4
    bins : int, default 40
        Histogram bins of the successful fits' free parameters.

    Returns
    -------
    matplotlib.figure.Figure
        One histogram per parameter (successful fits only), a bar per status that
        occurred, and the example fits (with ``x`` and ``y``).
    """
    if len(fits.batch_shape) != 1:
        raise ValueError(
            f"plot_batch takes a batch with one leading axis, got {fits.batch_shape}"
        )
    plt = _pyplot()
    names = list(fits.names)
    values = np.asarray(flat_params(fits))
    ok = np.asarray(fits.success)
    status = np.asarray(fits.status).astype(int)
    n_examples = min(examples, fits.batch_shape[0]) if x is not None else 0
    if n_examples and y is None:
        raise ValueError("plot_batch needs y (the batch's data) to draw example fits")
    panels = len(names) + 1 + n_examples
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(axes).reshape(-1)
    for k, name in enumerate(names):
        axes[k].hist(values[ok, k], bins=bins, color="C0")
        axes[k].set_title(name, fontsize="small")
    codes, counts = np.unique(status, return_counts=True)
    bar = axes[len(names)]
    bar.bar([Status(c).name for c in codes], counts, color="C2")
    bar.set_title(f"status ({int(ok.sum())} of {ok.size} succeeded)", fontsize="small")
    bar.tick_params(axis="x", labelrotation=45, labelsize="x-small")
    for j in range(n_examples):
        one = fits[j]
        plot_fit(
            one, x, np.asarray(y)[j], band=None, ax=(axes[len(names) + 1 + j], None)
        )
        axes[len(names) + 1 + j].set_title(f"fit {j}", fontsize="small")
    for extra in axes[panels:]:
        extra.set_visible(False)
    fig.tight_layout()
    return fig
