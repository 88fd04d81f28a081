"""Program size and compile time of jaxlsq's compiled fits (issues 13, 17, 18).

Prints, for a 50-point exponential decay in float64, the number of XLA instructions
of each compiled program (deterministic: the same on any run of one tree) and its
compile time (``lower().compile()`` of a fresh jit, best of ``--repeat``; noisy).

    python benchmarks/program_size.py [--repeat 3]

Run it for two trees side by side (``PYTHONPATH=<tree>``) to compare versions.

``--emitters`` compiles each program twice more, side by side: with XLA's default
CPU fusion emitters and with the classic ones (``xla_cpu_use_fusion_emitters=False``,
the flag the test suite runs with, `tests.XLA_TEST_FLAGS`), and prints compile and
warm run times of both (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import re
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import jaxlsq  # noqa: E402

T = jnp.linspace(0, 4, 50)
Y = 2.0 * jnp.exp(-1.3 * T) + 0.1
X0 = jnp.array([1.0, 1.0, 0.0])


def residuals(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def programs():
    ys, x0s = jnp.tile(Y, (1000, 1)), jnp.tile(X0, (1000, 1))
    bounds = (jnp.zeros(3), jnp.full(3, 10.0))
    return {
        "jit(solve)": (
            lambda x0, y: jaxlsq.solve(residuals, x0, (T, y)).params,
            (X0, Y),
        ),
        "jit(solve, bounds)": (
            lambda x0, y: jaxlsq.solve(residuals, x0, (T, y), bounds=bounds).params,
            (X0, Y),
        ),
        "jit(vmap(solve)), 1000 curves": (
            lambda x0, ys: jax.vmap(
                lambda a, b: jaxlsq.solve(residuals, a, (T, b)).params
            )(x0, ys),
            (x0s, ys),
        ),
    }


def instructions(hlo_text: str) -> int:
    return sum(
        1 for line in hlo_text.splitlines() if re.match(r"\s+(ROOT )?\S+ = ", line)
    )


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def emitters(repeat: int) -> None:
    """Compile and warm run times with the default and the classic CPU emitters."""
    print("| program | emitters | compile s | warm run ms |")
    print("|---|---|---:|---:|")
    for name, (fn, args) in programs().items():
        for label, options in (
            ("default", None),
            ("classic", {"xla_cpu_use_fusion_emitters": False}),
        ):
            compile_s, compiled = float("inf"), None
            for _ in range(repeat):
                lowered = jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args)
                start = time.perf_counter()
                compiled = lowered.compile(compiler_options=options)
                compile_s = min(compile_s, time.perf_counter() - start)
            run_s = _best(lambda c=compiled, a=args: c(*a), 5 * repeat)
            print(f"| {name} | {label} | {compile_s:.2f} | {1e3 * run_s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--emitters", action="store_true")
    ns = parser.parse_args()
    repeat = ns.repeat
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}")
    if ns.emitters:
        emitters(repeat)
        return
    print(f"| program | XLA instructions | compile s (best of {repeat}) |")
    print("|---|---:|---:|")
    for name, (fn, args) in programs().items():
        best, size = float("inf"), 0
        for _ in range(repeat):
            lowered = jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args)  # fresh: no cache
            start = time.perf_counter()
            compiled = lowered.compile()
            best = min(best, time.perf_counter() - start)
            size = instructions(compiled.as_text())
        print(f"| {name} | {size:,} | {best:.2f} |")


if __name__ == "__main__":
    main()
