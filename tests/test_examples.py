"""The runnable examples run top to bottom with small settings (``--quick``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="default")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", "--outdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_every_example_is_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["analyst_moderation.py", "library_use.py", "trialist_power.py"]
    for p in EXAMPLES.glob("*.py"):
        text = p.read_text()
        assert 'if __name__ == "__main__":' in text, p.name
        assert "--quick" in text, p.name


def test_trialist_power(tmp_path):
    proc = run_example("trialist_power.py", tmp_path)
    assert "Power at 40 therapists" in proc.stdout
    assert "Power curve" in proc.stdout
    png = tmp_path / "power_curve.png"
    assert png.exists() and png.read_bytes().startswith(b"\x89PNG")


def test_analyst_moderation(tmp_path):
    proc = run_example("analyst_moderation.py", tmp_path)
    assert "alliance:autonomy_c" in proc.stdout
    for f in ("mixed_model.csv", "interaction_autonomy.png", "jn_autonomy.png",
              "report/index.html"):
        assert (tmp_path / f).exists(), f
    table = pd.read_csv(tmp_path / "mixed_model.csv", index_col=0)
    assert {"alliance:age_c", "alliance:autonomy_c"} <= set(table.index)
    assert table["p"].between(0, 1).all() and (table["se"] > 0).all()
    page = (tmp_path / "report" / "index.html").read_text()
    for section in ("data-report", "model", "simple-slopes", "johnson-neyman", "bayes"):
        assert f'<section id="{section}">' in page


def test_library_use(tmp_path):
    proc = run_example("library_use.py", tmp_path)
    out = proc.stdout
    assert "ModelSpec: response='adherence'" in out
    # the custom instrument: item 3 reversed on 1-5, mean scoring -> row 0 = (5+4+5+5)/4
    assert re.search(r"^0\s+5\s+4\s+1\s+5\s+4\.75\s", out, re.MULTILINE)
    # the hand-made contrast equals 2 x the interaction coefficient of the mixed fit
    coef = float(re.search(r"^alliance:autonomy\s+(-?[\d.]+)", out, re.MULTILINE).group(1))
    diff = float(re.search(r"slope\(\+1 SD\) - slope\(-1 SD\) = (-?[\d.]+)", out).group(1))
    assert abs(diff - 2 * coef) < 1e-3
    # analytic power of the balanced cluster-randomised design (closed form)
    assert "analytic power 0.793" in out
