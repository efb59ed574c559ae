"""The self-contained HTML report: structure, escaping, embedded images, no external refs."""

from __future__ import annotations

import base64
import importlib
import re
from html import escape as html_escape
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models._format import fmt_cell

URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
CSS_URL = re.compile(r"url\(\s*['\"]?\s*(?:https?:)?//", re.IGNORECASE)
IMG_SRC = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


report_mod = importlib.import_module("alliance_models.reporting.html")


def external_refs(page: str) -> list[str]:
    """Every reference to a resource outside the file (http(s) or protocol-relative)."""
    hits = URL_ATTR.findall(page) + CSS_URL.findall(page)
    hits += re.findall(r"@import", page)
    hits += re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)[a-z]+:""", page, re.I)
    return hits


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG_SRC.findall(page)]


class _Tables(HTMLParser):
    """Collect the cell texts of every <table> (stdlib only; no lxml needed)."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_tables(fragment: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(fragment)
    return [[row for row in t if row] for t in parser.tables]


def tiny_data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 30
    return pd.DataFrame(
        {
            "therapist": np.repeat(["t1", "t2", "t3"], 10),
            "patient": np.repeat([f"p{i}" for i in range(6)], 5),
            "session": np.tile(np.arange(1, 6), 6),
            "alliance": rng.normal(50, 5, n),
            "age": rng.normal(50, 14, n),
            "adherence": rng.uniform(0, 1, n),
        }
    )


def test_external_ref_detector_catches_what_it_should():
    # the helper used below must be able to fail
    assert external_refs('<img src="https://x.org/a.png">')
    assert external_refs('<link href="//cdn.x.org/a.css">')
    assert external_refs("<style>body{background:url('http://x/a.png')}</style>")
    assert external_refs('<script src="file:///etc/x.js"></script>')
    assert not external_refs('<img src="data:image/png;base64,AAAA"><a href="#model">m</a>')


def test_report_dir_and_file_targets(tmp_path):
    out = am.report(tmp_path / "rep", data=tiny_data())
    assert out == tmp_path / "rep" / "index.html"
    out2 = am.report(tmp_path / "other" / "page.html", data=tiny_data())
    assert out2 == tmp_path / "other" / "page.html" and out2.exists()


def test_data_section_counts_and_descriptives(tmp_path):
    d = tiny_data()
    page = am.report(tmp_path, data=d).read_text()
    assert '<section id="data">' in page
    # counts: 30 sessions, 3 therapists, 6 patients, 5 sessions per patient
    counts, desc = read_tables(page.split('<section id="data">')[1].split("</section>")[0])
    assert counts[0] == ["count", "value"]
    values = {row[0]: float(row[1]) for row in counts[1:]}
    assert values["rows (sessions)"] == 30
    assert values["therapists"] == 3
    assert values["patients"] == 6
    assert values["sessions per patient (median)"] == 5
    # descriptive table holds the means of the canonical columns
    header = desc[0]
    rows = {r[0]: dict(zip(header, r, strict=True)) for r in desc[1:]}
    assert float(rows["age"]["mean"]) == pytest.approx(d["age"].mean(), abs=1e-4)
    assert float(rows["adherence"]["count"]) == 30
    assert float(rows["alliance"]["missing"]) == 0


def test_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script> & <b>'
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    page = am.report(tmp_path, title=evil, notes=evil, figures={evil: fig}).read_text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    # the only script on the page is the image check
    assert page.count("<script") == 1 and '<script id="image-check">' in page


def test_figures_are_embedded_as_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig2, ax2 = plt.subplots()
    ax2.bar([1, 2], [3, 4])
    png_path = tmp_path / "saved.png"
    fig3, _ = plt.subplots()
    fig3.savefig(png_path)
    page = am.report(
        tmp_path / "r", figures={"a figure": fig, "an axes": ax2, "a file": png_path}
    ).read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == 3
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    assert external_refs(page) == []


def test_bad_figure_type_raises(tmp_path):
    with pytest.raises(TypeError, match="cannot embed a dict"):
        am.report(tmp_path, figures={"x": {"not": "a figure"}})


def test_empty_report_says_so(tmp_path):
    page = am.report(tmp_path).read_text()
    assert "Nothing to report" in page


def test_long_tables_are_truncated():
    df = pd.DataFrame({"x": range(report_mod.MAX_TABLE_ROWS + 5)})
    html = report_mod._table(df)
    assert f"first {report_mod.MAX_TABLE_ROWS} of {report_mod.MAX_TABLE_ROWS + 5}" in html
    assert html.count("<tr") == report_mod.MAX_TABLE_ROWS + 1  # header + rows


def test_report_is_a_plain_function_whatever_the_import_order(tmp_path):
    # the page writer lives in alliance_models.reporting.html; am.report is the function
    import alliance_models.reporting.html

    assert am.report is alliance_models.reporting.html.report
    out = am.report(tmp_path, data=tiny_data())
    assert out.name == "index.html"


# --------------------------------------------------------------------------- with real results


@pytest.fixture(scope="module")
def ols_results():
    """A PROCESS-style OLS moderation fit on simulated data, probed at age."""
    design = am.Design(therapists=10, patients_per_therapist=8, sessions=1,
                       effects={"alliance": 0.3, "alliance:age": 0.2})
    data = am.simulate(design, seed=3)
    fit = am.fit_ols("adherence ~ alliance * age", data)
    slopes = am.simple_slopes(fit, focal="alliance", moderator="age", at="meansd")
    jn = am.johnson_neyman(fit, focal="alliance", moderator="age")
    return data, fit, slopes, jn


def test_report_with_a_probed_fit(tmp_path, ols_results):
    data, fit, slopes, jn = ols_results
    page = am.report(tmp_path, data=data, fit=fit, slopes=slopes, jn=jn).read_text()
    for section in ("data", "model", "simple-slopes", "johnson-neyman"):
        assert f'<section id="{section}">' in page
    assert external_refs(page) == []
    # the model table carries the estimates, the slopes table its conditional effects
    model = page.split('<section id="model">')[1].split("</section>")[0]
    for name, value in fit.params.items():
        assert name in model
        assert fmt_cell(float(value)) in model
    ss = page.split('<section id="simple-slopes">')[1].split("</section>")[0]
    for value in slopes.to_frame()["estimate"]:
        assert fmt_cell(float(value)) in ss
    # interaction plot + JN plot, both real PNGs
    pngs = embedded_pngs(page)
    assert len(pngs) == 2
    assert all(p.startswith(b"\x89PNG") and len(p) > 5000 for p in pngs)
    assert 'alt="Interaction plot: effect of alliance by age"' in page
    assert 'alt="Johnson-Neyman plot: effect of alliance by age"' in page


def test_several_slopes_given_as_mapping(tmp_path, ols_results):
    data, fit, slopes, jn = ols_results
    page = am.report(tmp_path, fit=fit, slopes={"a": slopes, "b": slopes}).read_text()
    assert page.count("<h3>Simple slopes: effect of alliance by age</h3>") == 2
    assert len(embedded_pngs(page)) == 2


def test_data_report_section_accounts_for_every_excluded_row(tmp_path, example_prepared):
    data, rep = example_prepared
    page = am.report(tmp_path, data=data, data_report=rep).read_text()
    section = page.split('<section id="data-report">')[1].split("</section>")[0]
    assert html_escape(rep.summary()) in section
    assert f"Show the {rep.n_excluded} excluded row(s)" in section
    reasons_table, excluded_table = read_tables(section)
    # reasons table = rep.reasons(), and its counts add up to the excluded rows
    counts = {row[0]: int(row[1]) for row in reasons_table[1:]}
    assert counts == {str(k): int(v) for k, v in rep.reasons().items()}
    assert sum(counts.values()) == rep.n_excluded
    shown = min(rep.n_excluded, report_mod.MAX_TABLE_ROWS)
    assert len(excluded_table) == shown + 1


def test_bayes_section_has_diagnostics_and_three_plots(tmp_path, small_bayes_fit):
    b = small_bayes_fit
    page = am.report(tmp_path, bayes=b).read_text()
    section = page.split('<section id="bayes">')[1].split("</section>")[0]
    for heading in ("Sampling diagnostics", "Posterior summary", "Priors"):
        assert f"<h3>{heading}</h3>" in section
    tables = read_tables(section)
    diag = {row[0]: row[1] for row in tables[0][1:]}
    assert diag["divergent transitions"] == str(b.n_divergent)
    assert diag["chains"] == "2" and diag["draws per chain"] == "150"
    assert float(diag["largest r_hat (want <= 1.01)"]) == pytest.approx(
        b.to_frame()["r_hat"].max(), abs=1e-4)
    posterior = tables[1]
    assert "r_hat" in posterior[0] and "ess_bulk" in posterior[0]
    assert [row[0] for row in posterior[1:]] == [str(i) for i in b.to_frame().index]
    pngs = embedded_pngs(section)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") and len(p) > 5000 for p in pngs)
    for caption, _ in [(c, k) for k, c in report_mod.BAYES_PLOT_KINDS]:
        assert f'alt="{caption}"' in section
    assert external_refs(page) == []


SECTIONS = ("notes", "key-results", "data", "data-report", "model", "simple-slopes",
            "johnson-neyman", "bayes", "power")


def test_full_report_has_every_section_and_no_external_refs(full_report):
    path, parts = full_report
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
        assert f'<a href="#{sid}">' in page  # table of contents
    assert external_refs(page) == []
    assert "<title>Full report &lt;test&gt;</title>" in page
    # 2 interaction + 2 JN + 3 Bayesian + 1 power curve plots
    pngs = embedded_pngs(page)
    assert len(pngs) == 8
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    power = page.split('<section id="power">')[1].split("</section>")[0]
    assert html_escape(parts["power"].summary()) in power
    assert 'alt="Power curve"' in power


def test_key_results_summarise_interactions_and_regions(full_report):
    path, parts = full_report
    page = path.read_text()
    section = page.split('<section id="key-results">')[1].split("</section>")[0]
    (table,) = read_tables(section)
    header, rows = table[0], {r[0]: dict(zip(table[0], r, strict=True)) for r in table[1:]}
    assert header[:5] == ["interaction term", "estimate", "95% CI lower", "95% CI upper", "p"]
    freq = parts["fit"].to_frame()
    inter = [t for t in freq.index if ":" in t]
    assert sorted(rows) == sorted(inter)
    for term in inter:
        assert rows[term]["estimate"] == fmt_cell(float(freq.loc[term, "estimate"]))
        assert rows[term]["p"] == fmt_cell(float(freq.loc[term, "p"]), p_value=True)
    # one sentence per Johnson-Neyman result, with the region inside the observed range
    for mod, j in parts["jn"].items():
        lo, hi = j.observed_range
        assert f"for {mod} in " in section
        assert f"(observed {mod}: {fmt_cell(float(lo))} to" in section


def test_key_results_with_a_bayesian_fit(tmp_path, small_bayes_fit):
    b = small_bayes_fit
    page = am.report(tmp_path, bayes=b).read_text()
    section = page.split('<section id="key-results">')[1].split("</section>")[0]
    (table,) = read_tables(section)
    assert table[0] == ["interaction term", "posterior mean", "95% HDI lower", "95% HDI upper",
                        "P(effect > 0)"]
    assert [r[0] for r in table[1:]] == ["alliance:autonomy"]
    # P(effect > 0) is the share of posterior draws above zero
    expected = float((b.fixed_draws["alliance:autonomy"] > 0).mean())
    assert table[1][4] == fmt_cell(expected)


def test_posterior_slopes_are_labelled_and_drawn_from_the_bayesian_fit(tmp_path,
                                                                       small_bayes_fit):
    b = small_bayes_fit
    post = am.simple_slopes(b, focal="alliance", moderator="autonomy", at="meansd")
    page = am.report(tmp_path, bayes=b, slopes=post).read_text()
    section = page.split('<section id="simple-slopes">')[1].split("</section>")[0]
    assert "<h3>Simple slopes: effect of alliance by autonomy (posterior)</h3>" in section
    (table,) = read_tables(section)
    assert {"hdi_lower", "hdi_upper", "pd"} <= set(table[0])
    # with no frequentist fit given, the interaction plot still comes from the posterior
    assert len(embedded_pngs(section)) == 1


class _Balance(HTMLParser):
    BLOCKS = ("section", "table", "thead", "tbody", "tr", "div", "figure", "details", "ul",
              "pre", "nav", "style", "script")

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            else:
                self.stack.pop()


def test_full_report_block_elements_are_balanced(full_report):
    checker = _Balance()
    checker.feed(full_report[0].read_text())
    assert checker.errors == [] and checker.stack == []
