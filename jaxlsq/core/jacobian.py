"""How the Jacobian of the flattened residuals is built: the loop only calls the result.

Every strategy returns a function ``x (n,) -> J (m, n)`` for the flat parameter vector.
Exact derivatives only: finite differences live on the scipy shim's host path.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

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
        ``jac(x) -> array`` (already bound to ``args``) of shape (m, n) or
        ``residual_shape + param_shape`` (what ``jax.jacfwd`` gives; see
        `check_jacobian_shape`).
    m, n
        Number of residuals and of parameters.
    dtype
        Working dtype; a user Jacobian is cast to it.
    """
    if callable(jac):

        def user_jacobian(x):
            out = jnp.asarray(jac(x), dtype)
            check_jacobian_shape(out.shape, m, n)
            return jnp.reshape(out, (m, n))

        return user_jacobian
    if jac == "auto":
        jac = "fwd" if n <= m else "rev"
    if jac == "fwd":
        return jax.jacfwd(flat_fun)
    if jac == "rev":
        return jax.jacrev(flat_fun)
    raise ValueError(f"jac must be one of {JAC_MODES} or a callable, got {jac!r}")


def check_jacobian_shape(shape: tuple, m: int, n: int) -> None:
    """Raise ``ValueError`` naming ``jac`` unless ``shape`` is (m, n) or splits into
    leading axes of m entries and trailing axes of n (``residual_shape +
    param_shape``, as ``jax.jacfwd`` of the unflattened function gives). A
    transposed (n, m) Jacobian is refused (when m != n), never reshaped."""
    sizes = [int(np.prod(shape[:k])) for k in range(len(shape) + 1)]
    total = sizes[-1]
    if total == m * n and any(s == m and total // max(s, 1) == n for s in sizes):
        return
    raise ValueError(
        f"jac must return the (m, n) = ({m}, {n}) Jacobian (residuals by parameters, "
        f"or residual_shape + param_shape), got an array of shape {tuple(shape)}"
        + (" (transposed?)" if tuple(shape) == (n, m) else "")
    )
