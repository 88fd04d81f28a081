"""Latency of every entry point (issue 17): first call, warm call, new option set.

Each entry point runs in its own fresh process (float64, x64 on, a 50-point
exponential decay with 3 parameters), side by side with scipy:

* **first call**: trace + compile + run of the first fit in the process;
* **warm**: best of 30 further calls on new data (same shapes and options);
* **new options**: the first call with bounds added (``leastsq``: with
  ``full_output=True``; ``solve_batch``: with ``ftol`` changed; optimistix and
  jaxopt, which take tolerances as solver attributes: new tolerances);
* **XLA defaults**: the first call with jaxlsq's `CPU_COMPILER_OPTIONS` emptied;
* **cached first call**: the first call in a second process, with
  ``jaxlsq.enable_compilation_cache(dir)`` in both (the first one filled ``dir``).

    python benchmarks/latency.py [--only curve_fit,solve]
    python benchmarks/latency.py --breakdown   # where a warm call's time goes

Prints a markdown table. The machine is shared and noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One script per process: SETUP defines the data; each entry defines CALL(y) (the
# fit on data y), NEW(y) (the same with a new option set) and LIB (jaxlsq or scipy).
SETUP = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
t = np.linspace(0, 4, 50)
rng = np.random.default_rng(0)
def data(i):
    noise = np.random.default_rng(i).normal(size=50)
    return 2.0 * np.exp(-1.3 * t) + 0.1 + 0.01 * noise
def model_np(x, a, k, c): return a * np.exp(-k * x) + c
def model_jnp(x, a, k, c): return a * jnp.exp(-k * x) + c
def res_np(p, y): return p[0] * np.exp(-p[1] * t) + p[2] - y
def res_jnp(p, y): return p[0] * jnp.exp(-p[1] * t) + p[2] - y
p0 = [1.0, 1.0, 0.0]
lo, hi = [0.0, 0.0, -1.0], [10.0, 10.0, 1.0]
YS = np.stack([data(i) for i in range(100)])
"""

ENTRIES = {
    "scipy curve_fit": """
from scipy.optimize import curve_fit
CALL = lambda y: curve_fit(model_np, t, y, p0=p0)
NEW = lambda y: curve_fit(model_np, t, y, p0=p0, bounds=(lo, hi))
""",
    "jaxlsq curve_fit": """
from jaxlsq import curve_fit
CALL = lambda y: curve_fit(model_jnp, t, y, p0=p0)
NEW = lambda y: curve_fit(model_jnp, t, y, p0=p0, bounds=(lo, hi))
""",
    "scipy leastsq": """
from scipy.optimize import leastsq
CALL = lambda y: leastsq(res_np, p0, args=(y,))
NEW = lambda y: leastsq(res_np, p0, args=(y,), full_output=True)
""",
    "jaxlsq leastsq": """
from jaxlsq import leastsq
CALL = lambda y: leastsq(res_jnp, p0, args=(y,))
NEW = lambda y: leastsq(res_jnp, p0, args=(y,), full_output=True)
""",
    "scipy least_squares": """
from scipy.optimize import least_squares
CALL = lambda y: least_squares(res_np, p0, args=(y,))
NEW = lambda y: least_squares(res_np, p0, args=(y,), bounds=(lo, hi))
""",
    "jaxlsq least_squares": """
from jaxlsq import least_squares
CALL = lambda y: least_squares(res_jnp, p0, args=(y,))
NEW = lambda y: least_squares(res_jnp, p0, args=(y,), bounds=(lo, hi))
""",
    "jaxlsq solve": """
import jaxlsq
x0 = jnp.array(p0)
CALL = lambda y: jaxlsq.solve(res_jnp, x0, (jnp.asarray(y),)).params
NEW = lambda y: jaxlsq.solve(res_jnp, x0, (jnp.asarray(y),), bounds=(lo, hi)).params
""",
    "jaxlsq fit": """
import jaxlsq
model = lambda x, p: model_jnp(x, *p)  # one function: a new one would recompile
CALL = lambda y: jaxlsq.fit(model, t, y, p0).params
NEW = lambda y: jaxlsq.fit(model, t, y, p0, bounds=(lo, hi)).params
""",
    "jaxlsq solve_batch (100 curves)": """
import jaxlsq
x0 = jnp.array(p0)
CALL = lambda y: jaxlsq.solve_batch(res_jnp, x0, (jnp.asarray(YS + y[0]),),
                                    in_axes=(None, (0,))).params
NEW = lambda y: jaxlsq.solve_batch(res_jnp, x0, (jnp.asarray(YS + y[0]),),
                                   in_axes=(None, (0,)), ftol=1e-9).params
""",
    "jaxlsq fit_batch (100 curves)": """
import jaxlsq
model = lambda x, p: model_jnp(x, *p)
x0 = jnp.array(p0)
CALL = lambda y: jaxlsq.fit_batch(model, t, jnp.asarray(YS + y[0]), x0).params
NEW = lambda y: jaxlsq.fit_batch(model, t, jnp.asarray(YS + y[0]), x0,
                                 bounds=(lo, hi)).params
""",
    "optimistix least_squares": """
import optimistix as optx
solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
fn = lambda p, y: res_jnp(p, y)
x0 = jnp.array(p0)
run = jax.jit(lambda y: optx.least_squares(fn, solver, x0, args=y, throw=False).value)
CALL = lambda y: run(jnp.asarray(y))
solver9 = optx.LevenbergMarquardt(rtol=1e-9, atol=1e-9)  # a new option set
run9 = jax.jit(lambda y: optx.least_squares(fn, solver9, x0, args=y, throw=False).value)
NEW = lambda y: run9(jnp.asarray(y))
""",
    "optimistix jit(vmap) (100 curves)": """
import optimistix as optx
solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
fn = lambda p, y: res_jnp(p, y)
x0 = jnp.array(p0)
one = lambda y: optx.least_squares(fn, solver, x0, args=y, throw=False).value
run = jax.jit(jax.vmap(one))
CALL = lambda y: run(jnp.asarray(YS + y[0]))
solver9 = optx.LevenbergMarquardt(rtol=1e-9, atol=1e-9)
run9 = jax.jit(jax.vmap(lambda y: optx.least_squares(fn, solver9, x0, args=y,
                                                      throw=False).value))
NEW = lambda y: run9(jnp.asarray(YS + y[0]))
""",
    "jaxopt LevenbergMarquardt": """
import jaxopt
x0 = jnp.array(p0)
lm = jaxopt.LevenbergMarquardt(res_jnp, tol=1e-8, xtol=1e-8, gtol=1e-8)
run = jax.jit(lambda y: lm.run(x0, y).params)
CALL = lambda y: run(jnp.asarray(y))
lm9 = jaxopt.LevenbergMarquardt(res_jnp, tol=1e-9, xtol=1e-9, gtol=1e-9)
run9 = jax.jit(lambda y: lm9.run(x0, y).params)
NEW = lambda y: run9(jnp.asarray(y))
""",
    "jaxopt jit(vmap) (100 curves)": """
import jaxopt
x0 = jnp.array(p0)
lm = jaxopt.LevenbergMarquardt(res_jnp, tol=1e-8, xtol=1e-8, gtol=1e-8)
run = jax.jit(jax.vmap(lambda y: lm.run(x0, y).params))
CALL = lambda y: run(jnp.asarray(YS + y[0]))
lm9 = jaxopt.LevenbergMarquardt(res_jnp, tol=1e-9, xtol=1e-9, gtol=1e-9)
run9 = jax.jit(jax.vmap(lambda y: lm9.run(x0, y).params))
NEW = lambda y: run9(jnp.asarray(YS + y[0]))
""",
}

MEASURE = """
import jaxlsq
if sys.argv[1] == "xla-defaults":
    jaxlsq.core.compiler.CPU_COMPILER_OPTIONS.clear()
elif sys.argv[1]:
    jaxlsq.enable_compilation_cache(sys.argv[1])
def timed(f, y):
    s = time.perf_counter(); jax.block_until_ready(f(y)); return time.perf_counter() - s
first = timed(CALL, data(1))
warm = min(timed(CALL, data(i)) for i in range(2, 32))
new = timed(NEW, data(40))
print(json.dumps({"first": first, "warm": warm, "new": new}))
"""


BREAKDOWN = """
import jaxlsq
import jaxlsq.scipy.run as shim_run
from scipy.optimize import curve_fit as scipy_curve_fit, leastsq as scipy_leastsq
def best(f, reps=200):
    out = []
    for i in range(reps):
        y = data(i % 30)
        s = time.perf_counter()
        jax.block_until_ready(f(y))
        out.append(time.perf_counter() - s)
    return min(out)
recorded = {}
inner = shim_run._solve_packed
def recording(*a):
    recorded["args"] = a
    return inner(*a)
shim_run._solve_packed = recording
model = lambda x, p: model_jnp(x, *p)
rows = {}
for name, call in [
    ("leastsq", lambda y: jaxlsq.leastsq(res_jnp, p0, args=(y,))),
    ("curve_fit", lambda y: jaxlsq.curve_fit(model_jnp, t, y, p0=p0)),
]:
    call(data(0))
    total = best(call)
    args = recorded["args"]
    program = best(lambda y: np.array(inner(*args)))
    rows[name] = (total, program)
fit_eager = lambda y: jaxlsq.fit(model, t, y, p0).params
fit_eager(data(0))
fit_jit = jax.jit(lambda y: jaxlsq.fit(model, t, y, p0).params)
fit_jit(data(0))
rows["fit"] = (best(fit_eager), best(fit_jit))
empty = jax.jit(lambda y: y)
empty(data(0))
dispatch = best(lambda y: np.array(empty(y)))
scipy_rows = {
    "leastsq": best(lambda y: scipy_leastsq(res_np, p0, args=(y,))),
    "curve_fit": best(lambda y: scipy_curve_fit(model_np, t, y, p0=p0)),
}
scipy_rows["fit"] = scipy_rows["curve_fit"]
print(json.dumps({"rows": rows, "dispatch": dispatch, "scipy": scipy_rows}))
"""


def breakdown() -> None:
    """Where a warm call's time goes, in one process: the whole call, the compiled
    program alone (the shims' one jitted call with the same arguments, plus the
    transfer back; `fit`: the same fit inside the user's ``jax.jit``), and the
    floor of one jit dispatch and transfer (an identity function)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", SETUP + BREAKDOWN],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    got = json.loads(out.stdout.splitlines()[-1])
    print(
        "| warm call | whole call | compiled program + transfer | Python around it "
        "| scipy's whole call |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, (total, program) in got["rows"].items():
        print(
            f"| {name} | {1e6 * total:,.0f} µs | {1e6 * program:,.0f} µs "
            f"| {1e6 * (total - program):,.0f} µs "
            f"| {1e6 * got['scipy'][name]:,.0f} µs |"
        )
    print(f"\nOne jit dispatch + transfer (identity): {1e6 * got['dispatch']:,.0f} µs")


def run(entry: str, mode: str = "") -> dict:
    """One fresh process; ``mode``: "" (as shipped), "xla-defaults" (jaxlsq's
    `CPU_COMPILER_OPTIONS` emptied), or a cache directory."""
    script = SETUP + ENTRIES[entry] + MEASURE
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated entry names")
    parser.add_argument(
        "--breakdown", action="store_true", help="where a warm call's time goes"
    )
    if parser.parse_args().breakdown:
        breakdown()
        return
    names = [n for n in ENTRIES if not parser.parse_args().only or any(
        part in n for part in parser.parse_args().only.split(","))]  # fmt: skip
    print(
        "| entry point | first call | first call, XLA defaults | warm | new options "
        "| cached first call |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        row = run(name)
        defaults = cached = "—"
        if name.startswith("jaxlsq"):
            defaults = f"{run(name, 'xla-defaults')['first']:.3f} s"
            with tempfile.TemporaryDirectory() as cache:
                run(name, cache)  # fills the cache
                cached = f"{run(name, cache)['first']:.3f} s"
        print(
            f"| {name} | {row['first']:.3f} s | {defaults} "
            f"| {1e6 * row['warm']:,.0f} µs | {row['new']:.3f} s | {cached} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
