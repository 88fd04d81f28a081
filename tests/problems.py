"""Classic test problems of Moré, Garbow & Hillstrom (1981), in jax.numpy.

Each entry: ``name -> (residual(x) -> (m,), x0)``. The residuals take no ``args`` so the
same function works with jaxlsq and (wrapped in numpy) with scipy's MINPACK.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def rosenbrock(x):
    return jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def freudenstein_roth(x):
    return jnp.stack(
        [
            -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
            -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
        ]
    )


def powell_badly_scaled(x):
    return jnp.stack([1e4 * x[0] * x[1] - 1, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def helical_valley(x):
    theta = jnp.arctan2(x[1], x[0]) / (2 * jnp.pi)
    r = jnp.sqrt(x[0] ** 2 + x[1] ** 2)
    return jnp.stack([10 * (x[2] - 10 * theta), 10 * (r - 1), x[2]])


def powell_singular(x):
    return jnp.stack(
        [
            x[0] + 10 * x[1],
            jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2,
            jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


_BARD_Y = np.array(
    [
        0.14,
        0.18,
        0.22,
        0.25,
        0.29,
        0.32,
        0.35,
        0.39,
        0.37,
        0.58,
        0.73,
        0.96,
        1.34,
        2.10,
        4.39,
    ]
)


def bard(x):
    u = np.arange(1.0, 16.0)
    v = 16 - u
    w = np.minimum(u, v)
    return _BARD_Y - (x[0] + u / (x[1] * v + x[2] * w))


_KOWALIK_Y = np.array(
    [
        0.1957,
        0.1947,
        0.1735,
        0.1600,
        0.0844,
        0.0627,
        0.0456,
        0.0342,
        0.0323,
        0.0235,
        0.0246,
    ]
)
_KOWALIK_U = np.array(
    [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]
)


def kowalik_osborne(x):
    u = _KOWALIK_U
    return _KOWALIK_Y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


_MEYER_Y = np.array(
    [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147,
     4427, 3820, 3307, 2872], dtype=float
)  # fmt: skip


def meyer(x):
    t = 45 + 5 * np.arange(1.0, 17.0)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - _MEYER_Y


_OSBORNE1_Y = np.array(
    [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751, 0.718,
     0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490, 0.478, 0.467,
     0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406]
)  # fmt: skip


def osborne1(x):
    t = 10 * np.arange(33.0)
    return _OSBORNE1_Y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def box3d(x):
    t = 0.1 * np.arange(1.0, 11.0)
    return (
        jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (np.exp(-t) - np.exp(-10 * t))
    )


def jennrich_sampson(x):
    i = np.arange(1.0, 11.0)
    return 2 + 2 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def brown_dennis(x):
    t = np.arange(1.0, 21.0) / 5
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (
        x[2] + x[3] * jnp.sin(t) - jnp.cos(t)
    ) ** 2


def linear_full_rank(x):
    m = 10
    s = jnp.sum(x)
    head = x - 2 * s / m - 1
    tail = jnp.full((m - x.shape[0],), -2 * s / m - 1)
    return jnp.concatenate([head, tail])


def linear_rank_one(x):
    m = 10
    j = np.arange(1.0, x.shape[0] + 1)
    i = np.arange(1.0, m + 1)
    return i * jnp.sum(j * x) - 1


ZOO = {
    "rosenbrock": (rosenbrock, [-1.2, 1.0]),
    "freudenstein_roth": (freudenstein_roth, [0.5, -2.0]),
    "powell_badly_scaled": (powell_badly_scaled, [0.0, 1.0]),
    "helical_valley": (helical_valley, [-1.0, 0.0, 0.0]),
    "powell_singular": (powell_singular, [3.0, -1.0, 0.0, 1.0]),
    "bard": (bard, [1.0, 1.0, 1.0]),
    "kowalik_osborne": (kowalik_osborne, [0.25, 0.39, 0.415, 0.39]),
    "meyer": (meyer, [0.02, 4000.0, 250.0]),
    "osborne1": (osborne1, [0.5, 1.5, -1.0, 0.01, 0.02]),
    "box3d": (box3d, [0.0, 10.0, 20.0]),
    "jennrich_sampson": (jennrich_sampson, [0.3, 0.4]),
    "brown_dennis": (brown_dennis, [25.0, 5.0, -5.0, -1.0]),
    "linear_full_rank": (linear_full_rank, [1.0] * 5),
    "linear_rank_one": (linear_rank_one, [1.0] * 5),
}
