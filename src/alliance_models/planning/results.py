"""The results of power runs: one run, a curve, a sample-size search.

:class:`PowerResult` holds one run's replicates (one row per replicate, columns
``REPLICATE_COLUMNS``) and the diagnosands computed from them (:func:`summarise`);
:class:`PowerCurve`, :class:`SampleSizeResult` and :class:`JointSampleSizeResult` hold
the runs of :func:`~alliance_models.planning.search.power_curve` and
:func:`~alliance_models.planning.search.sample_size` (one field, or therapists and
caseload jointly at minimal cost).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .design import Design

if TYPE_CHECKING:
    from .multitest import MultiPowerResult

__all__ = [
    "REPLICATE_COLUMNS",
    "JointSampleSizeResult",
    "PowerCurve",
    "PowerResult",
    "SampleSizeResult",
    "ScenarioCurve",
    "ScenarioResult",
    "summarise",
    "wilson_interval",
]

REPLICATE_COLUMNS = (
    "rep", "estimate", "se", "df", "p_value", "ci_low", "ci_high", "reject",
    "converged", "singular", "failed", "error",
)
BOOL_COLUMNS = frozenset({"reject", "converged", "singular", "failed"})


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Examples
    --------
    >>> tuple(round(x, 4) for x in wilson_interval(8, 10))
    (0.4902, 0.9433)
    """
    if n <= 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def _fmt(x: float, nd: int = 3) -> str:
    return "NA" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


@dataclass(frozen=True, eq=False)
class PowerResult:
    """The outcome of a Monte Carlo power run.

    Attributes
    ----------
    design : Design
    formula, test : str
        Analysis formula and the coefficient tested (formulaic name).
    method : str
        The engine that ran (``"fast"``, ``"mixed"``, ``"gee"``, ``"ols"``, ``"bayes"``
        or ``"custom"``).
    alpha : float
        Two-sided level (for ``"bayes"``: 1 - credible-interval probability).
    n_sims, n_completed : int
        Replicates requested and completed (fewer after an interruption).
    power : float
        Share of completed replicates that reject (Bayes: assurance). Failed fits
        count as non-rejections.
    ci : (float, float)
        95% Wilson interval for ``power``; ``mcse`` its Monte Carlo standard error.
    truth : float
        True value of the tested coefficient on the analysis scale (NaN when not
        defined; see the module docstring); ``truth_exact`` whether it is exact.
    bias, rmse, coverage, mean_se, empirical_sd : float
        Over replicates that produced an estimate; ``coverage`` of the ``1 - alpha``
        interval.
    type_s_rate : float
        Among rejecting replicates, the share whose estimate has the wrong sign.
    nonconvergence_rate, singular_rate, failure_rate : float
        Shares of completed replicates (a failed fit also counts as not converged).
    elapsed : float
        Seconds of wall time.
    interrupted : bool
        True when the run stopped early (Ctrl-C); the CI covers completed replicates.
    seed : int or None
        Root seed entropy (to reproduce a run started with ``seed=None``).
    replicates : DataFrame
        One row per replicate (estimate, se, df, p_value, CI, reject, flags).
    assurance_rule : str or None
        For ``method="bayes"``: the rule that counted a replicate as a success.
    scenario : Scenario or None
        The robustness scenario the design was simulated under (None: as designed).
    """

    design: Design
    formula: str
    test: str
    method: str
    alpha: float
    n_sims: int
    n_completed: int
    power: float
    ci: tuple[float, float]
    mcse: float
    truth: float
    truth_exact: bool
    bias: float
    rmse: float
    coverage: float
    mean_se: float
    empirical_sd: float
    type_s_rate: float
    nonconvergence_rate: float
    singular_rate: float
    failure_rate: float
    elapsed: float
    interrupted: bool
    seed: int | None
    replicates: pd.DataFrame
    assurance_rule: str | None = None
    scenario: Any = None

    def to_frame(self) -> pd.DataFrame:
        """One-row data frame of the headline numbers and diagnosands."""
        row = {
            "test": self.test, "method": self.method, "n_sims": self.n_sims,
            "n_completed": self.n_completed, "power": self.power, "ci_low": self.ci[0],
            "ci_high": self.ci[1], "mcse": self.mcse, "truth": self.truth, "bias": self.bias,
            "rmse": self.rmse, "coverage": self.coverage, "mean_se": self.mean_se,
            "empirical_sd": self.empirical_sd, "type_s_rate": self.type_s_rate,
            "nonconvergence_rate": self.nonconvergence_rate,
            "singular_rate": self.singular_rate, "failure_rate": self.failure_rate,
            "elapsed": self.elapsed, "interrupted": self.interrupted,
        }
        return pd.DataFrame([row])

    def summary(self) -> str:
        """Return a printable report of the run."""
        what = "assurance" if self.method == "bayes" else "power"
        lines = [
            f"Monte Carlo {what} for {self.test!r} (alpha = {self.alpha:g}, engine: "
            f"{self.method})",
            f"  formula: {self.formula}",
            f"  design:  {self.design.describe(provenance=False)}"
            + ("  (where the values came from: design.provenance)" if self.design.provenance
               else ""),
            *([f"  scenario {self.scenario.name}: {self.scenario.describe()}"]
              if self.scenario is not None else []),
            f"  {what}: {self.power:.3f}  95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}]  "
            f"(MC SE {self.mcse:.3f}; {self.n_completed} of {self.n_sims} replicates)",
        ]
        if self.assurance_rule:
            lines.append(f"  rule: {self.assurance_rule}")
        lines += [
            f"  truth {_fmt(self.truth, 4)}"
            f"{'' if self.truth_exact or math.isnan(self.truth) else ' (projection)'}"
            f"{' (not defined for this family and method)' if math.isnan(self.truth) else ''}; "
            f"bias {_fmt(self.bias, 4)}; RMSE {_fmt(self.rmse, 4)}; "
            f"coverage {_fmt(self.coverage)}; type-S {_fmt(self.type_s_rate)}",
            f"  mean SE {_fmt(self.mean_se, 4)} vs empirical SD {_fmt(self.empirical_sd, 4)}",
            f"  non-convergence {self.nonconvergence_rate:.3f}; singular fits "
            f"{self.singular_rate:.3f}; failed fits {self.failure_rate:.3f}",
            f"  elapsed {self.elapsed:.1f} s",
        ]
        if self.interrupted:
            lines.append("  INTERRUPTED: the estimate covers completed replicates only")
        return "\n".join(lines)


def summarise(reps: pd.DataFrame, *, truth: float, alpha: float) -> dict[str, Any]:
    """Compute the diagnosands of a set of replicate records (numpy arithmetic only)."""
    n = len(reps)
    k = int(reps["reject"].sum())
    p = k / n if n else math.nan
    ok = ~reps["failed"].to_numpy(bool)
    est = reps["estimate"].to_numpy(float)[ok]
    lo, hi = reps["ci_low"].to_numpy(float)[ok], reps["ci_high"].to_numpy(float)[ok]
    rej = reps["reject"].to_numpy(bool)[ok]
    has_truth = math.isfinite(truth)
    out = {
        "n_completed": n,
        "power": p,
        "ci": wilson_interval(k, n),
        "mcse": math.sqrt(p * (1 - p) / n) if n else math.nan,
        "bias": float(np.mean(est - truth)) if has_truth and est.size else math.nan,
        "rmse": float(np.sqrt(np.mean((est - truth) ** 2))) if has_truth and est.size
        else math.nan,
        "coverage": float(np.mean((lo <= truth) & (truth <= hi))) if has_truth and est.size
        else math.nan,
        "mean_se": float(np.mean(reps["se"].to_numpy(float)[ok])) if est.size else math.nan,
        "empirical_sd": float(np.std(est, ddof=1)) if est.size > 1 else math.nan,
        "type_s_rate": float(np.mean(np.sign(est[rej]) != np.sign(truth)))
        if has_truth and truth != 0 and rej.any() else math.nan,
        "nonconvergence_rate": float(1 - reps["converged"].mean()) if n else math.nan,
        "singular_rate": float(reps["singular"].mean()) if n else math.nan,
        "failure_rate": float(reps["failed"].mean()) if n else math.nan,
    }
    return out


@dataclass(frozen=True, eq=False)
class PowerCurve:
    """Power over a range of one design quantity.

    Attributes
    ----------
    vary : str
        The :class:`Design` field varied.
    values : tuple
        Its values, in the order run.
    results : tuple of PowerResult or MultiPowerResult
        One result per value (same seed: common random numbers); ``MultiPowerResult``
        when several tests were run together.
    elapsed : float
        Seconds of wall time.
    """

    vary: str
    values: tuple[Any, ...]
    results: tuple[PowerResult, ...] | tuple[MultiPowerResult, ...]
    elapsed: float

    def to_frame(self) -> pd.DataFrame:
        """One row per value (per value and test, with several tests): power, CI, ..."""
        rows = []
        for v, r in zip(self.values, self.results, strict=True):
            f = r.to_frame()
            f.insert(0, self.vary, [v] * len(f))
            rows.append(f)
        return pd.concat(rows, ignore_index=True)

    def _series(self) -> list[tuple[str, list[float], list[float], list[float]]]:
        """(label, power, ci low, ci high) of each curve: one, or each test, all, any."""
        r0 = self.results[0]
        if isinstance(r0, PowerResult):
            rs: list[Any] = list(self.results)
            return [(r0.test, [r.power for r in rs], [r.ci[0] for r in rs],
                     [r.ci[1] for r in rs])]
        out = []
        for of in (*r0.tests, "all", "any"):
            pc = [r.power_of(of) for r in self.results]  # type: ignore[union-attr]
            label = (f"{of} (all tests reject)" if of == "all" else
                     "any (at least one rejects)" if of == "any" else of)
            out.append((label, [p for p, _ in pc], [c[0] for _, c in pc],
                        [c[1] for _, c in pc]))
        return out

    def summary(self) -> str:
        """Printable table of the curve."""
        r0 = self.results[0]
        if not isinstance(r0, PowerResult):
            corr = r0.correction or "no"
            head = (f"Power curve for {len(r0.tests)} tests over {self.vary} ({corr} "
                    f"correction, engine {r0.method}, {r0.n_sims} replicates per point, "
                    f"alpha {r0.alpha:g})\n  formula: {r0.formula}\n")
            series = self._series()
            lines = [f"  {self.vary:>24}  " + "  ".join(f"{lab.split(' ')[0]:>18}"
                                                      for lab, *_ in series)]
            for i, v in enumerate(self.values):
                lines.append(f"  {v!s:>24}  " + "  ".join(
                    f"{pw[i]:.3f} [{lo[i]:.2f},{hi[i]:.2f}]" for _, pw, lo, hi in series))
            return head + "\n".join(lines) + f"\n  elapsed {self.elapsed:.1f} s"
        head = (f"Power curve for {r0.test!r} over {self.vary} (engine {r0.method}, "
                f"{r0.n_sims} replicates per point, alpha {r0.alpha:g})\n"
                f"  formula: {r0.formula}\n")
        lines = [f"  {self.vary:>24}  power   95% CI            bias     coverage  "
                 "non-conv  singular"]
        for v, r in zip(self.values, self.results, strict=True):
            lines.append(
                f"  {v!s:>24}  {r.power:.3f}  [{r.ci[0]:.3f}, {r.ci[1]:.3f}]  "
                f"{_fmt(r.bias, 4):>7}  {_fmt(r.coverage):>8}  {r.nonconvergence_rate:8.3f}"
                f"  {r.singular_rate:8.3f}")
        return head + "\n".join(lines) + f"\n  elapsed {self.elapsed:.1f} s"

    def plot(self, ax: Any = None, *, target: float | None = 0.8) -> Any:
        """Draw power against the varied quantity with its 95% Wilson band.

        Uses :func:`alliance_models.plots.plot_power_curve`.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw.
        target : float or None, default 0.8
            Reference line.

        Returns
        -------
        matplotlib Axes
        """
        from ..plots import plot_power_curve

        r0 = self.results[0]
        series = self._series()
        many = len(series) > 1
        what = (f"{len(series) - 2} tests ({r0.correction or 'no'} correction)" if many
                else series[0][0])
        for i, (label, pw, lo, hi) in enumerate(series):
            ax = plot_power_curve(
                np.asarray(self.values, dtype=float), pw, lo, hi, ax=ax,
                target=target if i == len(series) - 1 else None,
                xlabel=self.vary.replace("_", " "), label=label if many else None,
                title=f"{what}: {r0.n_sims} simulated trials per point ({r0.method} engine)",
            )
        if many:
            ax.legend(fontsize="small")
        if r0.method == "bayes":
            ax.set_ylabel("assurance")
        return ax


@dataclass(frozen=True, eq=False)
class SampleSizeResult:
    """The smallest design size that reaches a target power.

    Attributes
    ----------
    vary : str
        The field searched (``"therapists"``, ``"patients_per_therapist"``, ...).
    target : float
        Target power.
    target_of : str or None
        With several tests, which power was targeted (``"all"``, ``"any"`` or a test);
        None for one test.
    value : int or None
        Smallest evaluated value whose Monte Carlo power reached the target (None when
        even ``hi`` fell short).
    power, ci : float, (float, float)
        Power at ``value`` with its 95% Wilson CI.
    smooth_value, smooth_ci : float, (float, float)
        The value where a logistic fit of power on log(size), over the evaluations
        within a factor of 2 of ``value``, crosses the target, with a 95% delta-method
        interval (its variance multiplied by the number of evaluations used, a
        conservative allowance for the correlation that common random numbers induce;
        lack of fit is ignored). NaN when the fit is not possible.
    evaluations : DataFrame
        Every evaluation in order: value, power, CI, replicates (with several tests,
        also ``power[<test>]``, ``power[all]`` and ``power[any]``).
    results : tuple of PowerResult or MultiPowerResult
        The underlying runs.
    elapsed : float
    """

    vary: str
    target: float
    value: int | None
    power: float
    ci: tuple[float, float]
    smooth_value: float
    smooth_ci: tuple[float, float]
    evaluations: pd.DataFrame
    results: tuple[PowerResult, ...] | tuple[MultiPowerResult, ...]
    elapsed: float
    target_of: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """Return the evaluations made (one row per value tried)."""
        return self.evaluations.copy()

    def summary(self) -> str:
        """Printable report of the search."""
        of = _target_phrase(self.target_of)
        if self.value is None:
            head = (f"target power {self.target:g}{of} not reached for {self.vary} up to "
                    f"{int(self.evaluations[self.vary].max())}")
        else:
            head = (f"smallest {self.vary} reaching power {self.target:g}{of}: {self.value} "
                    f"(power {self.power:.3f}, 95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}])")
        smooth = (f"logistic fit over the evaluations: {self.vary} = {_fmt(self.smooth_value, 1)}"
                  f" (95% CI {_fmt(self.smooth_ci[0], 1)} to {_fmt(self.smooth_ci[1], 1)})")
        ev = "\n".join(f"  {int(r[self.vary]):>6}  power {r['power']:.3f}  "
                       f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                       for _, r in self.evaluations.iterrows())
        return f"{head}\n{smooth}\nevaluations ({len(self.evaluations)}):\n{ev}\n" \
               f"elapsed {self.elapsed:.1f} s"


def _target_phrase(target_of: str | None) -> str:
    """Which power a search targeted, as a phrase for its summary ("" for one test)."""
    if target_of is None:
        return ""
    return (" (all tests rejecting)" if target_of == "all" else
            " (at least one test rejecting)" if target_of == "any" else
            f" (of {target_of!r})")


@dataclass(frozen=True, eq=False)
class JointSampleSizeResult:
    """The cheapest (therapists, patients per therapist) pair that reaches a target power.

    Attributes
    ----------
    vary : ("therapists", "patients_per_therapist")
        The fields searched.
    target : float
        Target power.
    cost_rates : dict
        ``{"therapist": c_t, "patient": c_p}``; a pair costs
        ``c_t * therapists + c_p * therapists * patients_per_therapist``.
    budget : float or None
        The most a pair could cost.
    therapists, patients_per_therapist : int or None
        The optimum: the evaluated pair of least cost whose Monte Carlo power reached the
        target (None when none did).
    cost : float
        Its cost (NaN without an optimum).
    power, ci : float, (float, float)
        Its power with the 95% Wilson interval.
    evaluations : DataFrame
        Every pair evaluated, in order: ``therapists``, ``patients_per_therapist``,
        ``power``, ``ci_low``, ``ci_high`` (Wilson), ``n_completed``, ``cost``,
        ``reached``.
    frontier : DataFrame
        One row per caseload on the grid: the fewest therapists that reach the target
        (``<NA>`` when none within the range, or none that could beat the best cost),
        their power, CI and cost, and ``status`` (``"reached"``, ``"not reached up to
        ..."``, ``"cannot beat cost ..."``, ``"over budget"``).
    results : tuple of PowerResult
        The underlying runs, in the order of ``evaluations``.
    closed_form : bool
        Whether :func:`~alliance_models.planning.analytic.design_power` guided the search.
    elapsed : float
    target_of : str or None
        With several tests, which power was targeted (``"all"``, ``"any"`` or a test);
        None for one test.
    """

    vary: tuple[str, str]
    target: float
    cost_rates: dict[str, float]
    budget: float | None
    therapists: int | None
    patients_per_therapist: int | None
    cost: float
    power: float
    ci: tuple[float, float]
    evaluations: pd.DataFrame
    frontier: pd.DataFrame
    results: tuple[PowerResult, ...]
    closed_form: bool
    elapsed: float
    target_of: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """Return the evaluations made (one row per pair tried)."""
        return self.evaluations.copy()

    def summary(self) -> str:
        """Printable report of the search: the optimum, the frontier and the evaluations."""
        rates = (f"cost {self.cost_rates['therapist']:g} per therapist + "
                 f"{self.cost_rates['patient']:g} per patient"
                 + (f", budget {self.budget:g}" if self.budget is not None else ""))
        of = _target_phrase(self.target_of)
        if self.therapists is None:
            head = (f"target power {self.target:g}{of} not reached by any pair evaluated "
                    f"({rates})")
        else:
            head = (f"cheapest design reaching power {self.target:g}{of}: {self.therapists} "
                    f"therapists x {self.patients_per_therapist} patients, cost "
                    f"{self.cost:g} (power {self.power:.3f}, 95% CI [{self.ci[0]:.3f}, "
                    f"{self.ci[1]:.3f}]; {rates})")
        fr = "\n".join(
            f"  {int(r['patients_per_therapist']):>8}  "
            + (f"{int(r['therapists']):>10}  power {r['power']:.3f}  cost {r['cost']:g}"
               if r["status"] == "reached" else f"{'-':>10}  {r['status']}")
            for _, r in self.frontier.iterrows())
        ev = "\n".join(
            f"  {int(r['therapists']):>10} x {int(r['patients_per_therapist']):<4} power "
            f"{r['power']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  cost {r['cost']:g}"
            for _, r in self.evaluations.iterrows())
        guide = " (closed form guided the search)" if self.closed_form else ""
        return (f"{head}\nfrontier: fewest therapists per caseload{guide}\n"
                f"  caseload  therapists\n{fr}\n"
                f"evaluations ({len(self.evaluations)} power runs):\n{ev}\n"
                f"elapsed {self.elapsed:.1f} s")

    def plot(self, ax: Any = None) -> Any:
        """Draw the evaluated pairs, the frontier and the optimum with its iso-cost line.

        Uses :func:`alliance_models.plots.plot_cost_frontier`.

        Returns
        -------
        matplotlib Axes
        """
        from ..plots import plot_cost_frontier

        opt = None
        if self.therapists is not None and self.patients_per_therapist is not None:
            opt = (self.therapists, self.patients_per_therapist)
        return plot_cost_frontier(self.evaluations, self.frontier, optimum=opt,
                                  cost_rates=self.cost_rates, target=self.target, ax=ax)


def _paired_difference(ref: pd.DataFrame, other: pd.DataFrame) -> tuple[float, float]:
    """Power difference ``other - ref`` over their common replicates, with its paired SE.

    Scenario runs share their seeds (common random numbers), so replicate ``i`` of two
    runs is a matched pair: with ``b`` pairs rejected by ``ref`` only and ``c`` by
    ``other`` only out of ``n``, the difference is ``(c - b) / n`` and its standard error
    ``sqrt(b + c - (c - b)**2 / n) / n`` (McNemar's).
    """
    both = ref[["rep", "reject"]].merge(other[["rep", "reject"]], on="rep",
                                        suffixes=("_ref", "_other"))
    n = len(both)
    if n == 0:
        return math.nan, math.nan
    r0 = both["reject_ref"].to_numpy(bool)
    r1 = both["reject_other"].to_numpy(bool)
    b, c = int(np.sum(r0 & ~r1)), int(np.sum(~r0 & r1))
    return (c - b) / n, math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n


@dataclass(frozen=True, eq=False)
class ScenarioResult:
    """Power of one design under several robustness scenarios, side by side.

    From :func:`~alliance_models.power` with ``scenarios=``. Every scenario ran with the
    same seed (common random numbers), so a difference between two scenarios reflects
    their perturbations; its Monte Carlo SE is the paired (McNemar) one. For the type-I
    error rate under each scenario, run the design with the tested effect set to 0
    (``design.replace(effects={...: 0})``): the table then reports ``type_i``.

    Attributes
    ----------
    scenarios : mapping of str to Scenario
        The scenarios, in the order run (the first is the reference, normally the
        unperturbed ``"baseline"``).
    results : mapping of str to PowerResult
        One power run per scenario (``results["realistic"].replicates`` ...).
    elapsed : float
        Seconds of wall time.
    """

    scenarios: Mapping[str, Any]
    results: Mapping[str, PowerResult]
    elapsed: float

    @property
    def names(self) -> tuple[str, ...]:
        """The scenario names, in the order run."""
        return tuple(self.results)

    def __getitem__(self, name: str) -> PowerResult:
        """Return the power run of scenario ``name``."""
        if name not in self.results:
            raise KeyError(f"no scenario {name!r}; scenarios: {', '.join(self.results)}")
        return self.results[name]

    def to_frame(self) -> pd.DataFrame:
        """Return one row per scenario: power, CI, paired difference, bias, coverage ...

        Also the type-I error rate (``type_i``, when the tested coefficient is null in
        the design) and the fit diagnostics; ``diff`` / ``diff_se`` are the power
        difference to the first (reference) scenario and its paired Monte Carlo SE.
        """
        ref = self.results[self.names[0]]
        rows = []
        for name, res in self.results.items():
            diff, diff_se = _paired_difference(ref.replicates, res.replicates)
            row = res.to_frame().iloc[0].to_dict()
            rows.append({
                "scenario": name, "perturbations": self.scenarios[name].describe(),
                "power": res.power, "ci_low": res.ci[0], "ci_high": res.ci[1],
                "mcse": res.mcse, "diff": diff, "diff_se": diff_se,
                "type_i": res.power if res.truth == 0 else math.nan,
                **{k: row[k] for k in ("truth", "bias", "rmse", "coverage", "mean_se",
                                       "empirical_sd", "type_s_rate",
                                       "nonconvergence_rate", "singular_rate",
                                       "failure_rate", "n_completed", "elapsed")},
            })
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Printable side-by-side table (power with its 95% Wilson CI per scenario)."""
        ref_name = self.names[0]
        r0 = self.results[ref_name]
        null = all(r.truth == 0 for r in self.results.values())
        what = "type-I error" if null else ("assurance" if r0.method == "bayes" else "power")
        df = self.to_frame()
        width = max(12, *(len(n) for n in self.names))
        lines = [
            f"Monte Carlo {what} for {r0.test!r} under {len(self.names)} scenarios "
            f"(alpha = {r0.alpha:g}, engine: {r0.method}, {r0.n_sims} replicates each, "
            "same seed in every scenario)",
            f"  formula: {r0.formula}",
            f"  design:  {r0.design.describe()}",
            f"  {'scenario':<{width}}  {what[:12]:>12}  95% CI            "
            f"diff vs {ref_name} (SE)  bias     coverage  failed",
        ]
        for _, row in df.iterrows():
            diff = ("" if row["scenario"] == ref_name else
                    f"{row['diff']:+.3f} ({row['diff_se']:.3f})")
            lines.append(
                f"  {row['scenario']:<{width}}  {row['power']:>12.3f}  "
                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]  {diff:>22}  "
                f"{_fmt(row['bias'], 4):>7}  {_fmt(row['coverage']):>8}  "
                f"{row['failure_rate']:6.3f}")
        lines.append("  perturbations:")
        lines += [f"    {name}: {sc.describe()}" for name, sc in self.scenarios.items()]
        drop = r0.design.dropout
        if not (max(drop) if isinstance(drop, tuple) else drop) and any(
                sc.dropout_odds_ratio != 1 for sc in self.scenarios.values()):
            lines.append("  note: the design has no dropout, so dropout_odds_ratio has no "
                         "effect")
        if r0.truth != 0 and math.isfinite(r0.truth):
            lines.append(f"  truth {_fmt(r0.truth, 4)} (the unperturbed coefficient in every "
                         "scenario: attenuation shows as bias)")
        lines.append(f"  elapsed {self.elapsed:.1f} s")
        return "\n".join(lines)

    def plot(self, ax: Any = None, *, target: float | None = 0.8) -> Any:
        """Draw power per scenario with its 95% Wilson interval.

        Uses :func:`alliance_models.plots.plot_scenario_power`.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw.
        target : float or None, default 0.8
            Reference line.

        Returns
        -------
        matplotlib Axes
        """
        from ..plots import plot_scenario_power

        r0 = self.results[self.names[0]]
        res = list(self.results.values())
        return plot_scenario_power(
            list(self.names), [r.power for r in res], [r.ci[0] for r in res],
            [r.ci[1] for r in res], ax=ax, target=target,
            xlabel="assurance" if r0.method == "bayes" else "power",
            title=f"{r0.test}: {r0.n_sims} simulated trials per scenario ({r0.method} engine)")


@dataclass(frozen=True, eq=False)
class ScenarioCurve:
    """Power curves of one design under several robustness scenarios.

    From :func:`~alliance_models.power_curve` with ``scenarios=``: one
    :class:`PowerCurve` per scenario, every point with the same seed.

    Attributes
    ----------
    scenarios : mapping of str to Scenario
        The scenarios, in the order run.
    curves : mapping of str to PowerCurve
        One curve per scenario.
    elapsed : float
        Seconds of wall time.
    """

    scenarios: Mapping[str, Any]
    curves: Mapping[str, PowerCurve]
    elapsed: float

    @property
    def vary(self) -> str:
        """The :class:`Design` field varied."""
        return next(iter(self.curves.values())).vary

    @property
    def values(self) -> tuple[Any, ...]:
        """Its values, in the order run."""
        return next(iter(self.curves.values())).values

    def __getitem__(self, name: str) -> PowerCurve:
        """Return the power curve of scenario ``name``."""
        if name not in self.curves:
            raise KeyError(f"no scenario {name!r}; scenarios: {', '.join(self.curves)}")
        return self.curves[name]

    def to_frame(self) -> pd.DataFrame:
        """One row per scenario and value (long format)."""
        parts = [c.to_frame().assign(scenario=name) for name, c in self.curves.items()]
        df = pd.concat(parts, ignore_index=True)
        first = ["scenario", self.vary]
        return df[[*first, *[c for c in df.columns if c not in first]]]

    def summary(self) -> str:
        """Printable table: power (95% CI) per value and scenario."""
        r0 = next(iter(self.curves.values())).results[0]
        cells = {name: [f"{r.power:.3f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}]" for r in c.results]
                 for name, c in self.curves.items()}
        width = {name: max(20, len(name)) for name in self.curves}
        head = (f"Power curves for {r0.test!r} over {self.vary} under {len(self.curves)} "
                f"scenarios (engine {r0.method}, {r0.n_sims} replicates per point, "
                f"alpha {r0.alpha:g}, same seed everywhere)\n  formula: {r0.formula}\n")
        lines = [f"  {self.vary:>24}  " + "  ".join(f"{n:>{width[n]}}" for n in self.curves)]
        for i, v in enumerate(self.values):
            lines.append(f"  {v!s:>24}  " + "  ".join(
                f"{cells[n][i]:>{width[n]}}" for n in self.curves))
        lines.append("  perturbations:")
        lines += [f"    {name}: {sc.describe()}" for name, sc in self.scenarios.items()]
        return head + "\n".join(lines) + f"\n  elapsed {self.elapsed:.1f} s"

    def plot(self, ax: Any = None, *, target: float | None = 0.8) -> Any:
        """Draw one power curve per scenario (with 95% Wilson bands) on one Axes.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw.
        target : float or None, default 0.8
            Reference line.

        Returns
        -------
        matplotlib Axes
        """
        from ..plots import plot_power_curve

        r0 = next(iter(self.curves.values())).results[0]
        for i, (name, c) in enumerate(self.curves.items()):
            ax = plot_power_curve(
                np.asarray(c.values, dtype=float), [r.power for r in c.results],
                [r.ci[0] for r in c.results], [r.ci[1] for r in c.results], ax=ax,
                target=target if i == 0 else None, xlabel=self.vary.replace("_", " "),
                label=name,
                title=f"{r0.test}: {r0.n_sims} simulated trials per point and scenario "
                      f"({r0.method} engine)")
        ax.legend(title="scenario")
        if r0.method == "bayes":
            ax.set_ylabel("assurance")
        return ax
