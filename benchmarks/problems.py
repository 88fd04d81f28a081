"""Benchmark problems: batches of small, independent curve fits with known truth.

Each problem has one model formula, written once against an array namespace ``xp``
(``numpy`` or ``jax.numpy``), so the JAX solvers and scipy's MINPACK fit exactly the
same function. Data are generated with numpy from a fixed seed; every solver sees the
same curves (cast to the benchmark dtype first, so float32 runs fit float32 data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

CHUNK = 1000  # curves drawn per seeded generator; see `Problem.batch`


@dataclasses.dataclass(frozen=True)
class Batch:
    """``N`` curves of one problem: observations, starting points, true parameters."""

    y: np.ndarray  # (N, m) observations, float64
    p0: np.ndarray  # (N, n) starting points
    truth: np.ndarray  # (N, n) parameters the data were drawn from


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A model shared by all curves of a batch, plus its data generator.

    ``residual_jax`` and ``residual_np`` are ``f(p, x, y) -> model(p, x) - y`` for one
    curve; ``jacobian_np(p, x, y)`` is the analytic (m, n) Jacobian used as scipy's
    ``Dfun``. ``model`` broadcasts over leading axes of ``p`` (shape (..., n)).
    """

    name: str
    description: str
    x: np.ndarray
    model: Callable
    jacobian_np: Callable
    sample: Callable[[int, np.random.Generator], Batch]
    residual_jax: Callable = dataclasses.field(init=False)
    residual_np: Callable = dataclasses.field(init=False)

    def __post_init__(self):
        # Built once per problem, so a jitted solver sees the same function object
        # every call (jaxlsq treats ``fun`` as a static argument).
        object.__setattr__(self, "residual_jax", _residual(self.model, jnp))
        object.__setattr__(self, "residual_np", _residual(self.model, np))

    @property
    def n_params(self) -> int:
        return self.sample(1, np.random.default_rng(0)).p0.shape[1]

    def batch(self, n: int, seed: int) -> Batch:
        """The first ``n`` curves of the problem's fixed sequence for ``seed``.

        Curves are drawn in chunks of ``CHUNK``, each from its own seeded generator,
        so curve ``i`` is the same whatever ``n`` (or ``--sizes``) is.
        """
        chunks = [
            self.sample(CHUNK, np.random.default_rng([seed, i]))
            for i in range(-(-n // CHUNK))
        ]
        fields = {
            f.name: np.concatenate([getattr(c, f.name) for c in chunks])[:n]
            for f in dataclasses.fields(Batch)
        }
        return Batch(**fields)

    def cost64(self, params: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``0.5 * sum(r**2)`` per curve, evaluated in float64 with numpy.

        Every method's result is scored this way, so costs are comparable across
        solvers and dtypes. Non-finite parameters give a NaN cost.
        """
        p = np.asarray(params, np.float64)
        r = self.model(p, self.x, np) - np.asarray(y, np.float64)
        with np.errstate(all="ignore"):
            return 0.5 * np.sum(r * r, axis=-1)


def _residual(model: Callable, xp) -> Callable:
    """``model(p, x) - y`` in the namespace ``xp``."""

    def residual(p, x, y):
        return model(p, x, xp) - y

    residual.__name__ = f"{model.__name__}_residual_{xp.__name__.split('.')[0]}"
    return residual


def _columns(p, n):
    """The parameter columns of ``p`` (..., n), each shaped (..., 1) to broadcast."""
    return tuple(p[..., i, None] for i in range(n))


# ----------------------------------------------------------------------------------
# (a) exponential decay: y = a * exp(-b * x) + c


EXP_TRUTH = np.array([2.0, 1.5, 0.5])
EXP_START = np.array([1.0, 1.0, 1.0])
EXP_NOISE = 0.05


def expdecay(p, x, xp=np):
    """``a * exp(-b * x) + c``."""
    a, b, c = _columns(p, 3)
    return a * xp.exp(-b * x) + c


def expdecay_jacobian(p, x, y):
    """d model / d (a, b, c), shape (m, 3)."""
    a, b, _ = p
    e = np.exp(-b * x)
    return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)


def sample_expdecay(n: int, rng: np.random.Generator, x: np.ndarray) -> Batch:
    """Truth (2, 1.5, 0.5) scaled by U(0.8, 1.2) per curve and parameter; noise 0.05."""
    truth = EXP_TRUTH * rng.uniform(0.8, 1.2, size=(n, 3))
    y = expdecay(truth, x) + EXP_NOISE * rng.standard_normal((n, x.size))
    return Batch(y=y, p0=np.tile(EXP_START, (n, 1)), truth=truth)


# ----------------------------------------------------------------------------------
# (b) Gpufit's 2-D Gaussian on a 5x5 pixel grid:
#     amplitude * exp(-((x - x0)**2 + (y - y0)**2) / (2 sigma**2)) + offset

GAUSS_SIZE = 5
GAUSS_NOISE = 0.1


def _pixel_grid(size: int) -> np.ndarray:
    """Pixel centres 0..size-1 as (2, size*size): row 0 is x, row 1 is y."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([xx.ravel(), yy.ravel()])


def gauss2d(p, x, xp=np):
    """Gpufit's ``GAUSS_2D``: (amplitude, x0, y0, sigma, offset)."""
    amp, x0, y0, s, off = _columns(p, 5)
    r2 = (x[0] - x0) ** 2 + (x[1] - y0) ** 2
    return amp * xp.exp(-r2 / (2 * s * s)) + off


def gauss2d_jacobian(p, x, y):
    """d model / d (amplitude, x0, y0, sigma, offset), shape (m, 5)."""
    amp, x0, y0, s, _ = p
    dx, dy = x[0] - x0, x[1] - y0
    r2 = dx * dx + dy * dy
    g = np.exp(-r2 / (2 * s * s))
    ag = amp * g
    cols = [g, ag * dx / s**2, ag * dy / s**2, ag * r2 / s**3, np.ones_like(g)]
    return np.stack(cols, axis=1)


def sample_gauss2d(n: int, rng: np.random.Generator, x: np.ndarray) -> Batch:
    """Truth near (10, 2, 2, 1, 1), jittered per curve; start perturbed as in Gpufit.

    Truth: amplitude 10 * U(0.8, 1.2), centre 2 + U(-0.5, 0.5) on each axis,
    sigma U(0.9, 1.1), offset U(0.8, 1.2); Gaussian noise 0.1. Start (Gpufit's
    examples): centre moved by sigma * U(-0.2, 0.2), the other three scaled by
    U(0.8, 1.2).
    """
    truth = np.empty((n, 5))
    truth[:, 0] = 10.0 * rng.uniform(0.8, 1.2, n)
    truth[:, 1:3] = (GAUSS_SIZE - 1) / 2 + rng.uniform(-0.5, 0.5, (n, 2))
    truth[:, 3] = rng.uniform(0.9, 1.1, n)
    truth[:, 4] = rng.uniform(0.8, 1.2, n)
    y = gauss2d(truth, x) + GAUSS_NOISE * rng.standard_normal((n, x.shape[1]))
    p0 = truth.copy()
    p0[:, 1:3] += truth[:, 3:4] * rng.uniform(-0.2, 0.2, (n, 2))
    p0[:, [0, 3, 4]] *= rng.uniform(0.8, 1.2, (n, 3))
    return Batch(y=y, p0=p0, truth=truth)


# ----------------------------------------------------------------------------------


def _make_problems() -> dict[str, Problem]:
    x_exp = np.linspace(0.0, 5.0, 50)
    x_gauss = _pixel_grid(GAUSS_SIZE)
    return {
        "expdecay": Problem(
            name="expdecay",
            description="y = a exp(-b x) + c, 50 points on [0, 5], 3 parameters",
            x=x_exp,
            model=expdecay,
            jacobian_np=expdecay_jacobian,
            sample=lambda n, rng: sample_expdecay(n, rng, x_exp),
        ),
        "gauss2d": Problem(
            name="gauss2d",
            description="Gpufit 2-D Gaussian on a 5x5 pixel grid, 5 parameters",
            x=x_gauss,
            model=gauss2d,
            jacobian_np=gauss2d_jacobian,
            sample=lambda n, rng: sample_gauss2d(n, rng, x_gauss),
        ),
    }


PROBLEMS: dict[str, Problem] = _make_problems()
