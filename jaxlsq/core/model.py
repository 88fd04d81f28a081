"""The residual functions of one problem (`Model`) and the `Solution` of a final
loop state: what `jaxlsq.core.solve` and the batch pool (`jaxlsq.batch.pool`) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .chunked import chunked_strategy
from .implicit import implicit_solution, with_tangents
from .jacobian import make_jacobian
from .krylov import OperatorJacobian, SparseJacobian, transposed_product
from .loop import LMState
from .losses import robust_residuals
from .options import SolveOptions
from .sparsity import SparsityPattern, colored_jacobian
from .status import Solution, Status


class Model(NamedTuple):
    """The residual functions of one problem, built from the user's ``fun``.

    ``full_args`` below is ``(args, f_scale)``: ``f_scale`` travels with the data so
    that implicit differentiation treats it like the data.

    Attributes
    ----------
    unravel : callable
        Flat parameters (n,) -> the pytree structure of ``x0``.
    loss : str or callable
    raw_residual_fn : callable
        ``(x, args) -> fun(unravel(x), *args)`` flattened to (m,), in the working
        dtype.
    raw_jacobian_fn : callable
        ``args -> (x -> d raw_residual_fn / dx)``, (m, n).
    residual_fn : callable
        ``(x, full_args) ->`` the residuals the loop minimises (robust ones for a
        robust loss).
    loop_functions : callable
        ``full_args -> (flat_fun, jac_fun)``: `residual_fn` and its Jacobian as
        functions of ``x`` alone, what `run_lm` takes.
    robust_with_slope : callable
        ``(f, f_scale) ->`` robust residuals and their elementwise derivative.
    forms_jacobian : bool
        False for the matrix-free strategies (``linear_solver="cg"``): no dense J
        exists, not even at the end; and with ``keep_jac=False``, where the loop
        may use one but none is returned (``Solution.jac`` is None either way).
    sparsity : SparsityPattern or None
        ``jac_sparsity``, for J^T products of a matrix-free fit whose residual
        cannot be transposed (`jaxlsq.core.krylov.transposed_product`).
    """

    unravel: Callable
    loss: str
    raw_residual_fn: Callable
    raw_jacobian_fn: Callable
    residual_fn: Callable
    loop_functions: Callable
    robust_with_slope: Callable
    forms_jacobian: bool = True
    sparsity: SparsityPattern | None = None


def make_model(
    fun,
    jac,
    loss: str,
    flat_x0: jax.Array,
    unravel: Callable,
    args: tuple,
    chunk_points: int | None = None,
    sparsity: SparsityPattern | None = None,
    matrix_free: bool = False,
    keep_jac: bool = True,
) -> Model:
    """`Model` of ``fun`` for parameters like ``flat_x0`` (n,) and arguments like
    ``args`` (shapes and dtypes only). With ``chunk_points``, the loop's Jacobian
    is the chunked strategy (`jaxlsq.core.chunked`) over blocks of that many
    points; with ``sparsity`` (``jac_sparsity``), J comes by colour groups
    (`jaxlsq.core.sparsity`); ``matrix_free`` (``linear_solver="cg"``) gives the
    loop a strategy of products only (`jaxlsq.core.krylov`). Without ``keep_jac``
    no dense J is formed at the end (``forms_jacobian`` False; the loop's own
    strategy is unchanged)."""
    dtype, n = flat_x0.dtype, flat_x0.size

    def raw_residual_fn(x, a):
        return jnp.ravel(fun(unravel(x), *a)).astype(dtype)

    def any_jacobian(flat, user_jac):  # x -> d flat / dx, (m, n), by colours if given
        if sparsity is not None and not callable(user_jac):
            return colored_jacobian(flat, sparsity, dtype)
        return make_jacobian(flat, user_jac, m, n, dtype)

    def raw_jacobian_fn(a):  # x -> d raw_residual_fn / dx, (m, n)
        user_jac = (lambda x: jac(unravel(x), *a)) if callable(jac) else jac
        return any_jacobian(lambda x: raw_residual_fn(x, a), user_jac)

    def robust_with_slope(f, scale):
        """Robust residuals (jaxlsq.core.losses) and their elementwise derivative."""
        return jax.jvp(
            lambda f_: robust_residuals(f_, loss, scale), (f,), (jnp.ones_like(f),)
        )

    # The loop minimises half the sum of squares of ``residual_fn``. A robust loss is
    # an elementwise transformation of the residuals.
    def residual_fn(x, a):
        user_args, scale = a
        return robust_residuals(raw_residual_fn(x, user_args), loss, scale)

    m = jax.eval_shape(lambda x: raw_residual_fn(x, args), flat_x0).shape[0]

    def loop_functions(loop_args):
        def flat_fun(x):
            return residual_fn(x, loop_args)

        if matrix_free:
            if sparsity is not None:
                return flat_fun, SparseJacobian(flat_fun, sparsity)
            return flat_fun, OperatorJacobian(flat_fun)
        if loss == "linear":
            jac_fun = raw_jacobian_fn(loop_args[0])
        elif not callable(jac):
            jac_fun = any_jacobian(flat_fun, jac)
        else:  # chain rule through the transformation, for the user's Jacobian

            def jac_fun(x):
                f = raw_residual_fn(x, loop_args[0])
                _, slope = robust_with_slope(f, loop_args[1])
                return slope[:, None] * raw_jacobian_fn(loop_args[0])(x)

        if isinstance(chunk_points, int):  # the loop's J by blocks, jac_fun at the end
            jac_fun = chunked_strategy(
                fun, unravel, flat_x0, loop_args, chunk_points, loss, m, jac_fun
            )
        return flat_fun, jac_fun

    return Model(
        unravel,
        loss,
        raw_residual_fn,
        raw_jacobian_fn,
        residual_fn,
        loop_functions,
        robust_with_slope,
        not matrix_free and keep_jac,
        sparsity,
    )


def assemble_solution(
    model: Model, adjoint: str, st: LMState, full_args, options: SolveOptions
) -> Solution:
    """The `Solution` of the final loop state ``st`` (with the Jacobian at ``st.x``).

    ``full_args = (args, f_scale)`` as given by the caller (with their tangents): the
    implicit adjoint attaches the derivatives here. ``options`` are the loop's.
    """
    loss = model.loss
    args, f_scale = full_args
    x, f = st.x, st.f
    jac_ = st.jac if model.forms_jacobian else None  # (keep_jac=False: none kept)

    if options.lower is None:
        active_mask = jnp.zeros(x.shape, jnp.int32)
    else:  # the loop projects onto the box, so "on a bound" is an exact equality
        at_lower, at_upper = x <= options.lower, x >= options.upper
        active_mask = at_upper.astype(jnp.int32) - at_lower.astype(jnp.int32)
    if adjoint == "implicit":
        frozen = active_mask != 0
        if options.fixed is not None:
            frozen = frozen | options.fixed
        x = implicit_solution(model.residual_fn, x, full_args, frozen)
        if loss == "linear" and model.forms_jacobian:
            f, jac_ = with_tangents(model.residual_fn, x, full_args, f, jac_)
        elif loss == "linear":  # (one evaluation, for the tangents of f)
            f = model.residual_fn(x, full_args)

    def times_jac(v, residual):  # v^T J of ``residual`` (x -> (m,)) at x, (n,)
        if jac_ is not None:
            return jac_.T @ v
        return transposed_product(residual, x, v, model.sparsity)  # matrix-free

    if loss == "linear":
        cost = 0.5 * jnp.sum(f * f)
        grad = times_jac(f, lambda x_: model.residual_fn(x_, full_args))
    else:  # report fun's own residuals and Jacobian, and the robust cost and gradient
        f = model.raw_residual_fn(x, args)
        if model.forms_jacobian:
            jac_ = model.raw_jacobian_fn(args)(x)
        robust_f, slope = model.robust_with_slope(f, f_scale)
        cost = 0.5 * jnp.sum(robust_f * robust_f)
        grad = times_jac(slope * robust_f, lambda x_: model.raw_residual_fn(x_, args))
    # Never a success with a non-finite cost or point (e.g. a sum of squares that
    # overflows although every residual is finite): NONFINITE instead.
    succeeded = (st.status >= int(Status.FTOL)) & (st.status <= int(Status.GTOL))
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(x))
    status = jnp.where(succeeded & ~finite, int(Status.NONFINITE), st.status)
    return Solution(
        params=model.unravel(x),
        residuals=f,
        cost=cost,
        jac=jac_,
        grad=grad,
        status=status,
        success=(status >= int(Status.FTOL)) & (status <= int(Status.GTOL)),
        nfev=st.nfev,
        njev=st.njev,
        n_iter=st.n_iter,
        active_mask=active_mask,
    )
