"""Profile-likelihood confidence intervals (lmfit's ``conf_interval``).

Where the covariance is a poor summary (a skewed or banana-shaped optimum), the
interval of parameter ``j`` at a level is where the *profile* ``chi2_j(v)`` -- the
best ``chi2`` with ``p_j`` held at ``v`` and every other free parameter refitted --
exceeds the optimum by a threshold: ``q^2 chisq / dof`` for a covariance scaled by
the fit (lmfit's F-test: ``F(1, dof)``'s quantile is ``t(dof)``'s squared), ``q^2``
for an absolute one (Wilks: ``chi2(1)``; ``absolute_sigma=True`` fits and the
Poisson deviance), ``q`` the two-sided normal or t quantile of the level.

Every end of every interval (free parameter x side x level, and every fit of a
batch) is a lane of one vmapped profile solve, stepped together: a secant search
on ``sqrt(chi2_j(v) - chi2_min) - sqrt(threshold)`` (linear in ``v`` for a linear
model, so a few steps reach rounding), started at the covariance's prediction
``q * stderr`` and safeguarded by bisection once the end is bracketed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..core.compiler import jit
from ..core.solve import solve
from .bands import band_quantile, level_probability
from .checks import unflatten
from .fit import fit_setup


def conf_interval(
    result,
    x,
    y,
    *,
    sigmas=(1, 2, 3),
    params=None,
    steps: int = 12,
    sigma: Any = None,
    bounds: Any = None,
    f_scale: float = 1.0,
    **solve_options: Any,
) -> dict:
    """Profile-likelihood confidence intervals of a fit's free parameters.

    Parameters
    ----------
    result : FitResult
        The fit, from `jaxlsq.fit`, or a batch from `fit_batch` (one leading batch
        axis; then ``y`` has it too and ``x`` is shared).
    x, y : as given to the fit
    sigmas : sequence of float, default (1, 2, 3)
        Levels: ``>= 1`` standard deviations (1, 2, 3: 68.27%, 95.45%, 99.73%),
        ``< 1`` the probability itself (lmfit's convention).
    params : sequence of str, optional
        Names (``result.names``) to profile; default every free parameter.
    steps : int, default 12
        Profile solves per interval end (all ends step together).
    sigma, bounds, f_scale, **solve_options
        The fit's own (``estimator``, ``loss``, ``fixed`` and ``absolute_sigma``
        come from ``result``): the profile fits must be the fit's.

    Returns
    -------
    dict
        ``name -> [(prob, value), ...]`` as lmfit's ``conf_interval``: the lower
        ends from the widest level in, ``(0.0, best)``, the upper ends. A value is
        a scalar (shape ``batch_shape`` for a batch); ``-inf``/``inf`` where the
        profile never reached the threshold in ``steps`` steps (the interval is
        open), the bound itself where a bound stops it first.
    """
    if len(result.batch_shape) > 1:
        raise ValueError(
            f"conf_interval takes one batch axis, got {result.batch_shape}"
        )
    names = list(result.names)
    free = [i for i, fixed in enumerate(result.fixed) if not fixed]
    wanted = [names[i] for i in free] if params is None else list(params)
    for name in wanted:
        if name not in names or result.fixed[names.index(name)]:
            raise ValueError(
                f"params: {name!r} is not a free parameter of the fit "
                f"(free: {[names[i] for i in free]})"
            )
    levels = [float(s) for s in sigmas]
    probs = [level_probability(s) for s in levels]
    q = jnp.stack([band_quantile(result, s) for s in levels])  # (L,)
    # The rise of chi2 at a level: q^2 times chisq / dof (scaled) or 1 (absolute).
    scale = jnp.ones_like(result.redchi) if result.absolute_sigma else result.redchi
    batch = bool(result.batch_shape)
    one_params = (
        jax.tree_util.tree_map(lambda a: a[0], result.params)
        if batch
        else (result.params)
    )
    setup = fit_setup(
        result.model, x, np.asarray(y)[0] if batch else y, one_params, sigma, bounds,
        np.asarray(result.fixed), result.loss, f_scale, result.estimator,
        solve_options,
    )  # fmt: skip
    j = np.array([names.index(n) for n in wanted])
    lanes = np.array([(a, side, b) for a in range(len(j)) for side in (-1, 1)
                      for b in range(len(levels))])  # fmt: skip
    bounds_flat = setup.bounds if setup.bounds is not None else (None, None)
    static = dict(
        residual_fn=setup.residual_fn, treedef=setup.treedef, shapes=setup.shapes,
        bounded=setup.bounds is not None, steps=int(steps),
    )  # fmt: skip

    def one(res, y_one, scale_one):
        best, _ = ravel_pytree(res.params)
        stderr, _ = ravel_pytree(res.stderr)
        args = (setup.args[0], y_one, setup.args[2])
        return _ends(
            best, stderr, 2 * res.cost, q, scale_one, args, setup.options,
            bounds_flat, jnp.asarray(j), jnp.asarray(lanes), **static,
        )  # fmt: skip

    if batch:
        ends = jax.vmap(one)(result, jnp.asarray(y, setup.dtype), scale)
        best_all = jax.vmap(lambda p: ravel_pytree(p)[0])(result.params)
    else:
        ends = one(result, setup.y, scale)
        best_all = ravel_pytree(result.params)[0]
    out = {}
    for a, name in enumerate(wanted):
        ends_of = {}
        for k, (a_k, side, b) in enumerate(lanes):
            if a_k == a:
                ends_of[side, b] = (probs[b], ends[..., k])
        lower = [ends_of[-1, b] for b in reversed(range(len(levels)))]
        upper = [ends_of[1, b] for b in range(len(levels))]
        out[name] = lower + [(0.0, best_all[..., j[a]])] + upper
    return out


@functools.partial(
    jit, static_argnames=("residual_fn", "treedef", "shapes", "bounded", "steps")
)
def _ends(best, stderr, chi2_min, q, scale, args, options, bounds, j, lanes, *,
          residual_fn, treedef, shapes, bounded, steps):  # fmt: skip
    """Interval ends (K,) for lanes ``(parameter, side, level)`` (K, 3) of one fit:
    ``best``, ``stderr`` flat (n,), ``q`` (L,) the levels' quantiles."""
    dtype = best.dtype
    jj = j[lanes[:, 0]]
    side = lanes[:, 1].astype(dtype)
    target = q[lanes[:, 2]] * jnp.sqrt(scale)  # sqrt of the chi2 rise to reach
    lo_b, hi_b = bounds
    if bounded:  # the farthest each lane may go (inf: unbounded)
        room = jnp.where(side > 0, hi_b[jj] - best[jj], best[jj] - lo_b[jj])
    else:
        room = jnp.full(jj.shape, jnp.inf, dtype)
    n = best.shape[0]
    base_fixed = jnp.zeros(n, bool) if options.fixed is None else options.fixed

    def rise(delta):  # sqrt(chi2_j(best_j + side delta) - chi2_min) - target
        def one(jl, v):
            x0 = unflatten(best.at[jl].set(v), treedef, shapes)
            mask = jnp.asarray(base_fixed, bool) | (jnp.arange(n) == jl)
            opts = dataclasses.replace(options, fixed=mask)
            chi2 = 2 * solve(residual_fn, x0, args, options=opts).cost
            return jnp.where(jnp.isfinite(chi2), chi2, jnp.inf)

        chi2 = jax.vmap(one)(jj, best[jj] + side * delta)
        return jnp.sqrt(jnp.maximum(chi2 - chi2_min, 0)) - target

    # First trial: the covariance's prediction q * stderr (exact for a linear model).
    se = stderr[jj]
    first = jnp.where(jnp.isfinite(se) & (se > 0), se, 1.0) * q[lanes[:, 2]]
    first = jnp.minimum(first, room)
    zero = jnp.zeros_like(first)
    state = dict(
        lo=zero, h_lo=-target, hi=jnp.full_like(first, jnp.inf), h_hi=zero,
        prev=zero, h_prev=-target, cur=first,
    )  # fmt: skip

    def step(_, s):
        h = rise(s["cur"])
        below = h < 0
        lo = jnp.where(below, s["cur"], s["lo"])
        h_lo = jnp.where(below, h, s["h_lo"])
        hi = jnp.where(below, s["hi"], s["cur"])
        h_hi = jnp.where(below, s["h_hi"], h)
        dh = h - s["h_prev"]
        secant = s["cur"] - h * (s["cur"] - s["prev"]) / jnp.where(dh != 0, dh, 1)
        secant = jnp.where((dh != 0) & jnp.isfinite(h), secant, jnp.nan)
        inside = (secant > lo) & (secant < hi)
        in_bracket = jnp.where(inside, secant, 0.5 * (lo + hi))
        # Not bracketed yet: extrapolate the secant, at least 1.5x and at most 4x
        # further out, never past a bound.
        grow = jnp.where(jnp.isfinite(secant), secant, 4 * s["cur"])
        outward = jnp.minimum(jnp.clip(grow, 1.5 * s["cur"], 4 * s["cur"]), room)
        nxt = jnp.where(jnp.isfinite(hi), in_bracket, outward)
        return dict(lo=lo, h_lo=h_lo, hi=hi, h_hi=h_hi, prev=s["cur"], h_prev=h,
                    cur=nxt)  # fmt: skip

    s = jax.lax.fori_loop(0, steps, step, state)
    # The root of the secant through the bracket's ends (rounding-level once
    # converged); an open interval is inf, one stopped by a bound ends on it.
    width = s["h_hi"] - s["h_lo"]
    root = s["lo"] - s["h_lo"] * (s["hi"] - s["lo"]) / jnp.where(width > 0, width, 1)
    at_bound = jnp.isfinite(room) & (s["lo"] >= room)
    delta = jnp.where(jnp.isfinite(s["hi"]), root, jnp.where(at_bound, room, jnp.inf))
    return best[jj] + side * delta
