"""The solver core: one LM loop and everything it is made of (the bottom layer).

Modules, each with one job (imports from ``batch``, ``fitting`` or ``scipy`` are
never allowed here):

* `status`: `Status` codes, their messages, the `Solution` pytree;
* `losses`: robust losses (rho, the residual transform);
* `jacobian`: how the Jacobian of the flat residuals is produced;
* `steps`: damped least-squares steps (factorisations, MINPACK's lmpar);
* `loop`: the Levenberg-Marquardt iteration (the only solver ``while_loop``);
* `implicit`: implicit differentiation of a solution;
* `solve`: the `jaxlsq.solve` entry point (checks, then the jitted loop).
"""
