"""How the Jacobian of the flattened residuals is built: the loop only calls the result.

Every strategy returns a function ``x (n,) -> J (m, n)`` for the flat parameter vector.
Exact derivatives only: finite differences live on the scipy shim's host path.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

#: String values accepted by ``solve(..., jac=...)``; a callable is accepted too.
JAC_MODES = ("auto", "fwd", "rev")


def make_jacobian(
    flat_fun: Callable[[jax.Array], jax.Array],
    jac: str | Callable,
    m: int,
    n: int,
    dtype,
) -> Callable[[jax.Array], jax.Array]:
    """Return ``x -> J(x)`` of shape (m, n) for ``flat_fun: (n,) -> (m,)``.

    Parameters
    ----------
    flat_fun
        Residuals of the flat parameter vector.
    jac
        ``"auto"`` (forward mode when ``n <= m``, which a well-posed least-squares
        problem always has; reverse otherwise), ``"fwd"``, ``"rev"``, or a callable
        ``jac(x) -> array`` with ``m * n`` entries (already bound to ``args``).
    m, n
        Number of residuals and of parameters.
    dtype
        Working dtype; a user Jacobian is cast to it.
    """
    if callable(jac):

        def user_jacobian(x):
            return jnp.reshape(jnp.asarray(jac(x), dtype), (m, n))

        return user_jacobian
    if jac == "auto":
        jac = "fwd" if n <= m else "rev"
    if jac == "fwd":
        return jax.jacfwd(flat_fun)
    if jac == "rev":
        return jax.jacrev(flat_fun)
    raise ValueError(f"jac must be one of {JAC_MODES} or a callable, got {jac!r}")
