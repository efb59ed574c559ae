"""The TOML front end of ``alliance-models power`` (``cli/power_file.py``)."""

import textwrap

import pytest

import alliance_models as am
from alliance_models.cli.power_file import design_from_toml, run_power_file
from alliance_models.errors import DesignError


def test_run_power_file_single_and_curve(tmp_path):
    body = textwrap.dedent("""
        [design]
        therapists = 40
        patients_per_therapist = 1
        sessions = 1
        icc_therapist = 0.0
        icc_patient = 0.0
        moderators = {}
        effects = { alliance = 0.3 }

        [analysis]
        formula = "adherence ~ alliance"
        test = "alliance"
        n_sims = 12
        method = "ols"
        seed = 3
        n_jobs = 1
        progress = false
        fit_kwargs = { hc = "HC3" }
    """)
    f = tmp_path / "design.toml"
    f.write_text(body)
    res = run_power_file(f)
    assert isinstance(res, am.PowerResult) and res.n_completed == 12
    assert res.design.effects == {"alliance": 0.3}
    f.write_text(body + '\n[curve]\nvary = { therapists = [20, 40] }\n')
    out = tmp_path / "curve.png"
    curve = run_power_file(f, out=out)
    assert isinstance(curve, am.PowerCurve) and out.stat().st_size > 1000
    assert curve.values == (20, 40)


def test_run_power_file_errors(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[design]\ntherapists = 10\n")
    with pytest.raises(DesignError, match=r"has no \[analysis\] table"):
        run_power_file(f)
    f.write_text("[design]\nclinics = 3\n[analysis]\nformula='y ~ x'\ntest='x'\n")
    with pytest.raises(DesignError, match="unknown key.*allowed keys: therapists"):
        run_power_file(f)
    f.write_text("[design]\n[analysis]\nformula='y ~ x'\ntest='x'\nsims=3\n")
    with pytest.raises(DesignError, match=r"unknown keys \['sims'\]"):
        run_power_file(f)
    with pytest.raises(DesignError, match="does not exist"):
        run_power_file(tmp_path / "missing.toml")


def test_example_design_file_is_realistic():
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "design.toml"
    doc = tomllib.loads(path.read_text())
    d = design_from_toml(doc["design"])
    assert (d.n_therapists, d.patients_per_therapist, d.sessions) == (40, 10, 8)
    assert d.effects["alliance:autonomy"] > 0
    assert doc["analysis"]["test"] == "alliance:autonomy"
    assert "therapists" in doc["curve"]["vary"]
