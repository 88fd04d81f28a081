"""Losses over a batch of fits that leave failed fits out, with finite gradients.

A batched loss such as ``mean_i loss(fit_i)`` has to skip the fits that failed (a
NaN curve, a fit that ran out of evaluations). The obvious mask,
``jnp.where(success, loss_i, 0.0)``, gives the right *value* but not always the right
*gradient*: the failed lane's cotangent is 0, and reverse mode still multiplies that 0
by the lane's own partial derivatives -- ``0 * nan = nan`` when they are not finite
(the implicit derivative of a fit to NaN data is NaN), and one NaN lane then poisons
the gradient of every shared parameter. The remedy is the "double where": also
replace the *inputs* of the bad lanes by harmless values before they are used, so that
every lane's derivatives are finite and the mask's zeros stay zeros.

The pattern for fits under ``vmap`` (``Y`` has one curve per row)::

    ok = finite_lanes((x0s, Y))              # NaN/inf curves or starts: known up front
    x0s, Y = where_lanes(ok, (x0s, Y), fill=(1.0, 0.0))  # harmless stand-ins
    sols = jax.vmap(fit)(x0s, Y)             # every lane now has finite derivatives
    loss = masked_mean(per_fit_loss(sols), ok & sols.success)

A fit that stops without converging (``max_nfev``) at finite values has finite
derivatives, so masking its loss is enough; but a per-fit loss that is undefined at
its parameters (``sqrt``, ``log`` of a negative value) needs the same treatment: pass
``where_lanes(ok, sols.params, fill)`` to it instead of ``sols.params``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def finite_lanes(tree: Any) -> jax.Array:
    """Which lanes of a batch hold only finite numbers.

    Parameters
    ----------
    tree : pytree of arrays
        Every leaf has the same leading (batch) axis of size N.

    Returns
    -------
    bool array (N,)
        True where every entry of that lane, in every leaf, is finite.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> y = jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [3.0, 4.0]])
    >>> finite_lanes((y, jnp.array([1.0, 1.0, jnp.inf]))).tolist()
    [True, False, False]
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError("finite_lanes needs at least one array")
    ok = None
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            raise ValueError("finite_lanes: every leaf needs a leading batch axis")
        lane_ok = jnp.all(jnp.isfinite(leaf).reshape(leaf.shape[0], -1), axis=1)
        ok = lane_ok if ok is None else ok & lane_ok
    return ok


def where_lanes(mask: jax.Array, tree: Any, fill: Any = 0.0) -> Any:
    """Keep the lanes where ``mask`` is True, replace the others by ``fill``.

    ``jnp.where`` along the leading axis of every leaf. Use it on the *inputs* of a
    batch of fits (data, starting points) to stand in for lanes that would make
    non-finite derivatives, and on per-fit outputs before a loss that is undefined
    at a failed fit's values. The gradient with respect to a replaced lane is exactly
    zero.

    Parameters
    ----------
    mask : bool array (N,)
        Lanes to keep.
    tree : pytree of arrays
        Every leaf has the leading (batch) axis N.
    fill : scalar, array or pytree, default 0.0
        The stand-in value: a scalar or array broadcasting to one lane of every leaf,
        or a pytree with the structure of ``tree`` giving one such value per leaf.
        Choose it so that the computation downstream is well defined (a starting point
        inside the model's domain, a curve of zeros).

    Returns
    -------
    pytree
        ``tree`` with the lanes where ``mask`` is False replaced by ``fill``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 2.0], [jnp.nan, 5.0]])
    >>> where_lanes(jnp.array([True, False]), x, fill=jnp.array([7.0, 8.0])).tolist()
    [[1.0, 2.0], [7.0, 8.0]]
    """
    mask = jnp.asarray(mask, bool)
    if mask.ndim != 1:
        raise ValueError(f"mask must have shape (N,), got {mask.shape}")
    treedef = jax.tree_util.tree_structure(tree)
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(fill)):
        fills = [fill] * treedef.num_leaves
    else:
        fills = treedef.flatten_up_to(fill)

    def select(leaf, value):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0 or leaf.shape[0] != mask.shape[0]:
            raise ValueError(
                f"where_lanes: a leaf of shape {leaf.shape} has no leading batch axis "
                f"of size {mask.shape[0]}"
            )
        lane_mask = mask.reshape(mask.shape + (1,) * (leaf.ndim - 1))
        return jnp.where(lane_mask, leaf, jnp.asarray(value, leaf.dtype))

    leaves = [
        select(leaf, value)
        for leaf, value in zip(treedef.flatten_up_to(tree), fills, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over the lanes where ``mask`` is True.

    Masked lanes contribute neither to the value nor to the gradient, even where they
    hold NaN or inf: the masked entries are replaced before they are summed, so their
    cotangent is an exact zero. That zero only stays zero upstream if the masked
    lanes' own derivatives are finite -- see the Notes.

    Parameters
    ----------
    values : array (N, ...)
        One value (or one array of values) per lane; trailing axes are averaged too.
    mask : bool array (N,)
        Lanes to include.

    Returns
    -------
    scalar array
        ``sum(values[mask]) / values[mask].size``; 0.0 when no lane is included.

    Notes
    -----
    Reverse mode multiplies a masked lane's zero cotangent by that lane's partial
    derivatives, and ``0 * nan = nan``: a fit to NaN data (or from a NaN start) has
    NaN implicit derivatives, and one such lane makes the gradient of every shared
    parameter NaN, however its loss is masked. Replace the bad lanes' *inputs* before
    fitting as well (the "double where")::

        ok = jaxlsq.finite_lanes((x0s, ys))            # known before fitting
        x0s, ys = jaxlsq.where_lanes(ok, (x0s, ys), fill=(x_safe, 0.0))
        sols = jax.vmap(fit)(x0s, ys)                  # every lane finite now
        loss = jaxlsq.masked_mean(per_fit_loss(sols), ok & sols.success)

    A fit that stops without converging (``max_nfev``) stops at finite values, so
    masking its loss is enough, unless the per-fit loss is undefined there (``log``,
    ``sqrt`` of a negative parameter): pass it ``where_lanes(ok, sols.params, fill)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> v = jnp.array([1.0, jnp.nan, 3.0])
    >>> ok = jnp.isfinite(v)
    >>> float(masked_mean(v, ok))
    2.0
    >>> jax.grad(masked_mean)(v, ok).tolist()
    [0.5, 0.0, 0.5]
    """
    values = jnp.asarray(values)
    mask = jnp.asarray(mask, bool)
    if mask.ndim != 1 or values.ndim == 0 or values.shape[0] != mask.shape[0]:
        raise ValueError(
            f"masked_mean: mask of shape {mask.shape} does not match the leading axis "
            f"of values of shape {values.shape}"
        )
    lane_mask = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    total = jnp.sum(jnp.where(lane_mask, values, 0.0))
    per_lane = values[0].size
    count = jnp.sum(mask) * per_lane
    return total / jnp.maximum(count, 1).astype(total.dtype)
