"""Curve fitting on top of `jaxlsq.batch` and `jaxlsq.core`: the one fitting stack.

* `fit`: `jaxlsq.fit` (multi-start included) and `fit_setup`, its checked inputs;
* `fit_batch`: `jaxlsq.fit_batch`;
* `weights`: sigma -> weighted residuals (also the scipy shim's `curve_fit`'s);
* `poisson`: the Poisson estimator (deviance residuals, Fisher information);
* `statistics`: covariance and fit statistics at a solution;
* `degeneracy`: flags and warnings for fits that succeed but mean little;
* `checks`: `fit`'s input checks and conversions;
* `result`: `FitResult`; `report`: its text and HTML reports;
* after a fit, from its `FitResult`: `bands` (confidence and prediction bands),
  `profile` (profile-likelihood intervals), `bootstrap`, `plots` (matplotlib).
"""
