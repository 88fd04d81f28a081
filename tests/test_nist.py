"""NIST StRD nonlinear regression: all 27 problems x 2 starts with default settings.

Oracle: NIST's certified parameter values. Pass mark: min LRE >= 6 (six correct
digits in every parameter) and the fit reports success; a wrong fit must never report
success.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlsq

from . import nist

pytestmark = pytest.mark.slow

CASES = [(name, start) for name in nist.NAMES for start in (1, 2)]


@pytest.mark.parametrize("name,start", CASES, ids=[f"{n}-start{s}" for n, s in CASES])
def test_nist_certified_values_with_defaults(name, start):
    problem = nist.load(name)
    sol = jaxlsq.solve(
        problem.residuals,
        jnp.asarray(problem.starts[start - 1]),
        args=(jnp.asarray(problem.x), jnp.asarray(problem.y)),
    )
    lre = nist.min_lre(sol.params, problem.certified)
    assert bool(sol.success), f"{name} start {start}: {sol.message} (LRE {lre:.1f})"
    assert lre >= 6, f"{name} start {start}: min LRE {lre:.2f} < 6"
    # Sum of squares no worse than certified (Lanczos1's is 1.4e-25: rounding level).
    assert 2 * float(sol.cost) <= problem.certified_rss * (1 + 1e-6) + 1e-20


def test_parser_reads_every_file_consistently():
    for name in nist.NAMES:
        problem = nist.load(name)
        n = problem.certified.shape[0]
        assert problem.starts[0].shape == problem.starts[1].shape == (n,), name
        assert problem.y.shape[0] == problem.x.shape[0] > n, name
        # The certified values reproduce the certified residual sum of squares.
        r = np.asarray(
            problem.residuals(jnp.asarray(problem.certified), problem.x, problem.y)
        )
        np.testing.assert_allclose(
            np.sum(r**2), problem.certified_rss, rtol=1e-6, atol=1e-20, err_msg=name
        )
