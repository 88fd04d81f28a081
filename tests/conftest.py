"""Test configuration: float64 for the oracle comparisons (tests own this flag; the
library never touches it), and deterministic property-based tests (hypothesis draws
the same examples on every run, so CI cannot turn red by chance), and the XLA flags
of ``tests.XLA_TEST_FLAGS`` (faster compiles), unless the caller set ``XLA_FLAGS``."""

import os

from tests import XLA_TEST_FLAGS

# Before JAX starts its backend, which reads XLA_FLAGS once.
os.environ.setdefault("XLA_FLAGS", XLA_TEST_FLAGS)

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

settings.register_profile("jaxlsq", derandomize=True, deadline=None)
settings.load_profile("jaxlsq")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_after_each_module():
    """Drop JAX's compiled programs after each test module: they are not shared
    between modules (each defines its own residual functions), and keeping all of
    them made the suite's process grow by gigabytes."""
    yield
    jax.clear_caches()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the markers
def pytest_collection_modifyitems(config, items):
    """``make test``'s ``--dist loadgroup``: one xdist group per module (a module's
    compiled programs stay in one process, as with ``loadfile``), except the
    notebooks, one group each: their ~6 min of kernels (one notebook ~90 s) then
    spread over the workers instead of queueing on one at the end of the run."""
    for item in items:
        module = item.nodeid.split("::")[0]
        group = item.nodeid if module.endswith("test_notebooks.py") else module
        item.add_marker(pytest.mark.xdist_group(group))
