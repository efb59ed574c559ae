"""One self-contained HTML page with the whole analysis.

:func:`report` writes ``index.html``: CSS inline, every plot embedded as a base64 PNG
data URI, no script or style loaded from elsewhere, so the file can be e-mailed, archived
with a paper's supplementary material or opened offline. All text taken from data or
results, table cells included, is escaped with :func:`html.escape`; table cells are
written with :func:`alliance_models._format.fmt_cell`, the rule every summary uses.

The page holds, when given: a data summary and the :class:`~alliance_models.DataReport`
(with its table of excluded rows), the model table, simple-slopes tables with their
interaction plots, Johnson-Neyman tables and plots, Bayesian diagnostics with trace,
forest and posterior predictive plots, and a power result or curve.

A tiny inline script (``<script id="image-check">``) records on the page's ``<body>`` how
many images loaded, so a headless browser can verify the page (see ``tests/test_browser.py``).
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._format import P_COLUMNS, fmt_cell, fmt_num

__all__ = ["report"]

#: Bayesian plots drawn with ``bfit.plot(kind, path)`` (issue 4), in page order.
BAYES_PLOT_KINDS: tuple[tuple[str, str], ...] = (
    ("trace", "Trace plot (chains and marginal densities)"),
    ("forest", "Forest plot of the fixed effects"),
    ("ppc", "Posterior predictive check"),
)

#: Columns summarised in the data section when present (canonical analysis columns).
SUMMARY_COLUMNS = ("alliance", "age", "autonomy", "adherence", "attended", "scheduled")

MAX_TABLE_ROWS = 200

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 1.5em 2em; color: #1d2329;
       line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; border-bottom: 3px solid #2a6f97; padding-bottom: .3em; }
h2 { font-size: 1.3em; color: #2a6f97; margin-top: 2em;
     border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
nav ul { columns: 2; list-style: square; padding-left: 1.2em; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .8em; overflow-x: auto;
      font-size: .85em; line-height: 1.3; }
table.am { border-collapse: collapse; font-size: .85em; margin: .6em 0 1em 0; }
table.am th, table.am td { border: 1px solid #d0d7de; padding: .25em .6em;
                           text-align: left; }
table.am td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.am th { background: #eef3f7; }
details summary { cursor: pointer; color: #2a6f97; margin: .4em 0; }
table.am tbody tr:nth-child(even) { background: #fafbfc; }
div.scroll { max-width: 100%; overflow-x: auto; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: .85em; color: #57606a; }
.note { font-size: .9em; color: #57606a; }
.meta { font-size: .8em; color: #57606a; }
"""

# Counts images on load and records the result on <body>: data-images-total,
# data-images-loaded and data-images-broken (alt texts of images that failed).
_IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(imgs.length - broken.length));
  document.body.setAttribute('data-images-broken',
    broken.map(function (i) { return i.alt; }).join(';'));
});
"""


@dataclass
class _Page:
    """Accumulates the sections of the page (internal)."""

    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, body)

    def add(self, sid: str, heading: str, body: str) -> None:
        self.sections.append((sid, heading, body))

    def render(self) -> str:
        esc = html.escape
        nav = "".join(
            f'<li><a href="#{esc(sid)}">{esc(head)}</a></li>' for sid, head, _ in self.sections
        )
        body = "\n".join(
            f'<section id="{esc(sid)}">\n<h2>{esc(head)}</h2>\n{content}\n</section>'
            for sid, head, content in self.sections
        )
        from .. import __version__

        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{esc(self.title)}</h1>\n"
            f'<p class="meta">Written by alliance_models {esc(__version__)} on {stamp}.</p>\n'
            f"<nav><ul>{nav}</ul></nav>\n{body}\n"
            f'<script id="image-check">{_IMAGE_CHECK}</script>\n</body>\n</html>\n'
        )


# --------------------------------------------------------------------------- helpers


def _pre(text: object) -> str:
    return f"<pre>{html.escape(str(text))}</pre>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _is_num(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(
        x, bool | np.bool_
    )


def _table(df: pd.DataFrame, *, index: bool = True, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Render a DataFrame as an escaped HTML table (truncated to ``max_rows`` rows).

    Numbers are right-aligned (class ``num``), text left-aligned; p-value columns
    (:data:`alliance_models._format.P_COLUMNS`) read ``<1e-12`` below that.
    """
    esc = html.escape
    extra = ""
    if len(df) > max_rows:
        extra = _note(f"Showing the first {max_rows} of {len(df)} rows.")
        df = df.iloc[:max_rows]
    cols = [str(c) for c in df.columns]
    head = ([esc(str(df.index.name or ""))] if index else []) + [esc(c) for c in cols]
    header = "".join(f"<th>{h}</th>" for h in head)
    lines = ['<div class="scroll"><table class="am">', f"<thead><tr>{header}</tr></thead>",
             "<tbody>"]
    is_p = [c in P_COLUMNS for c in cols]
    for label, row in zip(df.index, df.itertuples(index=False, name=None), strict=True):
        cells = [f"<th>{esc(fmt_cell(label))}</th>"] if index else []
        for v, p in zip(row, is_p, strict=True):
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{cls}>{esc(fmt_cell(v, p_value=p))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines) + extra


def _png_bytes(obj: Any, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib Figure/Axes, ArviZ PlotCollection, path or raw PNG bytes."""
    if isinstance(obj, bytes | bytearray):
        return bytes(obj)
    if isinstance(obj, str | os.PathLike):
        return Path(obj).read_bytes()
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if isinstance(obj, np.ndarray) and obj.size and isinstance(obj.flat[0], Axes):
        obj = obj.flat[0]
    if isinstance(obj, tuple) and obj and isinstance(obj[0], Figure):
        obj = obj[0]
    if isinstance(obj, Axes):
        obj = obj.get_figure()
    if isinstance(obj, Figure):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(obj)
        return buf.getvalue()
    if hasattr(obj, "savefig"):  # ArviZ PlotCollection and the like
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "plot.png"
            obj.savefig(p)
            data = p.read_bytes()
        plt.close("all")
        return data
    raise TypeError(
        f"cannot embed a {type(obj).__name__} as an image; give a matplotlib Figure or "
        "Axes, an ArviZ PlotCollection, a PNG path or PNG bytes"
    )


def _img(obj: Any, caption: str) -> str:
    data = _png_bytes(obj)
    if not data.startswith(b"\x89PNG"):
        raise ValueError(f"the image for {caption!r} is not a PNG")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _as_list(obj: Any) -> list[Any]:
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        return list(obj.values())
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return list(obj)
    return [obj]


def _frame(obj: Any) -> pd.DataFrame | None:
    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "to_frame"):
        df = obj.to_frame()
        return df if isinstance(df, pd.DataFrame) else None
    return None


def _summary_text(obj: Any) -> str | None:
    if hasattr(obj, "summary"):
        s = obj.summary()
        if isinstance(s, pd.DataFrame):
            return s.to_string()
        return str(s)
    return None


def _label(obj: Any, default: str) -> str:
    focal = getattr(obj, "focal", None)
    mod = getattr(obj, "moderator", None)
    if isinstance(mod, list | tuple):
        mod = " x ".join(str(m) for m in mod)
    if focal and mod:
        return f"effect of {focal} by {mod}"
    return default


def _try_plot(fn: Callable[[], Any], what: str) -> str:
    """Embed the figure ``fn()`` returns; report (not hide) a plot that cannot be drawn."""
    try:
        fig = fn()
    except (ImportError, NotImplementedError) as exc:
        return _note(f"{what}: not available ({type(exc).__name__}: {exc}).")
    return _img(fig, what)


# --------------------------------------------------------------------------- sections


def _interaction_rows(fit: Any) -> pd.DataFrame | None:
    """Rows of ``fit.to_frame()`` for product terms (names containing ``:``)."""
    df = _frame(fit)
    if df is None or not len(df):
        return None
    rows = df[[":" in str(i) for i in df.index]]
    return rows if len(rows) else None


def _key_results(fit: Any, jns: list[Any], bayes: Any) -> str:
    """Summarise the interaction terms and the Johnson-Neyman regions in a few lines."""
    parts = []
    freq = _interaction_rows(fit) if fit is not None else None
    post = _interaction_rows(bayes) if bayes is not None else None
    table = pd.DataFrame(index=pd.Index(
        list(freq.index) if freq is not None else list(post.index) if post is not None else [],
        name="interaction term"))
    if freq is not None:
        for col, label in (("estimate", "estimate"), ("ci_lower", "95% CI lower"),
                           ("ci_upper", "95% CI upper"), ("p", "p")):
            if col in freq.columns:
                table[label] = freq[col]
    if post is not None:
        draws = getattr(bayes, "fixed_draws", None)
        for col, label in (("mean", "posterior mean"), ("hdi95_lb", "95% HDI lower"),
                           ("hdi95_ub", "95% HDI upper")):
            if col in post.columns:
                table[label] = post[col].reindex(table.index)
        if isinstance(draws, pd.DataFrame):
            pos = [float((draws[t] > 0).mean()) if t in draws.columns else np.nan
                   for t in table.index]
            table["P(effect > 0)"] = pos
    if len(table) and table.shape[1]:
        parts.append(_table(table))
    sentences = []
    for j in jns:
        focal, mod = getattr(j, "focal", None), getattr(j, "moderator", None)
        inside = getattr(j, "intervals_in_range", None)
        rng = getattr(j, "observed_range", None)
        if not (focal and mod) or inside is None or rng is None:
            continue
        where = (", ".join(f"[{fmt_num(a)}, {fmt_num(b)}]" for a, b in inside)
                 if inside else "nowhere")
        alpha = float(getattr(j, "alpha", 0.05))
        claim = (f"its {100 * (1 - alpha):g}% HDI excludes zero"
                 if getattr(j, "method", "") == "bayes" else f"p < {alpha:g}")
        sentences.append(
            f"Effect of {focal}: {claim} for {mod} in {where} "
            f"(observed {mod}: {fmt_num(rng[0])} to {fmt_num(rng[1])})."
        )
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in sentences)
                     + "</ul>")
    return "\n".join(parts)


def _data_section(data: pd.DataFrame) -> str:
    parts = []
    counts: dict[str, float] = {"rows (sessions)": len(data)}
    for col in ("therapist", "patient"):
        if col in data.columns:
            counts[f"{col}s"] = int(data[col].nunique())
    if "patient" in data.columns and "session" in data.columns:
        per = data.groupby("patient", observed=True)["session"].size()
        counts["sessions per patient (median)"] = float(per.median())
    parts.append(
        _table(pd.DataFrame({"count": list(counts), "value": list(counts.values())}), index=False)
    )
    cols = [c for c in SUMMARY_COLUMNS if c in data.columns]
    num = data[cols].select_dtypes("number") if cols else data.select_dtypes("number")
    if num.shape[1]:
        desc = num.describe().T
        desc.insert(0, "missing", num.isna().sum())
        parts.append("<h3>Descriptive statistics</h3>" + _table(desc))
    return "\n".join(parts)


def _data_report_section(data_report: Any) -> str:
    parts = []
    text = _summary_text(data_report)
    if text:
        parts.append(_pre(text))
    reasons = getattr(data_report, "reasons", None)
    if callable(reasons):
        counts = reasons()
        if isinstance(counts, pd.Series) and len(counts):
            parts.append("<h3>Exclusions by reason</h3>")
            parts.append(_table(counts.rename("rows").rename_axis("reason").reset_index(),
                                index=False))
    df = _frame(data_report)
    if df is not None:
        parts.append("<h3>Excluded rows</h3>")
        if len(df):
            parts.append(
                f"<details><summary>Show the {len(df)} excluded row(s) with their reasons"
                f"</summary>{_table(df, index=False)}</details>"
            )
        else:
            parts.append(_note("No rows were excluded."))
    return "\n".join(parts)


def _fit_section(fit: Any) -> str:
    parts = []
    df = _frame(fit)
    if df is not None:
        link = getattr(fit, "link", None)
        scale = f" ({link} scale)" if isinstance(link, str) and link != "identity" else ""
        parts.append(f"<h3>Estimates{scale}</h3>" + _table(df))
    ratios = getattr(fit, "odds_ratios", None)
    if callable(ratios):
        kind = "Odds ratios" if getattr(fit, "family", "") == "binomial" else "Rate ratios"
        parts.append(f"<h3>{kind}</h3>" + _note("exp of the estimates and of the Wald limits")
                     + _table(ratios()))
    text = _summary_text(fit)
    if text:
        parts.append("<h3>Full summary</h3>" + _pre(text))
    return "\n".join(parts)


def _interaction_plot(fit: Any, s: Any) -> Any:
    from ..probing.conditional import plot_interaction

    focal = s.focal
    moderator = s.moderator
    if isinstance(moderator, list | tuple):
        moderator = moderator[0]
    return plot_interaction(fit, focal=focal, moderator=moderator,
                            scale=getattr(s, "scale", "link"))


def _jn_plot(j: Any) -> Any:
    if hasattr(j, "plot"):
        return j.plot()
    from ..plots import plot_johnson_neyman

    return plot_johnson_neyman(j)


def _slopes_section(slopes: list[Any], fit: Any, bayes: Any) -> str:
    parts = []
    for s in slopes:
        posterior = getattr(s, "method", "") == "bayes"
        label = _label(s, "simple slopes") + (" (posterior)" if posterior else "")
        if getattr(s, "scale", "link") == "response":
            label += " (response scale)"
        parts.append(f"<h3>Simple slopes: {html.escape(label)}</h3>")
        if posterior:
            parts.append(_note("Posterior median, 95% HDI and probability of direction (pd)."))
        df = _frame(s)
        if df is not None:
            parts.append(_table(df, index=False))
        # draw the interaction from the model the slopes came from
        source = bayes if posterior else fit
        if source is not None and getattr(s, "focal", None) and getattr(s, "moderator", None):
            draw = partial(_interaction_plot, source, s)
            parts.append(_try_plot(draw, f"Interaction plot: {label}"))
    return "\n".join(parts)


def _jn_section(jns: list[Any]) -> str:
    parts = []
    for j in jns:
        label = _label(j, "Johnson-Neyman")
        parts.append(f"<h3>Johnson-Neyman: {html.escape(label)}</h3>")
        text = _summary_text(j)
        if text:
            parts.append(_pre(text))
        elif (df := _frame(j)) is not None:
            parts.append(_table(df, index=False))
        parts.append(_try_plot(partial(_jn_plot, j), f"Johnson-Neyman plot: {label}"))
    return "\n".join(parts)


def _sampling_table(bayes: Any, table: pd.DataFrame | None) -> pd.DataFrame | None:
    """Sampler, chains, draws, divergences and the worst r_hat / ESS, when available."""
    rows: dict[str, object] = {}
    idata = getattr(bayes, "idata", None)
    post = getattr(idata, "posterior", None) if idata is not None else None
    sizes = getattr(post, "sizes", None)
    if sizes is not None and "chain" in sizes and "draw" in sizes:
        rows["chains"] = int(sizes["chain"])
        rows["draws per chain"] = int(sizes["draw"])
    for attr, label in (("sampler", "sampler"), ("n_divergent", "divergent transitions"),
                        ("wall_time", "wall time (s)")):
        value = getattr(bayes, attr, None)
        if value is not None and not callable(value):
            rows[label] = value
    if table is not None:
        if "r_hat" in table.columns:
            rows["largest r_hat (want <= 1.01)"] = float(table["r_hat"].max())
        if "ess_bulk" in table.columns:
            rows["smallest bulk ESS (want >= 400)"] = float(table["ess_bulk"].min())
        if "ess_tail" in table.columns:
            rows["smallest tail ESS (want >= 400)"] = float(table["ess_tail"].min())
    if not rows:
        return None
    return pd.DataFrame({"diagnostic": list(rows), "value": list(rows.values())})


def _bayes_section(bayes: Any) -> str:
    parts = []
    df = _frame(bayes)
    sampling = _sampling_table(bayes, df)
    if sampling is not None:
        parts.append("<h3>Sampling diagnostics</h3>" + _table(sampling, index=False))
    if df is not None:
        parts.append("<h3>Posterior summary</h3>" + _table(df))
    priors = getattr(bayes, "priors", None)
    if isinstance(priors, pd.DataFrame):
        parts.append("<h3>Priors</h3>" + _table(priors))
    elif priors is not None and not callable(priors):
        parts.append("<h3>Priors</h3>" + _pre(priors))
    if hasattr(bayes, "plot"):
        with tempfile.TemporaryDirectory() as tmp:
            for kind, caption in BAYES_PLOT_KINDS:
                path = Path(tmp) / f"{kind}.png"

                def draw(kind: str = kind, path: Path = path) -> Path:
                    bayes.plot(kind, path)
                    return path

                parts.append(_try_plot(draw, caption))
    return "\n".join(parts)


def _curve_field(power: Any) -> str | None:
    """Return the design field a power curve varies (None for one run)."""
    vary = getattr(power, "vary", None)
    return vary if isinstance(vary, str) else None


def _power_section(power: Any) -> str:
    parts = []
    text = _summary_text(power)
    if text:
        parts.append(_pre(text))
    df = _frame(power)
    if df is not None and len(df) > 1:
        if "kind" in df.columns:  # several tests (per test, then all / any / type-I)
            keep = [c for c in (_curve_field(power), "test", "kind", "correction", "power",
                                "ci_low", "ci_high", "mcse", "truth", "bias", "coverage")
                    if c in df.columns]
            df = df[keep]
        parts.append(_table(df, index=False))
    if hasattr(power, "plot"):
        # a scenario result (ScenarioResult / ScenarioCurve) names its scenarios
        caption = ("Power by scenario" if hasattr(power, "results") else
                   "Power curve by scenario") if hasattr(power, "scenarios") else "Power curve"
        parts.append(_try_plot(power.plot, caption))
    return "\n".join(parts)


# --------------------------------------------------------------------------- public


def report(
    path_or_dir: str | os.PathLike[str],
    *,
    data_report: Any = None,
    fit: Any = None,
    slopes: Any = None,
    jn: Any = None,
    bayes: Any = None,
    power: Any = None,
    glmm: Any = None,
    glmm_slopes: Any = None,
    data: pd.DataFrame | None = None,
    figures: Mapping[str, Any] | None = None,
    title: str = "Alliance, adherence and moderation: analysis report",
    notes: str | None = None,
) -> Path:
    """Write the analysis as one self-contained HTML file.

    Parameters
    ----------
    path_or_dir : str or path-like
        A directory (created if needed; the page is ``<dir>/index.html``) or a file path
        ending in ``.html``.
    data_report : DataReport, optional
        From :func:`alliance_models.prepare`; its summary and the table of excluded rows.
    fit : fitted model, optional
        A ``MixedFit``, ``OLSFit`` or ``GEEFit`` (anything with ``summary()``); also used
        to draw the interaction plot of each frequentist simple-slopes result.
    slopes : SimpleSlopes or sequence / mapping of them, optional
        From :func:`alliance_models.simple_slopes`; posterior slopes (of ``bayes``) are
        labelled as such and drawn from ``bayes``.
    jn : JohnsonNeyman or sequence / mapping of them, optional
        From :func:`alliance_models.johnson_neyman`.
    bayes : BayesFit, optional
        Posterior summary with r_hat / ESS, and trace, forest and posterior predictive
        plots drawn with ``bayes.plot(kind, path)``.
    power : PowerResult, MultiPowerResult, PowerCurve, ScenarioResult or ScenarioCurve, optional
        Its summary, table and (for a curve or a scenario run) the plot; a scenario run
        (``am.power(..., scenarios=True)``) shows the side-by-side scenario table and
        the power of each scenario; a run of several tests shows the per-test power and
        the family-wise (all / any, type-I) rows.
    glmm : GLMMFit, optional
        A second model of a count outcome (e.g. the binomial attendance model, sessions
        attended of scheduled) in its own section: estimates, odds ratios, summary.
    glmm_slopes : SimpleSlopes or sequence / mapping of them, optional
        Simple slopes of ``glmm`` (e.g. on the probability scale), with interaction
        plots on the same scale.
    data : DataFrame, optional
        Analysis data (canonical columns) for counts and descriptive statistics.
    figures : mapping of str to figure, optional
        Extra figures (matplotlib Figure/Axes, ArviZ PlotCollection, PNG path or bytes)
        added at the end under their captions.
    title : str
        Page title.
    notes : str, optional
        Free text shown under the title (escaped).

    Returns
    -------
    pathlib.Path
        The HTML file written.

    Raises
    ------
    TypeError
        If a figure in ``figures`` cannot be converted to PNG.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> import alliance_models as am
    >>> d = pd.DataFrame({"therapist": ["a", "a", "b"], "patient": ["1", "2", "3"],
    ...                   "session": [1, 1, 1], "adherence": [0.5, 0.8, 0.9]})
    >>> out = am.report(tempfile.mkdtemp(), data=d, title="Pilot")
    >>> out.name
    'index.html'
    """
    target = Path(path_or_dir)
    if target.suffix.lower() in {".html", ".htm"}:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target
    else:
        target.mkdir(parents=True, exist_ok=True)
        out = target / "index.html"

    page = _Page(title=title)
    if notes:
        page.add("notes", "Notes", _note(notes))
    jn_list = _as_list(jn)
    key = _key_results(fit, jn_list, bayes)
    if key:
        page.add("key-results", "Key results", key)
    if data is not None:
        page.add("data", "Data summary", _data_section(data))
    if data_report is not None:
        page.add("data-report", "Data preparation report", _data_report_section(data_report))
    if fit is not None:
        page.add("model", "Moderation model", _fit_section(fit))
    slope_list = _as_list(slopes)
    if slope_list:
        page.add("simple-slopes", "Simple slopes and interaction plots",
                 _slopes_section(slope_list, fit, bayes))
    if jn_list:
        page.add("johnson-neyman", "Johnson-Neyman regions of significance",
                 _jn_section(jn_list))
    if bayes is not None:
        page.add("bayes", "Bayesian moderation model", _bayes_section(bayes))
    if glmm is not None:
        family = getattr(glmm, "family", "")
        body = _fit_section(glmm)
        glmm_list = _as_list(glmm_slopes)
        if glmm_list:
            body += "\n" + _slopes_section(glmm_list, glmm, None)
        page.add("glmm", f"Attendance model ({family} mixed model)" if family == "binomial"
                 else f"Count model ({family} mixed model)", body)
    if power is not None:
        page.add("power", "Power under robustness scenarios" if hasattr(power, "scenarios")
                 else "Power", _power_section(power))
    if figures:
        page.add("figures", "Further figures",
                 "\n".join(_img(fig, str(cap)) for cap, fig in figures.items()))
    if not page.sections:
        page.add("empty", "Nothing to report", _note("No results were given to report()."))

    out.write_text(page.render(), encoding="utf-8")
    return out
