"""One large fit: 10^4-10^7 points, jaxlsq (dense and chunked J) against scipy.

The problem is the large-problems issue's: a Gaussian peak on a sloped background
(5 parameters), ``y = 3 exp(-((x - 5) / 0.8)^2 / 2) + 1 + 0.1 x`` plus N(0, 0.1^2)
noise on ``x = linspace(0, 10, m)``, started from ``[2, 4.5, 1, 0.5, 0]``. Each
(method, size) runs in its own subprocess, so first calls and peak memory are its
own: the first call (trace + compile + run), the best of ``--repeats`` warm calls,
the process's RSS before the first fit (imports and data) and its peak RSS.

Methods:

* ``scipy``: ``scipy.optimize.curve_fit`` (MINPACK lmdif, forward differences),
  numpy model;
* ``jaxlsq-curve_fit``: the scipy shim (``jaxlsq.scipy.curve_fit``), jax model;
* ``jaxlsq-dense``: ``jaxlsq.solve(..., chunk_points=None)``, the dense Jacobian;
* ``jaxlsq-chunked``: ``jaxlsq.solve`` with its default ``chunk_points="auto"``
  (`jaxlsq.core.chunked`: J in blocks of 4096 points in the loop; the (m, n) J
  once at the end, for ``Solution.jac``);
* ``jaxlsq-chunked-nojac``: the same with ``keep_jac=False``: no (m, n) J at all;
* ``nlsq``: ``nlsq.curve_fit``, when nlsq is installed (a benchmark-only install:
  ``pip install --no-deps --ignore-requires-python nlsq`` plus its dependencies).

Usage (from the repository root)::

    python benchmarks/large.py                        # 1e4, 1e5, 1e6, 4e6, 1e7
    python benchmarks/large.py --sizes 1e4,1e6 --methods scipy,jaxlsq-chunked
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (10_000, 100_000, 1_000_000, 4_000_000, 10_000_000)
METHODS = (
    "scipy",
    "jaxlsq-curve_fit",
    "jaxlsq-dense",
    "jaxlsq-chunked",
    "jaxlsq-chunked-nojac",
    "nlsq",
)
P_TRUE = (3.0, 5.0, 0.8, 1.0, 0.1)
P0 = (2.0, 4.5, 1.0, 0.5, 0.0)


def rss_mb() -> float:
    """The current resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def worker(method: str, m: int, dtype: str, repeats: int) -> dict:
    """Time one method on ``m`` points in this process; return the row."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 10.0, m).astype(dtype)

    def peak_np(x, a, mu, s, b0, b1):
        return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

    y = (peak_np(x, *P_TRUE) + 0.1 * rng.standard_normal(m)).astype(dtype)
    if method == "scipy":
        import scipy.optimize

        def call():
            return scipy.optimize.curve_fit(peak_np, x, y, p0=P0)[0]
    elif method == "nlsq":
        import jax.numpy as jnp
        import nlsq

        def peak_j(x, a, mu, s, b0, b1):
            return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

        fitter = nlsq.CurveFit()

        def call():  # nlsq 0.7 returns a result object (popt as .popt)
            res = fitter.curve_fit(peak_j, x, y, p0=P0)
            return np.asarray(res.popt if hasattr(res, "popt") else res[0])
    else:
        import jax

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        sys.path.insert(0, str(ROOT))
        import jaxlsq
        import jaxlsq.scipy

        def peak_j(x, a, mu, s, b0, b1):
            return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + b0 + b1 * x

        if method == "jaxlsq-curve_fit":

            def call():
                return jaxlsq.scipy.curve_fit(peak_j, x, y, p0=P0)[0]
        else:
            xj, yj, p0 = jnp.asarray(x), jnp.asarray(y), jnp.asarray(P0, dtype)
            chunk = None if method == "jaxlsq-dense" else "auto"
            keep_jac = method != "jaxlsq-chunked-nojac"

            def residuals(p, x, y):
                return peak_j(x, *p) - y

            def call():
                sol = jaxlsq.solve(
                    residuals, p0, (xj, yj), chunk_points=chunk, keep_jac=keep_jac
                )
                return np.asarray(sol.params)

    before = rss_mb()
    t = time.perf_counter()
    params = call()
    first = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        params = call()
        warm.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB -> MB
    return dict(
        method=method,
        m=m,
        first=first,
        warm=min(warm),
        rss_before=before,
        rss_peak=peak,
        params=[float(v) for v in params],
    )


def run_one(method: str, m: int, dtype: str, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", method, str(m), dtype, str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{method} m={m}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: list[dict], dtype: str, command: str) -> str:
    lines = [
        f"# One large fit, cpu, {dtype}",
        "",
        f"Generated {datetime.date.today()} by `{command}` on "
        f"{platform.processor() or platform.machine()}, "
        f"{platform.python_version()}. Warm: best of the repeats; RSS before: "
        "the process after its imports and data, before the first fit.",
        "",
        "| points | method | warm (s) | vs scipy | first call (s) | RSS before (MB) "
        "| peak RSS (MB) | max param dev vs scipy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_size: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_size.setdefault(row["m"], {})[row["method"]] = row
    for m, methods in sorted(by_size.items()):
        ref = methods.get("scipy")
        for name, row in methods.items():
            ratio = f"{row['warm'] / ref['warm']:.2f}x" if ref else "-"
            dev = (
                max(
                    abs(a - b)
                    for a, b in zip(row["params"], ref["params"], strict=True)
                )
                if ref
                else float("nan")
            )
            lines.append(
                f"| {m:.0e} | {name} | {row['warm']:.3f} | {ratio} | "
                f"{row['first']:.2f} | {row['rss_before']:.0f} | "
                f"{row['rss_peak']:.0f} | {dev:.1e} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        method, m, dtype, repeats = args.worker
        print(json.dumps(worker(method, int(m), dtype, int(repeats))))
        return
    methods = [m for m in args.methods.split(",") if m]
    if "nlsq" in methods and importlib.util.find_spec("nlsq") is None:
        print("nlsq is not installed: its rows are left out", file=sys.stderr)
        methods.remove("nlsq")
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for method in methods:
            row = run_one(method, size, args.dtype, args.repeats)
            if row is not None:
                rows.append(row)
                print(
                    f"{method:18s} m={size:.0e}  warm {row['warm']:.3f} s  first "
                    f"{row['first']:.2f} s  peak RSS {row['rss_peak']:.0f} MB",
                    flush=True,
                )
    command = "python benchmarks/large.py " + " ".join(argv or sys.argv[1:])
    text = report(rows, args.dtype, command.strip())
    out = Path(args.out) if args.out else RESULTS / f"large-cpu-{args.dtype}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
