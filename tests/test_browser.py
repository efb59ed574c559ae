"""Open the HTML report in headless Chromium: every image loads and the page renders.

The report carries a small inline script (``<script id="image-check">``) that, on the
page's ``load`` event, writes on ``<body>`` how many images there are, how many loaded
(``img.complete && img.naturalWidth > 0``) and the alt texts of any that did not.
Chromium's ``--dump-dom`` prints the DOM after that, so the test reads the counts
without network access, a driver or extra packages. A second run takes a screenshot.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

import alliance_models as am
from chromium_run import CHROMIUM, run_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]



def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_chromium(page.resolve().as_uri(), profile, *extra)


def image_status(page: Path, profile: Path) -> dict[str, str]:
    proc = chromium(page, profile, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    return dict(re.findall(r'data-images-(\w+)="([^"]*)"', body.group(1)))


def screenshot_is_not_blank(png: Path, min_rows: float) -> None:
    """The screenshot has content on at least ``min_rows`` of its rows, in the page's colours."""
    assert png.exists() and png.stat().st_size > 20_000
    img = mpimg.imread(png)[..., :3]
    assert img.shape[:2] == (4000, 1280)
    ink = img.min(axis=-1) < 0.9
    rows = ink.any(axis=1).mean()
    assert rows > min_rows, f"only {rows:.1%} of the screenshot's rows have content"
    # the h1 underline and h2 headings are drawn in the report's blue #2a6f97
    blue = np.array([0x2A, 0x6F, 0x97]) / 255
    assert (np.abs(img - blue).max(axis=-1) < 0.03).sum() > 500, "report CSS not applied"


@pytest.fixture(scope="module")
def figure_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figrep")
    figs = {}
    for i in range(3):
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(np.arange(10), np.arange(10) ** (i + 1))
        ax.set_title(f"figure {i}")
        figs[f"figure {i}"] = fig
    return am.report(out, figures=figs, title="Browser check")


def test_image_check_detects_a_broken_image(tmp_path):
    # the in-page check must be able to fail: a page with one valid and one broken image
    good = am.report(tmp_path / "good", figures={"ok": plt.subplots()[0]}).read_text()
    broken = good.replace(
        "<figure>", '<figure><img src="data:image/png;base64,AAAA" alt="broken one">', 1
    )
    page = tmp_path / "broken.html"
    page.write_text(broken)
    status = image_status(page, tmp_path / "profile")
    assert status == {"total": "2", "loaded": "1", "broken": "broken one"}


def test_figure_report_loads_every_image(figure_report, tmp_path):
    status = image_status(figure_report, tmp_path / "profile")
    assert status["total"] == "3"
    assert status["loaded"] == "3"
    assert status["broken"] == ""


def test_figure_report_screenshot(figure_report, tmp_path):
    png = tmp_path / "shot.png"
    proc = chromium(
        figure_report, tmp_path / "profile", f"--screenshot={png}", "--window-size=1280,4000"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    screenshot_is_not_blank(png, min_rows=0.2)


def test_full_report_in_chromium(full_report, tmp_path):
    """The real report (every section, 8 plots) loads every image and renders."""
    path, _ = full_report
    n_images = path.read_text().count("<img ")
    assert n_images == 8
    status = image_status(path, tmp_path / "profile-dom")
    assert status == {"total": str(n_images), "loaded": str(n_images), "broken": ""}
    png = tmp_path / "full.png"
    proc = chromium(path, tmp_path / "profile-shot", f"--screenshot={png}",
                    "--window-size=1280,4000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    screenshot_is_not_blank(png, min_rows=0.5)


@pytest.mark.slow
def test_demo_report_in_chromium(tmp_path):
    """The page `alliance-models demo` writes (quick settings, Bayes and power included).

    2 interaction + 2 posterior interaction + 2 Johnson-Neyman + 3 Bayesian + 2 binomial
    GLMM (response-scale interaction) + 1 power plot.
    """
    import sys

    exe = Path(sys.executable).with_name("alliance-models")
    out = tmp_path / "alliance_report"
    proc = subprocess.run([str(exe), "demo", "--quick", "--out", str(out), "-q"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = out / "index.html"
    n_images = page.read_text().count("<img ")
    assert n_images == 12
    status = image_status(page, tmp_path / "profile-dom")
    assert status == {"total": "12", "loaded": "12", "broken": ""}
    png = tmp_path / "demo.png"
    proc = chromium(page, tmp_path / "profile-shot", f"--screenshot={png}",
                    "--window-size=1280,4000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    screenshot_is_not_blank(png, min_rows=0.5)
