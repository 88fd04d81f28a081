"""How jaxlsq compiles its own entry points: `jit`, ``jax.jit`` with XLA options.

A first call is mostly XLA's compile of the LM loop. On CPU, half of that compile
went to XLA's MLIR fusion emitters; the classic LLVM IR emitters build the same
single-fit program about twice as fast and run it at the same speed (``python
benchmarks/program_size.py --emitters``: ``jit(solve)`` compile 1.20 -> 0.70 s, warm
run 0.17 -> 0.15 ms). So the single-fit programs jaxlsq compiles itself (`solve`
called outside jit, `fit`, the scipy shims, the fit statistics) use
`CPU_COMPILER_OPTIONS` on CPU. Batches (`solve_batch`, `fit_batch`'s solves) do not:
there the classic emitters ran the vectorised loop 8-15% slower.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
from jax._src import core as jax_core  # trace_state_clean: no public form

#: XLA options of jaxlsq's own compiled programs on CPU (see the module doc).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def compiler_options() -> dict[str, Any] | None:
    """`CPU_COMPILER_OPTIONS` when the default backend is CPU and this XLA accepts
    them (one tiny compile, once per process), else None."""
    if jax.default_backend() != "cpu":
        return None
    try:
        probe = jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS)
        probe.lower(0.0).compile()
    except Exception:  # an XLA without the option: compile with its defaults
        return None
    return dict(CPU_COMPILER_OPTIONS)


def _top_level() -> bool:
    """Whether no JAX transformation is tracing now (a nested jit, a jit under
    vmap or grad, must not carry compiler options: JAX refuses them there)."""
    clean = getattr(jax_core, "trace_state_clean", None)
    return bool(clean()) if clean is not None else False


class _Jit:
    """``jax.jit(fun, **kwargs)``: called at the top level, with `compiler_options`
    (built on the first such call, once the backend is known); called under a
    transformation (inside another jit, under vmap or grad), plain, like any
    jitted function, so the outer program's options apply."""

    def __init__(self, fun: Callable, kwargs: dict):
        self._fun, self._kwargs, self._top = fun, kwargs, None
        self._nested = jax.jit(fun, **kwargs)
        functools.update_wrapper(self, fun)

    def _jitted(self):
        if not _top_level():
            return self._nested
        if self._top is None:
            options = compiler_options()
            self._top = (
                jax.jit(self._fun, compiler_options=options, **self._kwargs)
                if options
                else self._nested
            )
        return self._top

    def __call__(self, *args, **kwargs):
        return self._jitted()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jitted().lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit`` for jaxlsq's entry points (same arguments: ``static_argnums``,
    ``static_argnames``, ...), compiled with `compiler_options`. Usable as
    ``@jit`` or ``@jit(static_argnums=0)``."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _Jit(fun, kwargs)


def enable_compilation_cache(path: str | os.PathLike, min_compile_time_s: float = 0.0):
    """Keep compiled programs in the directory ``path``, across processes.

    JAX's persistent compilation cache, switched on for every program of this
    process (it is JAX's global setting: jaxlsq never calls this itself). A later
    process that compiles the same program (same function, shapes, dtypes, static
    options, jax version and machine) loads it instead of compiling it; tracing and
    lowering still run. ``min_compile_time_s`` (default 0: every program, since
    jaxlsq's take 0.5-2 s) is the shortest compile worth storing; JAX's own default
    is 1 s. Equivalent to setting ``jax_compilation_cache_dir`` and
    ``jax_persistent_cache_min_compile_time_secs`` with ``jax.config.update``.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
