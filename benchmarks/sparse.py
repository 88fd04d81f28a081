"""Many parameters, sparse Jacobian: a global fit, jaxlsq (cg) against scipy (lsmr).

The problem is the large-problems issue's: K decay curves of 50 points on
``t = linspace(0, 5, 50)``, ``y_k = a_k exp(-t / tau) + b_k`` plus N(0, 0.01^2)
noise, fitted globally with one shared lifetime ``tau``: n = 2K + 1 parameters
``[tau, a_1..a_K, b_1..b_K]``, m = 50K residuals, a Jacobian with 3 nonzeros per
row whose columns fall into 3 colour groups. Started from ``tau = 1, a = 1,
b = 0``, float64. All methods run in this one process, one after another, on the
same data; warm time is the best of ``--repeats`` calls after the first.

Methods:

* ``scipy``: ``scipy.optimize.least_squares(tr_solver="lsmr", jac_sparsity=S)``
  (trf, finite differences by colour groups, LSMR at its default tolerances),
  numpy residual;
* ``jaxlsq-cg``: ``jaxlsq.solve(linear_solver="cg", jac_sparsity=S)`` with the
  same scipy matrix ``S`` each call (its conversion and digest are in the time);
* ``jaxlsq-cg-pattern``: the same with ``S`` converted once
  (``jaxlsq.core.sparsity.as_pattern``), the time of the solve alone;
* ``jaxlsq-cg-jvp``: ``linear_solver="cg"`` without a pattern (column norms by
  n unit jvps per Jacobian: the cost grows as n * m; small K only);
* ``jaxlsq-dense``: ``jaxlsq.solve(jac_sparsity=S)``, J by colours but dense
  SVD steps (n^2 m: small K only).

Usage (from the repository root)::

    python benchmarks/sparse.py                    # K = 100, 500, 5000, 20000
    python benchmarks/sparse.py --curves 5000 --methods scipy,jaxlsq-cg
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CURVES = (100, 500, 5000, 20000)
METHODS = ("scipy", "jaxlsq-cg", "jaxlsq-cg-pattern", "jaxlsq-cg-jvp", "jaxlsq-dense")
# Beyond these n the method's cost (n * m per Jacobian, or n^2 m) is minutes.
MAX_N = {"jaxlsq-cg-jvp": 1001, "jaxlsq-dense": 201}
POINTS = 50


def problem(k: int, seed: int = 0):
    """``(t, ys, pattern, p0)``: the data (k, 50), the (m, n) scipy CSR pattern
    and the start (n,)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 5.0, POINTS)
    a, b = rng.uniform(1, 3, k), rng.uniform(-0.5, 0.5, k)
    ys = a[:, None] * np.exp(-t / 1.3) + b[:, None]
    ys = ys + 0.01 * rng.standard_normal(ys.shape)
    rows = np.arange(k * POINTS)
    curve = rows // POINTS
    cols = np.r_[0 * rows, 1 + curve, 1 + k + curve]
    pattern = sp.csr_matrix(
        (np.ones(3 * rows.size), (np.r_[rows, rows, rows], cols)),
        shape=(rows.size, 2 * k + 1),
    )
    return t, ys, pattern, np.r_[1.0, np.ones(k), np.zeros(k)]


def residuals(p, t, ys):
    """The global residuals (m,) of parameters ``p`` (n,), jax."""
    import jax.numpy as jnp

    k = ys.shape[0]
    return (p[1 : k + 1, None] * jnp.exp(-t / p[0]) + p[k + 1 :, None] - ys).ravel()


def timed(call, repeats: int):
    """(first call s, best warm s, result) of ``call()``."""
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    warm = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        warm = min(warm, time.perf_counter() - t0)
    return first, warm, out


def run(method: str, k: int, repeats: int) -> dict:
    import jax.numpy as jnp

    import jaxlsq
    from jaxlsq.core.sparsity import as_pattern

    t, ys, pattern, p0 = problem(k)
    if method == "scipy":

        def fun(p):
            return (
                p[1 : k + 1, None] * np.exp(-t / p[0]) + p[k + 1 :, None] - ys
            ).ravel()

        def call():
            r = least_squares(fun, p0, jac_sparsity=pattern, tr_solver="lsmr")
            return r.x, r.cost, r.nfev, r.status

    else:
        args = (jnp.asarray(t), jnp.asarray(ys))
        kw = {
            "jaxlsq-cg": dict(linear_solver="cg", jac_sparsity=pattern),
            "jaxlsq-cg-pattern": dict(
                linear_solver="cg", jac_sparsity=as_pattern(pattern)
            ),
            "jaxlsq-cg-jvp": dict(linear_solver="cg"),
            "jaxlsq-dense": dict(jac_sparsity=pattern),
        }[method]

        def call():
            s = jaxlsq.solve(residuals, jnp.asarray(p0), args, **kw)
            s.cost.block_until_ready()
            return np.asarray(s.params), float(s.cost), int(s.nfev), int(s.status)

    first, warm, (x, cost, nfev, status) = timed(call, repeats)
    sizes = dict(k=k, n=2 * k + 1, m=k * POINTS)
    times = dict(first=first, warm=warm)
    return dict(method=method, **sizes, **times, cost=cost, nfev=nfev, status=status,
                tau=float(x[0]))  # fmt: skip


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Global fit, sparse Jacobian, cpu, float64",
        "",
        f"Generated {datetime.date.today()} by `{command}` on "
        f"{platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, jax {jax.__version__}. Warm: best of the "
        "repeats; ratio: scipy's warm time over the row's (> 1: faster than scipy). "
        "The first call of `jaxlsq-cg-pattern` reuses the program `jaxlsq-cg` "
        "compiled (the same pattern is the same static option).",
        "",
        "| K curves | n | method | warm (s) | speed-up vs scipy | first call (s) "
        "| nfev | cost | tau |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {r["k"]: r for r in rows if r["method"] == "scipy"}
    for r in rows:
        base = ref.get(r["k"])
        ratio = f"{base['warm'] / r['warm']:.1f}x" if base else "-"
        lines.append(
            f"| {r['k']} | {r['n']} | {r['method']} | {r['warm']:.3f} | {ratio} | "
            f"{r['first']:.2f} | {r['nfev']} | {r['cost']:.10g} | {r['tau']:.8f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=",".join(str(c) for c in CURVES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # this script's own choice
    rows = []
    for k in (int(float(c)) for c in args.curves.split(",")):
        for method in args.methods.split(","):
            if 2 * k + 1 > MAX_N.get(method, np.inf):
                continue
            row = run(method, k, args.repeats)
            rows.append(row)
            print(
                f"{method:18s} K={k:6d}  warm {row['warm']:.3f} s  first "
                f"{row['first']:.2f} s  nfev {row['nfev']}  cost {row['cost']:.10g}",
                flush=True,
            )
    import sys

    command = "python benchmarks/sparse.py " + " ".join(argv or sys.argv[1:])
    text = report(rows, command.strip())
    out = Path(args.out) if args.out else RESULTS / "sparse-cpu-float64.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
