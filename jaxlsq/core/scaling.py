"""Exact scaling by powers of 2: norms and squares that neither overflow nor underflow.

MINPACK's ``enorm`` scales before squaring so that a vector whose sum of squares
is beyond the float range still has an accurate norm. Here every such scaling
divides by a power of 2, which is exact: where the unscaled arithmetic is in range
the result is bit for bit the same, and where it is not the result is still right.
Used by the linearization (column norms, Gram matrix), the step solver (lmpar's
radius, ``||Js z||``) and the loop (``||f||``, step and point norms, ``f / u``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def power_of_two(v: jax.Array) -> jax.Array:
    """The power of 2 at or just below each ``|v|`` (same shape): ``v`` keeps only
    its exponent bits, so dividing by it is exact and leaves ``|v|`` in [1, 2).
    1 where ``v`` is 0, subnormal or not finite. (Three integer ops per entry:
    cheaper to compile and run than ``frexp``/``ldexp``.)"""
    info = jnp.finfo(v.dtype)
    int_type = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[v.dtype.itemsize]
    mask = jnp.asarray(((1 << info.nexp) - 1) << info.nmant, int_type)
    bits = lax.bitcast_convert_type(v, int_type) & mask
    ok = (bits != 0) & (bits != mask)  # exponent field 0: 0/subnormal; all 1s: inf/NaN
    return jnp.where(ok, lax.bitcast_convert_type(bits, v.dtype), 1)


def scaled_norm(v: jax.Array, axis: int | None = None) -> jax.Array:
    """Euclidean norm of ``v`` (over ``axis``; all of it by default), +inf (never
    NaN) where ``v`` holds a non-finite entry. Scaled by the power of 2 of the
    largest entry first, as MINPACK's ``enorm`` scales: finite entries whose squares
    overflow (or underflow) still give a finite, accurate norm."""
    largest = jnp.max(jnp.abs(v), axis=axis, keepdims=True)
    scale = power_of_two(largest)
    scaled = v / scale
    norm = jnp.squeeze(scale, axis) * jnp.sqrt(jnp.sum(scaled * scaled, axis=axis))
    return jnp.where(jnp.isfinite(jnp.squeeze(largest, axis)), norm, jnp.inf)


def residual_unit(fnorm: jax.Array) -> jax.Array:
    """The power of 2 of ``||f||`` (1 for f == 0): the loop hands strategies
    ``f / unit`` (see `jaxlsq.core.state.with_linearization`). Every entry of
    ``f / unit`` is below 2 and the largest above ``1 / (2 sqrt(m))``: no underflow
    where ``J^T f`` would have one. Read off the carried ``||f||`` (an ``||f||``
    that overflowed counts as the largest float) rather than another pass over
    ``f``: any power of 2 gives the same bits wherever nothing under/overflows."""
    return power_of_two(jnp.minimum(fnorm, jnp.finfo(fnorm.dtype).max))


def jacobian_unit(col_norms: jax.Array, diag: jax.Array) -> jax.Array:
    """The power of 2 of ``max_j col_norms_j / diag_j``, the scale of the scaled
    Jacobian ``Js = J / diag``, where it lies outside ``[2^-k, 2^k]`` with ``k`` a
    quarter of the dtype's exponent range (256 for float64, 32 for float32); else 1.

    The step system squares Js (its Gram matrix or singular values), so a Js far
    from 1 underflows or overflows even where J and diag are in range: MINPACK's
    ``diag`` never decreases, and a J that shrank by 1e150 during a fit gives
    ``Js ~ 1e-150``, whose squares vanish (steps of 0: a false convergence). The
    loop builds the system for ``Js / unit`` instead (exact); inside the range
    nothing changes, bit for bit.
    """
    ratio = jnp.max(jnp.where(diag > 0, col_norms / diag, 0))
    unit = power_of_two(ratio)
    limit = 2.0 ** (jnp.finfo(ratio.dtype).maxexp // 4)
    return jnp.where((unit * limit < 1) | (unit > limit), unit, 1).astype(ratio.dtype)
