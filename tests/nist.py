"""NIST StRD nonlinear regression problems: file parser, models in jax.numpy, LRE score.

The data files in ``tests/data`` are NIST's, unchanged. Each model is written as
``model(b, x)`` with ``b`` the parameter vector (b1 is ``b[0]``).
"""

from __future__ import annotations

import pathlib
import re
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

DATA_DIR = pathlib.Path(__file__).parent / "data"


def _rational(num_degree: int):
    """(b1 + b2 x + ...)/(1 + b_{k+1} x + ...), ``num_degree + 1`` numerator terms."""

    def model(b, x):
        k = num_degree + 1
        num = sum(b[i] * x**i for i in range(k))
        den = 1 + sum(b[k + i] * x ** (i + 1) for i in range(b.shape[0] - k))
        return num / den

    return model


def _lanczos(b, x):
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-b[3] * x)
        + b[4] * jnp.exp(-b[5] * x)
    )


def _gauss(b, x):
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _chwirut(b, x):
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _misra1a(b, x):
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _enso(b, x):
    w = 2 * jnp.pi * x
    return (
        b[0]
        + b[1] * jnp.cos(w / 12)
        + b[2] * jnp.sin(w / 12)
        + b[4] * jnp.cos(w / b[3])
        + b[5] * jnp.sin(w / b[3])
        + b[7] * jnp.cos(w / b[6])
        + b[8] * jnp.sin(w / b[6])
    )


MODELS = {
    "Misra1a": _misra1a,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** (-2)),
    "Kirby2": _rational(2),
    "Hahn1": _rational(3),
    "Nelson": lambda b, x: b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1]),
    "MGH17": lambda b, x: b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4]),
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5)),
    "Misra1d": lambda b, x: b[0] * b[1] * x * (1 + b[1] * x) ** (-1),
    "Roszman1": lambda b, x: b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / jnp.pi,
    "ENSO": _enso,
    "MGH09": lambda b, x: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    "Thurber": _rational(3),
    "BoxBOD": _misra1a,
    "Rat42": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)),
    "MGH10": lambda b, x: b[0] * jnp.exp(b[1] / (x + b[2])),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat43": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]),
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
}


class NistProblem(NamedTuple):
    name: str
    x: np.ndarray  # (m,) or (m, 2) for Nelson
    y: np.ndarray  # (m,) the fitted response (log(y) for Nelson)
    starts: tuple[np.ndarray, np.ndarray]
    certified: np.ndarray  # (n,)
    certified_sd: np.ndarray  # (n,)
    certified_rss: float

    def residuals(self, b, x, y):
        return MODELS[self.name](b, x) - y


_FLOAT = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"


def load(name: str) -> NistProblem:
    """Parse ``tests/data/<name>.dat``."""
    lines = (DATA_DIR / f"{name}.dat").read_text().splitlines()
    params = []
    rss = None
    data_start = None
    for i, line in enumerate(lines):
        match = re.match(
            rf"\s*b\d+\s*=\s*({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})", line
        )
        if match:
            params.append([float(v) for v in match.groups()])
        if line.startswith("Residual Sum of Squares:"):
            rss = float(line.split(":")[1])
        if re.match(r"Data:\s+y\s", line):
            data_start = i + 1
    table = np.array(params)
    data = np.array(
        [[float(v) for v in ln.split()] for ln in lines[data_start:] if ln.strip()]
    )
    y = data[:, 0]
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:]
    if name == "Nelson":  # NIST fits log(y) for this model
        y = np.log(y)
    return NistProblem(
        name, x, y, (table[:, 0], table[:, 1]), table[:, 2], table[:, 3], rss
    )


def min_lre(estimate, certified) -> float:
    """Minimum over parameters of -log10(relative error), capped at 11 (NIST's LRE)."""
    estimate = np.asarray(estimate, float)
    rel = np.abs(estimate - certified) / np.abs(certified)
    with np.errstate(divide="ignore"):
        lre = np.where(rel == 0, 11.0, -np.log10(rel))
    lre = np.where(np.isfinite(estimate), lre, 0.0)
    return float(np.min(np.clip(lre, 0.0, 11.0)))


NAMES = tuple(MODELS)
