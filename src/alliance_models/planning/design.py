"""A planned trial, described in the units a trialist thinks in.

:class:`Design` is a frozen, validated description of a planned study: how many
therapists and patients, how many sessions, how patients are randomised, how the
outcome clusters (ICCs), where alliance varies, which moderators exist and on which
level they live, the effects to detect (standardised), the outcome family and dropout.
:func:`alliance_models.simulate` turns a design into data.

The standardised scale
----------------------
The outcome model on the linear-predictor scale is

``y = b0 + sum_k beta_k * prod(z_v for v in term k) + u_therapist + v_patient + e_session``
``+ w_therapist * z_alliance``

where ``z_alliance``, ``z_age`` and ``z_autonomy`` are the predictors standardised to
population mean 0 and SD 1 and ``arm`` is coded 0/1. The three random parts have
variances ``icc_therapist``, ``icc_patient`` and ``1 - icc_therapist - icc_patient``
(times the latent logistic variance for binomial outcomes), so the **residual** outcome
SD is 1 and every effect is in residual-SD units: ``beta_arm`` is Cohen's d,
``beta_alliance`` the outcome change (in SD) per SD of alliance, and an interaction
coefficient is the change in a slope per SD of the moderator. The default alliance
effect 0.258 = r / sqrt(1 - r^2) with r = 0.25 (Flückiger et al. 2018) makes alliance,
when it is the only predictor, correlate 0.25 with the outcome. Moderation effects have
no published values (typical range 0.05-0.10 standardised): **you must set them**.

The therapist-level random slope ``w_therapist`` of alliance (``alliance_slope_sd``,
default 0: none) lets the alliance-outcome slope differ between therapists: therapist
``t``'s slope is ``beta_alliance + w_t`` with ``w_t ~ N(0, alliance_slope_sd^2)``,
correlated ``alliance_slope_correlation`` with ``u_t``. Its mean is 0, so the fixed
coefficients (and the truth that bias is measured against) are unchanged; the
outcome's variance at average alliance is unchanged too, while its marginal variance
grows by ``alliance_slope_sd^2`` (alliance has SD 1). It is what
``(1 + alliance | therapist)`` estimates (``alliance_slope_sd^2`` is its slope variance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from itertools import combinations
from typing import Any

from .._validate import mapping, number, one_of, positive_int
from ..errors import DesignError

__all__ = ["Design"]

#: the order in which factor names appear in canonical term names
VARIABLE_ORDER = ("alliance", "arm", "age", "autonomy")
MODERATOR_LEVELS = {"age": ("patient",), "autonomy": ("patient", "therapist")}
RANDOMISATIONS = ("patient", "therapist", "none")
FAMILIES = ("gaussian", "binomial")
COUNTS = ("diary", "attendance")
DISTRIBUTIONS = ("poisson", "negbin")

#: the default alliance effect: r = 0.25 expressed as a standardised slope
DEFAULT_ALLIANCE_EFFECT = round(0.25 / math.sqrt(1 - 0.25**2), 3)


class FrozenMap(dict):  # type: ignore[type-arg]
    """A read-only, hashable, picklable dict (for the mapping fields of :class:`Design`)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Design mappings are read-only; use Design.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self),))

    def __repr__(self) -> str:
        return repr(dict(self))


def _number(name: str, value: Any) -> float:
    return number(name, value, DesignError)


def _mapping(name: str, value: Any, example: str) -> dict[str, Any]:
    return mapping(name, value, example, DesignError)


def _freeze_mapping(m: Mapping[str, Any] | None) -> FrozenMap:
    return FrozenMap(dict(m or {}))


def canonical_term(term: str) -> str:
    """Return ``term`` with its factors in the package's canonical order.

    Factors are ordered alliance, arm, age, autonomy (unknown names last, as given),
    so ``"autonomy:alliance"`` becomes ``"alliance:autonomy"``.

    Examples
    --------
    >>> canonical_term("autonomy : alliance")
    'alliance:autonomy'
    """
    parts = [p.strip() for p in str(term).split(":")]
    order = {v: i for i, v in enumerate(VARIABLE_ORDER)}
    parts.sort(key=lambda p: order.get(p, len(order)))
    return ":".join(parts)


def _check_count_spec(name: str, value: Any, *, allow_list: bool) -> Any:
    """Validate a count that may be an int, a list (sizes) or a distribution tuple."""
    if isinstance(value, bool):
        raise DesignError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != int(value) or value < 1:
            raise DesignError(f"{name} must be a positive integer (>= 1), got {value!r}")
        return int(value)
    if isinstance(value, str):
        raise DesignError(
            f"{name} must be an integer, a list of sizes or a distribution such as "
            f"('poisson', 8) or ('negbin', 8, 2); got {value!r}"
        )
    if isinstance(value, Sequence) and len(value) and isinstance(value[0], str):
        kind = value[0].lower()
        if kind not in DISTRIBUTIONS:
            raise DesignError(
                f"{name} distribution {value[0]!r} is unknown; allowed: "
                f"{', '.join(DISTRIBUTIONS)} (e.g. ('poisson', 8) or ('negbin', 8, 2))"
            )
        want = 2 if kind == "poisson" else 3
        if len(value) != want:
            form = "('poisson', mean)" if kind == "poisson" else "('negbin', mean, dispersion)"
            raise DesignError(f"{name} = {tuple(value)!r} must have the form {form}")
        nums = [_number(f"{name} distribution parameter", v) for v in value[1:]]
        if nums[0] < 1:
            raise DesignError(f"{name} mean must be >= 1 (every unit has at least one), "
                              f"got {nums[0]!r}")
        if kind == "negbin" and nums[1] <= 0:
            raise DesignError(f"{name} negative-binomial dispersion must be > 0, got {nums[1]!r}")
        return (kind, *nums)
    if isinstance(value, Sequence):
        if not allow_list:
            raise DesignError(f"{name} cannot be a list of sizes; use an int or a distribution")
        sizes = list(value)
        bad = [i for i, s in enumerate(sizes) if isinstance(s, bool) or not isinstance(
            s, int | float) or s != int(s) or s < 1]
        if not sizes:
            raise DesignError(f"{name} list is empty; give one size per therapist")
        if bad:
            shown = ", ".join(f"{sizes[i]!r} at position {i}" for i in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise DesignError(
                f"{name} list must hold positive integers (>= 1); found {shown}{more}"
            )
        return tuple(int(s) for s in sizes)
    raise DesignError(f"{name} has an unsupported value {value!r}")


@dataclass(frozen=True)
class Design:
    """A planned trial for power simulation.

    Parameters
    ----------
    therapists : int or (int, int), default 40
        Total number of therapists, or therapists per arm ``(control, treatment)`` when
        randomisation is by therapist. With a total and therapist randomisation the
        first half (rounded down) is control.
    patients_per_therapist : int, list of int or distribution, default 10
        A fixed caseload, a list giving each therapist's caseload (length = therapists),
        ``("poisson", mean)`` or ``("negbin", mean, dispersion)``. Distributions are
        shifted so every therapist sees at least one patient: ``1 + Poisson(mean - 1)``.
    sessions : int or distribution, default 8
        Sessions per patient; ``("negbin", 8, 4)`` gives the variable counts that trials
        report (DOMAIN: median about 8). At least one session each.
    randomisation : {"none", "patient", "therapist"}, default "none"
        ``"patient"``: half of each therapist's patients get ``arm = 1`` (random order);
        ``"therapist"``: whole caseloads are randomised; ``"none"``: observational (no
        ``arm`` column).
    icc_therapist, icc_patient : float, default 0.05 and 0.30
        Shares of the residual outcome variance between therapists and between
        patients of a therapist (therapist ICC default from Johns et al. 2019; the
        patient share is an assumption, vary it). Their sum must be below 1.
    alliance_components : (float, float, float), default (0.2, 0.5, 0.3)
        Shares of alliance variance at therapist, patient and session level (sum 1).
    alliance_skew : float, default -4.0
        Skew-normal shape of the patient and session alliance parts (negative = left
        skew, the ceiling effect seen with the WAI in physiotherapy); 0 for normal.
    moderators : mapping, default {"age": "patient", "autonomy": "patient"}
        Moderators and the level they live on. ``age`` is patient-level,
        N(50, 14) truncated to 18-85 years (see ``age_distribution``); ``autonomy``
        (autonomy support, standardised) lives on the ``"patient"`` or ``"therapist"``
        level.
    effects : mapping of term -> float, default {"alliance": 0.258}
        Standardised effects keyed by canonical term names: ``"alliance"``, ``"age"``,
        ``"autonomy"``, ``"arm"``, ``"alliance:age"``, ``"alliance:autonomy"``,
        ``"arm:age"``, ``"alliance:age:autonomy"``, ... (factor order does not matter).
        Terms not given are 0. There are no published moderation effects: set them.
    family : {"gaussian", "binomial"}, default "gaussian"
        Continuous adherence score, or counts (see ``counts``) with a logit link.
    counts : {"diary", "attendance"}, default "diary"
        Binomial outcome columns: ``completed``/``prescribed`` (home-exercise diary) or
        ``attended``/``scheduled``.
    trials : int or None
        Binomial denominator per session row (default 7 for a diary, 1 for attendance).
    baseline_adherence : float, default 0.7
        Binomial: adherence probability at average predictors (control arm).
    dropout : float or (float, float), default 0.0
        Share of patients who drop out (overall, or per arm ``(control, treatment)``);
        missing completely at random.
    dropout_timing : "uniform" or int, default "uniform"
        Drop-outs leave after a session drawn uniformly from 1..(sessions - 1), or after
        session ``k``. Every patient attends at least one session.
    age_distribution : (mean, sd, low, high), default (50, 14, 18, 85)
        The truncated normal for age in years.
    alliance_slope_sd : float, default 0.0
        SD of the therapist-level random slope of alliance, in outcome residual-SD units
        per SD of alliance (so ``0.1`` lets therapists' alliance slopes spread +-0.2
        around ``effects["alliance"]`` for the middle 95%). 0: every therapist has the
        same slope. There are no published values: a sensitivity range such as 0.05-0.15
        is an assumption.
    alliance_slope_correlation : float, default 0.0
        Correlation of that slope with the therapist intercept ``u_t``, in [-1, 1];
        needs ``icc_therapist > 0`` and ``alliance_slope_sd > 0`` when non-zero.
    provenance : mapping of str to str, default {}
        Where values came from (field, or ``"effects['term']"`` -> text), filled by
        :meth:`from_fit` and :meth:`from_data` and shown by :meth:`describe`. It is a
        record, not a parameter: designs that differ only in provenance are equal
        (``==``, ``hash``), and :meth:`to_dict` (fingerprints of power runs, TOML
        files) leaves it out. :meth:`replace` marks the fields it changes as
        ``"given"``.

    Examples
    --------
    >>> d = Design(therapists=30, patients_per_therapist=8, sessions=6,
    ...            effects={"alliance": 0.25, "autonomy:alliance": 0.1})
    >>> dict(d.effects)
    {'alliance': 0.25, 'alliance:autonomy': 0.1}
    >>> d.n_therapists, d.allowed_terms()[:3]
    (30, ('alliance', 'age', 'autonomy'))
    """

    therapists: int | tuple[int, int] = 40
    patients_per_therapist: Any = 10
    sessions: Any = 8
    randomisation: str = "none"
    icc_therapist: float = 0.05
    icc_patient: float = 0.30
    alliance_components: tuple[float, float, float] = (0.2, 0.5, 0.3)
    alliance_skew: float = -4.0
    moderators: Mapping[str, str] = field(
        default_factory=lambda: {"age": "patient", "autonomy": "patient"}
    )
    effects: Mapping[str, float] = field(
        default_factory=lambda: {"alliance": DEFAULT_ALLIANCE_EFFECT}
    )
    family: str = "gaussian"
    counts: str = "diary"
    trials: int | None = None
    baseline_adherence: float = 0.7
    dropout: float | tuple[float, float] = 0.0
    dropout_timing: str | int = "uniform"
    age_distribution: tuple[float, float, float, float] = (50.0, 14.0, 18.0, 85.0)
    alliance_slope_sd: float = 0.0
    alliance_slope_correlation: float = 0.0
    provenance: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # each phase checks and normalises a group of fields, in this order (later
        # phases use what earlier ones normalised)
        self._check_structure()
        self._check_variances()
        self._check_moderators()
        self._check_effects()
        self._check_outcome()
        self._check_dropout()
        self._check_age_and_skew()
        prov = _mapping("provenance", self.provenance, "{'icc_therapist': 'from a pilot'}")
        object.__setattr__(self, "provenance", _freeze_mapping(
            {str(k): str(v) for k, v in prov.items()}))

    @classmethod
    def from_fit(cls, fit: Any, *, caseloads: str = "auto", **overrides: Any) -> Design:
        """Plan from a fit of pilot data: the design the pilot showed.

        ICCs come from the fit's variance components, standardised effects from its
        fixed effects (on the simulator's standardised scale), and the layout and
        predictor distributions from the fit's data; see
        :mod:`alliance_models.planning.pilot` for every formula. A ``fit_bayes`` fit
        gives posterior means. :attr:`provenance` says where each value came from.

        Parameters
        ----------
        fit : MixedFit, GLMMFit or BayesFit
            ``am.fit_mixed`` (gaussian, or ``family="binomial"``) or ``am.fit_bayes``
            (gaussian or binomial) of pilot data in the prepared long format
            (``therapist``, ``patient``, ``session``, ``alliance``, optionally ``arm``,
            ``age``, ``autonomy``). Random intercepts of therapist and patient are
            used; other random parts are dropped with a warning naming them, as are
            fixed effects of other variables.
        caseloads : {"auto", "observed"}, default "auto"
            Unequal caseloads as a distribution fitted by moments (``"auto"``; the
            number of therapists can then change), or the observed list.
        **overrides
            Design fields that replace the estimates (recorded as ``"given"``).

        Returns
        -------
        Design

        Examples
        --------
        >>> import alliance_models as am
        >>> pilot = am.simulate(am.Design(therapists=20, patients_per_therapist=6), seed=3)
        >>> fit = am.fit_mixed("adherence ~ alliance + (1 | therapist/patient)", pilot)
        >>> d = am.Design.from_fit(fit, effects={"alliance": 0.2})
        >>> d.n_therapists, dict(d.effects), d.provenance["effects"]
        (20, {'alliance': 0.2}, 'given')
        """
        from .pilot import design_fields_from_fit

        kw, prov = design_fields_from_fit(fit, overrides, caseloads=caseloads,
                                          order=VARIABLE_ORDER)
        return cls(**kw, provenance=prov)

    @classmethod
    def from_data(cls, data: Any, *, formula: str | None = None, family: str | None = None,
                  caseloads: str = "auto", **overrides: Any) -> Design:
        """Plan from pilot data: layout, predictor distributions, ICCs and effects.

        The layout and predictor distributions come from ``data`` (as in
        :meth:`from_fit`); ICCs and effects from ``am.fit_mixed`` of ``formula``,
        by default the design's analysis model: alliance times every moderator column
        present (``age``, ``autonomy``), plus ``arm`` if present, with
        ``(1 | therapist/patient)``. Effects, ICCs (and baseline adherence) given in
        ``overrides`` are used as given; when all are given no model is fitted.

        Parameters
        ----------
        data : DataFrame
            Pilot data in the prepared long format (``am.prepare`` or ``am.simulate``).
        formula : str, optional
            The analysis model to estimate ICCs and effects with.
        family : {"gaussian", "binomial"}, optional
            Default ``"binomial"`` when the data hold counts (``completed`` /
            ``prescribed`` or ``attended`` / ``scheduled``), else ``"gaussian"``
            (response ``adherence``).
        caseloads : {"auto", "observed"}, default "auto"
            As in :meth:`from_fit`.
        **overrides
            Design fields that replace the estimates (recorded as ``"given"``).

        Returns
        -------
        Design

        Examples
        --------
        >>> import alliance_models as am
        >>> pilot = am.simulate(am.Design(therapists=20, patients_per_therapist=6), seed=3)
        >>> d = am.Design.from_data(pilot, therapists=40)
        >>> d.n_therapists, d.provenance["therapists"]
        (40, 'given')
        """
        from .pilot import design_fields_from_data

        kw, prov = design_fields_from_data(data, overrides, order=VARIABLE_ORDER,
                                           formula=formula, family=family,
                                           caseloads=caseloads)
        return cls(**kw, provenance=prov)

    def _check_structure(self) -> None:
        """Check therapists (total or per arm), randomisation, caseloads and sessions."""
        set_ = object.__setattr__
        t = self.therapists
        if isinstance(t, Sequence) and not isinstance(t, str):
            if len(t) != 2:
                raise DesignError(
                    f"therapists per arm must be (control, treatment), got {tuple(t)!r}"
                )
            vals = tuple(_check_count_spec("therapists per arm", v, allow_list=False)
                         for v in t)
            if not all(isinstance(v, int) for v in vals):
                raise DesignError(f"therapists per arm must be integers, got {tuple(t)!r}")
            set_(self, "therapists", vals)
        else:
            v = _check_count_spec("therapists", t, allow_list=False)
            if not isinstance(v, int):
                raise DesignError(f"therapists must be an integer, got {t!r}")
            set_(self, "therapists", v)
        one_of("randomisation", self.randomisation, RANDOMISATIONS, DesignError)
        if isinstance(self.therapists, tuple) and self.randomisation != "therapist":
            raise DesignError(
                "therapists given per arm requires randomisation='therapist' "
                f"(got randomisation={self.randomisation!r}); give a total instead"
            )
        if self.randomisation == "therapist" and min(self.arm_therapists) < 1:
            raise DesignError(
                f"therapist randomisation needs at least one therapist per arm; "
                f"{self.n_therapists} therapist(s) give {self.arm_therapists}"
            )
        ppt = _check_count_spec("patients_per_therapist", self.patients_per_therapist,
                                allow_list=True)
        if isinstance(ppt, tuple) and not isinstance(ppt[0], str) and len(ppt) != (
                self.n_therapists):
            raise DesignError(
                f"patients_per_therapist lists {len(ppt)} caseloads but the design has "
                f"{self.n_therapists} therapists; give one size per therapist"
            )
        if self.randomisation == "patient" and isinstance(ppt, int) and ppt < 2:
            raise DesignError(
                "patient randomisation needs at least 2 patients per therapist "
                f"(got {ppt}) so that both arms are seen within therapists"
            )
        set_(self, "patients_per_therapist", ppt)
        set_(self, "sessions", _check_count_spec("sessions", self.sessions, allow_list=False))

    def _check_variances(self) -> None:
        """Check the ICCs, the alliance variance components and the random slope."""
        for name in ("icc_therapist", "icc_patient"):
            val = getattr(self, name)
            if not isinstance(val, int | float) or not 0 <= val < 1:
                raise DesignError(f"{name} must be in [0, 1), got {val!r}")
        if self.icc_therapist + self.icc_patient >= 1:
            raise DesignError(
                f"icc_therapist + icc_patient = {self.icc_therapist} + {self.icc_patient} = "
                f"{self.icc_therapist + self.icc_patient:g} must be below 1 (the rest is the "
                "session-level residual variance)"
            )
        comps = tuple(_number("alliance_components", c) for c in self.alliance_components)
        if len(comps) != 3 or any(c < 0 for c in comps) or not math.isclose(sum(comps), 1.0,
                                                                          abs_tol=1e-9):
            raise DesignError(
                "alliance_components are the (therapist, patient, session) shares of alliance "
                "variance: three non-negative numbers summing to 1, got "
                f"{self.alliance_components!r}"
            )
        object.__setattr__(self, "alliance_components", comps)
        sd = _number("alliance_slope_sd", self.alliance_slope_sd)
        if sd < 0:
            raise DesignError(f"alliance_slope_sd must be >= 0 (an SD), got {sd!r}")
        rho = _number("alliance_slope_correlation", self.alliance_slope_correlation)
        if not -1 <= rho <= 1:
            raise DesignError(
                f"alliance_slope_correlation must be in [-1, 1] (a correlation), got {rho!r}")
        if rho != 0 and (sd == 0 or self.icc_therapist == 0):
            raise DesignError(
                f"alliance_slope_correlation={rho!r} needs a random slope and a therapist "
                f"intercept to correlate: alliance_slope_sd > 0 and icc_therapist > 0 (got "
                f"alliance_slope_sd={sd!r}, icc_therapist={self.icc_therapist!r})")
        object.__setattr__(self, "alliance_slope_sd", sd)
        object.__setattr__(self, "alliance_slope_correlation", rho)

    def _check_moderators(self) -> None:
        """Check that moderators are known and live on allowed levels."""
        mods = _mapping("moderators", self.moderators, "{'age': 'patient'}")
        for name, level in mods.items():
            if name not in MODERATOR_LEVELS:
                raise DesignError(
                    f"moderator {name!r} is unknown; allowed: {', '.join(MODERATOR_LEVELS)}"
                )
            if level not in MODERATOR_LEVELS[name]:
                raise DesignError(
                    f"moderator {name!r} cannot live on level {level!r}; allowed: "
                    f"{', '.join(MODERATOR_LEVELS[name])}"
                )
        object.__setattr__(self, "moderators", _freeze_mapping(mods))

    def _check_effects(self) -> None:
        """Check that effects name terms the design simulates, each once, finite."""
        allowed = self.allowed_terms()
        all_terms = _all_terms(VARIABLE_ORDER)
        eff: dict[str, float] = {}
        for key, val in _mapping("effects", self.effects, "{'alliance': 0.25}").items():
            term = canonical_term(key)
            if term not in allowed:
                if term in all_terms:
                    missing = [v for v in term.split(":") if v not in self.variables]
                    why = []
                    for m in missing:
                        if m == "arm":
                            why.append("'arm' exists only with randomisation='patient' or "
                                       "'therapist'")
                        else:
                            why.append(f"the design has no moderator {m!r}; add it to "
                                       f"moderators, e.g. moderators={{{m!r}: 'patient'}}")
                    raise DesignError(f"effect {key!r} cannot be simulated: {'; '.join(why)}")
                raise DesignError(
                    f"effect {key!r} names an unknown term; allowed terms for this design: "
                    f"{', '.join(allowed)}"
                )
            if term in eff:
                raise DesignError(f"effect {key!r} is given twice (as {term!r})")
            if isinstance(val, bool) or not isinstance(val, int | float) or not math.isfinite(
                    val):
                raise DesignError(f"effect {key!r} must be a finite number, got {val!r}")
            eff[term] = float(val)
        object.__setattr__(self, "effects", _freeze_mapping(eff))

    def _check_outcome(self) -> None:
        """Check the family, count columns, trials and baseline adherence."""
        one_of("family", self.family, FAMILIES, DesignError)
        one_of("counts", self.counts, COUNTS, DesignError)
        if self.trials is not None:
            positive_int("trials", self.trials, DesignError)
        if not 0 < _number("baseline_adherence", self.baseline_adherence) < 1:
            raise DesignError(
                f"baseline_adherence must be strictly between 0 and 1, got "
                f"{self.baseline_adherence!r}"
            )

    def _check_dropout(self) -> None:
        """Check dropout (overall or per arm) and its timing against the sessions."""
        set_ = object.__setattr__
        d = self.dropout
        if isinstance(d, Sequence) and not isinstance(d, str):
            if self.randomisation == "none" or len(d) != 2:
                raise DesignError(
                    "dropout per arm must be (control, treatment) and needs randomisation; "
                    f"got dropout={tuple(d)!r} with randomisation={self.randomisation!r}"
                )
            pair = (_number("dropout", d[0]), _number("dropout", d[1]))
            drops = [pair[0], pair[1]]
            set_(self, "dropout", pair)
        else:
            drops = [_number("dropout", d)]
            set_(self, "dropout", drops[0])
        if any(not 0 <= v < 1 for v in drops):
            raise DesignError(f"dropout proportions must be in [0, 1), got {self.dropout!r}")
        tm = self.dropout_timing
        if not (tm == "uniform" or (isinstance(tm, int) and not isinstance(tm, bool)
                                    and tm >= 1)):
            raise DesignError(
                f"dropout_timing must be 'uniform' or a session number k >= 1 (leave after "
                f"session k), got {tm!r}"
            )
        if any(drops) and isinstance(self.sessions, int):
            # with a fixed session count, a drop-out must leave before the last session
            # (otherwise the requested dropout would silently not happen)
            if self.sessions < 2:
                raise DesignError(
                    f"dropout={self.dropout!r} needs at least 2 sessions per patient (a "
                    f"drop-out leaves after session k < sessions); got sessions={self.sessions}"
                )
            if tm != "uniform" and int(tm) >= self.sessions:
                raise DesignError(
                    f"dropout_timing={tm!r} must be below sessions={self.sessions} (drop-outs "
                    f"leave after session k and miss the rest); allowed: 1 to "
                    f"{self.sessions - 1} or 'uniform'"
                )

    def _check_age_and_skew(self) -> None:
        """Check the truncated-normal age distribution and the alliance skew."""
        set_ = object.__setattr__
        age = tuple(self.age_distribution) if isinstance(self.age_distribution,
                                                        Sequence) else ()
        if len(age) != 4:
            raise DesignError(
                f"age_distribution must be (mean, sd, low, high) in years, got "
                f"{self.age_distribution!r}"
            )
        mean, sd, lo, hi = (_number("age_distribution", x) for x in age)
        if sd <= 0 or lo >= hi:
            raise DesignError(
                f"age_distribution (mean, sd, low, high) needs sd > 0 and low < high, got "
                f"{self.age_distribution!r}"
            )
        set_(self, "age_distribution", (mean, sd, lo, hi))
        set_(self, "alliance_skew", _number("alliance_skew", self.alliance_skew))

    # --- derived ---------------------------------------------------------------------
    @property
    def n_therapists(self) -> int:
        """Total number of therapists."""
        t = self.therapists
        return sum(t) if isinstance(t, tuple) else int(t)

    @property
    def arm_therapists(self) -> tuple[int, int]:
        """Therapists in (control, treatment) under therapist randomisation."""
        t = self.therapists
        if isinstance(t, tuple):
            return (int(t[0]), int(t[1]))
        return (t // 2, t - t // 2)

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables the design simulates, in canonical order."""
        have = {"alliance"} | set(self.moderators)
        if self.randomisation != "none":
            have.add("arm")
        return tuple(v for v in VARIABLE_ORDER if v in have)

    def allowed_terms(self) -> tuple[str, ...]:
        """Every term (main effects and interactions) an effect may name for this design."""
        return _all_terms(self.variables)

    @property
    def n_trials(self) -> int:
        """Binomial denominator per session row."""
        if self.trials is not None:
            return int(self.trials)
        return 7 if self.counts == "diary" else 1

    @property
    def count_columns(self) -> tuple[str, str]:
        """Names of the binomial (numerator, denominator) columns."""
        return ("completed", "prescribed") if self.counts == "diary" else (
            "attended", "scheduled")

    @property
    def has_fixed_structure(self) -> bool:
        """Whether every replicate has the same therapists/patients/sessions layout."""
        ppt = self.patients_per_therapist
        fixed_ppt = isinstance(ppt, int) or (isinstance(ppt, tuple) and not isinstance(
            ppt[0], str))
        return fixed_ppt and isinstance(self.sessions, int)

    def replace(self, **changes: Any) -> Design:
        """Return a copy with some fields changed (validated again).

        Examples
        --------
        >>> Design(therapists=20).replace(therapists=30).therapists
        30
        """
        if "therapists" in changes and isinstance(self.patients_per_therapist, tuple) and (
                not isinstance(self.patients_per_therapist[0], str)) and (
                "patients_per_therapist" not in changes):
            raise DesignError(
                "cannot change therapists while patients_per_therapist is a per-therapist "
                "list; give a new list too"
            )
        if self.provenance and "provenance" not in changes:
            prov = dict(self.provenance)
            for k in changes:
                prov[k] = "given"
                if k == "effects":
                    prov = {p: t for p, t in prov.items() if not p.startswith("effects[")}
            changes["provenance"] = prov
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python description (used for fingerprints and TOML round trips)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "provenance":  # a record of origin, not a parameter
                continue
            v = getattr(self, f.name)
            if isinstance(v, Mapping):
                v = dict(sorted(v.items()))
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def describe(self, provenance: bool = True) -> str:
        """One-line summary of the design, then its :attr:`provenance` (if any), a line each.

        Parameters
        ----------
        provenance : bool, default True
            Add the provenance lines (``False``: the one-line summary only).

        Examples
        --------
        >>> print(Design(therapists=20, provenance={"therapists": "given"}).describe()
        ...       .splitlines()[1:])
        ['provenance:', '  therapists: given']
        """
        ppt = self.patients_per_therapist
        eff = ", ".join(f"{k}={v:g}" for k, v in self.effects.items()) or "none"
        return (
            f"{self.therapists} therapists x {ppt} patients x {self.sessions} sessions; "
            f"randomisation={self.randomisation}; ICC therapist={self.icc_therapist:g}, "
            f"patient={self.icc_patient:g}; "
            + (f"alliance slope SD={self.alliance_slope_sd:g} (correlation "
               f"{self.alliance_slope_correlation:g}); " if self.alliance_slope_sd else "")
            + f"family={self.family}; dropout={self.dropout}; effects: {eff}"
        ) + "".join(f"\n{line}" for line in self._provenance_lines() if provenance)

    def _provenance_lines(self) -> list[str]:
        if not self.provenance:
            return []
        return ["provenance:", *(f"  {k}: {v}" for k, v in self.provenance.items())]


def _all_terms(variables: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for k in range(1, len(variables) + 1):
        for combo in combinations(variables, k):
            out.append(":".join(combo))
    return tuple(out)
