"""Scoring keys of the questionnaires used in alliance/adherence research.

Only *keys* live here: item numbers, response ranges, reverse-keyed items, subscale
membership and the scoring rule. Item wording is never shipped (the Working Alliance
Inventory is copyrighted by its authors; the self-determination-theory questionnaires
need permission for commercial use).

Every built-in key cites its published source. Where the key could only be checked
against secondary implementations, the instrument's ``note`` says so; a user who holds
the authors' key can override any built-in with
``register_instrument(..., replace=True)`` or score with a modified copy, e.g.
``dataclasses.replace(get_instrument("wai-s"), subscales=WAI_S_SUBSCALES_ALT)``.

Sources and how sure the keys are:

============  ===========================================  ===================================
key           source                                       certainty
============  ===========================================  ===================================
wai           Horvath & Greenberg (1989)                   reversed items and subscales from a
                                                           secondary implementation matching
                                                           the wording; verify with the manual
wai-s         Tracey & Kokotovic (1989)                    reversed 4, 10 verified; subscales
                                                           derived from the 36-item key, one
                                                           source differs (WAI_S_SUBSCALES_ALT)
wai-sr        Hatcher & Gillaspy (2006)                    checked in two implementations
hccq          Williams et al. (1996); SDT website          item 13 reversed, mean score
hccq-short    SDT website scoring notes                    item selection 1, 2, 4, 7, 10, 14;
                                                           check against your form
ears          Newman-Beinart et al. (2017)                 section B, items 2, 3, 5 reversed
siras         Brewer et al. (2000)                         3 items, sum
============  ===========================================  ===================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import pandas as pd

from ..errors import DataValidationError

__all__ = [
    "Instrument",
    "WAI_S_SUBSCALES_ALT",
    "get_instrument",
    "list_instruments",
    "register_instrument",
]


@dataclass(frozen=True)
class Instrument:
    """The scoring key of one questionnaire (never its wording).

    Parameters
    ----------
    key : str
        Registry key, lower case, e.g. ``"wai-sr"``. The default column prefix of
        :func:`~alliance_models.score` is the key with ``-`` replaced by ``_``.
    items : tuple of int
        Item numbers as printed on the form (a short form may keep the long form's
        numbers, e.g. HCCQ-short uses items 1, 2, 4, 7, 10, 14).
    min, max : int
        Smallest and largest response; responses are whole numbers in ``[min, max]``.
    reversed : tuple of int, default ()
        Reverse-keyed items; they are scored as ``min + max - response``.
    subscales : mapping of str to tuple of int, default {}
        Subscale name -> item numbers. Scored by the same rule as the total.
    method : {"sum", "mean"}, default "sum"
        The total (and each subscale) is the sum or the mean of the keyed items.
    citation : str
        The published source of the key.
    note : str
        Caveats, in particular any uncertainty about the key.
    name : str, optional
        Display name used in messages (default: the key in upper case).
    stem : str, optional
        Default item-column stem: items are looked up as ``f"{stem}_{i}"``
        (default: the key up to its first ``-``, e.g. ``"wai"`` for ``"wai-sr"``).

    Examples
    --------
    >>> inst = Instrument("pain3", items=(1, 2, 3), min=0, max=10, reversed=(2,),
    ...                   method="mean", citation="in-house")
    >>> inst.n_items, inst.name, inst.stem, inst.score_suffix
    (3, 'PAIN3', 'pain3', 'mean')
    """

    key: str
    items: tuple[int, ...]
    min: int
    max: int
    reversed: tuple[int, ...] = ()
    subscales: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    method: Literal["sum", "mean"] = "sum"
    citation: str = ""
    note: str = ""
    name: str = ""
    stem: str = ""

    def __post_init__(self) -> None:
        key = str(self.key).strip().lower()
        if not key:
            raise DataValidationError("an instrument needs a non-empty key")
        items = _int_tuple(self.items, key, "items")
        if not items:
            raise DataValidationError(f"instrument {key!r}: items must not be empty")
        if len(set(items)) != len(items):
            dup = sorted({i for i in items if items.count(i) > 1})
            raise DataValidationError(f"instrument {key!r}: items {dup} are listed twice")
        if min(items) < 1:
            raise DataValidationError(
                f"instrument {key!r}: item numbers must be >= 1, got {min(items)}"
            )
        lo, hi = self.min, self.max
        for label, v in (("min", lo), ("max", hi)):
            if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
                raise DataValidationError(
                    f"instrument {key!r}: {label} must be a whole number, got {v!r}"
                )
        lo, hi = int(lo), int(hi)
        if lo >= hi:
            raise DataValidationError(
                f"instrument {key!r}: min ({lo}) must be smaller than max ({hi})"
            )
        rev = tuple(sorted(_int_tuple(self.reversed, key, "reversed")))
        stray = sorted(set(rev) - set(items))
        if stray:
            raise DataValidationError(
                f"instrument {key!r}: reversed items {stray} are not among its items {items}"
            )
        subs: dict[str, tuple[int, ...]] = {}
        for sub, sub_items in dict(self.subscales).items():
            sname = str(sub).strip().lower()
            if not sname or not sname.replace("_", "").isalnum():
                raise DataValidationError(
                    f"instrument {key!r}: subscale name {sub!r} must be letters, digits or '_'"
                )
            if sname in ("total", "mean"):
                raise DataValidationError(
                    f"instrument {key!r}: subscale name {sub!r} is reserved for the total score"
                )
            st = _int_tuple(sub_items, key, f"subscale {sname!r}")
            if not st:
                raise DataValidationError(f"instrument {key!r}: subscale {sname!r} is empty")
            stray = sorted(set(st) - set(items))
            if stray:
                raise DataValidationError(
                    f"instrument {key!r}: subscale {sname!r} lists items {stray} "
                    f"that are not among its items {items}"
                )
            subs[sname] = st
        if self.method not in ("sum", "mean"):
            raise DataValidationError(
                f"instrument {key!r}: method must be 'sum' or 'mean', got {self.method!r}"
            )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)
        object.__setattr__(self, "reversed", rev)
        object.__setattr__(self, "subscales", MappingProxyType(subs))
        object.__setattr__(self, "name", self.name or key.upper())
        object.__setattr__(self, "stem", self.stem or key.split("-")[0].replace(" ", "_"))

    def __reduce__(self) -> tuple[type[Instrument], tuple[object, ...]]:
        # the read-only subscale mapping cannot be pickled as is (joblib workers, deepcopy)
        return (
            type(self),
            (
                self.key,
                self.items,
                self.min,
                self.max,
                self.reversed,
                dict(self.subscales),
                self.method,
                self.citation,
                self.note,
                self.name,
                self.stem,
            ),
        )

    @property
    def n_items(self) -> int:
        """Number of items."""
        return len(self.items)

    @property
    def score_suffix(self) -> str:
        """``"total"`` for sum-scored and ``"mean"`` for mean-scored instruments."""
        return "total" if self.method == "sum" else "mean"

    @property
    def score_range(self) -> tuple[float, float]:
        """Smallest and largest possible total (or mean) score."""
        if self.method == "sum":
            return float(self.min * self.n_items), float(self.max * self.n_items)
        return float(self.min), float(self.max)

    @property
    def default_prefix(self) -> str:
        """Default prefix of the score columns: the key with ``-`` replaced by ``_``."""
        return self.key.replace("-", "_").replace(" ", "_")

    def to_frame(self) -> pd.DataFrame:
        """Return the key as a table: one row per item with its subscale and direction.

        Examples
        --------
        >>> get_instrument("ears").to_frame()["reversed"].tolist()
        [False, True, True, False, True, False]
        """
        sub_of = {i: sub for sub, its in self.subscales.items() for i in its}
        return pd.DataFrame(
            {
                "item": list(self.items),
                "subscale": [sub_of.get(i) for i in self.items],
                "reversed": [i in self.reversed for i in self.items],
                "min": self.min,
                "max": self.max,
            }
        )

    def summary(self) -> str:
        """Return the human-readable description of the key (same as :meth:`describe`).

        Examples
        --------
        >>> "reverse-keyed: 13" in get_instrument("hccq").summary()
        True
        """
        return self.describe()

    def describe(self) -> str:
        """Return a one-paragraph, human-readable description of the key.

        Examples
        --------
        >>> print(get_instrument("siras").describe().splitlines()[0])
        SIRAS (key 'siras'): 3 items scored 1-5, sum (range 3-15)
        """
        lo, hi = self.score_range
        lines = [
            f"{self.name} (key {self.key!r}): {self.n_items} items scored "
            f"{self.min}-{self.max}, {self.method} (range {lo:g}-{hi:g})",
            f"  items: {', '.join(map(str, self.items))}",
            f"  reverse-keyed: {', '.join(map(str, self.reversed)) or 'none'}",
        ]
        for sub, its in self.subscales.items():
            lines.append(f"  subscale {sub}: {', '.join(map(str, its))}")
        if self.citation:
            lines.append(f"  source: {self.citation}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def _int_tuple(values: Iterable[object], key: str, what: str) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DataValidationError(
                f"instrument {key!r}: {what} must be whole item numbers, got {v!r}"
            )
        if v != int(v):
            raise DataValidationError(
                f"instrument {key!r}: {what} must be whole item numbers, got {v!r}"
            )
        out.append(int(v))
    return tuple(out)


# ---------------------------------------------------------------------------
# Built-in keys
# ---------------------------------------------------------------------------

_WAI_CITATION = (
    "Horvath, A. O., & Greenberg, L. S. (1989). Development and validation of the "
    "Working Alliance Inventory. Journal of Counseling Psychology, 36(2), 223-233."
)

WAI = Instrument(
    key="wai",
    name="WAI",
    items=tuple(range(1, 37)),
    min=1,
    max=7,
    reversed=(1, 3, 7, 9, 10, 11, 12, 15, 20, 27, 29, 31, 33, 34),
    subscales={
        "task": (2, 4, 7, 11, 13, 15, 16, 18, 24, 31, 33, 35),
        "goal": (3, 6, 9, 10, 12, 14, 22, 25, 27, 30, 32, 34),
        "bond": (1, 5, 8, 17, 19, 20, 21, 23, 26, 28, 29, 36),
    },
    method="sum",
    citation=_WAI_CITATION,
    note=(
        "Full 36-item WAI; the client and therapist forms share this key (responses "
        "1 = Never ... 7 = Always). The reverse-keyed items and the Task/Goal/Bond "
        "membership were taken from a secondary implementation that matches the item "
        "wording, not from the authors' manual: verify against the authors' key and "
        "override with register_instrument(..., replace=True) if yours differs."
    ),
)

#: WAI-S subscale membership as given by Tracey & Kokotovic (1989), derived from the
#: 36-item key through the item map 1->2, 2->4, 3->8, 4->12, 5->21, 6->22, 7->23,
#: 8->24, 9->26, 10->27, 11->32, 12->35.
WAI_S_SUBSCALES = {
    "task": (1, 2, 8, 12),
    "goal": (4, 6, 10, 11),
    "bond": (3, 5, 7, 9),
}

#: Alternative WAI-S subscale membership given by one secondary source (it equals the
#: WAI-SR key). Use it with ``dataclasses.replace(get_instrument("wai-s"),
#: subscales=WAI_S_SUBSCALES_ALT)`` if your version of the form is numbered that way.
WAI_S_SUBSCALES_ALT = {
    "task": (1, 2, 10, 12),
    "goal": (4, 6, 8, 11),
    "bond": (3, 5, 7, 9),
}

WAI_S = Instrument(
    key="wai-s",
    name="WAI-S",
    items=tuple(range(1, 13)),
    min=1,
    max=7,
    reversed=(4, 10),
    subscales=WAI_S_SUBSCALES,
    method="sum",
    citation=(
        "Tracey, T. J., & Kokotovic, A. M. (1989). Factor structure of the Working "
        "Alliance Inventory. Psychological Assessment, 1(3), 207-210."
    ),
    note=(
        "12-item short form, responses 1-7. Reverse-keyed items 4 and 10 are verified "
        "(they are items 12 and 27 of the 36-item WAI, both reverse-keyed there). The "
        "subscale membership is derived from the 36-item key; one secondary source "
        "gives the WAI-SR membership instead (WAI_S_SUBSCALES_ALT) - check your form."
    ),
)

WAI_SR = Instrument(
    key="wai-sr",
    name="WAI-SR",
    items=tuple(range(1, 13)),
    min=1,
    max=5,
    reversed=(),
    subscales={
        "task": (1, 2, 10, 12),
        "goal": (4, 6, 8, 11),
        "bond": (3, 5, 7, 9),
    },
    method="sum",
    citation=(
        "Hatcher, R. L., & Gillaspy, J. A. (2006). Development and validation of a "
        "revised short version of the Working Alliance Inventory. Psychotherapy "
        "Research, 16(1), 12-25."
    ),
    note=(
        "Revised short form, responses 1 = Seldom ... 5 = Always, no reverse-keyed "
        "items. Key checked against two independent implementations."
    ),
)

_HCCQ_CITATION = (
    "Williams, G. C., Grow, V. M., Freedman, Z. R., Ryan, R. M., & Deci, E. L. (1996). "
    "Motivational predictors of weight loss and weight-loss maintenance. Journal of "
    "Personality and Social Psychology, 70(1), 115-126; scoring as published on "
    "selfdeterminationtheory.org (Health-Care Climate Questionnaire)."
)

HCCQ = Instrument(
    key="hccq",
    name="HCCQ",
    items=tuple(range(1, 16)),
    min=1,
    max=7,
    reversed=(13,),
    method="mean",
    citation=_HCCQ_CITATION,
    note=(
        "Perceived autonomy support, 15 items, responses 1-7, score = mean of the items "
        "after reversing item 13; higher = more autonomy-supportive. The Sport Climate "
        "Questionnaire has the same structure. Permission is needed for commercial use."
    ),
)

HCCQ_SHORT = Instrument(
    key="hccq-short",
    name="HCCQ-short",
    items=(1, 2, 4, 7, 10, 14),
    min=1,
    max=7,
    reversed=(),
    method="mean",
    stem="hccq",
    citation=_HCCQ_CITATION + " Short form: items 1, 2, 4, 7, 10 and 14 of the 15.",
    note=(
        "6-item short form (alpha about .91), responses 1-7, no reverse-keyed item, "
        "score = mean. Items keep their long-form numbers, so columns default to "
        "hccq_1, hccq_2, hccq_4, hccq_7, hccq_10, hccq_14. The item selection is taken "
        "from the SDT website's scoring notes; check it against your form."
    ),
)

EARS = Instrument(
    key="ears",
    name="EARS",
    items=tuple(range(1, 7)),
    min=0,
    max=4,
    reversed=(2, 3, 5),
    method="sum",
    citation=(
        "Newman-Beinart, N. A., Norton, S., Dowling, D., Gavriloff, D., Vari, C., "
        "Weinman, J. A., & Godfrey, E. L. (2017). The development and initial "
        "psychometric evaluation of a measure assessing adherence to prescribed "
        "exercise: the Exercise Adherence Rating Scale (EARS). Physiotherapy, 103(2), "
        "180-185."
    ),
    note=(
        "Section B (the 6 adherence items), responses 0-4; items 2, 3 and 5 are "
        "negatively worded and reversed; total 0-24, higher = more adherent. Sections "
        "A and C are not scored. Number your columns by the section-B item order."
    ),
)

SIRAS = Instrument(
    key="siras",
    name="SIRAS",
    items=(1, 2, 3),
    min=1,
    max=5,
    reversed=(),
    method="sum",
    citation=(
        "Brewer, B. W., Van Raalte, J. L., Petitpas, A. J., Pazienza, N. J., et al. "
        "(2000). Preliminary psychometric evaluation of a measure of adherence to "
        "clinic-based sport injury rehabilitation. Physical Therapy in Sport, 1(3), "
        "68-74."
    ),
    note=(
        "Sport Injury Rehabilitation Adherence Scale: 3 clinician-rated items, "
        "responses 1-5, total 3-15 (alpha about .82)."
    ),
)

_BUILTINS: tuple[Instrument, ...] = (WAI, WAI_S, WAI_SR, HCCQ, HCCQ_SHORT, EARS, SIRAS)
_REGISTRY: dict[str, Instrument] = {inst.key: inst for inst in _BUILTINS}


def get_instrument(key: str | Instrument) -> Instrument:
    """Return the registered instrument with this key (case-insensitive).

    Parameters
    ----------
    key : str or Instrument
        A registry key such as ``"wai-sr"``; an :class:`Instrument` is returned as is.

    Returns
    -------
    Instrument

    Raises
    ------
    DataValidationError
        If no instrument is registered under ``key`` (the message lists the keys).

    Examples
    --------
    >>> inst = get_instrument("WAI-SR")
    >>> inst.key, inst.min, inst.max, inst.subscales["bond"]
    ('wai-sr', 1, 5, (3, 5, 7, 9))
    """
    if isinstance(key, Instrument):
        return key
    norm = str(key).strip().lower()
    try:
        return _REGISTRY[norm]
    except KeyError:
        known = ", ".join(repr(k) for k in sorted(_REGISTRY))
        raise DataValidationError(
            f"unknown instrument {key!r}; registered instruments are {known} "
            "(add your own with register_instrument)"
        ) from None


def register_instrument(
    key: str | Instrument,
    *,
    items: Iterable[int] | None = None,
    min: int | None = None,
    max: int | None = None,
    reversed: Iterable[int] = (),
    subscales: Mapping[str, Iterable[int]] | None = None,
    method: Literal["sum", "mean"] = "sum",
    citation: str = "",
    note: str = "",
    name: str = "",
    stem: str = "",
    replace: bool = False,
) -> Instrument:
    """Register a questionnaire key so that :func:`~alliance_models.score` can use it.

    Parameters
    ----------
    key : str or Instrument
        The new key, or a ready :class:`Instrument` (then the other fields must not
        be given).
    items : iterable of int
        Item numbers.
    min, max : int
        Response range (whole numbers).
    reversed : iterable of int, default ()
        Reverse-keyed items.
    subscales : mapping of str to iterable of int, optional
        Subscale name -> item numbers.
    method : {"sum", "mean"}, default "sum"
        Scoring rule for the total and the subscales.
    citation, note, name, stem : str
        See :class:`Instrument`.
    replace : bool, default False
        Must be True to override an existing key (including a built-in one).

    Returns
    -------
    Instrument
        The registered instrument.

    Raises
    ------
    DataValidationError
        If the key exists and ``replace`` is False, or the definition is inconsistent.

    Examples
    --------
    >>> inst = register_instrument("my-scale", items=[1, 2, 3, 4], min=1, max=5,
    ...                            reversed=[4], citation="in-house", replace=True)
    >>> get_instrument("my-scale").reversed
    (4,)
    """
    if isinstance(key, Instrument):
        if items is not None or min is not None or max is not None:
            raise DataValidationError(
                "register_instrument: pass either an Instrument or its fields, not both"
            )
        inst = key
    else:
        if items is None or min is None or max is None:
            raise DataValidationError(
                f"register_instrument({key!r}): items, min and max are required"
            )
        inst = Instrument(
            key=key,
            items=tuple(items),
            min=min,
            max=max,
            reversed=tuple(reversed),
            subscales={k: tuple(v) for k, v in (subscales or {}).items()},
            method=method,
            citation=citation,
            note=note,
            name=name,
            stem=stem,
        )
    if inst.key in _REGISTRY and not replace:
        raise DataValidationError(
            f"instrument {inst.key!r} is already registered; pass replace=True to override it"
        )
    _REGISTRY[inst.key] = inst
    return inst


def list_instruments() -> pd.DataFrame:
    """Return a table of the registered instruments (one row per key).

    Returns
    -------
    pandas.DataFrame
        Columns ``key, name, n_items, min, max, reversed, subscales, method, score_range,
        citation, note``, indexed by nothing in particular, sorted by key.

    Examples
    --------
    >>> tab = list_instruments()
    >>> {"wai", "wai-s", "wai-sr", "hccq", "hccq-short", "ears", "siras"} <= set(tab["key"])
    True
    """
    rows = []
    for k in sorted(_REGISTRY):
        inst = _REGISTRY[k]
        rows.append(
            {
                "key": inst.key,
                "name": inst.name,
                "n_items": inst.n_items,
                "min": inst.min,
                "max": inst.max,
                "reversed": inst.reversed,
                "subscales": ", ".join(inst.subscales) or "",
                "method": inst.method,
                "score_range": inst.score_range,
                "citation": inst.citation,
                "note": inst.note,
            }
        )
    return pd.DataFrame(rows)
