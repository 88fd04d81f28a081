"""Slot refill: many fits through a fixed pool of vmapped LM states, in one jit.

Under ``jax.vmap`` a ``while_loop`` runs every lane until the slowest lane stops, so
a chunk of fits costs its slowest fit times the chunk size: for exponential decays
(median 8, max 12+ Jacobians) a third or more of the work is spent on lanes that
have already finished. Here the loop is not vmapped; its state is:

* ``P`` *slots*, a vmapped `jaxlsq.core.loop.LMState` (one fit in progress per
  slot), and the per-fit inputs of the problem each slot holds;
* a queue: the index of the next problem not yet started;
* result buffers with one row per problem.

Each step runs one vmapped `lm_iteration` (one Jacobian and its trial steps) on the
slots that are still running. Then, while at least ``K`` slots have finished and the
queue is not empty (a ``while_loop`` on scalars: the pool loop is not batched, so
this branches for real), the first ``K`` finished slots write their state to their
problems' rows and are re-initialised (`lm_init`, vmapped over ``K``) with the next
``K`` problems of the queue. Refilling ``K`` at a time bounds the cost of a refill
(a residual evaluation for ``K`` lanes, not ``P``) at the price of up to ``K - 1``
finished slots idling for a step or two. Once the queue is empty the remaining fits
run out: while more than ``K`` are running, in the pool; the last ``K`` or fewer
move to a pool of ``K`` slots (a second, smaller vmapped iteration), so a few slow
fits at the end of a batch cost ``K`` lanes per step, not ``P``.

Each problem goes through exactly the iteration code of `solve` (`lm_init`,
`lm_iteration`, and the Jacobian at the end), only the scheduling differs; the final
Jacobian and the `Solution` (implicit-differentiation tangents, robust cost, active
mask) are assembled for all problems afterwards in one vmapped pass, by the same
`assemble_solution` as `solve`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ..core.loop import LMState, lm_init, lm_iteration, with_jacobian
from ..core.model import assemble_solution, make_model
from ..core.options import SolveOptions
from ..core.solve import prepare
from ..core.status import Solution, Status
from .progress import tick_finished

#: Default number of slots, and of slots refilled at once.
DEFAULT_SLOTS = 1024
DEFAULT_REFILL = 64

_RESULT_FIELDS = ("x", "f", "status", "nfev", "njev", "n_iter", "jac_current")


def solve_refill(
    fun: Callable[..., Any],
    shared: Sequence[Any],
    per_fit: Sequence[jax.Array],
    combine: Callable[[Sequence[Any], Sequence[jax.Array]], tuple[Any, tuple]],
    n_slots: int,
    refill_size: int,
    assemble_batch: int | None,
    options: SolveOptions,
    token: jax.Array | None = None,
) -> Solution:
    """Fit ``N`` problems (the leading axis of every ``per_fit`` leaf) through a pool.

    Parameters
    ----------
    fun
        The user's residual function, as for `jaxlsq.solve`.
    shared, per_fit
        The leaves of ``(x0, args)`` common to all problems, and those with a leading
        batch axis of size ``N``.
    combine
        ``combine(shared, row) -> (x0, args)`` for one problem, ``row`` being the
        ``per_fit`` leaves indexed at that problem.
    n_slots, refill_size
        ``P`` and ``K`` (clipped to ``N`` and ``P``).
    assemble_batch
        Problems per vmapped batch of the final assembly (``lax.map``), or None.
    options
        The options of every fit (``adjoint`` must be ``"implicit"``).
    token : int32 Array (), optional
        A progress bar's token (`jaxlsq.batch.progress`): the bar advances by one
        per finished fit, as finished fits are stored (``refill_size`` at a
        time). None: no bar.

    Returns
    -------
    Solution
        Every field with a leading axis of size ``N``.
    """
    n_problems = per_fit[0].shape[0]
    if options.adjoint != "implicit":
        raise ValueError(
            f"adjoint={options.adjoint!r}: the refill schedule supports "
            "adjoint='implicit' only; use schedule='vmap'"
        )
    if options.linear_solver == "cg" or not options.keep_jac:
        what = "keep_jac=False" if options.keep_jac is False else "linear_solver='cg'"
        raise ValueError(
            f"{what}: the refill schedule holds dense Jacobians; use schedule='vmap'"
        )

    # Checks, defaults and the model, from one problem (all share shapes and dtypes).
    x0_t, args_t = combine(shared, [leaf[0] for leaf in per_fit])
    x0_t, args_t, options = prepare(fun, x0_t, args_t, options)
    f_scale = options.f_scale
    flat_x0_t, unravel = ravel_pytree(x0_t)
    dtype = flat_x0_t.dtype
    model = make_model(
        fun,
        options.jac,
        options.loss,
        flat_x0_t,
        unravel,
        args_t,
        options.chunk_points,
        options.jac_sparsity,
    )

    # The loop carries no tangents; implicit differentiation attaches them at the end.
    loop_shared, loop_per_fit, loop_options, loop_f_scale = lax.stop_gradient(
        (shared, per_fit, options, f_scale)
    )

    def problem(shared_, row, f_scale_):
        """Flat x0 (n,), args and full_args of one problem."""
        x0, args = combine(shared_, row)
        if not isinstance(args, tuple):
            args = (args,)
        x0 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), x0)
        flat_x0 = ravel_pytree(x0)[0]
        return flat_x0, args, (args, f_scale_)

    def init_one(row):
        flat_x0, _, full_args = problem(loop_shared, row, loop_f_scale)
        flat_fun, _ = model.loop_functions(full_args)
        return lm_init(flat_fun, flat_x0, loop_options)._replace(jac=None)

    def step_one(state, row):
        _, _, full_args = problem(loop_shared, row, loop_f_scale)
        flat_fun, jac_fun = model.loop_functions(full_args)
        state = lm_iteration(flat_fun, jac_fun, loop_options, state)
        return state._replace(jac=None)

    n_slots = max(1, min(n_slots, n_problems))
    refill_size = max(1, min(refill_size, n_slots))
    n_slots -= n_slots % refill_size  # the slots fill K at a time
    idle = jnp.asarray(int(Status.IMPROPER_INPUT), jnp.int32)

    def take(rows):
        return [leaf[rows] for leaf in loop_per_fit]

    def start(rows):
        """Slots holding problems ``rows`` (idle where ``rows >= N``)."""
        valid = rows < n_problems
        data = take(jnp.minimum(rows, n_problems - 1))
        st = jax.vmap(init_one)(data)
        st = st._replace(status=jnp.where(valid, st.status, idle))
        return st, jnp.where(valid, rows, n_problems), data

    def write(results, st, rows):
        """Store the states ``st`` in their problems' rows (rows == N: dropped).
        Every fit is written once, when finished: the progress bar ticks here, K
        fits at a time (the fewest host calls; that the loop holds an effect at
        all is what costs, see `jaxlsq.batch.solve_batch.pool_shape`)."""
        tick_finished(token, rows < n_problems)
        return {
            k: results[k].at[rows].set(getattr(st, k), mode="drop")
            for k in _RESULT_FIELDS
        }

    # Every slot starts idle (rows == N); the refill loop below fills them K at a
    # time, so lm_init is compiled once, at width K.
    rows0 = jnp.full((n_slots,), n_problems)
    data0 = take(jnp.zeros((n_slots,), jnp.int32))
    st0 = jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(jax.vmap(init_one), data0),
    )
    st0 = st0._replace(status=jnp.full((n_slots,), idle))
    results0 = {
        k: jnp.zeros((n_problems,) + v.shape[1:], v.dtype)
        for k, v in st0._asdict().items()
        if k in _RESULT_FIELDS
    }

    def refill(carry):
        """Write the first K finished slots, restart them on the next K problems."""
        st, rows, data, queue, results = carry
        done = st.status != int(Status.RUNNING)
        (sel,) = jnp.nonzero(done, size=refill_size)  # called with >= K done
        results = write(results, _take_slots(st, sel), rows[sel])
        new_st, new_rows, new_data = start(queue + jnp.arange(refill_size))
        st = jax.tree_util.tree_map(lambda a, b: a.at[sel].set(b), st, new_st)
        rows = rows.at[sel].set(new_rows)
        data = [a.at[sel].set(b) for a, b in zip(data, new_data, strict=True)]
        return st, rows, data, queue + refill_size, results

    def can_refill(carry):
        st, _, _, queue, _ = carry
        n_done = jnp.sum(st.status != int(Status.RUNNING))
        return (n_done >= refill_size) & (queue < n_problems)

    # The tail: once the queue is empty and at most K fits still run, they move to a
    # pool of K slots. A few slow fits (a Poisson fit creeping along mu = 0 for
    # 2000 iterations) then cost K lanes per iteration instead of P: the last
    # problems of a batch no longer run at the price of a full pool.
    # (K <= P already; K == P: no narrower pool, the pool runs until none runs.)
    narrow_tail = refill_size < n_slots
    threshold = refill_size if narrow_tail else 0

    def running_count(st):
        return jnp.sum(st.status == int(Status.RUNNING))

    def advance(st, data):
        """One iteration of every running slot; finished slots keep their state."""
        running = st.status == int(Status.RUNNING)
        return _select(running, jax.vmap(step_one)(st, data), st)

    def unfinished(carry):
        st, _, _, queue, _ = carry
        return (running_count(st) > threshold) | (queue < n_problems)

    def body(carry):
        st, rows, data, queue, results = carry
        carry = advance(st, data), rows, data, queue, results
        # A while_loop, not a cond: its carry (the result buffers) stays in place.
        return lax.while_loop(can_refill, refill, carry)

    queue0 = jnp.zeros((), jnp.int32)
    carry = lax.while_loop(can_refill, refill, (st0, rows0, data0, queue0, results0))
    st, rows, data, _, results = lax.while_loop(unfinished, body, carry)
    if narrow_tail:
        running = st.status == int(Status.RUNNING)
        results = write(results, st, jnp.where(running, n_problems, rows))
        (sel,) = jnp.nonzero(running, size=refill_size)  # at most K are running
        valid = jnp.arange(refill_size) < running_count(st)
        st = _take_slots(st, sel)
        st = st._replace(status=jnp.where(valid, st.status, idle))
        rows = jnp.where(valid, rows[sel], n_problems)
        data = [a[sel] for a in data]
        st = lax.while_loop(
            lambda s: running_count(s) > 0, lambda s: advance(s, data), st
        )
    results = write(results, st, rows)

    def finish(row_result, row):
        """Jacobian at the final point, then the Solution, for one problem."""
        flat_x0, args, full_args = problem(shared, row, f_scale)
        _, jac_fun = model.loop_functions(lax.stop_gradient(full_args))
        st = _result_state(row_result, flat_x0)
        # What lm_finalize does: keep the loop's Jacobian when it belongs to x (it
        # is recomputed here, same function at the same point, but not counted).
        fresh = with_jacobian(jac_fun, st)
        st = jax.tree_util.tree_map(
            lambda keep, new: jnp.where(st.jac_current, keep, new),
            fresh._replace(njev=st.njev, status=st.status),
            fresh,
        )
        return assemble_solution(model, "implicit", st, full_args, loop_options)

    if assemble_batch is None or assemble_batch >= n_problems:
        return jax.vmap(finish)(results, list(per_fit))
    return lax.map(
        lambda a: finish(*a), (results, list(per_fit)), batch_size=assemble_batch
    )


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per slot (leading axis): ``new`` where ``mask`` (P,), else ``old``."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _take_slots(slots: LMState, sel: jax.Array) -> LMState:
    return jax.tree_util.tree_map(lambda a: a[sel], slots)


def _result_state(row: dict, flat_x0: jax.Array) -> LMState:
    """An `LMState` from a result row; the fields the assembly does not read are 0."""
    zero = jnp.zeros((), flat_x0.dtype)
    return LMState(
        x=row["x"],
        f=row["f"],
        fnorm=zero,
        jac=None,
        jac_current=row["jac_current"],
        diag=jnp.ones_like(flat_x0),
        delta=zero,
        par=zero,
        jac_unit=jnp.ones_like(zero),
        xnorm=zero,
        gnorm=zero,
        nfev=row["nfev"],
        njev=row["njev"],
        n_iter=row["n_iter"],
        status=row["status"],
    )
