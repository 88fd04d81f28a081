"""The solver core: one LM loop and everything it is made of (the bottom layer).

Modules, each with one job (nothing here imports from ``batch``, ``fitting`` or
``scipy``):

* `options`: `SolveOptions`, every option declared once (static or traced);
* `status`: `Status` codes, their messages, the `Solution` pytree;
* `validate`: checks and conversions of the inputs, before tracing;
* `losses`: robust losses (the loop's residual transform; scipy's rho);
* `jacobian`: the dense Jacobian functions (jacfwd, jacrev, a user's jac);
* `linearization`: Jacobian strategies and the `Linearization` the loop reads;
* `factorize`: the damped-step factorisations (`StepSystem`);
* `steps`: damped steps and MINPACK's lmpar from a `StepSystem`;
* `unrolled`: small dense linear algebra unrolled for batches;
* `scaling`: exact power-of-2 scaling, MINPACK-style norms (no over/underflow);
* `loop`: the Levenberg-Marquardt iteration (the only solver ``while_loop``);
* `implicit`: implicit differentiation of a solution;
* `solve`: the `jaxlsq.solve` entry point (checks, then the jitted loop);
* `caches`: the package's bounded, weak caches;
* `compiler`: how jaxlsq's entry points compile (`jit`), the compilation cache.
"""
