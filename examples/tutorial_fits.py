"""The three tutorial fits of the scipy ``leastsq`` tutorial, as reusable data.

Each problem is a plain-numpy model, noisy data (``np.random.seed(0)`` then
``np.random.normal``, exactly as the tutorial does) and the tutorial's starting point.
Importing this module has no side effects; `tutorial_problems` builds the data.

Run it to fit all three with `jaxlsq.leastsq` and ``scipy.optimize.leastsq`` (if
installed) side by side::

    python examples/tutorial_fits.py
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def quadratic(x, a, b, c):
    """``a * x**2 + b * x + c``."""
    return a * x**2 + b * x + c


def exponential_decay(x, a, b, c):
    """``a * exp(-b * x) + c``."""
    return a * np.exp(-b * x) + c


def sinusoid(x, a, b, c):
    """``a * sin(b * x + c)``."""
    return a * np.sin(b * x + c)


def residuals_for(model: Callable) -> Callable:
    """The tutorial's ``residuals(params, x, y) = model(x, *params) - y``."""

    def residuals(params, x, y):
        return model(x, *params) - y

    residuals.__name__ = f"{model.__name__}_residuals"
    return residuals


def tutorial_problems() -> list[tuple[str, Callable, np.ndarray, np.ndarray, list]]:
    """The three tutorial problems as ``(name, model, x, y, start)`` tuples.

    The data are regenerated on each call with ``np.random.seed(0)`` (the tutorial's
    seeding, so the global numpy random state is reset as a side effect of calling
    this function, not of importing the module).

    Returns
    -------
    list of (str, callable, ndarray, ndarray, list)
        ``model(x, *params)`` is plain numpy; ``start`` is the tutorial's initial guess.
    """
    problems = []
    specs = [
        ("quadratic", quadratic, (2.0, -3.0, 5.0), np.linspace(-5, 5, 100), 1.0,
         [1, -1, 1]),
        ("exponential decay", exponential_decay, (2.0, 1.5, 0.5),
         np.linspace(0, 5, 50), 0.2, [1, 1, 1]),
        ("sinusoid", sinusoid, (2.0, 1.5, 0.5), np.linspace(0, 2 * np.pi, 100), 0.2,
         [1, 1, 0]),
    ]  # fmt: skip
    for name, model, true, x, noise, start in specs:
        np.random.seed(0)  # noqa: NPY002 - the tutorial's seeding
        y = model(x, *true) + np.random.normal(0, noise, x.size)  # noqa: NPY002
        problems.append((name, model, x, y, start))
    return problems


def main() -> None:  # pragma: no cover - a demo
    import warnings

    from jaxlsq import leastsq

    try:
        from scipy.optimize import leastsq as scipy_leastsq
    except ImportError:
        scipy_leastsq = None
    warnings.simplefilter("ignore")  # the host-path notice for these numpy models
    for name, model, x, y, start in tutorial_problems():
        residuals = residuals_for(model)
        params_opt, _ = leastsq(residuals, start, args=(x, y))
        ssr = np.sum(residuals(params_opt, x, y) ** 2)
        print(f"{name:18s} jaxlsq {np.round(params_opt, 6)}  SSR {ssr:.6g}")
        if scipy_leastsq is not None:
            ref, _ = scipy_leastsq(residuals, start, args=(x, y))
            ssr = np.sum(residuals(ref, x, y) ** 2)
            print(f"{'':18s} scipy  {np.round(ref, 6)}  SSR {ssr:.6g}")


if __name__ == "__main__":
    main()
