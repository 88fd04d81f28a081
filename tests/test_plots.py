"""`FitResult.plot`: what is drawn is what the result holds.

The oracles are the result's own tested quantities (``eval``, ``eval_uncertainty``
-- itself checked against lmfit in test_bands -- ``residuals``, ``best_fit``) and
numpy's histogram of the parameters: every line, band edge, error bar and bar of
the figure is read back from matplotlib and compared with them.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq
from jaxlsq.core.status import Status

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

jax.config.update("jax_enable_x64", True)

T = np.linspace(0.0, 6.0, 40)
P0 = {"a": 1.0, "k": 1.0, "c": 0.0}


def decay(x, p):
    return p["a"] * jnp.exp(-p["k"] * x) + p["c"]


def data(seed=0, n=None):
    rng = np.random.default_rng(seed)
    shape = T.shape if n is None else (n, T.size)
    return 3.0 * np.exp(-0.7 * T) + 0.5 + 0.05 * rng.standard_normal(shape)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_one_fit_draws_data_errorbars_curve_band_and_residuals():
    y = data()
    sigma = np.full(T.shape, 0.05)
    result = jaxlsq.fit(decay, T, y, P0, sigma=sigma, absolute_sigma=True)
    fig = result.plot(T, y, sigma, band=2)
    main, lower = fig.axes
    grid = np.linspace(T.min(), T.max(), 400)
    fit_line = lines_by_label(main)["fit"]
    np.testing.assert_allclose(fit_line.get_xdata(), grid)
    curve = np.asarray(result.eval(grid))
    np.testing.assert_allclose(fit_line.get_ydata(), curve, rtol=1e-12)
    # the band: at each grid abscissa the polygon spans curve -/+ the 2-sigma width
    half = np.asarray(result.eval_uncertainty(grid, sigma=2))
    (poly,) = [c for c in main.collections if isinstance(c, PolyCollection)]
    vertices = poly.get_paths()[0].vertices
    for i in (0, 150, 399):
        at = vertices[np.isclose(vertices[:, 0], grid[i]), 1]
        np.testing.assert_allclose(
            [at.min(), at.max()], [curve[i] - half[i], curve[i] + half[i]], rtol=1e-12
        )
    # data and error bars: each bar spans y -/+ sigma
    data_line, _, (bars,) = main.containers[0].lines  # the ErrorbarContainer
    assert main.containers[0].get_label() == "data"
    np.testing.assert_allclose(data_line.get_ydata(), y)
    spans = np.array([seg[1, 1] - seg[0, 1] for seg in bars.get_segments()])
    np.testing.assert_allclose(spans, 2 * sigma, rtol=1e-12)
    # residual panel: the weighted residuals at the data abscissae
    (points,) = [ln for ln in lower.get_lines() if len(ln.get_xdata()) == T.size]
    np.testing.assert_allclose(points.get_xdata(), T)
    np.testing.assert_allclose(points.get_ydata(), np.asarray(result.residuals))
    assert main.get_title().startswith(Status(int(result.status)).name)


def test_poisson_error_bars_are_the_square_root_of_the_model():
    rng = np.random.default_rng(3)
    counts = rng.poisson(40 * np.exp(-0.5 * T) + 3).astype(float)
    result = jaxlsq.fit(decay, T, counts, {"a": 10.0, "k": 1.0, "c": 1.0},
                        estimator="poisson")  # fmt: skip
    fig = result.plot(T, counts)
    main, lower = fig.axes
    _, _, (bars,) = main.containers[0].lines
    spans = np.array([seg[1, 1] - seg[0, 1] for seg in bars.get_segments()])
    np.testing.assert_allclose(spans, 2 * np.sqrt(np.asarray(result.best_fit)))
    assert "deviance" in lower.get_ylabel()


def test_a_multidimensional_x_plots_against_the_data_index():
    yy, xx = np.mgrid[0:7, 0:7].astype(float)
    xy = np.stack([xx, yy])

    def spot(x, p):
        r2 = (x[0] - p["x0"]) ** 2 + (x[1] - p["y0"]) ** 2
        return p["a"] * jnp.exp(-r2 / 2) + p["b"]

    truth = {"x0": 3.2, "y0": 2.9, "a": 10.0, "b": 1.0}
    y = np.asarray(spot(xy, truth)) + 0.1 * np.random.default_rng(1).normal(size=(7, 7))
    result = jaxlsq.fit(spot, xy, y, {"x0": 3.0, "y0": 3.0, "a": 5.0, "b": 0.0})
    fig = result.plot(xy, y)
    fit_line = lines_by_label(fig.axes[0])["fit"]
    np.testing.assert_allclose(fit_line.get_xdata(), np.arange(49))
    np.testing.assert_allclose(
        fit_line.get_ydata(), np.asarray(result.best_fit).reshape(-1)
    )
    assert fig.axes[1].get_xlabel() == "data point"


def test_batch_plot_histograms_statuses_and_examples():
    Y = data(seed=2, n=60)
    Y[5, 3] = np.nan  # one failed fit: a second status bar
    fits = jaxlsq.fit_batch(decay, T, Y, P0)
    fig = fits.plot(T, Y, examples=2, bins=10)
    ok = np.asarray(fits.success)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3 + 1 + 2
    for k, name in enumerate(fits.names):
        assert axes[k].get_title() == name
        heights = [patch.get_height() for patch in axes[k].patches]
        want, _ = np.histogram(np.asarray(fits.params[name])[ok], bins=10)
        np.testing.assert_array_equal(heights, want)
    status_ax = axes[3]
    codes, counts = np.unique(np.asarray(fits.status), return_counts=True)
    np.testing.assert_array_equal(
        [patch.get_height() for patch in status_ax.patches], counts
    )
    labels = [t.get_text() for t in status_ax.get_xticklabels()]
    assert labels == [Status(int(c)).name for c in codes]
    assert f"{int(ok.sum())} of 60" in status_ax.get_title()
    example = lines_by_label(axes[4])["fit"]
    np.testing.assert_allclose(
        example.get_ydata(),
        np.asarray(fits[0].eval(np.linspace(T.min(), T.max(), 400))),
        rtol=1e-12,
    )


def test_plot_errors_name_what_is_missing(monkeypatch):
    y = data()
    result = jaxlsq.fit(decay, T, y, P0)
    with pytest.raises(TypeError, match=r"result.plot\(x, y\)"):
        result.plot()
    fits = jaxlsq.fit_batch(decay, T, data(n=3), P0)
    from jaxlsq.fitting.plots import plot_fit

    with pytest.raises(ValueError, match="batch of shape"):
        plot_fit(fits, T, y)
    with pytest.raises(ValueError, match="needs y"):
        fits.plot(T)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        result.plot(T, y)


def test_readme_figures_script_draws_both_pictures(tmp_path):
    """`examples/readme_figures.py` (the README's pictures) runs and writes PNGs."""
    import importlib.util
    import pathlib

    path = (
        pathlib.Path(__file__).resolve().parents[1] / "examples" / "readme_figures.py"
    )
    spec = importlib.util.spec_from_file_location("readme_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert [p.name for p in written] == ["fit.png", "batch.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
