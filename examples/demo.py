"""`make demo`: the three tutorial fits, then 10,000 exponential decays in one call.

Prints parameters, cost, status and time for each; compares with scipy when it is
installed; saves a figure of the tutorial fits (``demo_fits.png``) when matplotlib is.

    python examples/demo.py [--batch 10000] [--figure demo_fits.png]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from tutorial_fits import residuals_for, tutorial_problems  # noqa: E402

import jaxlsq  # noqa: E402


def tutorial(figure: str | None) -> None:
    print("== The three tutorial fits (plain-numpy models, jaxlsq.leastsq) ==")
    try:
        from scipy.optimize import leastsq as scipy_leastsq
    except ImportError:
        scipy_leastsq = None
    fits = []
    for name, model, x, y, start in tutorial_problems():
        residuals = residuals_for(model)
        with warnings.catch_warnings():
            # The models call np.exp/np.sin on the parameters: jaxlsq runs them on
            # its host path and says so once; the demo has read the hint.
            warnings.simplefilter("ignore", jaxlsq.scipy.HostFallbackWarning)
            t0 = time.perf_counter()
            params, cov, info, mesg, ier = jaxlsq.leastsq(
                residuals, start, args=(x, y), full_output=True
            )
            elapsed = time.perf_counter() - t0
        ssr = float(np.sum(info["fvec"] ** 2))
        print(f"{name:18s} params={np.round(params, 4)} SSR={ssr:.4f} ier={ier} "
              f"({elapsed * 1e3:.1f} ms)")  # fmt: skip
        if scipy_leastsq is not None:
            ref = scipy_leastsq(residuals, start, args=(x, y), full_output=True)
            ref_ssr = float(np.sum(ref[2]["fvec"] ** 2))
            print(f"{'  scipy':18s} params={np.round(ref[0], 4)} SSR={ref_ssr:.4f} "
                  f"ier={ref[4]}")  # fmt: skip
        fits.append((name, model, x, y, params))
    x, y = fits[-1][2], fits[-1][3]
    best = sinusoid_multistart(x, y)
    if figure:
        save_figure(fits, figure, best)


def sinusoid_residuals(p, x, y):
    """The tutorial's sinusoid with jax.numpy: traceable, exact Jacobian."""
    return p[0] * jnp.sin(p[1] * x + p[2]) - y


def sinusoid_multistart(x, y) -> np.ndarray:
    """MINPACK from [1, 1, 0] stops in a local minimum (as scipy's does); 36 starts
    fitted in one `solve_batch` call find the global one."""
    b, c = np.meshgrid(np.linspace(0.5, 3.0, 6), np.linspace(0.0, 2 * np.pi, 6))
    starts = np.stack([np.ones(b.size), b.ravel(), c.ravel()], axis=1)
    with jax.enable_x64(True):
        sols = jax.device_get(
            jaxlsq.solve_batch(
                sinusoid_residuals,
                jnp.asarray(starts),
                (jnp.asarray(x), jnp.asarray(y)),
                in_axes=(0, None),
            )
        )
    cost = np.where(sols.success, sols.cost, np.inf)
    best = sols.params[np.argmin(cost)]
    print(f"{'  36 starts':18s} params={np.round(best, 4)} SSR={2 * cost.min():.4f}"
          " (one solve_batch call over a grid of starts)")  # fmt: skip
    return best


def save_figure(fits, path: str, sinusoid_best) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, axes = plt.subplots(1, len(fits), figsize=(4 * len(fits), 3.2))
    for ax, (name, model, x, y, params) in zip(axes, fits, strict=True):
        ax.plot(x, y, ".", ms=3, label="data")
        ax.plot(x, model(x, *params), "-", label="jaxlsq.leastsq (as scipy)")
        if name == "sinusoid":
            ax.plot(x, model(x, *sinusoid_best), "--", label="best of 36 starts")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"figure saved to {path}")


def expdecay(p, x, y):
    """Residuals of ``a * exp(-b * x) + c`` written with jax.numpy (exact Jacobians)."""
    return p[0] * jnp.exp(-p[1] * x) + p[2] - y


def batch(n_curves: int) -> None:
    print(f"\n== {n_curves} exponential decays in one vmapped call (float64) ==")
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 50)
    truth = np.array([2.0, 1.5, 0.5]) * rng.uniform(0.8, 1.2, (n_curves, 3))
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * x) + truth[:, 2:]
    y += 0.05 * rng.standard_normal(y.shape)
    with jax.enable_x64(True):
        x, y, p0 = jnp.asarray(x), jnp.asarray(y), jnp.ones(3)
        fit_all = jax.jit(jax.vmap(lambda yi: jaxlsq.solve(expdecay, p0, args=(x, yi))))
        t0 = time.perf_counter()
        sols = jax.block_until_ready(fit_all(y))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sols = jax.block_until_ready(fit_all(y))
        warm = time.perf_counter() - t0
        sols = jax.device_get(sols)  # numpy arrays, float64 kept
    params = np.asarray(sols.params)
    status = np.asarray(sols.status)
    print(f"first call (compile + run) {first:.2f} s; warm {warm:.3f} s "
          f"= {n_curves / warm:,.0f} fits/s")  # fmt: skip
    codes, counts = np.unique(status, return_counts=True)
    by_status = {int(c): int(k) for c, k in zip(codes, counts, strict=True)}
    print(f"success: {int(np.sum(sols.success))}/{n_curves}; statuses: {by_status}")
    err = np.abs(params - truth)
    print(f"median |param - truth|: {np.round(np.median(err, axis=0), 4)}")
    print(f"cost: median {np.median(sols.cost):.4f}, max {np.max(sols.cost):.4f}")
    for i in range(3):
        print(f"  curve {i}: params={np.round(params[i], 4)} truth="
              f"{np.round(truth[i], 4)} status={status[i]}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--figure", default="demo_fits.png")
    args = parser.parse_args()
    tutorial(args.figure)
    batch(args.batch)


if __name__ == "__main__":
    main()
