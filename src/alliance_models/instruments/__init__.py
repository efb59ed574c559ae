"""Questionnaire keys and scoring (WAI, WAI-S, WAI-SR, HCCQ, HCCQ-short, EARS, SIRAS).

Only scoring keys are shipped, never item wording. See :mod:`.keys` for the keys and
their sources, :mod:`.scoring` for :func:`score`.

Examples
--------
>>> import pandas as pd
>>> from alliance_models.instruments import score
>>> df = pd.DataFrame({f"siras_{i}": [5, 3] for i in (1, 2, 3)})
>>> score(df, "siras")["siras_total"].tolist()
[15.0, 9.0]
"""

from .keys import (
    WAI_S_SUBSCALES_ALT,
    Instrument,
    get_instrument,
    list_instruments,
    register_instrument,
)
from .scoring import STATUS_LABELS, ScoringReport, reverse_items, score, score_matrix

__all__ = [
    "STATUS_LABELS",
    "WAI_S_SUBSCALES_ALT",
    "Instrument",
    "ScoringReport",
    "get_instrument",
    "list_instruments",
    "register_instrument",
    "reverse_items",
    "score",
    "score_matrix",
]
