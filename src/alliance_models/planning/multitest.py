"""Several tests in one power run: multiple-testing corrections and family-wise power.

``am.power(..., test=["alliance:age", "alliance:autonomy"], correction="holm")`` fits
each replicate once and tests every listed coefficient. Within each replicate the
p-values of the family are adjusted (:func:`adjust_pvalues`: Bonferroni, Holm or
Benjamini-Hochberg, as ``statsmodels.stats.multitest.multipletests`` computes them) and a
test rejects when its adjusted p-value is below ``alpha``. :class:`MultiPowerResult`
reports each test's rejection rate after the correction, the family-wise power that
*all* tests reject and that *any* does, and, over the tests whose true coefficient is
zero ("null terms"), the family-wise type-I error (the share of replicates in which at
least one null term is rejected), each with a 95% Wilson interval.

A test whose fit failed in a replicate, or whose estimate or SE is not finite, counts
as not rejected; in the correction it is a p-value of 1, so it still counts in the
family size (conservative for Bonferroni and Holm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ModelSpecError
from .design import Design
from .results import REPLICATE_COLUMNS, PowerResult, _fmt, summarise, wilson_interval

__all__ = [
    "CORRECTIONS",
    "MULTI_REPLICATE_COLUMNS",
    "MultiPowerResult",
    "adjust_pvalues",
    "check_tests",
]

#: the corrections ``power(correction=...)`` accepts (None: no correction), and the
#: ``multipletests`` method each one is
CORRECTIONS = {"bonferroni": "bonferroni", "holm": "holm", "bh": "fdr_bh"}
#: replicate records of a run of several tests: one row per replicate and test
MULTI_REPLICATE_COLUMNS = ("rep", "test", *REPLICATE_COLUMNS[1:4], "p_adjusted",
                           *REPLICATE_COLUMNS[4:])


def check_tests(test: Any, coefficients: Sequence[str] | None = None) -> tuple[str, ...]:
    """Validate a list of tests: non-empty, strings, no repeats, coefficients of the model.

    Parameters
    ----------
    test : sequence of str
        The coefficients to test.
    coefficients : sequence of str, optional
        The model's coefficients; when given, every test must be one of them.

    Returns
    -------
    tuple of str

    Raises
    ------
    ModelSpecError
        An empty list, a non-string entry, a repeated or an unknown coefficient.

    Examples
    --------
    >>> check_tests(["alliance", "age"], ["Intercept", "alliance", "age"])
    ('alliance', 'age')
    """
    if isinstance(test, str) or not isinstance(test, Sequence):
        raise ModelSpecError(
            f"test must be a coefficient name or a list of them, got {test!r}")
    tests = tuple(test)
    if not tests:
        raise ModelSpecError("test is an empty list; name at least one coefficient")
    for t in tests:
        if not isinstance(t, str):
            raise ModelSpecError(
                f"test entries must be coefficient names (str); got {t!r} in {list(tests)!r}")
    seen: set[str] = set()
    for t in tests:
        if t in seen:
            raise ModelSpecError(
                f"test lists {t!r} more than once in {list(tests)!r}; each coefficient can "
                "be tested once per run")
        seen.add(t)
    if coefficients is not None:
        for t in tests:
            if t not in coefficients:
                raise ModelSpecError(
                    f"test {t!r} is not a coefficient of the formula; coefficients: "
                    f"{', '.join(coefficients)}")
    return tests


def check_correction(correction: Any) -> str | None:
    """Return ``correction`` if allowed (None, "bonferroni", "holm", "bh"), else raise."""
    if correction is None or (isinstance(correction, str) and correction in CORRECTIONS):
        return correction
    raise ModelSpecError(
        f"correction {correction!r} is unknown; allowed: None, "
        + ", ".join(repr(c) for c in CORRECTIONS))


def adjust_pvalues(p: np.ndarray, correction: str | None) -> np.ndarray:
    """Return the adjusted p-values of each row of ``p`` (one family of tests per row).

    The adjustments are those of ``statsmodels.stats.multitest.multipletests``
    (``"bonferroni"``, ``"holm"``, ``"fdr_bh"`` for ``"bh"``), computed for all rows at
    once: Bonferroni ``min(1, m p)``; Holm the running maximum of ``(m - i + 1) p_(i)``
    over the sorted p-values; Benjamini-Hochberg the running minimum from the largest
    of ``m p_(i) / i``; all capped at 1. A test rejects at level ``alpha`` when its
    adjusted p-value is below ``alpha``. ``None`` returns the p-values unchanged.

    Parameters
    ----------
    p : array-like, shape (n, m) or (m,)
        P-values in [0, 1] (NaN is not allowed: give failed tests p = 1).
    correction : {"bonferroni", "holm", "bh"} or None

    Returns
    -------
    ndarray, same shape as ``p``

    Examples
    --------
    >>> adjust_pvalues(np.array([0.01, 0.04, 0.03]), "holm").round(3).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_pvalues(np.array([0.01, 0.04, 0.03]), "bh").round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    check_correction(correction)
    arr = np.asarray(p, dtype=float)
    one = arr.ndim == 1
    P = arr[None, :] if one else arr
    if P.ndim != 2:
        raise ModelSpecError(f"p must be 1-d or 2-d (replicates x tests), got shape {arr.shape}")
    if not np.all((P >= 0) & (P <= 1)):
        raise ModelSpecError("p-values must lie in [0, 1] (give a failed test p = 1)")
    m = P.shape[1]
    if correction is None or m == 0:
        out = P.copy()
    elif correction == "bonferroni":
        out = np.minimum(P * m, 1.0)
    else:
        order = np.argsort(P, axis=1, kind="stable")
        ps = np.take_along_axis(P, order, axis=1)
        if correction == "holm":
            adj = np.maximum.accumulate(ps * np.arange(m, 0, -1), axis=1)
        else:  # Benjamini-Hochberg, as multipletests: p_(i) / (i / m)
            raw = ps / (np.arange(1, m + 1) / m)
            adj = np.minimum.accumulate(raw[:, ::-1], axis=1)[:, ::-1]
        adj = np.minimum(adj, 1.0)
        out = np.empty_like(adj)
        np.put_along_axis(out, order, adj, axis=1)
    return out[0] if one else out


def adjust_frame(reps: pd.DataFrame, tests: Sequence[str], correction: str | None,
                 alpha: float) -> pd.DataFrame:
    """Add ``p_adjusted`` and set ``reject`` (adjusted p < alpha) in replicate records.

    ``reps`` has one row per replicate and test (``rep`` then ``test`` order). Failed
    tests enter the correction as p = 1; their ``p_adjusted`` is NaN and they do not
    reject.
    """
    m = len(tests)
    n = len(reps) // m
    if n * m != len(reps):
        raise ValueError(f"{len(reps)} records are not {m} tests per replicate")
    expected = np.tile(np.asarray(tests, dtype=object), n)
    if not np.array_equal(reps["test"].to_numpy(object), expected):
        raise ValueError("replicate records are not ordered by replicate, then test")
    p = reps["p_value"].to_numpy(float).reshape(n, m)
    failed = ~np.isfinite(p)
    adj = adjust_pvalues(np.where(failed, 1.0, p), correction)
    adj = np.where(failed, math.nan, adj).reshape(-1)
    out = reps.copy()
    out["p_adjusted"] = adj
    out["reject"] = np.isfinite(adj) & (adj < alpha)
    return out[list(MULTI_REPLICATE_COLUMNS)]


@dataclass(frozen=True, eq=False)
class MultiPowerResult:
    """The outcome of a Monte Carlo power run of several tests (``test=[...]``).

    Attributes
    ----------
    design : Design
    formula : str
    tests : tuple of str
        The coefficients tested (the family), in the order given.
    correction : {"bonferroni", "holm", "bh"} or None
        The multiple-testing correction applied within each replicate.
    method : str
        The engine that ran.
    alpha : float
        Two-sided level; a test rejects when its adjusted p-value is below it.
    n_sims, n_completed : int
        Replicates requested and completed.
    per_test : dict of str to PowerResult
        One result per test, from its records after the correction (its ``power`` is
        the test's rejection rate after the correction; truth, bias, coverage ... as for
        a single test).
    power_all, power_any : float
        Share of replicates in which every test / at least one test rejected.
    ci_all, ci_any : (float, float)
        Their 95% Wilson intervals.
    null_tests : tuple of str
        The tests whose true coefficient is zero (exactly, on the analysis scale).
    familywise_error : float
        Share of replicates in which at least one null test rejected (NaN without null
        tests); ``familywise_error_ci`` its 95% Wilson interval.
    elapsed : float
    interrupted : bool
    seed : int or None
    replicates : DataFrame
        One row per replicate and test (``MULTI_REPLICATE_COLUMNS``: the single-test
        columns plus ``test`` and ``p_adjusted``; ``reject`` is after the correction).
    scenario : Scenario or None
        The robustness scenario the design was simulated under (None: as designed).
    """

    design: Design
    formula: str
    tests: tuple[str, ...]
    correction: str | None
    method: str
    alpha: float
    n_sims: int
    n_completed: int
    per_test: dict[str, PowerResult]
    power_all: float
    ci_all: tuple[float, float]
    power_any: float
    ci_any: tuple[float, float]
    null_tests: tuple[str, ...]
    familywise_error: float
    familywise_error_ci: tuple[float, float]
    elapsed: float
    interrupted: bool
    seed: int | None
    replicates: pd.DataFrame
    scenario: Any = None

    def _reject_matrix(self) -> np.ndarray:
        m = len(self.tests)
        return self.replicates["reject"].to_numpy(bool).reshape(-1, m)

    def successes(self, of: str = "all") -> tuple[int, int]:
        """Return (replicates that succeed, replicates) for ``of``.

        Parameters
        ----------
        of : str
            ``"all"`` (every test rejects), ``"any"`` (at least one does) or one of the
            tests.

        Returns
        -------
        (int, int)
        """
        rej = self._reject_matrix()
        if of == "all":
            hit = rej.all(axis=1)
        elif of == "any":
            hit = rej.any(axis=1)
        elif of in self.tests:
            hit = rej[:, self.tests.index(of)]
        else:
            raise ModelSpecError(
                f"power of {of!r} is unknown; allowed: 'all', 'any', "
                + ", ".join(repr(t) for t in self.tests))
        return int(hit.sum()), int(rej.shape[0])

    def power_of(self, of: str = "all") -> tuple[float, tuple[float, float]]:
        """Return the power of ``of`` (see :meth:`successes`) and its 95% Wilson interval.

        Examples
        --------
        >>> import alliance_models as am
        >>> d = am.Design(therapists=10, patients_per_therapist=4, sessions=2,
        ...               effects={"alliance": 0.3, "autonomy": 0.3})
        >>> res = am.power(d, "adherence ~ alliance + autonomy",
        ...                test=["alliance", "autonomy"], correction="holm", n_sims=20,
        ...                method="ols", n_jobs=1, seed=1, fit_kwargs={"hc": None})
        >>> p_all, _ = res.power_of("all")
        >>> p_all <= min(r.power for r in res.per_test.values())
        True
        """
        k, n = self.successes(of)
        return (k / n if n else math.nan), wilson_interval(k, n)

    def to_frame(self) -> pd.DataFrame:
        """Return a tidy frame: a row per test, then the family-wise rows.

        Rows of ``kind="test"`` (one per test), then ``"all"`` and ``"any"``
        (``kind="family"``), and ``"familywise_error"`` over the null tests when there
        are any (its ``power`` column is the error rate).

        Returns
        -------
        DataFrame
            Columns ``test``, ``kind``, ``correction`` and those of
            :meth:`PowerResult.to_frame`.
        """
        rows = [r.to_frame() for r in self.per_test.values()]
        df = pd.concat(rows, ignore_index=True)
        df.insert(1, "kind", "test")
        fam = []
        n = self.n_completed
        for name, p, ci in (("all", self.power_all, self.ci_all),
                            ("any", self.power_any, self.ci_any),
                            ("familywise_error", self.familywise_error,
                             self.familywise_error_ci)):
            if name == "familywise_error" and not self.null_tests:
                continue
            fam.append({
                "test": name, "kind": "family", "method": self.method, "n_sims": self.n_sims,
                "n_completed": n, "power": p, "ci_low": ci[0], "ci_high": ci[1],
                "mcse": math.sqrt(p * (1 - p) / n) if n else math.nan,
                "elapsed": self.elapsed, "interrupted": self.interrupted,
            })
        out = pd.concat([df, pd.DataFrame(fam)], ignore_index=True)
        out.insert(2, "correction", self.correction or "none")
        return out

    def summary(self) -> str:
        """Return a printable report: a per-test table and the family-wise lines."""
        corr = {"bh": "Benjamini-Hochberg", "holm": "Holm", "bonferroni": "Bonferroni"}
        lines = [
            f"Monte Carlo power for {len(self.tests)} tests (alpha = {self.alpha:g}, "
            f"correction: {corr.get(self.correction or '', 'none')}, engine: {self.method})",
            f"  formula: {self.formula}",
            f"  design:  {self.design.describe(provenance=False)}",
            *([f"  scenario {self.scenario.name}: {self.scenario.describe()}"]
              if self.scenario is not None else []),
            f"  {self.n_completed} of {self.n_sims} replicates",
            f"  {'test':<28} {'truth':>8} {'power':>6}  {'95% CI':<16} {'bias':>8} "
            f"{'coverage':>8}",
        ]
        for t, r in self.per_test.items():
            lines.append(
                f"  {t:<28} {_fmt(r.truth, 4):>8} {r.power:6.3f}  "
                f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]   {_fmt(r.bias, 4):>8} {_fmt(r.coverage):>8}")
        lines += [
            f"  all tests reject:     {self.power_all:.3f}  95% CI [{self.ci_all[0]:.3f}, "
            f"{self.ci_all[1]:.3f}]",
            f"  at least one rejects: {self.power_any:.3f}  95% CI [{self.ci_any[0]:.3f}, "
            f"{self.ci_any[1]:.3f}]",
        ]
        if self.null_tests:
            lines.append(
                f"  family-wise type-I error over the null terms "
                f"({', '.join(self.null_tests)}): {self.familywise_error:.3f}  95% CI "
                f"[{self.familywise_error_ci[0]:.3f}, {self.familywise_error_ci[1]:.3f}]")
        first = next(iter(self.per_test.values()))
        lines += [
            f"  non-convergence {first.nonconvergence_rate:.3f}; singular fits "
            f"{first.singular_rate:.3f}; failed fits {first.failure_rate:.3f} (first test)",
            f"  elapsed {self.elapsed:.1f} s",
        ]
        if self.interrupted:
            lines.append("  INTERRUPTED: the estimates cover completed replicates only")
        return "\n".join(lines)


def summarise_family(reps: pd.DataFrame, *, tests: Sequence[str], truths: Sequence[float],
                     truth_exact: bool, correction: str | None, common: dict[str, Any],
                     alpha: float) -> MultiPowerResult:
    """Build the :class:`MultiPowerResult` of adjusted replicate records.

    ``common`` holds the fields every :class:`PowerResult` shares (design, formula,
    method, alpha, n_sims, elapsed, interrupted, seed).
    """
    tests = tuple(tests)
    m = len(tests)
    per_test: dict[str, PowerResult] = {}
    cols = list(REPLICATE_COLUMNS)
    for j, (t, truth) in enumerate(zip(tests, truths, strict=True)):
        sub = reps.iloc[j::m][cols].reset_index(drop=True)
        per_test[t] = PowerResult(test=t, truth=truth, truth_exact=truth_exact,
                                  replicates=sub, **common,
                                  **summarise(sub, truth=truth, alpha=alpha))
    rej = reps["reject"].to_numpy(bool).reshape(-1, m)
    n = rej.shape[0]
    k_all, k_any = int(rej.all(axis=1).sum()), int(rej.any(axis=1).sum())
    null = tuple(t for t, v in zip(tests, truths, strict=True) if v == 0.0)
    if null:
        cols_null = [tests.index(t) for t in null]
        k_fw = int(rej[:, cols_null].any(axis=1).sum())
        fw, fw_ci = (k_fw / n if n else math.nan), wilson_interval(k_fw, n)
    else:
        fw, fw_ci = math.nan, (math.nan, math.nan)
    return MultiPowerResult(
        design=common["design"], formula=common["formula"], tests=tests,
        correction=correction, method=common["method"], alpha=alpha, n_sims=common["n_sims"],
        n_completed=n, per_test=per_test,
        power_all=k_all / n if n else math.nan, ci_all=wilson_interval(k_all, n),
        power_any=k_any / n if n else math.nan, ci_any=wilson_interval(k_any, n),
        null_tests=null, familywise_error=fw, familywise_error_ci=fw_ci,
        elapsed=common["elapsed"], interrupted=common["interrupted"], seed=common["seed"],
        replicates=reps, scenario=common.get("scenario"),
    )
