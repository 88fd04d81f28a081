"""Batched least-squares benchmark: jaxlsq against scipy, optimistix and jaxopt.

All methods run side by side in one process on the same data, so their ratios are
meaningful even on a noisy machine. For each problem and batch size N it reports warm
throughput (fits/s), first-call time (trace + compile + run), warm single-fit latency
(N = 1), how often each method reaches MINPACK's cost, iterations, failures and the
compiled program's buffer memory. A markdown report is printed and written to
``benchmarks/results/<backend>-<dtype>.md`` (or ``--out``).

Usage (from the repository root)::

    python benchmarks/run.py                      # defaults: float64, N up to 2e4
    python benchmarks/run.py --dtype float32
    python benchmarks/run.py --quick              # smoke run, N = 1, 100
    python benchmarks/run.py --sizes 1,100,1e4 --problems expdecay

jaxlsq is imported from the installed package, or from this checkout if it is not
installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SIZES = (1, 100, 10_000, 20_000)
QUICK_SIZES = (1, 100)
HEADLINE_PROBLEM = "expdecay"


@dataclasses.dataclass
class Row:
    """One line of a results table: one method at one batch size."""

    method: str
    n: int | None
    fits_per_s: float | None = None
    first_s: float | None = None
    latency_us: float | None = None
    good: int | None = None
    checked: int | None = None
    iters: np.ndarray | None = None
    n_fail: int | None = None
    mem_mib: float | None = None
    statuses: dict[int, int] | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Reference:
    """MINPACK (scipy + Dfun) on the first curves of a batch: the quality yardstick."""

    cost: np.ndarray
    njev: np.ndarray
    rtol: float


# ----------------------------------------------------------------------------------
# command line and environment


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, help="e.g. 1,100,1e4")
    p.add_argument("--quick", action="store_true", help="smoke run: N = 1, 100")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--problems", default="expdecay,gauss2d")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated keys: jaxlsq, jaxlsq-eigh, jaxlsq-scipytols, "
        "jaxlsq-batch, jaxlsq-batch-refill, jaxlsq-batch-scipytols, optimistix, "
        "jaxopt, speed-of-light, scipy-dfun, scipy-fd (default: all)",
    )
    p.add_argument("--out", type=Path, default=None, help="markdown report path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scipy-max-n", type=int, default=10_000)
    p.add_argument("--scipy-budget", type=float, default=10.0, help="seconds per row")
    p.add_argument("--quality-n", type=int, default=2000, help="curves scored")
    p.add_argument(
        "--repeat-s", type=float, default=2.0, help="warm timing: seconds per row"
    )
    p.add_argument("--no-shim", action="store_true", help="skip the leastsq section")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = QUICK_SIZES
    if args.out is None:
        suffix = "-quick" if args.quick else ""
        args.out = RESULTS / f"{jax.default_backend()}-{args.dtype}{suffix}.md"
    args.problems = _names(args.problems)
    if args.methods is not None:
        args.methods = _names(args.methods)
    return args


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _check_choices(kind: str, given: list[str], known) -> None:
    unknown = [g for g in given if g not in known]
    if unknown:
        raise SystemExit(f"unknown {kind}(s) {unknown}; choose from {list(known)}")


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(float(s)) for s in text.split(",") if s.strip()}))


def import_jaxlsq():
    """Import jaxlsq, falling back to this checkout when it is not installed."""
    if importlib.util.find_spec("jaxlsq") is None:
        sys.path.insert(0, str(ROOT))
    import jaxlsq

    return jaxlsq


def machine_info(dtype: str, versions: dict[str, str]) -> list[tuple[str, str]]:
    """What the numbers were taken on, as (label, value) pairs."""
    import jaxlib

    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("command", shlex.join([Path(sys.executable).name, *sys.argv])),
        ("git", _git_revision()),
        ("CPU", f"{_cpu_model()}, {cores} cores ({usable} usable)"),
        ("load average at start", "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())),
        ("jax / jaxlib", f"{jax.__version__} / {jaxlib.__version__}"),
        ("backend", f"{jax.default_backend()} ({devices})"),
        ("dtype", dtype),
        ("python / numpy", f"{platform.python_version()} / {np.__version__}"),
        *versions.items(),
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return rev.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def solver_tol(dtype: str) -> float:
    """Tolerance given to optimistix and jaxopt.

    1e-8 in float64; in float32 1e-8 is below the precision, so sqrt(eps) (3.5e-4),
    the same default jaxlsq and MINPACK use.
    """
    return 1e-8 if dtype == "float64" else float(np.sqrt(np.finfo(np.float32).eps))


def quality_rtol(dtype: str) -> float:
    """Relative cost slack for "as good as MINPACK": 1e-6, or sqrt(eps) in float32."""
    return max(1e-6, float(np.sqrt(np.finfo(dtype).eps)))


# ----------------------------------------------------------------------------------
# measuring


def repeat_timing(
    call: Callable[[], object],
    min_reps: int = 3,
    max_reps: int = 200,
    target_s: float = 1.0,
) -> tuple[float, int]:
    """Median seconds of ``call()`` over at least ``min_reps`` runs.

    Repeats until ``target_s`` seconds have been spent or ``max_reps`` runs are done.
    Returns ``(median, reps)``.
    """
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < target_s and len(times) < max_reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def xla_memory_mib(fn, *args) -> float | None:
    """Arguments + outputs + temporaries of the compiled program, in MiB.

    XLA's static buffer assignment for ``fn(*args)``: the peak the program itself
    needs, without allocator overhead; available on CPU and GPU alike. The
    compilation is cached, so this costs no second compile.
    """
    try:
        stats = fn.lower(*args).compile().memory_analysis()
        total = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
        return total / 2**20
    except Exception:  # not provided by every backend / jax version
        return None


def score(problem, params, ys, ref: Reference) -> tuple[int, int]:
    """How many fits reach MINPACK's cost on the same curve, and how many were checked.

    A fit counts when ``cost <= ref_cost * (1 + rtol) + 1e-12``, both costs
    evaluated in float64 from the returned parameters.
    """
    q = min(len(params), len(ref.cost))
    cost = problem.cost64(params[:q], ys[:q])
    ok = cost <= ref.cost[:q] * (1 + ref.rtol) + 1e-12
    return int(np.sum(ok)), q


def _histogram(codes) -> dict[int, int]:
    values, counts = np.unique(np.asarray(codes), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _progress(problem: str, row: Row) -> None:
    rate = f"{row.fits_per_s:,.0f} fits/s" if row.fits_per_s else "-"
    first = f", first call {row.first_s:.2f} s" if row.first_s is not None else ""
    print(f"  [{problem}] {row.method} N={row.n}: {rate}{first} {row.note}", flush=True)


# ----------------------------------------------------------------------------------
# running the methods


def run_batched(method, problem, p0s, ys, ref, args) -> list[Row]:
    """One row per batch size for a jitted, vmapped solver."""
    dtype = args.dtype
    if method.unavailable:
        return [Row(method.name, None, note=method.unavailable)]
    x = jnp.asarray(problem.x, dtype)
    rows = []
    try:
        fn = method.build(problem, x, solver_tol(dtype))
    except Exception as err:
        return [Row(method.name, None, note=f"error: {_describe(err)}")]
    for n in args.sizes:
        p0 = jax.device_put(jnp.asarray(p0s[:n], dtype))
        y = jax.device_put(jnp.asarray(ys[:n], dtype))
        try:
            row = _time_batched(method.name, fn, p0, y, problem, ys, ref, args.repeat_s)
        except Exception as err:  # e.g. a peer broken against this jax version
            rows.append(Row(method.name, n, note=f"error: {_describe(err)}"))
            _progress(problem.name, rows[-1])
            break
        rows.append(row)
        _progress(problem.name, row)
    return rows


def _time_batched(name, fn, p0, y, problem, ys, ref, repeat_s) -> Row:
    n = p0.shape[0]
    start = time.perf_counter()
    out = jax.block_until_ready(fn(p0, y))
    first = time.perf_counter() - start
    warm, reps = repeat_timing(
        lambda: jax.block_until_ready(fn(p0, y)), target_s=repeat_s
    )
    out = {k: None if v is None else np.asarray(v) for k, v in out.items()}
    good, checked = score(problem, out["params"], ys, ref)
    success = out["success"]
    return Row(
        method=name,
        n=n,
        fits_per_s=n / warm,
        first_s=first,
        latency_us=warm * 1e6 if n == 1 else None,
        good=good,
        checked=checked,
        iters=out["iters"],
        n_fail=None if success is None else int(np.sum(~success)),
        mem_mib=xla_memory_mib(fn, p0, y),
        statuses=None if out["status"] is None else _histogram(out["status"]),
        note=f"median of {reps}",
    )


def run_loop(method, problem, p0s, ys, ref, args) -> list[Row]:
    """One row per batch size (up to ``--scipy-max-n``) for scipy in a Python loop."""
    import peers

    rows = []
    for n in [s for s in args.sizes if s <= args.scipy_max_n]:

        def one_pass(n=n):
            return peers.scipy_loop(
                problem, p0s[:n], ys[:n], method.use_dfun, args.scipy_budget
            )

        params, ier, seconds = one_pass()
        k = len(params)
        note = f"(timed on {k} fits)" if k < n else ""
        if k == n and seconds < 0.2:  # small batch: take a median of repeats
            seconds, reps = repeat_timing(one_pass, target_s=args.repeat_s)
            note = f"median of {reps}"
        good, checked = score(problem, params, ys, ref)
        iters = ref.njev[:k] if method.use_dfun else None  # on the scored curves
        row = Row(
            method=method.name,
            n=n,
            fits_per_s=k / seconds,
            latency_us=seconds * 1e6 if n == 1 else None,
            good=good,
            checked=checked,
            iters=iters,
            n_fail=int(np.sum((ier < 1) | (ier > 4))),
            statuses=_histogram(ier),
            note=note,
        )
        rows.append(row)
        _progress(problem.name, row)
    return rows


def _describe(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}"


def run_problem(problem, args) -> tuple[list[Row], str]:
    """All methods on one problem; returns the rows and a one-line data summary."""
    import peers

    dtype = args.dtype
    n_max = max(args.sizes)
    batch = problem.batch(n_max, args.seed)
    # Everyone fits the data as stored in the benchmark dtype.
    ys, p0s = batch.y.astype(dtype), batch.p0.astype(dtype)
    q = min(n_max, args.quality_n)
    print(f"[{problem.name}] MINPACK reference on {q} curves", flush=True)
    _, ref_cost, njev, ier = peers.minpack_reference(problem, p0s[:q], ys[:q])
    ref = Reference(cost=ref_cost, njev=njev, rtol=quality_rtol(dtype))
    summary = (
        f"{problem.description}. MINPACK reference (scipy + Dfun, float64) on the "
        f"first {q} curves: ier {_histogram(ier)}, "
        f"median cost {np.median(ref_cost):.4g}."
    )
    rows: list[Row] = []
    for method in _selected(peers.BATCHED_METHODS, args.methods):
        rows += run_batched(method, problem, p0s, ys, ref, args)
    for method in _selected(peers.LOOP_METHODS, args.methods):
        rows += run_loop(method, problem, p0s, ys, ref, args)
    return rows, summary


def _selected(methods, keys: list[str] | None):
    return methods if keys is None else [m for m in methods if m.key in keys]


# ----------------------------------------------------------------------------------
# scipy-compatible shim: single-call latency


def shim_latency(jaxlsq, dtype: str, seed: int, reps: int = 50) -> list[str]:
    """Markdown lines: ``jaxlsq.leastsq`` vs ``scipy.optimize.leastsq``, one fit."""
    if not hasattr(jaxlsq, "leastsq"):
        return ["`jaxlsq.leastsq` is not present in this version: section skipped."]
    from problems import PROBLEMS
    from scipy.optimize import leastsq

    problem = PROBLEMS["expdecay"]
    batch = problem.batch(1, seed)
    x64, y64 = problem.x, batch.y[0].astype(dtype).astype(np.float64)
    p0 = batch.p0[0].astype(dtype)
    xj, yj = jnp.asarray(x64, dtype), jnp.asarray(y64, dtype)

    def residual(p, x, y):  # a fresh function: its first call really compiles
        return problem.model(p, x, jnp) - y

    cases = [
        ("jaxlsq.leastsq, jnp residual", jaxlsq.leastsq, residual, (xj, yj), {}),
        (
            "jaxlsq.leastsq, numpy residual (host path)",
            jaxlsq.leastsq,
            problem.residual_np,
            (x64, y64),
            {},
        ),
        ("scipy leastsq, same jnp residual", leastsq, residual, (xj, yj), {}),
        ("scipy leastsq, numpy residual", leastsq, problem.residual_np, (x64, y64), {}),
        (
            "scipy leastsq, numpy residual + Dfun",
            leastsq,
            problem.residual_np,
            (x64, y64),
            {"Dfun": problem.jacobian_np},
        ),
    ]
    lines = [
        "| call | first call (ms) | warm median (µs) | cost |",
        "|---|---:|---:|---:|",
    ]
    for label, solver, fun, fargs, kw in cases:
        try:
            first, warm, params = _time_single(solver, fun, p0, fargs, kw, reps)
            cost = float(problem.cost64(params, y64))
            lines.append(
                f"| {label} | {first * 1e3:.1f} | {warm * 1e6:,.0f} | {cost:.6g} |"
            )
        except Exception as err:
            lines.append(f"| {label} | error: {_describe(err)} | | |")
        print(f"  [shim] {lines[-1]}", flush=True)
    lines.append("")
    lines.append(f"Warm times are the median of {reps} calls on one expdecay curve.")
    return lines


def _time_single(solver, fun, p0, fargs, kw, reps):
    def call():
        with warnings.catch_warnings():  # the host path says so once; expected here
            warnings.simplefilter("ignore")
            out = solver(fun, p0, args=fargs, **kw)
        return jax.block_until_ready(out)

    start = time.perf_counter()
    out = call()
    first = time.perf_counter() - start
    warm, _ = repeat_timing(call, min_reps=reps, max_reps=reps)
    return first, warm, np.asarray(out[0], np.float64)


# ----------------------------------------------------------------------------------
# report


COLUMNS = (
    "| method | N | fits/s (warm) | first call (s) | latency N=1 (µs) "
    "| as good as MINPACK | iters med / max | failed | XLA buffers (MiB) | notes |"
)


def format_table(rows: list[Row]) -> list[str]:
    """The markdown table for one problem."""
    lines = [COLUMNS, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = [
            r.method,
            "—" if r.n is None else f"{r.n:,}",
            _fmt(r.fits_per_s, "{:,.0f}"),
            _fmt(r.first_s, "{:.2f}"),
            _fmt(r.latency_us, "{:,.0f}"),
            "—" if r.good is None else f"{100 * r.good / r.checked:.1f}% ({r.checked})",
            "—" if r.iters is None else f"{np.median(r.iters):g} / {np.max(r.iters)}",
            _fmt(r.n_fail, "{:,}"),
            _fmt_mib(r.mem_mib),
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def _fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "—"
    return f"{mib:.1f}" if mib >= 1 else f"{mib:.3f}"


def format_statuses(rows: list[Row]) -> list[str]:
    """Status / ier histograms at each method's largest batch."""
    last = {r.method: r for r in rows if r.statuses is not None}
    return [f"- {m} (N={r.n:,}): {r.statuses}" for m, r in last.items()]


def headline_ratios(results: dict[str, list[Row]]) -> list[str]:
    """jaxlsq's throughput over each peer's, at the headline problem's largest N."""
    if not results:
        return ["No problems run."]
    problem = HEADLINE_PROBLEM if HEADLINE_PROBLEM in results else next(iter(results))
    rows = results[problem]
    sized = [r for r in rows if r.n is not None and r.fits_per_s]
    if not any(r.method.startswith("jaxlsq") for r in sized):
        return ["No timed jaxlsq rows."]
    n_max = max(r.n for r in sized)
    best = {}  # method -> its row at n_max, or its largest N for loop methods
    for r in sorted(sized, key=lambda r: r.n):
        if r.n == n_max or r.method.startswith("scipy"):
            best[r.method] = r
    lines = [f"{problem}, N = {n_max:,} (scipy: its largest N; a loop's rate is flat):"]
    for ours in [m for m in best if m.startswith("jaxlsq")]:
        for peer, r in best.items():
            if peer.startswith("jaxlsq"):
                continue
            ratio = best[ours].fits_per_s / r.fits_per_s
            lines.append(f"- {ours} / {peer} (N={r.n:,}): {ratio:.2f}x")
    return lines


NOTES = """\
- fits/s: N / median warm wall time of the whole batch (`block_until_ready`), for
  scipy N / loop time. "(timed on k fits)": the loop was stopped after the time
  budget and the rate is from the first k curves.
- first call: trace + compile + run for that N (each N is a new shape, so a new
  compile); scipy has none.
- latency: warm time of one fit (N = 1).
- as good as MINPACK: share of the first (count) curves whose float64 cost, from
  the returned parameters, is <= MINPACK's cost (scipy leastsq + analytic Dfun) on
  the same curve * (1 + rtol) + 1e-12; rtol = 1e-6 in float64, sqrt(eps) = 3.5e-4 in
  float32 (scipy always works in float64 on the float32-rounded data).
- iters: Jacobian evaluations (`njev`) for jaxlsq and scipy + Dfun (scipy's from
  the reference run on the scored curves). jaxlsq's count includes one Jacobian at
  the solution, so on the same path it is MINPACK's + 1 (with scipy's tolerances
  jaxlsq reproduces MINPACK's nfev and status curve for curve). optimistix
  `num_steps` and jaxopt `iter_num` count every step, accepted or not.
- failed: jaxlsq `not success` (status outside 1-4), scipy ier outside 1-4,
  optimistix `result != successful`, jaxopt: reached `maxiter` (it has no status).
- XLA buffers: arguments + outputs + temporaries of the compiled program
  (`Compiled.memory_analysis()`), not process RSS.
- Settings: "jaxlsq (svd)" and "(eigh)" use `jaxlsq.solve`'s own defaults;
  "(svd, scipy tols)" uses scipy leastsq's (ftol = xtol = sqrt(eps) of the dtype,
  factor 100, max_nfev = 100 (n + 1)). "solve_batch" runs chunks of 1024 fits in
  lock-step (`schedule="vmap"`), "solve_batch refill" a pool of 1024 slots refilled
  from the queue as fits finish (`schedule="refill"`, what the default "auto" picks
  for N > 1024); same fits, other scheduling.
  optimistix `LevenbergMarquardt(rtol=tol, atol=tol)`, `throw=False`, max_steps
  256; jaxopt `LevenbergMarquardt(
  stop_criterion="madsen-nielsen", materialize_jac=True, solver="cholesky",
  tol=xtol=gtol=tol, maxiter=100 (n + 1))`; tol = 1e-8 (float64) or sqrt(eps)
  (float32). scipy leastsq with its defaults, in float64.
"""


def build_report(info, summaries, results, ratios, shim) -> str:
    """The whole markdown report."""
    dtype = dict(info)["dtype"]
    lines = [f"# jaxlsq benchmark: {jax.default_backend()}, {dtype}", ""]
    lines += [f"- {label}: {value}" for label, value in info]
    for name, rows in results.items():
        lines += ["", f"## {name}", "", summaries[name], ""]
        lines += format_table(rows)
        statuses = format_statuses(rows)
        if statuses:
            lines += ["", "Status / ier counts at the largest N:", "", *statuses]
    lines += ["", "## Headline ratios (warm fits/s)", "", *ratios]
    if shim is not None:
        lines += ["", "## scipy-compatible `jaxlsq.leastsq`: single-call latency", ""]
        lines += shim
    lines += ["", "## Notes", "", NOTES]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    """Run the benchmark; print and write the report."""
    args = parse_args(argv)
    if args.dtype == "float64":
        # A benchmark script may change global config: float64 needs x64 enabled,
        # before any array is created.
        jax.config.update("jax_enable_x64", True)
    jaxlsq = import_jaxlsq()
    # Imported after the x64 switch, so no peer creates arrays before it.
    import peers
    from problems import PROBLEMS

    _check_choices("problem", args.problems, PROBLEMS)
    if args.methods is not None:
        keys = [m.key for m in (*peers.BATCHED_METHODS, *peers.LOOP_METHODS)]
        _check_choices("method", args.methods, keys)
    info = machine_info(
        args.dtype, {"jaxlsq": jaxlsq.__version__, **peers.peer_versions()}
    )
    results, summaries = {}, {}
    start = time.perf_counter()
    for name in args.problems:
        results[name], summaries[name] = run_problem(PROBLEMS[name], args)
    shim = None if args.no_shim else shim_latency(jaxlsq, args.dtype, args.seed)
    info.append(
        ("load average at end", "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    )
    info.append(("total run time", f"{time.perf_counter() - start:.0f} s"))
    report = build_report(info, summaries, results, headline_ratios(results), shim)
    print()
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
