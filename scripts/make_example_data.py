"""Write the shipped example export ``src/alliance_models/datasets/example_redcap.csv``.

Run from the repository root: ``.venv/bin/python scripts/make_example_data.py``.
The file is fully determined by the seed and settings below and by
:func:`alliance_models.datasets.simulate_study`; re-running it reproduces the file
byte for byte (``tests/test_datasets.py`` checks this).

Settings: 40 therapists, 400 patients (unequal caseloads, mean 10), every generative
parameter at the simulator's documented default, plus three deliberate, documented messes
so that the DataReport of ``read_data -> score -> prepare`` has something to report:

* ``missing_items=0.01``: about 1% of attended sessions have blank WAI-SR items (one blank
  in 70% of those forms, 4-6 blanks in 30%, so that pro-rating can rescue some but not all);
* ``missing_diary=0.02``: about 2% of attended sessions have no home-exercise diary;
* ``missing_age=0.01``: about 1% of patients have a blank age.

Not-attended sessions have blank WAI-SR items and diaries, as in a real study.
"""

from __future__ import annotations

from pathlib import Path

from alliance_models.datasets import simulate_study

SEED = 20240611
SETTINGS = {
    "n_therapists": 40,
    "patients_per_therapist": 10,
    "missing_items": 0.01,
    "missing_diary": 0.02,
    "missing_age": 0.01,
}
OUT = Path(__file__).resolve().parents[1] / "src" / "alliance_models" / "datasets"


def make(path: Path) -> Path:
    """Simulate the example study and write it as CSV to ``path``."""
    raw = simulate_study(seed=SEED, **SETTINGS)
    raw.to_csv(path, index=False, lineterminator="\n")
    return path


if __name__ == "__main__":
    out = make(OUT / "example_redcap.csv")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
