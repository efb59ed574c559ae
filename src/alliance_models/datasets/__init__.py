"""Example data: a simulator of item-level studies and a shipped REDCap-style export.

The shipped file ``example_redcap.csv`` was made by ``scripts/make_example_data.py``
(fixed seed) with :func:`simulate_study`; it serves tests, examples, docs and benchmarks.

Examples
--------
>>> import alliance_models as am
>>> raw = am.datasets.load_example()
>>> {"record_id", "redcap_event_name", "wai_1", "hccq_1"} <= set(raw.columns)
True
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from ._simulate_study import EXPORT_COLUMNS, simulate_study

__all__ = ["EXPORT_COLUMNS", "example_path", "load_example", "simulate_study"]

_EXAMPLE = "example_redcap.csv"


def example_path() -> Path:
    """Return the path of the shipped example export ``example_redcap.csv``.

    Returns
    -------
    pathlib.Path
        A file on disk (the package is installed unzipped).

    Examples
    --------
    >>> from alliance_models.datasets import example_path
    >>> example_path().name
    'example_redcap.csv'
    """
    path = Path(str(resources.files(__name__).joinpath(_EXAMPLE)))
    if not path.is_file():  # pragma: no cover - broken installation
        raise FileNotFoundError(
            f"the example data {path} are missing; reinstall alliance_models or run "
            "scripts/make_example_data.py"
        )
    return path


def load_example() -> pd.DataFrame:
    """Load the shipped example export as a raw DataFrame, exactly as read from the CSV.

    About 40 therapists and 400 patients in REDCap flat-export layout (baseline,
    repeating session and discharge rows); see :func:`simulate_study` for the
    generative model and ``scripts/make_example_data.py`` for the settings used.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> from alliance_models.datasets import load_example
    >>> raw = load_example()
    >>> int(raw["record_id"].nunique())
    400
    """
    return pd.read_csv(example_path())
