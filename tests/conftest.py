"""Test configuration: float64 for the oracle comparisons (tests own this flag; the
library never touches it)."""

import jax

jax.config.update("jax_enable_x64", True)
