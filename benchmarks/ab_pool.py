"""The refill pool of two revisions side by side: `benchmarks/poisson.py`'s spots,
both pools in one process, interleaved, so their ratio is meaningful on a noisy
machine.

The old pool is `jaxlsq/batch/pool.py` as of ``--old`` (a git revision), loaded as a
sibling module of the current one and swapped into `solve_batch`; everything else is
the working tree. Each timed call follows a compile of its own (``jax.clear_caches``
first: a cached program of the other pool would otherwise be reused). Reported per
case and pool: warm seconds (best of ``--rounds``), first call (trace + compile +
run), and how many fits differ between the pools, with the largest relative change
of a parameter.

Usage (from the repository root)::

    python benchmarks/ab_pool.py --old 3f61d5a --n 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT))

import poisson  # noqa: E402

import jaxlsq.batch.pool as new_pool  # noqa: E402
import jaxlsq.batch.solve_batch as solve_batch  # noqa: E402


def load_old_pool(rev: str):
    """`jaxlsq.batch.pool` at git revision ``rev``, as module ``jaxlsq.batch._old``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:jaxlsq/batch/pool.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader("jaxlsq.batch._old", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "jaxlsq.batch"
    exec(compile(text, f"{rev}:jaxlsq/batch/pool.py", "exec"), module.__dict__)
    return module


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="git revision of the old pool")
    ap.add_argument("--n", type=int, default=10_000, help="spots per batch")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    pools = {"old": load_old_pool(args.old).solve_refill, "new": new_pool.solve_refill}
    x, y, p0, _ = poisson.sample(args.n)
    first, warm, fits = {}, {}, {}
    for _ in range(args.rounds):
        for case in poisson.CASES:
            for name, pool in pools.items():
                solve_batch.solve_refill = pool
                jax.clear_caches()
                t0 = time.perf_counter()
                fits[case, name] = poisson.run_once(x, y, p0, *case)
                t1 = time.perf_counter()
                poisson.run_once(x, y, p0, *case)
                t2 = time.perf_counter()
                key = case, name
                first[key] = min(first.get(key, np.inf), t1 - t0)
                warm[key] = min(warm.get(key, np.inf), t2 - t1)
    print(f"old = {args.old}, new = working tree; N = {args.n}, {jax.devices()[0]}")
    print(
        "| estimator | bounds | warm s old → new (speedup) | first call s old → new "
        "| max nfev | fits differing | max relative change |"
    )
    print("|---|---|---|---|---|---|---|")
    for case in poisson.CASES:
        a, b = (fits[case, k] for k in ("old", "new"))
        pa, pb = np.asarray(a.params), np.asarray(b.params)
        differ = np.any(pa != pb, axis=1) | (np.asarray(a.nfev) != np.asarray(b.nfev))
        change = np.max(np.abs(pa - pb) / np.maximum(np.abs(pa), 1e-300))
        wo, wn = warm[case, "old"], warm[case, "new"]
        print(
            f"| {case[0]} | {'>= 0' if case[1] else 'none'} | {wo:.3f} → {wn:.3f} "
            f"({wo / wn:.2f}×) | {first[case, 'old']:.1f} → {first[case, 'new']:.1f} "
            f"| {int(np.max(b.nfev))} | {int(differ.sum())} of {args.n} "
            f"| {change:.1e} |"
        )


if __name__ == "__main__":
    main()
