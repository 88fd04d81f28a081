"""Test configuration: float64 for the oracle comparisons (tests own this flag; the
library never touches it), and deterministic property-based tests (hypothesis draws
the same examples on every run, so CI cannot turn red by chance)."""

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("jaxlsq", derandomize=True, deadline=None)
settings.load_profile("jaxlsq")
