"""What a callable robust loss and a ``callback`` cost in `jaxlsq.least_squares`,
against the built-in loss and no callback (issue 14): first call (trace + compile
+ run) and warm time (best of 20), for a 50-point exponential decay with outliers
and soft_l1 written four ways; then the linear fit with and without a callback
(each accepted step is a host round trip from inside the compiled loop, see
`jaxlsq.core.monitor`), and scipy's trf with the same callbacks for scale.

    python benchmarks/loss_cost.py
"""

import contextlib
import io
import time
import warnings

import jax.numpy as jnp
import numpy as np
import scipy.optimize as so

import jaxlsq

warnings.simplefilter("ignore")
t = np.linspace(0, 3, 50)
y = 2 * np.exp(-1.5 * t) + 0.5 + 0.01 * np.sin(9 * t)
y[::6] += 1
res = lambda p: p[0] * jnp.exp(-p[1] * t) + p[2] - y


def soft_jnp(z):
    s = 1 + z
    return jnp.stack([2 * (s**0.5 - 1), s**-0.5, -0.5 * s**-1.5])


def soft_np(z):
    rho = np.empty((3, z.size))
    s = 1 + z
    rho[0] = 2 * (s**0.5 - 1)
    rho[1] = s**-0.5
    rho[2] = -0.5 * s**-1.5
    return rho


soft_alone = lambda z: 2 * ((1 + z) ** 0.5 - 1)
for name, loss in [
    ("builtin soft_l1", "soft_l1"),
    ("jnp rows", soft_jnp),
    ("jnp rho alone", soft_alone),
    ("numpy rows (host)", soft_np),
]:
    t0 = time.perf_counter()
    r = jaxlsq.least_squares(res, [1.0, 1.0, 0.0], loss=loss, f_scale=0.3)
    first = time.perf_counter() - t0
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        jaxlsq.least_squares(res, [1.0, 1.0, 0.0], loss=loss, f_scale=0.3)
        ts.append(time.perf_counter() - t0)
    print(f"| {name} | {first:.2f} s | {1e3 * min(ts):.2f} ms | {r.nfev} |")


def timed(call):
    t0 = time.perf_counter()
    r = call()
    first = time.perf_counter() - t0
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return r, first, min(ts)


res_np = lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y
print()
print("| callback (method='trf', linear loss) | first call | warm | nfev |")
print("|---|---|---|---|")
for name, kw in [
    ("none", {}),
    ("callback(intermediate_result)", dict(callback=lambda intermediate_result: None)),
    ("callback(x)", dict(callback=lambda x: None)),
    ("verbose=2 (to a buffer)", dict(verbose=2)),
]:
    for lib, fun in (("jaxlsq", res), ("scipy", res_np)):
        mod = jaxlsq if lib == "jaxlsq" else so
        with contextlib.redirect_stdout(io.StringIO()):
            r, first, warm = timed(
                lambda mod=mod, fun=fun, kw=kw: mod.least_squares(
                    fun, [1.0, 1.0, 0.0], **kw
                )
            )
        print(f"| {lib}: {name} | {first:.2f} s | {1e3 * warm:.2f} ms | {r.nfev} |")
