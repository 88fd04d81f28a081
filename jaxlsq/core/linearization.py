"""Linearizations: the seam between how J is produced and how a step is solved.

The LM iteration never reads the Jacobian itself. At each point x a *Jacobian
strategy* produces a `Linearization` -- J reduced to what one iteration needs -- and
the step solver (`jaxlsq.core.factorize`, `jaxlsq.core.steps`) turns it into damped
steps. MINPACK itself never touches J after its QR: lmpar needs a triangular factor
R (or the Gram matrix ``J^T J`` when it is well conditioned), ``J^T f``, the column
norms of J and ``||f||`` (the loop has ``f``).

The contract of a Jacobian strategy
-----------------------------------
A strategy is a callable ``strategy(x, f) -> (Linearization, carry)``:

* ``x`` (n,) the point, ``f`` (m,) the residuals there divided by a power of 2
  near their norm (already evaluated by the loop: a strategy must not
  count or re-evaluate them; the loop scales so that ``J^T f`` cannot underflow
  where J is tiny, and scales back exactly);
* the `Linearization` holds ``jtf`` (``J^T f`` of the ``f`` given) and
  ``col_norms`` always, and at least one of ``jac_t`` (the dense J^T, n x m),
  ``r`` (an n x n factor with ``R^T R = J^T J``) or ``gram`` (``J^T J``, or that
  of J's columns divided by the powers of 2 in ``gram_scale``); the step solver
  uses the most accurate one present (``jac_t``, then ``r``, then ``gram``).
  Column norms and Gram matrices should be formed from scaled columns (as
  `linearize_dense` does) so that J's entries beyond 1e±154 neither overflow nor
  underflow when squared. Every array must be finite where J is;
  the loop stops with ``Status.NONFINITE`` when ``jtf`` or ``col_norms`` is not;
* ``carry`` is what the strategy keeps for the solution (`jaxlsq.Solution.jac`):
  the dense J (m, n), or None for a strategy that never holds J whole.

Strategies that fit this contract without changing the loop:

* **dense** (`DenseJacobian`, today's): ``jax.jacfwd``/``jacrev`` or the user's
  ``jac`` at x, reduced in one pass (`linearize_dense`); the carry is J.
* **chunked** (the large-problems issue): residuals and J computed block by block
  over the data points under ``lax.map``, each block reduced to its R factor and
  merged by TSQR (``r``, ``jtf``, ``col_norms``), so one fit of 10^8 points needs
  O(chunk * n + n^2) memory; carry None.
* **matrix-free** (10^4+ parameters, `jaxlsq.core.krylov`): no matrix at all --
  the Linearization's ``operator`` applies J and J^T (sparse nonzeros by colour
  groups, or ``jvp``/``vjp``), and the loop's step is then CG on the trust-region
  subproblem (`jaxlsq.core.krylov.trust_region_cg`); the dense solver is untouched.

Where to change what: a new Jacobian strategy is a new callable here; a new damped
solve is a new branch of `jaxlsq.core.factorize.factorize`; the damping rule (the
trust-region radius) is `jaxlsq.core.loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .scaling import power_of_two, scaled_norm
from .unrolled import gram_matrix

#: Up to this many parameters the Gram matrix is formed with every linearization
#: (one pass over J: its diagonal gives the column norms), because the batched
#: factorisation starts from it (see `jaxlsq.core.factorize`).
SMALL_N = 8


class JacobianOperator:
    """J (m, n) as products: ``matvec(v)`` (n,) -> (m,) and ``rmatvec(u)`` (m,) ->
    (n,). Closures over one linearization's arrays (never carried by the loop)."""

    def __init__(self, matvec: Callable, rmatvec: Callable):
        self.matvec, self.rmatvec = matvec, rmatvec

    def without(self, frozen: jax.Array) -> JacobianOperator:
        """J with the columns ``frozen`` (n,) bool set to 0."""
        return JacobianOperator(
            lambda v: self.matvec(jnp.where(frozen, 0, v)),
            lambda u: jnp.where(frozen, 0, self.rmatvec(u)),
        )


class Linearization(NamedTuple):
    """J at a point, reduced to what one LM iteration reads (see the module doc).

    Attributes
    ----------
    jtf : Array, shape (n,)
        ``J^T f``.
    col_norms : Array, shape (n,)
        Euclidean norms of the columns of J.
    gram : Array, shape (n, n), or None
        ``Jc^T Jc`` of ``Jc = J / gram_scale`` (``J^T J`` itself when
        ``gram_scale`` is None).
    jac_t : Array, shape (n, m), or None
        J^T itself (row ``j`` is ``dr/dx_j``: reductions over the residuals then
        run along the minor axis, which XLA vectorises across a batch).
    r : Array, shape (n, n), or None
        A square factor with ``R^T R = J^T J`` (R of a QR factorisation).
    gram_scale : Array, shape (n,), or None
        Powers of 2 that divide J's columns in ``gram`` (near each column's
        largest entry): ``J^T J = gram * outer(gram_scale, gram_scale)`` exactly
        where that is in range, and ``gram`` neither overflows nor underflows
        where it is not.
    operator : JacobianOperator, or None
        J by products, for the matrix-free step (`jaxlsq.core.krylov`); the
        loop then builds no factorisation.
    """

    jtf: jax.Array
    col_norms: jax.Array
    gram: jax.Array | None = None
    jac_t: jax.Array | None = None
    r: jax.Array | None = None
    gram_scale: jax.Array | None = None
    operator: JacobianOperator | None = None

    def without(self, frozen: jax.Array | None) -> Linearization:
        """The linearization of J with the columns ``frozen`` (n,) bool set to 0
        (fixed parameters, or those held on a bound): steps do not move them."""
        if frozen is None:
            return self

        def rows(a):  # zero rows of J^T / R^T... stored with the column first
            return None if a is None else jnp.where(frozen[:, None], 0, a)

        gram = self.gram
        if gram is not None:
            gram = jnp.where(frozen[:, None] | frozen[None, :], 0, gram)
        r = self.r
        if r is not None:
            r = jnp.where(frozen[None, :], 0, r)  # columns of R are those of J
        return Linearization(
            jtf=jnp.where(frozen, 0, self.jtf),
            col_norms=jnp.where(frozen, 0, self.col_norms),
            gram=gram,
            jac_t=rows(self.jac_t),
            r=r,
            gram_scale=self.gram_scale,
            operator=None if self.operator is None else self.operator.without(frozen),
        )

    def jac_dot(self, step: jax.Array, f: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f . J s, ||J s||^2)`` for a step ``s`` (n,) and the residuals ``f``:
        the linear model's terms for a step that is not lmpar's own (a projected
        step). Exact products with J when ``jac_t`` is held, else from R or the
        Gram matrix (``f . J s = (J^T f) . s``)."""
        if self.jac_t is not None or self.operator is not None:
            if self.jac_t is not None:
                jp = sum(self.jac_t[i] * step[i] for i in range(step.shape[0]))
            else:
                jp = self.operator.matvec(step)
            return jnp.dot(f, jp), jnp.dot(jp, jp)
        fjp = jnp.dot(self.jtf, step)
        if self.r is not None:
            rs = self.r @ step
            return fjp, jnp.dot(rs, rs)
        if self.gram_scale is not None:  # J s = Jc (gram_scale * s)
            step = step * self.gram_scale
        return fjp, jnp.maximum(step @ (self.gram @ step), 0)

    def is_finite(self) -> jax.Array:
        """True when J is finite (a NaN/inf Jacobian stops the fit), read off
        ``jtf`` and ``col_norms`` as the contract above says: a NaN/inf entry of J
        reaches its column's norm, so J itself (m x n) is not passed over again
        (that pass cost ~10% of a batch iteration: 1,024 lanes, n = 3, m = 50)."""
        return jnp.all(jnp.isfinite(self.jtf) & jnp.isfinite(self.col_norms))


def model_terms(lin: Linearization, step, f, fnorm):
    """``(prered, dirder)`` of lmder for a step ``step`` (n,) that is not lmpar's
    closed-form one (a projected or a CG step): the predicted relative reduction
    ``-(2 f.Js + ||Js||^2) / ||f||^2`` and ``f.Js / ||f||^2``, from the linear
    model itself. ``step``, ``f`` (m,) and ``fnorm`` all over the loop's residual
    unit (no underflow)."""
    f_jp, jp_jp = lin.jac_dot(step, f)
    fjp = f_jp / fnorm**2
    return -2 * fjp - jp_jp / fnorm**2, fjp


def linearize_dense(jac: jax.Array, f: jax.Array) -> Linearization:
    """The `Linearization` of a dense J (m, n) at residuals ``f`` (m,).

    The loop works on J^T (n, m): every reduction over the m residuals is then over
    the minor axis, which XLA's CPU backend vectorises across a batch (reductions
    over the middle axis of a batched (B, m, n) array run several times slower);
    XLA cancels this transpose against jacfwd's own. For n <= SMALL_N one pass forms
    the Gram matrix (its diagonal gives the column norms); for larger n the norms
    come from J itself.
    """
    jac_t = jac.T
    jtf = _jtf(jac_t, f)
    # Squares of the columns by a power of 2 near their largest entry: exact (the
    # same bits) wherever J^T J is in range, and no overflow or underflow where a
    # column's entries are beyond ~1e±154 (float64; ~1e±19 in float32), whose
    # squares would be inf or 0 (MINPACK's enorm scales for the same reason).
    n = jac_t.shape[0]
    if n > SMALL_N:
        return Linearization(jtf, scaled_norm(jac_t, axis=1), None, jac_t)
    scale = power_of_two(jnp.max(jnp.abs(jac_t), axis=1))  # (n,)
    scaled = jac_t / scale[:, None]
    gram = gram_matrix(scaled)
    # The diagonal by the same products as gram_matrix's own (XLA merges the two),
    # not read off ``gram``: a single fit then never forms the off-diagonal
    # entries, which only a batch's factorisation reads (`_small_system`).
    squares = jnp.stack([jnp.sum(scaled[i] * scaled[i]) for i in range(n)])
    col_norms = scale * jnp.sqrt(squares)
    return Linearization(jtf, col_norms, gram, jac_t, gram_scale=scale)


def _jtf(jac_t: jax.Array, f: jax.Array) -> jax.Array:
    """``J^T f`` (n,) from ``jac_t`` (n, m) and ``f`` (m,): one reduction over the
    residuals, or, in float32 with n <= SMALL_N, one per parameter. XLA's CPU
    backend runs the float32 broadcast-multiply-reduce across a batch at half the
    speed of separate reductions (1,024 lanes, n = 3, m = 50: 228 against 109 us;
    float64: 86 against 99-141 us, so float64 keeps the one reduction, and with it
    the single fits' bits the NIST runs were checked with)."""
    n = jac_t.shape[0]
    if jac_t.dtype == jnp.float32 and n <= SMALL_N:
        return jnp.stack([jnp.sum(jac_t[i] * f) for i in range(n)])
    return jnp.sum(jac_t * f, axis=1)


class JacobianStrategy:
    """Base of the Jacobian strategies (see the module doc for the contract).

    Subclasses are frozen dataclasses (equal per their fields, so compiled loops
    are reused) with ``__call__(x, f) -> (Linearization, carry)`` and
    ``jacobian(x)``, the dense J for the solution (or None if never formed).
    ``carries_jacobian`` says whether ``carry`` is the dense J (m, n) or None;
    ``forms_jacobian`` whether ``jacobian(x)`` forms it at all (False for the
    matrix-free strategies: `jaxlsq.Solution.jac` is then None).
    """

    carries_jacobian: bool = False
    forms_jacobian: bool = True

    def __call__(self, x: jax.Array, f: jax.Array):
        raise NotImplementedError

    def jacobian(self, x: jax.Array) -> jax.Array | None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DenseJacobian(JacobianStrategy):
    """The dense strategy: ``jac_fun(x) -> J`` (m, n) (``jax.jacfwd``/``jacrev`` or
    the user's ``jac``), reduced by `linearize_dense`; the carry is J."""

    jac_fun: Callable[[jax.Array], jax.Array]
    carries_jacobian = True  # (a class attribute, not a field)

    def __call__(self, x: jax.Array, f: jax.Array):
        jac = self.jac_fun(x)
        return linearize_dense(jac, f), jac

    def jacobian(self, x: jax.Array) -> jax.Array:
        """J at ``x`` (for the solution), (m, n)."""
        return self.jac_fun(x)


def as_strategy(jacobian) -> JacobianStrategy:
    """A Jacobian strategy from a strategy or a plain ``x -> J`` function (which
    becomes the dense strategy)."""
    if isinstance(jacobian, JacobianStrategy):
        return jacobian
    return DenseJacobian(jacobian)
