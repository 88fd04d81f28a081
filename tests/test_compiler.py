"""How jaxlsq compiles its entry points (`jaxlsq.core.compiler`): per-program XLA
options that fall back to XLA's defaults, and the opt-in persistent cache."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxlsq
from jaxlsq.core import compiler

from .test_solve import P0, X50, expdecay, expdecay_data


def test_entry_points_compile_with_the_cpu_options_and_match_xla_defaults():
    assert jax.default_backend() == "cpu"
    assert compiler.compiler_options() == jaxlsq.CPU_COMPILER_OPTIONS
    y = expdecay_data(seed=3)
    ours = jaxlsq.solve(expdecay, P0, (X50, y))
    # The same loop compiled by the caller's own jit, with XLA's default options.
    theirs = jax.jit(lambda p: jaxlsq.solve(expdecay, p, (X50, y)))(P0)
    np.testing.assert_allclose(ours.params, theirs.params, rtol=1e-12)
    assert int(ours.status) == int(theirs.status) and int(ours.nfev) == int(theirs.nfev)


def test_an_option_this_xla_does_not_know_falls_back_to_its_defaults(monkeypatch):
    monkeypatch.setattr(compiler, "CPU_COMPILER_OPTIONS", {"xla_no_such_option": 1})
    compiler.compiler_options.cache_clear()
    try:
        assert compiler.compiler_options() is None
        y = expdecay_data(seed=4)
        fresh = compiler.jit(lambda p: jaxlsq.solve(expdecay, p, (X50, y)).params)
        np.testing.assert_allclose(
            fresh(P0), jaxlsq.solve(expdecay, P0, (X50, y)).params, rtol=1e-12
        )
    finally:
        compiler.compiler_options.cache_clear()


_CACHED_RUN = """
import json, sys, time
import jax, jax.numpy as jnp
from jax._src import monitoring
jax.config.update("jax_enable_x64", True)
import jaxlsq
hits = []
monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if "cache_hits" in event else None
)
jaxlsq.enable_compilation_cache(sys.argv[1])
t = jnp.linspace(0, 4, 30)
y = 2.0 * jnp.exp(-1.3 * t) + 0.1
sol = jaxlsq.solve(lambda p, t, y: p[0] * jnp.exp(-p[1] * t) + p[2] - y,
                   jnp.array([1.0, 1.0, 0.0]), (t, y))
print(json.dumps({"params": [float(v) for v in sol.params], "hits": len(hits)}))
"""


@pytest.mark.slow
def test_a_second_process_loads_the_compiled_loop_from_the_cache(tmp_path):
    def run():
        out = subprocess.run(
            [sys.executable, "-c", _CACHED_RUN, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1])

    first, second = run(), run()
    assert first["hits"] == 0 and second["hits"] >= 1
    assert any((tmp_path / "cache").iterdir())
    assert second["params"] == first["params"]  # the same program: bit-identical
    np.testing.assert_allclose(first["params"], [2.0, 1.3, 0.1], rtol=1e-10)


def test_importing_jaxlsq_switches_on_no_cache():
    assert jax.config.jax_compilation_cache_dir in (None, "")
