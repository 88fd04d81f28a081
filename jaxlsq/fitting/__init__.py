"""Curve fitting on top of `jaxlsq.batch` and `jaxlsq.core`: the one fitting stack.

* `fit`: `jaxlsq.fit` (multi-start included);
* `fit_batch`: `jaxlsq.fit_batch`;
* `weights`: sigma -> weighted residuals (also the scipy shim's `curve_fit`'s);
* `statistics`: covariance and fit statistics at a solution;
* `checks`: `fit`'s input checks and conversions;
* `result`: `FitResult`; `report`: its text and HTML reports.
"""
