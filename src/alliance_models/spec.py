"""Model specifications: the one object every backend, probe and power run works from.

A :class:`ModelSpec` is data-free (made by :func:`alliance_models.formula.parse_formula`);
:meth:`ModelSpec.build` turns it and a data frame into a :class:`ModelFrame` holding the
response, the fixed-effects design (with the formulaic encoding kept so that new data are
encoded the same way) and the grouping structure.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import (
    DataValidationError,
    FewClustersWarning,
    MissingDataWarning,
    ModelSpecError,
    format_rows,
)
from .formula_terms import FixedTerms, expand_fixed

__all__ = ["ModelFrame", "ModelSpec", "RandomTerm"]

MIN_CLUSTERS = 5


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | group)`` of an lme4-style formula.

    Attributes
    ----------
    expr : str
        Left of the bar, e.g. ``"1"`` or ``"1 + days"``.
    group : str
        Grouping expression as written after expansion, e.g. ``"therapist"`` or
        ``"therapist:patient"`` (from ``therapist/patient``).
    factors : tuple of str
        Columns whose combination defines the groups.
    intercept : bool
        Whether the term has a random intercept.
    slopes : tuple of str
        Variables with random slopes (plain column names or formulaic expressions).
    correlated : bool
        ``False`` for ``||`` (independent intercept and slopes).
    """

    expr: str
    group: str
    factors: tuple[str, ...]
    intercept: bool
    slopes: tuple[str, ...] = ()
    correlated: bool = True

    @property
    def n_coef(self) -> int:
        """Number of random coefficients per group (intercept plus slopes)."""
        return int(self.intercept) + len(self.slopes)

    @property
    def coef_names(self) -> tuple[str, ...]:
        """Names of the random coefficients, ``"(Intercept)"`` first when present."""
        return (("(Intercept)",) if self.intercept else ()) + self.slopes

    def group_keys(self, data: pd.DataFrame) -> pd.Series:
        """Group label of every row of ``data``: the factors' values joined by ``":"``.

        Examples
        --------
        >>> t = RandomTerm("1", "t:p", ("t", "p"), True)
        >>> t.group_keys(pd.DataFrame({"t": ["a", "b"], "p": [1, 2]})).tolist()
        ['a:1', 'b:2']
        """
        # vectorised string join (a row-wise agg was ~50x slower on 1,440 rows)
        keys = data[self.factors[0]].astype(str)
        for f in self.factors[1:]:
            keys = keys + ":" + data[f].astype(str)
        return keys

    def __str__(self) -> str:
        bar = "|" if self.correlated else "||"
        return f"({self.expr} {bar} {self.group})"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed lme4-style model formula (no data attached).

    Attributes
    ----------
    formula : str
        The formula as given.
    response : str
        Left-hand side (a column name or a formulaic expression).
    fixed : str
        Right-hand side of the fixed part as written (R formula operators; variables are
        columns or formulaic calls); :attr:`fixed_terms` is its expansion.
    random : tuple of RandomTerm
        The random-effects terms, nested terms already expanded.
    variables : tuple of str
        Every data column the formula refers to (response, fixed, random, groups).

    Examples
    --------
    >>> from alliance_models.formula import parse_formula
    >>> spec = parse_formula("y ~ x * m + (1 | therapist/patient)")
    >>> spec.fixed, [str(t) for t in spec.random]
    ('x * m', ['(1 | therapist)', '(1 | therapist:patient)'])
    """

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...] = ()
    variables: tuple[str, ...] = ()

    @property
    def fixed_formula(self) -> str:
        """The fixed part as a complete formulaic formula ``"y ~ rhs"``."""
        return f"{self.response} ~ {self.fixed}"

    @property
    def fixed_terms(self) -> FixedTerms:
        """The fixed part expanded into terms as R's ``terms()`` does.

        Examples
        --------
        >>> from alliance_models.formula import parse_formula
        >>> parse_formula("y ~ (a + b) * (c + d) + (1 | g)").fixed_terms.terms[4:]
        ('a:c', 'a:d', 'b:c', 'b:d')
        """
        return expand_fixed(self.fixed)

    @property
    def expanded_formula(self) -> str:
        """``"y ~ <terms in R's order>"``: what the fixed design is built from."""
        return f"{self.response} ~ {self.fixed_terms.formula}"

    @property
    def has_random(self) -> bool:
        """Whether the formula has random-effects terms."""
        return bool(self.random)

    @property
    def grouping_factors(self) -> tuple[str, ...]:
        """Distinct grouping columns used by the random part, in order of appearance."""
        out: list[str] = []
        for t in self.random:
            for f in t.factors:
                if f not in out:
                    out.append(f)
        return tuple(out)

    def check_columns(self, data: pd.DataFrame) -> None:
        """Raise :class:`ModelSpecError` if a formula variable is not a column of ``data``.

        The message lists close matches among the available columns.
        """
        cols = [str(c) for c in data.columns]
        for v in self.variables:
            if v not in data.columns:
                close = difflib.get_close_matches(v, cols, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ModelSpecError(
                    f"formula {self.formula!r} names column {v!r}, which is not in the data"
                    f"{hint}{' ' if hint else '. '}Available columns: {', '.join(cols)}"
                )

    def check_numeric_text(self, data: pd.DataFrame) -> None:
        """Name a stray text cell in a numeric formula column before it becomes a factor.

        A file read with one typo (``high`` in an alliance column) gives a text column,
        which a formula would turn into a factor with one level per value and fail much
        later as "rank deficient". A formula variable (not a grouping factor) whose
        non-missing values are mostly numbers, but not all, raises instead.

        Raises
        ------
        DataValidationError
            Naming the column, the rows (first five) and the values.
        """
        for col in self.variables:
            if col in self.grouping_factors or col not in data.columns or col == self.response:
                continue  # the response has its own check in build()
            values = data[col]
            if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                continue
            if isinstance(values.dtype, pd.CategoricalDtype):
                continue
            given = values.notna() & (values.astype(str).str.strip() != "")
            numbers = pd.to_numeric(values.where(given), errors="coerce")
            bad = given & numbers.isna()
            if not bad.any() or numbers.notna().sum() < bad.sum():
                continue  # mostly text: a real categorical column
            shown = ", ".join(repr(v) for v in pd.unique(values[bad])[:5])
            raise DataValidationError(
                f"column {col!r} holds numbers but has {int(bad.sum())} non-numeric value(s) "
                f"in {format_rows(list(values.index[bad]))}: {shown}; allowed: numbers or an "
                f"empty cell (missing); wrap the term in C({col}) if it is really categorical"
            )

    def build(self, data: pd.DataFrame, *, extra: tuple[str, ...] = ()) -> ModelFrame:
        """Encode ``data`` for this specification (listwise deletion is counted).

        Parameters
        ----------
        data : DataFrame
            The analysis data.
        extra : tuple of str, optional
            Further columns that must be complete (e.g. the ``trials`` column).

        Returns
        -------
        ModelFrame

        Raises
        ------
        ModelSpecError
            Missing columns, a grouping factor with one level, a constant predictor.
        """
        from formulaic import Formula

        if not isinstance(data, pd.DataFrame):
            raise ModelSpecError(
                f"data must be a pandas DataFrame, got {type(data).__name__}; "
                "use am.read_data() to convert other inputs"
            )
        self.check_columns(data)
        self.check_numeric_text(data)
        for c in extra:
            if c not in data.columns:
                raise ModelSpecError(
                    f"column {c!r} is not in the data. Available columns: "
                    f"{', '.join(map(str, data.columns))}"
                )
        used = list(dict.fromkeys([*self.variables, *extra]))
        complete = data[used].notna().all(axis=1)
        dropped = data.index[~complete]
        n_dropped = int((~complete).sum())
        if n_dropped:
            na_cols = [c for c in used if data.loc[~complete, c].isna().any()]
            warnings.warn(
                f"{n_dropped} of {len(data)} rows have missing values in model columns "
                f"({', '.join(na_cols)}) and were excluded listwise "
                f"({format_rows(list(dropped))}); the count is in the result's n_dropped",
                MissingDataWarning,
                stacklevel=3,
            )
        df = data.loc[complete].copy()
        if len(df) == 0:
            raise ModelSpecError("no complete rows remain for the model columns")

        resp = self.response
        if resp in df.columns and not (
            pd.api.types.is_numeric_dtype(df[resp]) or pd.api.types.is_bool_dtype(df[resp])
        ):
            bad = df.index[pd.to_numeric(df[resp], errors="coerce").isna()]
            where = (
                f"{format_rows(list(bad))} hold non-numeric values such as "
                f"{df.loc[bad[0], resp]!r}"
                if len(bad)
                else f"it has dtype {df[resp].dtype}"
            )
            raise ModelSpecError(
                f"response column {resp!r} must be numeric (a score or proportion); {where}"
            )
        terms = self.fixed_terms
        if terms.offset:
            raise ModelSpecError(
                f"offset({terms.offset[0]}) in {self.formula!r}: offsets are read (as R's "
                "terms() does) but no fitting function uses them yet; for a gaussian model "
                "subtract the offset from the response instead"
            )
        # the terms keep R's order (formulaic would otherwise sort them itself)
        formula = Formula(self.expanded_formula, _ordering="none")
        mm = formula.get_model_matrix(df, na_action="raise")
        y_df, x_df = mm.lhs, mm.rhs
        if y_df.shape[1] != 1:
            raise ModelSpecError(
                f"response {self.response!r} must give one column, got {y_df.shape[1]}"
            )
        for term, sl in x_df.model_spec.term_slices.items():
            if sl.stop - sl.start == 0:
                raise ModelSpecError(
                    f"term {str(term)!r} gives no columns: its variable takes a single value "
                    "in the complete rows, so a constant predictor or moderator cannot be "
                    "estimated; check the column or drop the term"
                )
        x_names = tuple(str(c) for c in x_df.columns)
        X = np.asarray(x_df, dtype=float)
        y = np.asarray(y_df, dtype=float).ravel()
        # constant predictors (other than the intercept) are not identifiable
        for j, name in enumerate(x_names):
            if name == "Intercept":
                continue
            col = X[:, j]
            if np.ptp(col) == 0:
                raise ModelSpecError(
                    f"term {name!r} is constant ({col[0]:g} in every one of {len(col)} rows); "
                    "a constant predictor or moderator cannot be estimated: check the column "
                    "or drop the term"
                )

        groups: dict[str, np.ndarray] = {}
        group_labels: dict[str, pd.Index] = {}
        for t in self.random:
            if t.group in groups:
                continue
            codes, uniques = pd.factorize(t.group_keys(df), sort=True)
            if len(uniques) < 2:
                raise ModelSpecError(
                    f"grouping factor {t.group!r} has only one level ({uniques[0]!r}); "
                    "a random effect needs at least two groups (ideally many more)"
                )
            if len(uniques) < MIN_CLUSTERS:
                warnings.warn(
                    f"grouping factor {t.group!r} has only {len(uniques)} levels; variance "
                    f"estimates with fewer than {MIN_CLUSTERS} clusters are unstable; consider "
                    "a fixed effect for it or a Bayesian fit with an informative prior",
                    FewClustersWarning,
                    stacklevel=3,
                )
            groups[t.group] = codes.astype(np.int64)
            group_labels[t.group] = pd.Index(uniques)

        Z: dict[str, np.ndarray] = {}
        for t in self.random:
            cols = []
            if t.intercept:
                cols.append(np.ones(len(df)))
            for s in t.slopes:
                zs = Formula(f"0 + {s}").get_model_matrix(df, na_action="raise")
                if zs.shape[1] != 1:
                    raise ModelSpecError(
                        f"random slope {s!r} in {t} must be one numeric column "
                        f"(got {zs.shape[1]}); categorical random slopes are not supported"
                    )
                cols.append(np.asarray(zs, dtype=float).ravel())
            Z[str(t)] = np.column_stack(cols) if cols else np.empty((len(df), 0))

        return ModelFrame(
            spec=self,
            data=df,
            y=y,
            X=X,
            x_names=x_names,
            groups=groups,
            group_labels=group_labels,
            Z=Z,
            n_dropped=n_dropped,
            dropped_index=pd.Index(dropped),
            fixed_model_spec=x_df.model_spec,
        )


@dataclass(frozen=True, eq=False)
class ModelFrame:
    """A :class:`ModelSpec` applied to data: arrays ready for any backend.

    Attributes
    ----------
    spec : ModelSpec
        The specification.
    data : DataFrame
        Complete-case rows used in the fit (original index kept).
    y : ndarray, shape (n,)
        Response.
    X : ndarray, shape (n, p)
        Fixed-effects design; columns named by ``x_names`` (formulaic names, e.g.
        ``"Intercept"``, ``"alliance:autonomy"``).
    groups : dict of str to ndarray
        Integer group codes (0..G-1) per grouping expression of the random part.
    group_labels : dict of str to Index
        The level labels matching those codes.
    Z : dict of str to ndarray
        Random-effects columns (n, q_k) per random term, keyed by ``str(term)``.
    n_dropped : int
        Rows excluded listwise for missing values (``dropped_index`` lists them).
    fixed_model_spec : formulaic ModelSpec
        Re-applies the fixed-part encoding to new data (see :meth:`fixed_design`).
    """

    spec: ModelSpec
    data: pd.DataFrame
    y: np.ndarray
    X: np.ndarray
    x_names: tuple[str, ...]
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    group_labels: dict[str, pd.Index] = field(default_factory=dict)
    Z: dict[str, np.ndarray] = field(default_factory=dict)
    n_dropped: int = 0
    dropped_index: pd.Index = field(default_factory=lambda: pd.Index([]))
    fixed_model_spec: Any = None

    @property
    def n_obs(self) -> int:
        """Number of rows used."""
        return int(self.y.shape[0])

    @property
    def n_groups(self) -> dict[str, int]:
        """Number of levels of each grouping expression."""
        return {k: len(v) for k, v in self.group_labels.items()}

    def fixed_design(self, newdata: pd.DataFrame) -> np.ndarray:
        """Encode new data with the same fixed-effects encoding as the fit.

        Parameters
        ----------
        newdata : DataFrame
            Must hold every fixed-part variable (the response is not needed).

        Returns
        -------
        ndarray, shape (len(newdata), p)
        """
        mm = self.fixed_model_spec.get_model_matrix(newdata, na_action="raise")
        return np.asarray(mm, dtype=float)

    def check_finite(self, extra: dict[str, np.ndarray] | None = None) -> None:
        """Raise ``ModelSpecError`` naming the column, rows and value of a non-finite entry.

        Checks the response, every fixed-effects column, every random-effects column
        and the ``extra`` arrays (e.g. a trials column), in that order. Every fitting
        function (``fit_mixed``, ``fit_ols``, ``fit_gee``, ``fit_bayes``) uses this check,
        so the same input raises the same error.

        Examples
        --------
        >>> from alliance_models import parse_formula
        >>> d = pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [0.0, np.inf, 1.0]})
        >>> parse_formula("y ~ x").build(d).check_finite()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        alliance_models.errors.ModelSpecError: 'x' has non-finite values (row 1: inf); ...
        """
        cols: dict[str, np.ndarray] = {self.spec.response: self.y}
        cols |= {name: self.X[:, j] for j, name in enumerate(self.x_names)}
        cols |= {f"random-effect column of {k}": z for k, z in self.Z.items()}
        cols |= extra or {}
        for name, arr in cols.items():
            a = np.asarray(arr, dtype=float).reshape(self.n_obs, -1)
            bad = ~np.isfinite(a).all(axis=1)
            if bad.any():
                first = a[bad][0]
                shown = repr(float(first[0])) if first.size == 1 else str(first.tolist())
                raise ModelSpecError(
                    f"{name!r} has non-finite values ({format_rows(list(self.data.index[bad]))}"
                    f": {shown}); only finite numbers can be fitted: recode or remove them"
                )
