"""Text and HTML reports of a `FitResult` (host side, numpy).

`fit_report` follows lmfit's ``fit_report``: a fit-statistics block, the parameters
with standard errors and flags, the correlations above a threshold, status and
message. `batch_report` summarises a batched result (leading batch axes, e.g. from
``jax.vmap(fit)``): counts by status, and per-parameter statistics over the
successful fits. The ``*_html`` variants render the same content as HTML tables for
Jupyter (``FitResult._repr_html_``).
"""

from __future__ import annotations

import html
from typing import Any

import jax
import numpy as np

from ..core.status import MESSAGES, Status


def _host(result) -> Any:
    if isinstance(result.status, jax.core.Tracer):
        raise TypeError(
            "a FitResult report needs concrete values: call .report() outside jit/vmap "
            "(return the FitResult from the transformed function first)"
        )
    return jax.device_get(result)


def _g(value: float, digits: int = 7) -> str:
    return f"{float(value):.{digits}g}"


def _status_text(code: int) -> str:
    try:
        status = Status(code)
    except ValueError:
        return f"{code} (unknown status)"
    kind = "success" if status.success else "failure"
    return f"{code} ({status.name}, {kind})"


def _flag(fixed: bool, active: int) -> str:
    if fixed:
        return "(fixed)"
    if active < 0:
        return "(at lower bound)"
    if active > 0:
        return "(at upper bound)"
    return ""


def _flat(tree, batch_shape=()) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate(
        [np.reshape(np.asarray(leaf), batch_shape + (-1,)) for leaf in leaves], axis=-1
    )


def _statistics_rows(r) -> list[tuple[str, str]]:
    poisson = r.estimator == "poisson"
    rows = [("# fitting method", "Levenberg-Marquardt (jaxlsq)")]
    if poisson:
        rows.append(("# estimator", "Poisson maximum likelihood"))
    rows += [
        ("# function evals", str(int(r.nfev))),
        ("# Jacobian evals", str(int(r.njev))),
        ("# data points", str(r.ndata)),
        ("# variables", str(r.nfree)),
    ]
    if poisson:  # chisq is the deviance; Pearson's statistic beside it
        rows += [
            ("deviance", _g(r.chisq)),
            ("deviance / dof", _g(r.redchi)),
            ("Pearson chi-square", _g(r.pearson_chisq)),
        ]
    else:
        rows += [("chi-square", _g(r.chisq)), ("reduced chi-square", _g(r.redchi))]
    rows += [
        ("Akaike info crit", _g(r.aic)),
        ("Bayesian info crit", _g(r.bic)),
        ("R-squared", _g(r.r_squared)),
    ]
    if r.loss != "linear":
        rows.append(("loss", f"{_loss_name(r.loss)} (robust cost = {_g(r.cost)})"))
    if r.n_starts > 1:
        rows.append(("starts", f"{int(r.n_success)} of {r.n_starts} succeeded"))
    rows.append(("status", _status_text(int(r.status))))
    rows.append(("message", str(r.message)))
    if int(r.degeneracy):
        from .degeneracy import describe

        for phrase in describe(r):
            rows.append(("degenerate", phrase))
    return rows


def _percent(mask: np.ndarray) -> str:
    """Share of True in ``mask``; never rounds a partial count to 0% or 100%."""
    share = 100 * float(np.mean(mask))
    if 99.95 <= share < 100:
        return ">99.9%"
    if 0 < share < 0.05:
        return "<0.1%"
    return f"{share:.1f}%"


def _variable_rows(r) -> list[tuple[str, str, str, str, str]]:
    """(name, value, stderr, relative, flag) per flat parameter, as text."""
    values, errors = _flat(r.params), _flat(r.stderr)
    active = np.asarray(r.active_mask).reshape(-1)
    rows = []
    for i, name in enumerate(r.names):
        value, err = values[i], errors[i]
        flag = _flag(r.fixed[i], int(active[i]))
        if r.fixed[i]:
            rows.append((name, _g(value), "", "", flag))
            continue
        if not np.isfinite(err):
            # dof = 0: the parameters are determined, only the error scale is not
            why = "(dof = 0: no error estimate)" if r.dof <= 0 else "(not estimable)"
            rows.append((name, _g(value), "inf", "", (flag + " " + why).strip()))
            continue
        rel = f"({abs(err / value) * 100:.2f}%)" if value != 0 else ""
        rows.append((name, _g(value), _g(err), rel, flag))
    return rows


def _correlation_rows(r, threshold: float) -> list[tuple[str, str, float]]:
    corr = np.asarray(r.correlation)
    n = corr.shape[0]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            c = corr[i, j]
            if np.isfinite(c) and abs(c) > threshold:
                pairs.append((r.names[i], r.names[j], float(c)))
    pairs.sort(key=lambda p: -abs(p[2]))
    return pairs


def fit_report(result, correl_threshold: float = 0.1) -> str:
    """lmfit-style text report of a single (unbatched) `FitResult`.

    Parameters
    ----------
    result : FitResult
        A concrete, unbatched result.
    correl_threshold : float, default 0.1
        Report correlations with ``|C| > correl_threshold``.

    Returns
    -------
    str
    """
    r = _host(result)
    lines = ["[[Fit Statistics]]"]
    for key, value in _statistics_rows(r):
        lines.append(f"    {key:<19s}= {value}")
    lines.append("[[Variables]]")
    rows = _variable_rows(r)
    width = max(len(name) for name, *_ in rows) + 1
    for name, value, err, rel, flag in rows:
        text = f"    {name + ':':<{width}s} {value}"
        if err:
            text += f" +/- {err}"
        if rel:
            text += f" {rel}"
        if flag:
            text += f" {flag}"
        lines.append(text)
    pairs = _correlation_rows(r, correl_threshold)
    if pairs:
        lines.append(
            f"[[Correlations]] (unreported correlations are < {correl_threshold:.3f})"
        )
        labels = [f"C({a}, {b})" for a, b, _ in pairs]
        width = max(len(label) for label in labels)
        for label, (_, _, c) in zip(labels, pairs, strict=True):
            lines.append(f"    {label:<{width}s} = {c:+.4f}")
    return "\n".join(lines)


def _table(headers: list[str] | None, rows: list[list[str]]) -> str:
    out = ["<table>"]
    if headers:
        out.append(
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
        )
    for row in rows:
        out.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def fit_report_html(result, correl_threshold: float = 0.1) -> str:
    """The content of `fit_report` as HTML tables (for Jupyter)."""
    r = _host(result)
    parts = ["<h4>Fit Statistics</h4>"]
    parts.append(_table(None, [[k, v] for k, v in _statistics_rows(r)]))
    parts.append("<h4>Variables</h4>")
    rows = [list(row) for row in _variable_rows(r)]
    parts.append(
        _table(["name", "value", "standard error", "relative error", "flag"], rows)
    )
    pairs = _correlation_rows(r, correl_threshold)
    if pairs:
        parts.append(f"<h4>Correlations (|C| &gt; {correl_threshold:g})</h4>")
        parts.append(
            _table(
                ["parameter 1", "parameter 2", "correlation"],
                [[a, b, f"{c:+.4f}"] for a, b, c in pairs],
            )
        )
    return "\n".join(parts)


# ----------------------------------------------------------------------------------
# batched results


def _batch_content(result):
    r = _host(result)
    batch = tuple(np.shape(r.status))
    status = np.asarray(r.status).reshape(-1)
    success = np.asarray(r.success).reshape(-1)
    total = status.size
    values = _flat(r.params, batch).reshape(total, -1)
    errors = _flat(r.stderr, batch).reshape(total, -1)
    counts = []
    for code in np.unique(status):
        try:
            name, message = Status(int(code)).name, MESSAGES[Status(int(code))]
        except ValueError:
            name, message = "UNKNOWN", ""
        counts.append((int(code), name, int(np.sum(status == code)), message))
    ok = values[success]
    var_rows = []
    for i, name in enumerate(r.names):
        if r.fixed[i]:
            var_rows.append([name, _g(ok[0, i]) if len(ok) else "", "(fixed)"])
            continue
        if len(ok) == 0:
            var_rows.append([name])
            continue
        col = ok[:, i]
        err = errors[success][:, i]
        var_rows.append(
            [
                name,
                _g(np.mean(col), 6),
                _g(np.std(col), 6),
                _g(np.min(col), 6),
                _g(np.median(col), 6),
                _g(np.max(col), 6),
                _g(np.median(err), 6),
            ]
        )
    stat_rows = []
    if len(ok):
        for label, field in (
            ("chi-square", "chisq"),
            ("reduced chi-square", "redchi"),
            ("R-squared", "r_squared"),
            ("function evals", "nfev"),
        ):
            v = np.asarray(getattr(r, field), float).reshape(-1)[success]
            stat_rows.append(
                [label] + [_g(f(v), 6) for f in (np.mean, np.min, np.median, np.max)]
            )
    head = [
        ("# fits", f"{total} (batch shape {batch})"),
        ("# succeeded", f"{int(success.sum())} ({_percent(success)})"),
        ("# data points", f"{r.ndata} per fit"),
        ("# variables", str(r.nfree)),
    ]
    n_degenerate = int(np.count_nonzero(np.asarray(r.degeneracy)))
    if n_degenerate:
        head.append(("# degenerate", f"{n_degenerate} (successful, see .degeneracy)"))
    if r.estimator == "poisson":
        head.append(("estimator", "Poisson maximum likelihood (chi-square: deviance)"))
    if r.loss != "linear":
        head.append(("loss", _loss_name(r.loss)))
    if r.n_starts > 1:
        n_ok = np.asarray(r.n_success).reshape(-1)
        head.append(
            ("starts", f"{r.n_starts} per fit ({np.median(n_ok):g} succeed, median)")
        )
    return head, counts, var_rows, stat_rows, int(success.sum())


_VAR_HEADERS = ["name", "mean", "std", "min", "median", "max", "median stderr"]
_STAT_HEADERS = ["", "mean", "min", "median", "max"]


def batch_report(result) -> str:
    """Summary of a batched `FitResult`: counts by status; per parameter mean, std,
    min, median and max (and the median standard error) over the successful fits."""
    head, counts, var_rows, stat_rows, n_ok = _batch_content(result)
    lines = ["[[Batch Summary]]"]
    lines += [f"    {k:<19s}= {v}" for k, v in head]
    lines.append("[[Status]]")
    for code, name, count, message in counts:
        lines.append(f"    {code:>2d} {name:<15s}: {count:>8d}  {message}")
    lines.append(f"[[Variables]] (over the {n_ok} successful fits)")
    if n_ok == 0:
        lines.append("    no successful fits")
    else:
        lines.append(_columns(_VAR_HEADERS, var_rows))
        lines.append("[[Fit statistics]] (successful fits)")
        lines.append(_columns(_STAT_HEADERS, stat_rows))
    return "\n".join(lines)


def _columns(headers: list[str], rows: list[list[str]]) -> str:
    table = [headers] + rows
    ncol = max(len(row) for row in table)
    widths = [max(len(row[c]) for row in table if c < len(row)) for c in range(ncol)]
    out = []
    for row in table:
        cells = [f"{cell:<{widths[c]}s}" for c, cell in enumerate(row)]
        out.append(("    " + "  ".join(cells)).rstrip())
    return "\n".join(out)


def batch_report_html(result) -> str:
    """The content of `batch_report` as HTML tables (for Jupyter)."""
    head, counts, var_rows, stat_rows, n_ok = _batch_content(result)
    parts = ["<h4>Batch Summary</h4>", _table(None, [list(row) for row in head])]
    parts.append("<h4>Status</h4>")
    parts.append(
        _table(
            ["status", "name", "count", "message"],
            [[str(c), name, str(k), msg] for c, name, k, msg in counts],
        )
    )
    parts.append(f"<h4>Variables (over the {n_ok} successful fits)</h4>")
    if n_ok:
        parts.append(_table(_VAR_HEADERS, var_rows))
        parts.append("<h4>Fit statistics (successful fits)</h4>")
        parts.append(_table(_STAT_HEADERS, stat_rows))
    return "\n".join(parts)


def _loss_name(loss) -> str:
    """A loss's name for the report: the string, or a callable's ``__name__``."""
    return loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))
