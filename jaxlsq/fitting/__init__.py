"""Curve fitting on top of `jaxlsq.batch` and `jaxlsq.core`: the one fitting stack.

* `fit`: `jaxlsq.fit` (model, sigma, covariance, statistics) and `FitResult`;
* `fit_batch`: `jaxlsq.fit_batch`;
* `report`: text and HTML reports.
"""
