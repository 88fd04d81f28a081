"""Import JAX without touching numpy's global random state.

Importing JAX draws from numpy's global random generator, so a script that seeds
numpy and then changes ``from scipy.optimize import curve_fit`` to jaxlsq's would
get other random data: the one-line switch would change the user's results. jaxlsq
imports JAX first of all, here, and puts the state back as the user left it.
"""

import numpy as np

_state = np.random.get_state()  # noqa: NPY002  (the legacy global state is the point)
import jax  # noqa: E402, F401

np.random.set_state(_state)  # noqa: NPY002
del _state
