"""Poisson maximum likelihood against least squares: `fit_batch` on photon counts.

The benchmark's 2-D Gaussian (Gpufit's ``GAUSS_2D`` on 5x5 pixels,
`problems.gauss2d`) with Poisson counts instead of Gaussian noise: amplitude
100 * U(0.8, 1.2) photons at the peak, offset 2 * U(0.8, 1.2) photons per pixel,
Gpufit's perturbed starts. Both estimators fit the same curves in the same process,
interleaved (``--repeats`` rounds, best of each), so their ratio is meaningful on a
noisy machine. Reported per estimator: warm fits/s, first call (trace + compile +
run), success rate, median function evaluations, and per parameter the bias and
scatter of the estimates against the truth, with the median standard error the fit
reports (for the MLE: the Cramer-Rao bound).

Usage (from the repository root)::

    python benchmarks/poisson.py                 # N = 10,000, float64
    python benchmarks/poisson.py --n 1000 --dtype float32
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT))

from problems import GAUSS_SIZE, _pixel_grid, gauss2d  # noqa: E402

import jaxlsq  # noqa: E402

NAMES = ("amplitude", "x0", "y0", "sigma", "offset")


def sample(n: int, seed: int = 0):
    """``(y, p0, truth)``: n spots of Poisson counts, (n, 25), (n, 5), (n, 5)."""
    rng = np.random.default_rng(seed)
    x = _pixel_grid(GAUSS_SIZE)
    truth = np.empty((n, 5))
    truth[:, 0] = 100.0 * rng.uniform(0.8, 1.2, n)
    truth[:, 1:3] = (GAUSS_SIZE - 1) / 2 + rng.uniform(-0.5, 0.5, (n, 2))
    truth[:, 3] = rng.uniform(0.9, 1.1, n)
    truth[:, 4] = 2.0 * rng.uniform(0.8, 1.2, n)
    y = rng.poisson(gauss2d(truth, x)).astype(np.float64)
    p0 = truth.copy()
    p0[:, 1:3] += truth[:, 3:4] * rng.uniform(-0.2, 0.2, (n, 2))
    p0[:, [0, 3, 4]] *= rng.uniform(0.8, 1.2, (n, 3))
    return x, y, p0, truth


def model(x, p):
    return gauss2d(p, x, jnp)


#: Photons, width and offset >= 0 (positions free): keeps the Poisson mean > 0, so
#: no fit creeps towards a zero-count pixel's mu = 0 boundary (see the README).
LOWER = np.array([0.0, -np.inf, -np.inf, 0.0, 0.0])
UPPER = np.full(5, np.inf)
CASES = (
    ("least_squares", False), ("poisson", False),
    ("least_squares", True), ("poisson", True),
)  # fmt: skip


def run_once(x, y, p0, estimator, bounded):
    bounds = (LOWER.astype(y.dtype), UPPER.astype(y.dtype)) if bounded else None
    fits = jaxlsq.fit_batch(
        model, x, y, p0, in_axes=(None, 0, 0, None), estimator=estimator,
        bounds=bounds,
    )  # fmt: skip
    jax.block_until_ready(fits.params)
    return fits


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="spots per batch")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="markdown report path")
    args = ap.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    x, y, p0, truth = sample(args.n)
    x, y, p0 = (a.astype(args.dtype) for a in (x, y, p0))
    first, best, fits = {}, {}, {}
    for case in CASES:
        t0 = time.perf_counter()
        fits[case] = run_once(x, y, p0, *case)
        first[case] = time.perf_counter() - t0
        best[case] = np.inf
    for _ in range(args.repeats):
        for case in CASES:
            t0 = time.perf_counter()
            run_once(x, y, p0, *case)
            best[case] = min(best[case], time.perf_counter() - t0)

    lines = [
        f"# Poisson MLE vs least squares: fit_batch, 2-D Gaussian spots ({args.dtype})",
        "",
        f"Command: `python benchmarks/poisson.py --n {args.n} --dtype {args.dtype}`; "
        f"{platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}.",
        f"{args.n} spots of 5x5 px, peak ~100 photons, offset ~2 photons/px; "
        "warm time is the best of "
        f"{args.repeats} interleaved runs.",
        "",
        "| estimator | bounds | fits/s | ratio to least squares | first call s | "
        "success | nfev median / 99% / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for est, bounded in CASES:
        f = fits[est, bounded]
        rate = args.n / best[est, bounded]
        base = args.n / best["least_squares", bounded]
        nfev = np.asarray(f.nfev)
        lines.append(
            f"| {est} | {'>= 0' if bounded else 'none'} | {rate:,.0f} | "
            f"{rate / base:.2f} | {first[est, bounded]:.2f} | "
            f"{100 * float(np.mean(f.success)):.1f}% | {np.median(nfev):.0f} / "
            f"{np.percentile(nfev, 99):.0f} / {nfev.max()} |"
        )
    lines += [
        "",
        "Estimates against the truth (successful bounded fits): bias = mean(estimate - "
        "truth), scatter = std(estimate - truth), stderr = the median standard "
        "error reported (the MLE's is the Cramer-Rao bound).",
        "",
        "| parameter | "
        + " | ".join(f"{e} bias / scatter / stderr" for e, _ in CASES[2:])
        + " |",
        "|---|" + "---|" * 2,
    ]
    for i, name in enumerate(NAMES):
        cells = []
        for case in CASES[2:]:
            f = fits[case]
            ok = np.asarray(f.success)
            err = np.asarray(f.params)[ok, i] - truth[ok, i]
            se = np.median(np.asarray(f.stderr)[ok, i])
            cells.append(f"{err.mean():+.4f} / {err.std():.4f} / {se:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / f"poisson-cpu-{args.dtype}.md"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
