"""Finite differences on the host for `least_squares`: scipy's dense schemes
(``scipy.optimize._numdiff``: "2-point", "3-point", "cs"), with its step rules and
its adjustment of steps at the bounds. (leastsq's MINPACK forward differences are
`jaxlsq.scipy.host.forward_difference`.)"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys

import numpy as np

EPS = float(np.finfo(float).eps)


def _relative_step(method: str, out_dtype) -> float:
    """scipy's default relative step: eps**(1/2) (2-point, cs) or eps**(1/3)."""
    eps = EPS
    if np.issubdtype(out_dtype, np.inexact) and np.dtype(out_dtype).itemsize < 8:
        eps = float(np.finfo(out_dtype).eps)
    return eps ** (1 / 3) if method == "3-point" else eps**0.5


def _absolute_step(rel_step, x0, rstep):
    sign = (x0 >= 0).astype(float) * 2 - 1  # +1 at x0 == 0
    default = rstep * sign * np.maximum(1.0, np.abs(x0))
    if rel_step is None:
        return default
    h = rel_step * sign * np.abs(x0)
    return np.where(((x0 + h) - x0) == 0, default, h)


def _adjust_to_bounds(x0, h, scheme: str, lb, ub):
    """scipy's ``_adjust_scheme_to_bounds`` with ``num_steps = 1``."""
    if scheme == "1-sided":
        one_sided = np.ones_like(h, dtype=bool)
    else:
        h = np.abs(h)
        one_sided = np.zeros_like(h, dtype=bool)
    if np.all((lb == -np.inf) & (ub == np.inf)):
        return h, one_sided
    h_adj = h.copy()
    lower_dist, upper_dist = x0 - lb, ub - x0
    if scheme == "1-sided":
        x = x0 + h
        violated = (x < lb) | (x > ub)
        fitting = np.abs(h) <= np.maximum(lower_dist, upper_dist)
        h_adj[violated & fitting] *= -1
        forward = (upper_dist >= lower_dist) & ~fitting
        h_adj[forward] = upper_dist[forward]
        backward = (upper_dist < lower_dist) & ~fitting
        h_adj[backward] = -lower_dist[backward]
    else:
        central = (lower_dist >= h) & (upper_dist >= h)
        forward = (upper_dist >= lower_dist) & ~central
        h_adj[forward] = np.minimum(h[forward], 0.5 * upper_dist[forward])
        one_sided[forward] = True
        backward = (upper_dist < lower_dist) & ~central
        h_adj[backward] = -np.minimum(h[backward], 0.5 * lower_dist[backward])
        one_sided[backward] = True
        min_dist = np.minimum(upper_dist, lower_dist)
        adjusted_central = ~central & (np.abs(h_adj) <= min_dist)
        h_adj[adjusted_central] = min_dist[adjusted_central]
        one_sided[adjusted_central] = False
    return h_adj, one_sided


def approx_jacobian(fun, x0, f0, method, rel_step, lb, ub, out_dtype, workers=None):
    """Dense finite-difference Jacobian (m, n) of ``fun`` at ``x0``, as scipy's
    ``approx_derivative`` computes it for ``least_squares`` (same steps, same bound
    handling, same formulas). ``fun(x) -> (m,)``; ``f0 = fun(x0)``."""
    n = x0.size
    mapper = map if workers is None else workers
    h = _absolute_step(rel_step, x0, _relative_step(method, out_dtype))
    if method == "cs":
        points = []
        for i in range(n):
            xc = x0.astype(complex)
            xc[i] += h[i] * 1.0j
            points.append(xc)
        evals = list(mapper(fun, points))
        cols = [np.ravel(np.asarray(evals[i]).imag) / h[i] for i in range(n)]
        return np.stack(cols, axis=1)
    scheme = "1-sided" if method == "2-point" else "2-sided"
    h, one_sided = _adjust_to_bounds(x0, h, scheme, lb, ub)
    if method == "2-point":
        points = []
        for i in range(n):
            x1 = x0.copy()
            x1[i] = x0[i] + h[i]
            points.append(x1)
        evals = list(mapper(fun, points))
        cols = [
            (np.ravel(np.asarray(evals[i], dtype=float)) - f0) / (points[i][i] - x0[i])
            for i in range(n)
        ]
        return np.stack(cols, axis=1)
    points = []
    for i in range(n):
        lo, hi = x0.copy(), x0.copy()
        if one_sided[i]:
            lo[i], hi[i] = x0[i] + h[i], x0[i] + 2 * h[i]
        else:
            lo[i], hi[i] = x0[i] - h[i], x0[i] + h[i]
        points += [lo, hi]
    evals = [np.ravel(np.asarray(f, dtype=float)) for f in mapper(fun, points)]
    cols = []
    for i in range(n):
        f1, f2 = evals[2 * i], evals[2 * i + 1]
        if one_sided[i]:
            cols.append((-3.0 * f0 + 4 * f1 - f2) / (points[2 * i + 1][i] - x0[i]))
        else:
            cols.append((f2 - f1) / (points[2 * i + 1][i] - points[2 * i][i]))
    return np.stack(cols, axis=1)


def grouped_jacobian(fun, x0, f0, method, rel_step, lb, ub, out_dtype, pattern,
                     workers=None):  # fmt: skip
    """The nonzeros (nnz,) of the finite-difference Jacobian of ``fun`` at ``x0``,
    one evaluation per colour group of ``pattern`` (a
    `jaxlsq.core.sparsity.SparsityPattern`, two per group for "3-point"),
    aligned with ``pattern.rows``/``pattern.cols``: scipy's ``approx_derivative``
    with ``sparsity`` (its steps, its bound handling, its formulas). Every column
    of a group is stepped at once; the rows of a column see only its own step
    (no other column of the group touches them), so each entry equals the dense
    scheme's. scipy's groups come from a seeded random column order, these from
    the natural order: the values do not depend on the grouping."""
    mapper = map if workers is None else workers
    rows, cols, groups = pattern.rows, pattern.cols, pattern.groups
    h = _absolute_step(rel_step, x0, _relative_step(method, out_dtype))
    if method != "cs":
        scheme = "1-sided" if method == "2-point" else "2-sided"
        h, one_sided = _adjust_to_bounds(x0, h, scheme, lb, ub)
    k = pattern.n_groups
    members = [groups == g for g in range(k)]
    if method == "cs":
        points = [x0 + (h * e) * 1.0j for e in members]
    elif method == "2-point":
        points = [np.where(e, x0 + h, x0) for e in members]
    else:  # 3-point: (lo, hi) per group, one-sided columns step h and 2h
        points = []
        for e in members:
            points.append(np.where(e, np.where(one_sided, x0 + h, x0 - h), x0))
            points.append(np.where(e, x0 + np.where(one_sided, 2 * h, h), x0))
    evals = [np.ravel(np.asarray(f)) for f in mapper(fun, points)]
    g = groups[cols]  # the group of each nonzero
    if method == "cs":
        df = np.stack([f.imag for f in evals])[g, rows]
        return df / h[cols]
    if method == "2-point":
        df = np.stack(evals).astype(float)[g, rows] - f0[rows]
        dx = np.stack(points)[g, cols] - x0[cols]
        return df / dx
    lo = np.stack(evals[0::2]).astype(float)[g, rows]
    hi = np.stack(evals[1::2]).astype(float)[g, rows]
    side = one_sided[cols]
    df = np.where(side, -3.0 * f0[rows] + 4 * lo - hi, hi - lo)
    x_lo, x_hi = np.stack(points[0::2])[g, cols], np.stack(points[1::2])[g, cols]
    dx = np.where(side, x_hi - x0[cols], x_hi - x_lo)
    return df / dx


class _UserCall:
    """``fun(x, *args, **kwargs)`` as a one-argument callable (picklable for
    ``workers`` pools when ``fun`` is)."""

    def __init__(self, fun, args, kwargs):
        self.fun, self.args, self.kwargs = fun, args, kwargs

    def __call__(self, x):
        return self.fun(x, *self.args, **self.kwargs)


class _Difference:
    """The host path's Jacobian for a string ``jac``: scipy's schemes, counted as
    Jacobian evaluations (scipy's ``nfev`` excludes finite-difference calls)."""

    def __init__(self, user_fun, method, rel_step, lb, ub, out_dtype, workers, m, pad,
                 pattern=None):  # fmt: skip
        self.user_fun = user_fun
        self.method, self.rel_step = method, rel_step
        self.lb, self.ub, self.out_dtype = lb, ub, out_dtype
        self.workers, self.m, self.pad = workers, m, pad
        self.pattern = pattern  # ``jac_sparsity`` (m, n): differences by groups
        self.njev = 0

    def __call__(self, func, x, fx):  # ``func`` (counted by the loop) is not used
        self.njev += 1
        args = (_Checked(self.user_fun, self.m), x, fx[: self.m], self.method,
                self.rel_step, self.lb, self.ub, self.out_dtype)  # fmt: skip
        if self.pattern is None:
            jac = approx_jacobian(*args, self.workers)
        else:  # dense for the loop's steps (the host path has no sparse steps)
            p = self.pattern
            jac = np.zeros((self.m, x.size))
            jac[p.rows, p.cols] = grouped_jacobian(*args, p, self.workers)
        if self.pad:
            jac = np.concatenate([jac, np.zeros((self.pad, x.size))])
        return jac


class _Checked:
    """``user_fun`` with scipy's check that its output keeps its size (a separate
    object, picklable for process pools when ``user_fun`` is)."""

    def __init__(self, user_fun, m):
        self.user_fun, self.m = user_fun, m

    def __call__(self, x):
        out = self.user_fun(x)
        if np.size(out) != self.m:
            raise ValueError(
                "The array returned by a function changed size between calls "
                f"({np.size(out)} values here, {self.m} at x0)"
            )
        return out


def check_workers(workers) -> None:
    """scipy's errors unless ``workers`` is None, a map-like callable or a number
    whose ``int()`` is -1 or >= 1 (scipy's ``MapWrapper`` reads ``int(workers)``:
    its ``ValueError``/``TypeError`` for a string, ``RuntimeError`` for 0)."""
    if workers is None or callable(workers):
        return
    k = int(workers)
    if not (k == -1 or k >= 1):
        raise RuntimeError(
            "Number of workers specified must be -1, an int >= 1, or an object "
            "with a 'map' method"
        )


@contextlib.contextmanager
def worker_map(workers):
    """``with worker_map(workers) as mapper:`` -- scipy's ``workers`` as a map-like
    callable ``mapper(f, points)`` (or None: the builtin ``map``), as scipy's
    ``MapWrapper`` makes it: None or 1, serial; -1, a process pool of every CPU;
    k > 1, a pool of k processes (started with "forkserver" where the default
    would fork, as scipy does; closed at the end of the block); a callable, used
    as it is. Anything else raises scipy's ``RuntimeError``."""
    check_workers(workers)
    if workers is None or callable(workers):
        yield workers
        return
    workers = int(workers)
    if workers == 1:
        yield None
        return
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None and os.name == "posix" and sys.version_info < (3, 14):
        method = "forkserver"  # fork after JAX started its threads can deadlock
    context = multiprocessing.get_context(method)
    pool = context.Pool() if workers == -1 else context.Pool(processes=int(workers))
    try:
        yield pool.map
    finally:
        pool.close()
        pool.terminate()
