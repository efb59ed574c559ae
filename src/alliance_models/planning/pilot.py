"""Planning from a pilot: the :class:`~alliance_models.Design` quantities a pilot shows.

:meth:`Design.from_fit <alliance_models.Design.from_fit>` and
:meth:`Design.from_data <alliance_models.Design.from_data>` delegate here. The functions
return the keyword arguments of a design and its provenance (field -> where the value
came from); ``design.py`` builds the :class:`~alliance_models.Design` itself (this module
does not import it, so the two cannot form an import cycle).

The estimates invert the simulator's mapping (see :mod:`alliance_models.planning.design`
and :mod:`alliance_models.planning.simulate`):

* **ICCs.** Gaussian: ``icc_therapist = s2_t / (s2_t + s2_p + s2_e)`` and
  ``icc_patient = s2_p / (...)`` from the random-intercept variances of the fit and its
  residual variance ``s2_e``. Binomial (logit): the session level is the latent logistic
  variance ``pi^2 / 3``, so ``icc = tau / (tau_t + tau_p + pi^2 / 3)``.
* **Effects.** The fit's linear predictor is rewritten in the design's standardised
  predictors: every fitted column ``x_v`` is ``m_v + s_v * z_v`` (``m_v`` its pilot mean
  and ``s_v`` the pilot SD of the variable at its level: alliance over sessions, age and
  patient-level autonomy over patients, therapist-level autonomy over therapists), so a
  coefficient ``b`` of ``x_1 : ... : x_k`` contributes ``b * prod(m) * prod(s)`` to
  every sub-term (e.g. raw ``age`` with ``alliance:age`` moves the alliance slope to the
  mean age). The standardised effect is the sum over columns divided by the residual SD
  of the design's scale: ``sqrt(s2_t + s2_p + s2_e)`` (gaussian) or
  ``sqrt(tau_t + tau_p + pi^2 / 3)`` (binomial, :func:`~alliance_models.planning.simulate
  .latent_scale`). ``alliance_pmc`` / ``alliance_cwc`` (within-patient) and
  ``alliance_pm`` (between-patient) are slopes of the one alliance slope the design
  has; given both, their precision-weighted mean (generalised least squares with the
  fit's covariance) is used and both are stated. Binomial: ``baseline_adherence`` is the
  inverse logit of the intercept at the predictors' means in the control arm.
  Standard errors use the fit's covariance of the fixed effects, with the pilot's means,
  SDs and variance components taken as known.
* **Predictors.** Alliance shares ``(therapist, patient, session)`` from a REML
  variance decomposition ``alliance ~ 1 + (1 | therapist/patient)``; the skew-normal
  shape from the sample skewness of alliance (the simulator's skewness is
  ``g(shape) * (c_p^1.5 + c_s^1.5)``, ``g`` the skew-normal's standardised skewness);
  age as the truncated normal on the observed range whose mean and SD match the
  patients' ages; autonomy on the level where it is constant.
* **Layout.** Therapists, caseloads (one number if all are equal, else
  ``("poisson", mean)`` or ``("negbin", mean, dispersion)`` by moments of the shifted
  counts, or the observed list with ``caseloads="observed"``), sessions and dropout:
  when at least half of the patients have the most sessions seen (``S``), sessions is
  ``S`` and dropout the share with fewer; otherwise sessions is a distribution by
  moments and dropout is not separable from it (0, stated).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from ..errors import AllianceModelsWarning, DesignError

__all__ = ["design_fields_from_data", "design_fields_from_fit"]

LATENT_VAR = math.pi**2 / 3
PILOT_NOTE = ("a pilot's effect sizes are noisy: consider a smaller, clinically relevant "
              "value")
#: columns that stand for the design's alliance: flavour of the slope they carry
_ALLIANCE_COLUMNS = {"alliance_pmc": "within", "alliance_cwc": "within",
                     "alliance_pm": "between"}
_MODERATORS = ("age", "autonomy")
_ARM_NAMES = ("arm", "C(arm)[T.1]")


# ------------------------------------------------------------------------------ helpers
def _factors(name: str) -> list[str]:
    """Split a formulaic column name at the ``:`` outside brackets and parentheses."""
    out, depth, cur = [], 0, ""
    for ch in name:
        depth += (ch in "([") - (ch in ")]")
        if ch == ":" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _require(data: pd.DataFrame, cols: Sequence[str], where: str) -> None:
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise DesignError(
            f"{where} needs the column(s) {', '.join(map(repr, missing))} (the prepared long "
            f"format of am.prepare / am.simulate); available: "
            f"{', '.join(map(str, data.columns))}"
        )


def _unit_values(data: pd.DataFrame, col: str, unit: str) -> pd.Series:
    """One value of ``col`` per ``unit`` (patient or therapist), checked constant."""
    g = data.groupby(unit, sort=False)[col]
    spread = g.nunique(dropna=False)
    bad = spread[spread > 1]
    if len(bad):
        first = bad.index[0]
        vals = data.loc[data[unit] == first, col].unique()
        raise DesignError(
            f"column {col!r} must be constant within {unit} for a Design (a {unit}-level "
            f"variable); {unit} {first!r} has {len(vals)} values, e.g. "
            f"{', '.join(map(str, vals[:3]))} ({len(bad)} {unit}(s) affected)"
        )
    return g.first()


def _finite(per_unit: pd.Series, col: str, unit: str) -> np.ndarray:
    """Return a unit-level column as floats, checked finite (3 units at least)."""
    x = pd.to_numeric(per_unit, errors="coerce").to_numpy(dtype=float)
    bad = per_unit.index[~np.isfinite(x)]
    if len(bad):
        shown = ", ".join(repr(b) for b in bad[:5])
        raise DesignError(
            f"column {col!r} must be a finite number for every {unit}; {len(bad)} {unit}(s) "
            f"have a missing or non-numeric value ({shown}{' ...' if len(bad) > 5 else ''},"
            f" e.g. {per_unit[bad[0]]}): drop them or fill them in")
    if x.size < 3:
        raise DesignError(f"column {col!r} needs values for at least 3 {unit}s, got {x.size}")
    return x


def _constant_within(data: pd.DataFrame, col: str, unit: str) -> bool:
    return bool((data.groupby(unit, sort=False)[col].nunique(dropna=False) <= 1).all())


def _count_spec(counts: np.ndarray, what: str, per: str) -> tuple[Any, str]:
    """Return a Design count (int or distribution) for observed counts ``>= 1``, and its text."""
    counts = np.asarray(counts, dtype=float)
    mean = float(counts.mean())
    if np.all(counts == counts[0]):
        return int(counts[0]), f"all {len(counts)} {per} have {int(counts[0])}"
    var = float(counts.var(ddof=1))
    shifted = mean - 1  # the simulator draws 1 + Poisson(mean - 1) or 1 + NB(mean - 1)
    text = (f"{len(counts)} observed {what} (mean {_fmt(mean)}, SD {_fmt(math.sqrt(var))}, "
            f"range {int(counts.min())}-{int(counts.max())})")
    if shifted <= 0 or var <= shifted:
        return ("poisson", round(mean, 3)), f"1 + Poisson(mean - 1) by moments of {text}"
    k = shifted**2 / (var - shifted)
    return ("negbin", round(mean, 3), round(k, 3)), (
        f"1 + negative binomial by moments of {text}; dispersion {_fmt(k)}")


def _sn_skewness(delta: float) -> float:
    """Standardised skewness of a skew-normal with ``delta = shape / sqrt(1 + shape^2)``."""
    b = delta * math.sqrt(2 / math.pi)
    return (4 - math.pi) / 2 * b**3 / (1 - b * b) ** 1.5


#: the largest skew-normal shape a pilot can give (skewness 0.98 of the limit 0.995)
_SHAPE_MAX = 20.0
_SN_MAX = _sn_skewness(_SHAPE_MAX / math.sqrt(1 + _SHAPE_MAX**2))


def _sn_shape(skewness: float) -> float:
    """Return the skew-normal shape whose standardised skewness is ``skewness``."""
    if skewness == 0:
        return 0.0
    d = optimize.brentq(lambda x: _sn_skewness(x) - skewness, -1 + 1e-12, 1 - 1e-12,
                        xtol=1e-12)
    return d / math.sqrt(1 - d * d)


def _truncnorm_for(mean: float, sd: float, lo: float, hi: float) -> tuple[float, float] | None:
    """(mu, sigma) of the normal that, truncated to [lo, hi], has this mean and SD."""
    def resid(p: np.ndarray) -> np.ndarray:
        mu, sig = p[0], math.exp(p[1])
        m, v = stats.truncnorm.stats((lo - mu) / sig, (hi - mu) / sig, loc=mu, scale=sig,
                                     moments="mv")
        return np.array([(float(m) - mean) / sd, (math.sqrt(float(v)) - sd) / sd])

    sol = optimize.least_squares(resid, [mean, math.log(sd)], xtol=1e-12, ftol=1e-12)
    if not sol.success or np.max(np.abs(sol.fun)) > 1e-6:
        return None
    return float(sol.x[0]), float(math.exp(sol.x[1]))


def _quiet_fit(formula: str, data: pd.DataFrame, **kw: Any) -> tuple[Any, list[str]]:
    """``fit_mixed`` with its warnings collected (they go into the provenance)."""
    from ..models.mixed import fit_mixed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_mixed(formula, data, **kw)
    return fit, [f"{w.category.__name__}: {w.message}" for w in caught]


# ------------------------------------------------------------------- predictors, layout
class _Pilot:
    """The design quantities of a pilot data frame (layout and predictor distributions).

    ``fields`` / ``provenance`` hold the estimates; ``scales`` maps each variable to the
    ``(mean, sd)`` that standardise it the way the simulator's ``z`` does.
    """

    def __init__(self, data: pd.DataFrame, *, caseloads: str, source: str) -> None:
        if not isinstance(data, pd.DataFrame):
            raise DesignError(f"pilot data must be a pandas DataFrame, got "
                              f"{type(data).__name__}")
        _require(data, ["therapist", "patient"], source)
        if "alliance" not in data.columns:
            if {"alliance_pm", "alliance_pmc"} <= set(data.columns):
                data = data.assign(alliance=data["alliance_pm"] + data["alliance_pmc"])
            else:
                _require(data, ["alliance"], source)
        if len(data) == 0:
            raise DesignError(f"{source}: the pilot data have no rows")
        self.data = data
        self.fields: dict[str, Any] = {}
        self.provenance: dict[str, str] = {}
        self.scales: dict[str, tuple[float, float]] = {}
        self.notes: list[str] = []
        self.source = source
        self._layout(caseloads)
        self._alliance()
        self._moderators()
        self._arm()

    def put(self, name: str, value: Any, text: str) -> None:
        self.fields[name] = value
        self.provenance[name] = text

    def _layout(self, caseloads: str) -> None:
        d = self.data
        ther_of = _unit_values(d, "therapist", "patient")  # nested: one therapist each
        caseload = ther_of.groupby(ther_of, sort=False).size().to_numpy()
        n_t = int(caseload.size)
        if n_t < 2:
            raise DesignError(f"{self.source}: the pilot has {n_t} therapist; a Design "
                              "needs at least 2")
        self.put("therapists", n_t, f"{n_t} therapists in the pilot data")
        if caseloads not in ("auto", "observed"):
            raise DesignError(f"caseloads must be 'auto' or 'observed', got {caseloads!r}")
        if caseloads == "observed" and not np.all(caseload == caseload[0]):
            self.put("patients_per_therapist", tuple(int(c) for c in caseload),
                     f"list of {n_t} observed caseloads")
        else:
            spec, text = _count_spec(caseload, "caseloads", "therapists")
            self.put("patients_per_therapist", spec, f"caseloads: {text}")
        m = d.groupby("patient", sort=False).size().to_numpy()
        top = int(m.max())
        full = float(np.mean(m == top))
        if full == 1.0:
            self.put("sessions", top, f"all {m.size} patients have {top} sessions")
            self.put("dropout", 0.0, "no patient has fewer sessions than the others")
        elif full >= 0.5:
            self.put("sessions", top, f"{_fmt(100 * full)}% of {m.size} patients have the "
                     f"most sessions seen, {top}")
            drop = round(1 - full, 4)
            self.put("dropout", drop, f"share of patients with fewer than {top} sessions "
                     f"({int(np.sum(m < top))} of {m.size}), taken as dropout")
        else:
            spec, text = _count_spec(m, "sessions per patient", "patients")
            self.put("sessions", spec, f"sessions per patient: {text}")
            self.put("dropout", 0.0, "0: fewer than half of the patients have the most "
                     "sessions seen, so dropout is not separable from varying session "
                     "counts (give dropout=... to add it)")
        self.n_patients = int(m.size)
        self.n_therapists = n_t

    def _alliance(self) -> None:
        d = self.data
        a = pd.to_numeric(d["alliance"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(a).all():
            rows = d.index[~np.isfinite(a)][:5].tolist()
            raise DesignError(f"column 'alliance' must be finite numbers; rows {rows} are not")
        sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
        if sd <= 0:
            raise DesignError("column 'alliance' is constant in the pilot data")
        self.scales["alliance"] = (float(a.mean()), sd)
        frame = pd.DataFrame({"alliance": a, "therapist": d["therapist"].to_numpy(),
                              "patient": d["patient"].to_numpy()})
        if self.n_patients >= len(frame):
            raise DesignError("the pilot data have one session per patient; the alliance "
                              "variance cannot be split into patient and session parts")
        fit, msgs = _quiet_fit("alliance ~ 1 + (1 | therapist/patient)", frame)
        vc = fit.varcomp.set_index("group")["vcov"]
        parts = np.array([vc.get("therapist", 0.0), vc.get("therapist:patient", 0.0),
                          vc.get("Residual", 0.0)], dtype=float)
        shares = parts / parts.sum()
        comps = tuple(round(float(s), 4) for s in shares[:2])
        comps = (*comps, round(1 - comps[0] - comps[1], 4))
        extra = f" ({'; '.join(msgs)})" if msgs else ""
        self.put("alliance_components", comps,
                 "REML variance decomposition alliance ~ 1 + (1 | therapist/patient) "
                 f"(variances {', '.join(_fmt(p) for p in parts)}){extra}")
        z = (a - a.mean()) / sd
        g1 = float(stats.skew(z, bias=False))
        denom = comps[1] ** 1.5 + comps[2] ** 1.5
        if denom <= 0:
            self.put("alliance_skew", 0.0, "0: alliance varies between therapists only")
            return
        target = g1 / denom
        clipped = abs(target) >= _SN_MAX
        target = float(np.clip(target, -_SN_MAX, _SN_MAX))
        shape = round(_sn_shape(target), 3)
        self.put("alliance_skew", shape,
                 f"skew-normal shape matching the sample skewness of alliance "
                 f"({_fmt(g1)} over {a.size} sessions)"
                 + (f" (capped at |shape| = {_SHAPE_MAX:g}: the pilot is about as skewed "
                    "as the simulator can be, or more)" if clipped else ""))

    def _moderators(self) -> None:
        d = self.data
        mods: dict[str, str] = {}
        if "age" in d.columns:
            ages = _finite(_unit_values(d, "age", "patient"), "age", "patient")
            mean, sd = float(ages.mean()), float(ages.std(ddof=1))
            lo, hi = float(ages.min()), float(ages.max())
            if sd <= 0:
                raise DesignError("column 'age' is constant in the pilot data")
            self.scales["age"] = (mean, sd)
            sol = _truncnorm_for(mean, sd, lo, hi)
            if sol is None:
                self.put("age_distribution", (round(mean, 3), round(sd, 3), lo, hi),
                         f"patients' age mean {_fmt(mean)}, SD {_fmt(sd)}, observed range "
                         f"{_fmt(lo)}-{_fmt(hi)} (no truncated normal on that range has "
                         "this mean and SD: the untruncated values are used)")
            else:
                mu, sig = sol
                self.put("age_distribution", (round(mu, 4), round(sig, 4), lo, hi),
                         f"normal truncated to the observed range {_fmt(lo)}-{_fmt(hi)} "
                         f"whose mean and SD match the {ages.size} patients' ages "
                         f"(mean {_fmt(mean)}, SD {_fmt(sd)})")
            mods["age"] = "patient"
        if "autonomy" in d.columns:
            level = "patient"
            if _constant_within(d, "autonomy", "therapist") and self.n_patients > (
                    self.n_therapists):
                level = "therapist"
            vals = _finite(_unit_values(d, "autonomy", level), "autonomy", level)
            sd = float(vals.std(ddof=1))
            if sd <= 0:
                raise DesignError("column 'autonomy' is constant in the pilot data")
            self.scales["autonomy"] = (float(vals.mean()), sd)
            mods["autonomy"] = level
            self.notes.append(f"autonomy is constant within {level}s (mean {_fmt(vals.mean())}"
                              f", SD {_fmt(sd)} over {vals.size} {level}s; standardised)")
        text = ", ".join(f"{k} ({v} level)" for k, v in mods.items()) or "none"
        self.put("moderators", mods, f"moderator columns in the pilot data: {text}"
                 + (f"; {self.notes[-1]}" if "autonomy" in mods else ""))

    def _arm(self) -> None:
        d = self.data
        if "arm" not in d.columns:
            self.put("randomisation", "none", "no 'arm' column in the pilot data")
            return
        arm = pd.to_numeric(d["arm"], errors="coerce")
        bad = sorted(set(arm.dropna().unique().tolist()) - {0, 1})
        if arm.isna().any() or bad:
            shown = bad[:5] if bad else ["missing"]
            raise DesignError(f"column 'arm' must be 0/1 (control/treatment); found "
                              f"{', '.join(map(str, shown))}")
        d = d.assign(arm=arm)
        _unit_values(d, "arm", "patient")
        if arm.nunique() < 2:
            raise DesignError(f"column 'arm' holds only {int(arm.iloc[0])}: the pilot has "
                              "one arm, so it cannot show a randomisation; drop the column")
        self.scales["arm"] = (0.0, 1.0)
        if _constant_within(d, "arm", "therapist"):
            per = _unit_values(d, "arm", "therapist").value_counts()
            self.put("randomisation", "therapist",
                     f"'arm' is constant within therapists ({int(per.get(0, 0))} control, "
                     f"{int(per.get(1, 0))} treatment therapists)")
        else:
            self.put("randomisation", "patient", "'arm' varies within therapists")

    def standardised(self) -> pd.DataFrame:
        """Return the data with ``<var>_z`` columns: each variable at its pilot mean and SD."""
        d = self.data.copy()
        for var, (mean, sd) in self.scales.items():
            if var != "arm":
                d[f"{var}_z"] = (pd.to_numeric(d[var]) - mean) / sd
        return d

    # --- how each fitted column relates to the design's standardised variables ---------
    def column_scale(self, name: str) -> tuple[str, str | None, float, float] | None:
        """``(variable, alliance flavour, m, s)`` with column = m + s * z, or None."""
        if name in _ARM_NAMES:
            return ("arm", None, 0.0, 1.0) if "arm" in self.scales else None
        if name in _ALLIANCE_COLUMNS:
            mean, sd = self.scales["alliance"]
            m = mean if _ALLIANCE_COLUMNS[name] == "between" else 0.0
            return "alliance", _ALLIANCE_COLUMNS[name], m, sd
        var = name
        for v in ("alliance", *_MODERATORS):
            if name == v or (name.startswith(v + "_") and name[len(v) + 1:] in ("c", "z")):
                var = v
                break
        else:
            return None
        if var not in self.scales or name not in self.data.columns:
            return None
        # an affine version of the variable: its own mean and SD at the variable's level
        unit = {"alliance": None, "age": "patient"}.get(
            var, self.fields["moderators"].get("autonomy"))
        col = pd.to_numeric(self.data[name], errors="coerce")
        x = col.to_numpy(dtype=float) if unit is None else (
            _unit_values(self.data.assign(**{name: col}), name, unit).to_numpy(dtype=float))
        base = self.data[var] if unit is None else _unit_values(self.data, var, unit)
        base = pd.to_numeric(base, errors="coerce").to_numpy(dtype=float)
        if x.size > 2 and np.corrcoef(x, base)[0, 1] < 1 - 1e-8:
            return None  # not an increasing affine transform of the variable
        return var, ("total" if var == "alliance" else None), float(x.mean()), float(
            x.std(ddof=1))


# --------------------------------------------------------------------- fits: variances
def _fit_kind(fit: Any) -> str:
    """'mixed', 'glmm' or 'bayes' (by the fit's type name; no models import needed)."""
    name = type(fit).__name__
    kinds = {"MixedFit": "mixed", "GLMMFit": "glmm", "BayesFit": "bayes"}
    if name not in kinds:
        raise DesignError(
            f"Design.from_fit takes a fit of am.fit_mixed (gaussian or binomial) or "
            f"am.fit_bayes; got {name}"
        )
    return kinds[name]


def _groups(fit: Any) -> tuple[str | None, str | None, list[str]]:
    """Return the fit's therapist and patient grouping expressions, and any others."""
    ther = pat = None
    others: list[str] = []
    for t in fit.spec.random:
        g = t.group
        facs = set(t.factors)
        if "patient" in facs:
            pat = pat or g
        elif facs == {"therapist"}:
            ther = ther or g
        else:
            others.append(g)
    return ther, pat, others


def _variance_draws(fit: Any, kind: str, pilot: _Pilot
                    ) -> tuple[dict[str, np.ndarray], list[str], str, tuple[str, ...] | None]:
    """Draws (one for REML/ML fits) of the variance components the Design has.

    Returns the draws (``therapist``, ``patient``, ``residual`` variances and, with a
    therapist-level random slope of an alliance column, ``slope`` variance and ``cov``
    with the therapist intercept), the dropped random parts (named), the estimator's
    name and the ``(column, ...)`` of the slope, if any.
    """
    ther, pat, others = _groups(fit)
    dropped = [f"random intercept of {g!r}" for g in others]
    slope: tuple[str, ...] | None = None
    for t in fit.spec.random:
        for c in t.coef_names:
            if c == "(Intercept)":
                continue
            sc = pilot.column_scale(c) if t.group == ther and slope is None else None
            if sc is not None and sc[0] == "alliance" and len(_factors(c)) == 1:
                slope = (c, "correlated" if t.correlated and "(Intercept)" in t.coef_names
                         else "uncorrelated")
            else:
                dropped.append(f"random slope ({c} | {t.group})")
    out: dict[str, np.ndarray] = {}
    if kind == "bayes":
        post = fit.idata.posterior

        def sd_draws(g: str, coef: str) -> np.ndarray:
            if f"sd_{g}" not in post:
                raise DesignError(f"the fit_bayes posterior has no sd_{g}; cannot read the "
                                  f"random part of {g!r}")
            var = post[f"sd_{g}"]
            dim = f"{g}_coef"
            if dim in var.dims:
                var = var.sel({dim: coef})
            return np.asarray(var.values, dtype=float).ravel()

        for key, g in (("therapist", ther), ("patient", pat)):
            if g is not None:
                out[key] = sd_draws(g, "(Intercept)") ** 2
        if slope is not None:
            assert ther is not None
            sd_w = sd_draws(ther, slope[0])
            out["slope"] = sd_w**2
            out["cov"] = np.zeros_like(sd_w)
            if slope[1] == "correlated" and f"corr_{ther}" in post:
                corr = post[f"corr_{ther}"].sel({f"{ther}_coef": "(Intercept)",
                                                 f"{ther}_coef_bis": slope[0]})
                out["cov"] = np.asarray(corr.values, dtype=float).ravel() * sd_w * np.sqrt(
                    out["therapist"])
        if fit.family == "gaussian":
            out["residual"] = np.asarray(post["sigma"].values, dtype=float).ravel() ** 2
        how = f"fit_bayes ({fit.sampler}) posterior mean"
    else:
        vc = fit.varcomp.assign(var2=fit.varcomp["var2"].fillna(""))

        def get(g: str, v1: str, v2: str = "") -> float:
            rows = vc.loc[(vc["group"] == g) & (vc["var1"] == v1) & (vc["var2"] == v2), "vcov"]
            return float(rows.iloc[0]) if len(rows) else 0.0

        for key, g in (("therapist", ther), ("patient", pat)):
            if g is not None:
                out[key] = np.array([get(g, "(Intercept)")])
        if slope is not None:
            assert ther is not None
            out["slope"] = np.array([get(ther, slope[0])])
            out["cov"] = np.array([get(ther, "(Intercept)", slope[0])])
        if kind == "mixed":
            out["residual"] = np.array([get("Residual", "")])
            how = f"fit_mixed ({'REML' if fit.reml else 'ML'})"
        else:
            how = f"fit_mixed ({fit.family} GLMM, {'Laplace' if fit.n_agq == 1 else 'AGQ'})"
    return out, dropped, how, slope


# ------------------------------------------------------------------------ fits: effects
def _fixed_draws(fit: Any, kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Draws (rows) of the fixed effects, their covariance and the column names."""
    names = list(fit.frame.x_names)
    if kind == "bayes":
        draws = fit.fixed_draws[names].to_numpy(dtype=float)
        return draws, np.cov(draws, rowvar=False).reshape(len(names), len(names)), names
    est = fit.params.reindex(names).to_numpy(dtype=float)
    cov = fit.cov_params().reindex(index=names, columns=names).to_numpy(dtype=float)
    return est[None, :], cov, names


def _effect_maps(pilot: _Pilot, names: list[str], order: Sequence[str]
                 ) -> tuple[dict[str, dict[str | None, np.ndarray]], list[str], list[str]]:
    """Linear maps from the fixed effects to each canonical term, per alliance flavour.

    Returns ``{term: {flavour: L}}`` (``term`` "" is the intercept), the names of the
    columns that cannot be expressed in the design's variables and of those used.
    """
    p = len(names)
    maps: dict[str, dict[str | None, np.ndarray]] = {}
    unknown: list[str] = []
    used: list[str] = []
    rank = {v: i for i, v in enumerate(order)}
    for j, name in enumerate(names):
        if name == "Intercept":
            maps.setdefault("", {}).setdefault(None, np.zeros(p))[j] += 1.0
            continue
        facs = _factors(name)
        scales = [pilot.column_scale(f) for f in facs]
        if any(s is None for s in scales):
            unknown.append(name)
            continue
        vars_ = [s[0] for s in scales if s is not None]
        if len(set(vars_)) < len(vars_):
            unknown.append(name)  # a variable twice (alliance_pm:alliance_pmc, age^2)
            continue
        used.append(name)
        for k in range(len(facs) + 1):
            for sub in combinations(range(len(facs)), k):
                coef = 1.0
                flavour = None
                for i, s in enumerate(scales):
                    assert s is not None
                    if i in sub:
                        coef *= s[3]
                        flavour = s[1] if s[0] == "alliance" else flavour
                    else:
                        coef *= s[2]
                if coef == 0.0:
                    continue
                term = ":".join(sorted((vars_[i] for i in sub),
                                       key=lambda v: rank.get(v, len(rank))))
                maps.setdefault(term, {}).setdefault(flavour, np.zeros(p))[j] += coef
    return maps, unknown, used


def design_fields_from_fit(fit: Any, overrides: Mapping[str, Any], *,
                           caseloads: str = "auto", order: Sequence[str],
                           source: str = "Design.from_fit",
                           data: pd.DataFrame | None = None) -> tuple[dict[str, Any],
                                                                      dict[str, str]]:
    """Return the :class:`Design` keyword arguments and provenance a pilot fit shows.

    Parameters
    ----------
    fit : MixedFit, GLMMFit or BayesFit
        A fit of pilot data (gaussian, or binomial with a logit link).
    overrides : mapping
        Design fields given by the user: they replace the estimates ("given").
    caseloads : {"auto", "observed"}
        Caseloads as one number or a distribution (``"auto"``), or the observed list.
    order : sequence of str
        The canonical order of variables in term names (the design's).
    source : str
        Name of the caller, for messages.
    data : DataFrame, optional
        The data the predictor distributions are taken from (default: the fit's rows).

    Returns
    -------
    fields : dict
        Keyword arguments of :class:`Design` (``provenance`` not included).
    provenance : dict of str to str
        Field (or ``effects['term']``) -> where its value came from.

    Examples
    --------
    >>> import alliance_models as am
    >>> pilot = am.simulate(am.Design(therapists=20, patients_per_therapist=6), seed=3)
    >>> fit = am.fit_mixed("adherence ~ alliance + (1 | therapist/patient)", pilot)
    >>> from alliance_models.planning.design import VARIABLE_ORDER
    >>> kw, prov = design_fields_from_fit(fit, {}, order=VARIABLE_ORDER)
    >>> sorted(kw["effects"]), prov["icc_therapist"].split(" = ")[0]
    (['alliance'], 'icc_therapist')
    """
    kind = _fit_kind(fit)
    family = "gaussian" if kind == "mixed" else fit.family
    if family not in ("gaussian", "binomial"):
        raise DesignError(f"{source}: a {family} fit cannot give a Design (families: "
                          "gaussian, binomial)")
    if "family" in overrides and overrides["family"] != family:
        raise DesignError(
            f"{source}: family={overrides['family']!r} differs from the fit's family "
            f"({family!r}); the ICCs and effects are on the fit's scale: refit the pilot "
            "with the family you plan for"
        )
    pilot = _Pilot(fit.frame.data if data is None else data, caseloads=caseloads,
                   source=source)
    fields, prov = pilot.fields, pilot.provenance
    fields["family"] = family
    prov["family"] = f"{family}: the family of the {kind} fit"

    # --- variance components -> ICCs and the standardising scale -----------------------
    var, dropped_re, how, slope = _variance_draws(fit, kind, pilot)
    if dropped_re:
        warnings.warn(
            f"{source}: the Design has random intercepts of therapist and patient and a "
            f"therapist-level random slope of alliance only; dropped from the fit: "
            f"{', '.join(dropped_re)}", AllianceModelsWarning, stacklevel=3)
    bayes = kind == "bayes"
    n_draw = max(len(v) for v in var.values())
    zero = np.zeros(n_draw)
    s2_t, s2_p = var.get("therapist", zero), var.get("patient", zero)
    if slope is not None:
        # u + w x with x = m + s z: the intercept at z = 0 is u + m w, the slope per SD s w
        _, _, m_x, s_x = pilot.column_scale(slope[0]) or ("", None, 0.0, 1.0)
        tau_w, cov = var["slope"], var["cov"]
        s2_t = s2_t + 2 * m_x * cov + m_x**2 * tau_w
        slope_var, slope_cov = s_x**2 * tau_w, s_x * (cov + m_x * tau_w)
    s2_e = var["residual"] if family == "gaussian" else np.full(n_draw, LATENT_VAR)
    total = s2_t + s2_p + s2_e
    scale = np.sqrt(total)
    mean_how = " (posterior means of per-draw values)" if bayes else ""
    ther_g, pat_g, _ = _groups(fit)
    for name, part, g in (("icc_therapist", s2_t, ther_g), ("icc_patient", s2_p, pat_g)):
        if g is None:
            fields.pop(name, None)
            prov[name] = (f"default: the fit has no {name.split('_')[1]} random intercept")
            continue
        icc = part / total
        val = round(float(icc.mean()), 4)
        fields[name] = val
        resid = ("residual variance" if family == "gaussian"
                 else "latent logistic variance pi^2/3")
        prov[name] = (f"{name} = {_fmt(val)} from {how} variance component {g} "
                      f"({_fmt(float(part.mean()))}) over it plus the other intercept and "
                      f"the {resid}{mean_how}"
                      + (f"; posterior SD {_fmt(float(icc.std()))}" if bayes else "")
                      + ("; estimated at 0 (a singular fit): a pilot this small cannot tell "
                         "it from 0, consider a value from the literature"
                         if not bayes and float(part.mean()) <= 1e-8 * float(total.mean())
                         else ""))

    if slope is None:
        prov["alliance_slope_sd"] = "0: the fit has no therapist-level random slope of alliance"
    else:
        sd_std = np.sqrt(slope_var) / scale
        fields["alliance_slope_sd"] = round(float(sd_std.mean()), 4)
        prov["alliance_slope_sd"] = (
            f"alliance_slope_sd = {_fmt(fields['alliance_slope_sd'])} from the {how} random "
            f"slope of {slope[0]} by therapist ({_fmt(float(tau_w.mean()))} on the fit's "
            f"scale), per SD of alliance over the residual SD{mean_how}")
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = np.where((slope_var > 0) & (s2_t > 0),
                           slope_cov / np.sqrt(slope_var * s2_t), 0.0)
        rho = np.clip(rho, -1.0, 1.0)
        val = round(float(rho.mean()), 4) if fields.get("icc_therapist", 1) > 0 else 0.0
        fields["alliance_slope_correlation"] = val
        prov["alliance_slope_correlation"] = (
            f"alliance_slope_correlation = {_fmt(val)}: correlation of that slope with the "
            f"therapist intercept at the mean alliance{mean_how}"
            + ("" if slope[1] == "correlated" or m_x == 0 else
               "; the fit's intercept and slope are uncorrelated at alliance 0, which "
               "makes them correlated at the mean alliance"))

    # --- fixed effects -> standardised effects -----------------------------------------
    draws, cov, names = _fixed_draws(fit, kind)
    maps, unknown, _ = _effect_maps(pilot, names, order)
    if unknown:
        est = draws.mean(axis=0)
        shown = ", ".join(f"{n} ({_fmt(est[names.index(n)])})" for n in unknown)
        warnings.warn(
            f"{source}: fixed effects that the Design cannot simulate were dropped: {shown}. "
            f"Design variables: alliance (alliance, alliance_pm, alliance_pmc, "
            f"alliance_cwc, _c/_z versions), age, autonomy (and _c/_z), arm",
            AllianceModelsWarning, stacklevel=3)
    effects: dict[str, float] = {}
    eff_prov: dict[str, str] = {}
    for term, by_flavour in maps.items():
        if "total" in by_flavour and len(by_flavour) > 1:
            raise DesignError(
                f"{source}: the fit has alliance both as 'alliance' and as alliance_pm / "
                f"alliance_pmc in terms that make {term!r}; the Design has one alliance "
                "slope: refit with either alliance or alliance_pm + alliance_pmc"
            )
        flavours = list(by_flavour)
        L = np.array([by_flavour[f] for f in flavours])  # (n_flavours, p)
        parts = draws @ L.T  # (draws, n_flavours)
        vc = L @ cov @ L.T
        if len(flavours) > 1:
            inv = np.linalg.pinv(vc)
            w = inv.sum(axis=1) / inv.sum()
        else:
            w = np.ones(1)
        raw = parts @ w
        if term == "":
            if family == "binomial":
                base = special.expit(raw)
                fields["baseline_adherence"] = round(float(base.mean()), 4)
                prov["baseline_adherence"] = (
                    f"inverse logit of the fit's intercept at the predictors' pilot means "
                    f"in the control arm ({_fmt(float(raw.mean()))} on the logit scale)"
                    + (" (posterior mean)" if bayes else ""))
            continue
        std = raw / scale
        val = round(float(std.mean()), 4)
        se = math.sqrt(float(w @ vc @ w)) / float(scale.mean()) if not bayes else float(
            std.std())
        effects[term] = val
        cols = [n for n in names if np.any(L[:, names.index(n)] != 0)]
        fl = ""
        if len(flavours) > 1:
            pe = parts.mean(axis=0) / float(scale.mean())
            fl = "; " + " and ".join(
                f"{f}-patient slope {_fmt(pe[i])} (SE "
                f"{_fmt(math.sqrt(vc[i, i]) / float(scale.mean()))})"
                for i, f in enumerate(flavours)) + " precision-weighted: the Design has " \
                "one alliance slope"
        elif flavours[0] in ("within", "between"):
            fl = f"; the {flavours[0]}-patient alliance slope"
        eff_prov[f"effects[{term!r}]"] = (
            f"effects[{term!r}] = {_fmt(val)} "
            f"({'posterior mean, SD' if bayes else 'pilot estimate, SE'} {_fmt(se)}) from "
            f"{', '.join(cols)} of the {kind} fit on the standardised scale{fl}; "
            f"{PILOT_NOTE}")
    fields["effects"] = effects
    prov["effects"] = (f"{len(effects)} standardised effect(s) from the {kind} fit "
                       f"({fit.spec.formula})" + ("; posterior means" if bayes else ""))
    prov.update(eff_prov)
    if family == "binomial":
        _binomial_counts(fit, pilot)
    if fields.get("dropout"):
        prov["dropout_timing"] = "default ('uniform'): the timing is not estimated"
    return _apply_overrides(fields, prov, overrides)


def _binomial_counts(fit: Any, pilot: _Pilot) -> None:
    """Set counts and trials of a binomial design from the fit's response and trials."""
    resp = fit.spec.response
    trials = getattr(fit, "trials", None)
    counts = "attendance" if resp == "attended" or trials == "scheduled" else "diary"
    pilot.put("counts", counts, f"{counts}: the fit's response {resp!r}")
    if trials is None:
        pilot.put("trials", 1, "1: the fit's response is 0/1")
        return
    n = pd.to_numeric(fit.frame.data[trials], errors="coerce").to_numpy(dtype=float)
    vals = np.unique(n)
    if vals.size == 1:
        pilot.put("trials", int(vals[0]), f"every row has {int(vals[0])} trials ({trials!r})")
    else:
        med = max(1, int(round(float(np.median(n)))))
        pilot.put("trials", med, f"median of the {trials!r} column (it varies: "
                  f"{int(vals.min())}-{int(vals.max())}; the Design has one value)")


def _apply_overrides(fields: dict[str, Any], prov: dict[str, str],
                     overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    for k, v in overrides.items():
        fields[k] = v
        prov[k] = "given"
        if k == "effects":
            for key in [p for p in prov if p.startswith("effects[")]:
                del prov[key]
        if k == "moderators":
            # effects estimated for moderators the user removed cannot be simulated
            eff = fields.get("effects", {})
            if "effects" not in overrides and isinstance(eff, Mapping):
                keep = set(v) | {"alliance", "arm"}
                gone = [t for t in eff if not set(t.split(":")) <= keep]
                if gone:
                    fields["effects"] = {t: e for t, e in eff.items() if t not in gone}
                    for t in gone:
                        prov.pop(f"effects[{t!r}]", None)
                    prov["effects"] += (f"; dropped {', '.join(gone)} (moderators given "
                                        "without them)")
    return fields, prov


# ------------------------------------------------------------------------------ data
def _default_formula(pilot: _Pilot, family: str,
                     response: str | None) -> tuple[str, dict[str, Any]]:
    """Return the model ``from_data`` fits and the ``fit_mixed`` keyword arguments.

    Alliance by every moderator, plus arm, with nested random intercepts; the predictors
    are standardised (``<var>_z`` columns, see :meth:`_Pilot.standardised`), which keeps
    the binomial fit well conditioned and changes nothing else (the effects are mapped
    back to the design's scale exactly).
    """
    mods = [f"{m}_z" for m in pilot.fields["moderators"]]
    rhs = "alliance_z" + (f" * ({' + '.join(mods)})" if mods else "")
    if pilot.fields["randomisation"] != "none":
        rhs += " + arm"
    d = pilot.data
    kw: dict[str, Any] = {}
    if family == "binomial":
        pairs = [("completed", "prescribed"), ("attended", "scheduled")]
        found = [p for p in pairs if set(p) <= set(d.columns)]
        if response is not None:
            found = [p for p in pairs if p[0] == response] or [(response, "")]
        if not found or not found[0][1]:
            raise DesignError(
                "a binomial pilot needs count columns completed/prescribed (diary) or "
                f"attended/scheduled (attendance); available: {', '.join(map(str, d.columns))}"
            )
        response, kw["trials"] = found[0]
        kw["family"] = "binomial"
    else:
        response = response or "adherence"
        _require(d, [response], "Design.from_data")
    return f"{response} ~ {rhs} + (1 | therapist/patient)", kw


def design_fields_from_data(data: pd.DataFrame, overrides: Mapping[str, Any], *,
                            order: Sequence[str], formula: str | None = None,
                            family: str | None = None,
                            caseloads: str = "auto") -> tuple[dict[str, Any], dict[str, str]]:
    """Return the :class:`Design` keyword arguments and provenance of pilot data.

    The layout and predictor distributions come from ``data``; the ICCs, effects (and,
    binomial, baseline adherence) from ``fit_mixed`` of ``formula`` (default: alliance
    by every moderator column, plus arm, with ``(1 | therapist/patient)``) unless given
    in ``overrides`` (when every one of them is given, no model is fitted).

    Examples
    --------
    >>> import alliance_models as am
    >>> from alliance_models.planning.design import VARIABLE_ORDER
    >>> pilot = am.simulate(am.Design(therapists=20, patients_per_therapist=6), seed=3)
    >>> kw, prov = design_fields_from_data(pilot, {}, order=VARIABLE_ORDER)
    >>> prov["therapists"]
    '20 therapists in the pilot data'
    """
    if not isinstance(data, pd.DataFrame):
        raise DesignError(f"Design.from_data takes a pandas DataFrame, got "
                          f"{type(data).__name__}")
    pilot = _Pilot(data, caseloads=caseloads, source="Design.from_data")
    if family is None:
        counts = ({"completed", "prescribed"}, {"attended", "scheduled"})
        family = "binomial" if any(c <= set(data.columns) for c in counts) else "gaussian"
    if family not in ("gaussian", "binomial"):
        raise DesignError(f"family must be 'gaussian' or 'binomial', got {family!r}")
    need_fit = not {"icc_therapist", "icc_patient", "effects"} <= set(overrides) or (
        family == "binomial" and "baseline_adherence" not in overrides)
    if not need_fit:
        fields, prov = pilot.fields, pilot.provenance
        fields["family"] = family
        prov["family"] = f"{family}: chosen"
        return _apply_overrides(fields, prov, overrides)
    if formula is None:
        formula, kw = _default_formula(pilot, family, None)
    else:
        kw = {"family": "binomial"} if family == "binomial" else {}
        if family == "binomial":
            _, kw = _default_formula(pilot, family, formula.split("~")[0].strip())
    pilot.data = pilot.standardised()
    fit, msgs = _quiet_fit(formula, pilot.data, **kw)
    fields, prov = design_fields_from_fit(fit, overrides, caseloads=caseloads, order=order,
                                          source="Design.from_data", data=pilot.data)
    if msgs:
        prov["effects"] += f" (fit: {'; '.join(msgs)})"
    return fields, prov
