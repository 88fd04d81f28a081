"""The README's pictures: one fit (data, fit, 2σ band, residuals) and a batch's
summary (parameter histograms, statuses, example fits).

    python examples/readme_figures.py [--out docs/images]

The data are simulated with fixed seeds, so the pictures are reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import jaxlsq

matplotlib.use("Agg")


def model(t, p):
    return p["amp"] * jnp.exp(-t / p["tau"]) + p["background"]


def main(out: Path) -> list[Path]:
    jax.config.update("jax_enable_x64", True)
    out.mkdir(parents=True, exist_ok=True)
    t = np.linspace(0.0, 10.0, 60)
    rng = np.random.default_rng(4)
    y = 3.0 * np.exp(-t / 2.0) + 0.1 + 0.05 * rng.normal(size=60)
    p0 = {"amp": 1.0, "tau": 1.0, "background": 0.0}

    one = jaxlsq.fit(model, t, y, p0, sigma=0.05, absolute_sigma=True)
    fig = one.plot(t, y, 0.05 * np.ones_like(y))
    fig.suptitle("jaxlsq.fit: data, fit, 2σ confidence band, residuals")
    paths = [out / "fit.png"]
    fig.savefig(paths[-1], dpi=90, bbox_inches="tight")

    amps = rng.uniform(1.0, 3.0, (2000, 1))
    taus = rng.uniform(1.5, 2.5, (2000, 1))
    ys = amps * np.exp(-t / taus) + 0.1 + 0.05 * rng.normal(size=(2000, 60))
    fits = jaxlsq.fit_batch(model, t, ys, p0, sigma=0.05, absolute_sigma=True)
    fig = fits.plot(t, ys)
    fig.suptitle("jaxlsq.fit_batch: 2,000 decays in one call", y=1.03)
    paths.append(out / "batch.png")
    fig.savefig(paths[-1], dpi=80, bbox_inches="tight")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    for path in main(parser.parse_args().out):
        print("wrote", path)
