"""Robustness scenarios: a planned trial rerun under named, documented perturbations.

A power calculation assumes what its simulator assumes: normal residuals and random
intercepts, one residual variance for every therapist, drop-out unrelated to anything,
and alliance measured without error. A :class:`Scenario` relaxes these assumptions,
each by a documented field (they combine freely), while keeping the design's stated
variances, dropout share and effects:

``residuals`` / ``residual_df`` / ``residual_skewness``
    The session-level residual is heavy-tailed (a Student *t* with ``residual_df``
    degrees of freedom, scaled to the design's residual variance) or skewed (a centred
    chi-square with ``8 / skewness**2`` degrees of freedom, reflected for a negative
    skewness, scaled to that variance; its excess kurtosis is ``1.5 * skewness**2``).
``random_effects`` / ``random_effect_df`` / ``random_effect_skewness``
    The same shapes for the therapist and patient intercepts (each keeps its ICC).
``heteroskedasticity_cv``
    Each therapist's residual SD is the design's times ``s_t = exp(sigma z_t - sigma**2)``,
    ``z_t`` standard normal, ``sigma**2 = log(1 + cv**2)``: a lognormal SD with
    coefficient of variation ``cv`` and ``E[s_t**2] = 1`` (the mean residual variance is
    the design's).
``dropout_odds_ratio``
    Missing not at random: the odds of dropping out are multiplied by this ratio per SD
    of the patient's (true, patient-level) alliance, ``logit p_i = a + log(OR) z_i``,
    ``z_i`` the therapist + patient alliance components standardised to SD 1. In every
    replicate the intercept ``a`` is solved so that the patients' mean dropout
    probability equals the design's dropout (per arm when it is given per arm); who
    drops out and when uses the design's own dropout draws. Without dropout in the
    design the field has no effect.
``alliance_reliability``
    Alliance is measured with error: every session's observed alliance is the true one
    plus independent normal error of variance ``(1 - r) / r`` (true alliance has
    variance 1), so ``r = var(true) / var(observed)``. The outcome is generated from
    the true alliance and the analysis sees the observed one (``alliance`` and the
    patient means and deviations built from it); the true coefficient stays the
    reported truth, so attenuation shows up as bias (a single-predictor regression on
    session-level alliance estimates ``r * beta``). The true values are kept in the
    ``alliance_true`` column of simulated data.

Common random numbers: a scenario changes only the draws its perturbation needs (shapes
are built from the design's own normal draws, other perturbations draw from extra
streams of the replicate's seed), so scenario runs with the same seed differ by the
perturbation, not by Monte Carlo noise.

The presets ``"optimistic"``, ``"realistic"`` and ``"pessimistic"`` (:data:`PRESETS`),
their values and the reasons for them are listed in :class:`Scenario`.

Examples
--------
>>> sc = Scenario(residuals="t", residual_df=5, alliance_reliability=0.8)
>>> sc.describe()
'residuals t(df=5); alliance reliability 0.80'
>>> PRESETS["pessimistic"].random_effect_df
5.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from scipy import special

from .._validate import number, one_of
from ..errors import DesignError

__all__ = ["PRESETS", "SHAPES", "Scenario", "resolve_scenarios"]

#: the distribution shapes of residuals and random effects
SHAPES = ("normal", "t", "skewed")
#: name of the unperturbed design in scenario runs
BASELINE = "baseline"
#: the largest |skewness| allowed (a centred chi-square with 0.5 df)
_MAX_SKEW = 4.0
#: the scenario draws of a replicate come from children of its seed with spawn keys
#: ``(*key, _TAG, part)``: one stream per perturbation, so that turning one perturbation
#: on or off leaves the others' draws, and every draw of the design itself, unchanged
#: (no other stream of the package has a key two entries longer than a replicate's)
_TAG = 0x5CE7
_SUB = {"residual": 0, "therapist": 1, "patient": 2, "heteroskedasticity": 3,
        "measurement": 4}


@dataclass(frozen=True)
class Scenario:
    """A named set of perturbations of a planned trial (see the module docstring).

    Parameters
    ----------
    name : str, default "custom"
        Label in tables and plots (a mapping key given to ``scenarios=`` replaces it).
    residuals : {"normal", "t", "skewed"}, default "normal"
        Shape of the session-level residual (variance kept).
    residual_df : float, default 5
        Degrees of freedom of ``residuals="t"`` (> 2, so the variance exists).
    residual_skewness : float, default -1
        Skewness of ``residuals="skewed"`` (non-zero, between -4 and 4; negative =
        left skew, a ceiling).
    random_effects : {"normal", "t", "skewed"}, default "normal"
        Shape of the therapist and patient intercepts (their ICCs kept).
    random_effect_df, random_effect_skewness : float, default 5 and 1
        As for the residuals.
    heteroskedasticity_cv : float, default 0
        Coefficient of variation of the therapists' residual SDs (lognormal, mean
        residual variance kept); 0 for one residual variance.
    dropout_odds_ratio : float, default 1
        Odds ratio of dropping out per SD of the patient's alliance (below 1: patients
        with a weaker alliance drop out more); the design's dropout share is kept.
    alliance_reliability : float, default 1
        Reliability of each session's alliance score, in (0, 1]; 1 means no error.
    description : str, default ""
        Free text (shown by :meth:`describe` instead of the generated text if given).

    Notes
    -----
    The presets (:meth:`preset`, ``scenarios=True``) follow the ladder of MCPower 1.4.1's
    ``scenarios=True`` (its realistic and doomer residual and random-effect *t* df, 8/5 and
    10/5, after Cain, Zhang & Yuan 2017 and Lange, Little & Taylor 1989) and add the
    perturbations that matter for alliance research:

    | field | optimistic | realistic | pessimistic |
    |---|---|---|---|
    | residuals | t, df 10 | t, df 8 | skewed, skewness -2 |
    | random_effects | normal | t, df 10 | t, df 5 |
    | heteroskedasticity_cv | 0 | 0.15 | 0.30 |
    | dropout_odds_ratio | 0.90 | 0.75 | 0.58 |
    | alliance_reliability | 0.90 | 0.80 | 0.70 |

    Why these values: *t* with df 10 is close to normal; df 8 matches the 75th percentile
    of the excess kurtosis of published distributions (about 1.6) and df 5 the 95th
    (about 6). The pessimistic residual is a reflected exponential (skewness -2, excess
    kurtosis 6: the tails of df 5 plus the left skew of a ceiling, as adherence scores
    and physiotherapy WAI answers show). A CV of 0.15 of the therapists' residual SDs
    makes the residual variances of therapists 2 SD apart differ about 3-fold, 0.30 about
    10-fold (the median variance ratio Gelfand 2015 found among heteroskedastic regression
    data sets; there is no published value for therapist caseloads). In psychotherapy,
    patients who drop out report a lower alliance, d = 0.55 on average (Sharf, Primavera &
    Diener 2010); a logistic slope of ``log(0.58) = -0.55`` per SD reproduces a difference
    of that size, the realistic preset takes about half of it and the optimistic a fifth
    (the physiotherapy value is unknown). Internal consistency of the WAI short forms
    (WAI-SR, WAI-S) is usually reported around .85-.90 (not among the verified facts of
    the project's domain notes: an assumption); a single session's score is less reliable
    than its alpha suggests, so the presets use .90, .80 and .70 (the conventional minimum
    for research use). Vary them for your setting: ``Scenario.preset("realistic")
    .replace(alliance_reliability=0.85)``.

    Examples
    --------
    >>> Scenario(heteroskedasticity_cv=0.2).is_null
    False
    >>> Scenario.preset("realistic").replace(alliance_reliability=0.85).alliance_reliability
    0.85
    """

    name: str = "custom"
    residuals: str = "normal"
    residual_df: float = 5.0
    residual_skewness: float = -1.0
    random_effects: str = "normal"
    random_effect_df: float = 5.0
    random_effect_skewness: float = 1.0
    heteroskedasticity_cv: float = 0.0
    dropout_odds_ratio: float = 1.0
    alliance_reliability: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name:
            raise DesignError(f"Scenario name must be a non-empty string, got {self.name!r}")
        for kind in ("residual", "random_effect"):
            shape_field = "residuals" if kind == "residual" else "random_effects"
            one_of(f"Scenario {shape_field}", getattr(self, shape_field), SHAPES,
                   DesignError, quote=True)
            df = _num(f"{kind}_df", getattr(self, f"{kind}_df"))
            if not df > 2:
                raise DesignError(
                    f"Scenario {kind}_df = {df!r} must be above 2 (a t distribution has a "
                    "finite variance only then); e.g. 5 for heavy tails, 10 for mild ones")
            skew = _num(f"{kind}_skewness", getattr(self, f"{kind}_skewness"))
            if skew == 0 or abs(skew) > _MAX_SKEW:
                raise DesignError(
                    f"Scenario {kind}_skewness = {skew!r} must be non-zero and between "
                    f"-{_MAX_SKEW:g} and {_MAX_SKEW:g} (negative: left skew); for no skew "
                    f"use {shape_field}='normal'")
            set_(self, f"{kind}_df", df)
            set_(self, f"{kind}_skewness", skew)
        cv = _num("heteroskedasticity_cv", self.heteroskedasticity_cv)
        if not 0 <= cv <= 3:
            raise DesignError(
                f"Scenario heteroskedasticity_cv = {cv!r} must be between 0 (one residual "
                "variance) and 3 (the CV of the therapists' residual SDs)")
        ratio = _num("dropout_odds_ratio", self.dropout_odds_ratio)
        if not 0.01 <= ratio <= 100:
            raise DesignError(
                f"Scenario dropout_odds_ratio = {ratio!r} must be between 0.01 and 100 "
                "(1: dropout unrelated to alliance; below 1: weaker alliance, more dropout)")
        rel = _num("alliance_reliability", self.alliance_reliability)
        if not 0 < rel <= 1:
            raise DesignError(
                f"Scenario alliance_reliability = {rel!r} must be in (0, 1] (1: alliance "
                "measured without error)")
        if not isinstance(self.description, str):
            raise DesignError(
                f"Scenario description must be a string, got {self.description!r}")
        set_(self, "heteroskedasticity_cv", cv)
        set_(self, "dropout_odds_ratio", ratio)
        set_(self, "alliance_reliability", rel)

    @classmethod
    def preset(cls, name: str) -> Scenario:
        """Return the preset ``"optimistic"``, ``"realistic"`` or ``"pessimistic"``.

        Examples
        --------
        >>> Scenario.preset("optimistic").alliance_reliability
        0.9
        """
        one_of("scenario preset", name, tuple(PRESETS), DesignError, quote=True)
        return PRESETS[name]

    def replace(self, **changes: Any) -> Scenario:
        """Return a copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def is_null(self) -> bool:
        """Whether the scenario perturbs nothing (the design as given)."""
        return (self.residuals == "normal" and self.random_effects == "normal"
                and self.heteroskedasticity_cv == 0 and self.dropout_odds_ratio == 1
                and self.alliance_reliability == 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python fields (for run fingerprints)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """One line naming the perturbations (or the given ``description``)."""
        if self.description:
            return self.description
        parts = []
        for label, shape, df, skew in (
                ("residuals", self.residuals, self.residual_df, self.residual_skewness),
                ("random effects", self.random_effects, self.random_effect_df,
                 self.random_effect_skewness)):
            if shape == "t":
                parts.append(f"{label} t(df={df:g})")
            elif shape == "skewed":
                parts.append(f"{label} skewed (skewness {skew:g})")
        if self.heteroskedasticity_cv:
            parts.append(f"therapist residual-SD CV {self.heteroskedasticity_cv:g}")
        if self.dropout_odds_ratio != 1:
            parts.append(f"dropout OR {self.dropout_odds_ratio:g} per SD of alliance")
        if self.alliance_reliability != 1:
            parts.append(f"alliance reliability {self.alliance_reliability:.2f}")
        return "; ".join(parts) or "no perturbation (the design as given)"

    def check(self, design: Any) -> None:
        """Raise :class:`DesignError` if the scenario cannot perturb ``design``.

        Residual shapes and heteroskedasticity need a gaussian outcome (a binomial
        outcome has no session-level residual to perturb); an alliance-dependent dropout
        needs patient-level alliance variance.
        """
        if design.family != "gaussian":
            bad = [f for f, on in (("residuals", self.residuals != "normal"),
                                   ("heteroskedasticity_cv", self.heteroskedasticity_cv > 0))
                   if on]
            if bad:
                raise DesignError(
                    f"scenario {self.name!r}: {' and '.join(bad)} perturb the session-level "
                    f"residual, which a {design.family} outcome does not have; use "
                    "scenario.replace(residuals='normal', heteroskedasticity_cv=0) (random "
                    "effects, dropout and reliability still apply)")
        c_t, c_p, _ = design.alliance_components
        if self.dropout_odds_ratio != 1 and c_t + c_p == 0:
            raise DesignError(
                f"scenario {self.name!r}: dropout_odds_ratio = {self.dropout_odds_ratio:g} "
                "links dropout to the patient's alliance, but the design's "
                "alliance_components put no variance at therapist or patient level; use "
                "dropout_odds_ratio=1 or give alliance patient-level variance")


def _num(name: str, value: Any) -> float:
    return number(f"Scenario {name}", value, DesignError)


PRESETS: dict[str, Scenario] = {
    "optimistic": Scenario(
        name="optimistic", residuals="t", residual_df=10.0, heteroskedasticity_cv=0.0,
        dropout_odds_ratio=0.9, alliance_reliability=0.9),
    "realistic": Scenario(
        name="realistic", residuals="t", residual_df=8.0, random_effects="t",
        random_effect_df=10.0, heteroskedasticity_cv=0.15, dropout_odds_ratio=0.75,
        alliance_reliability=0.8),
    "pessimistic": Scenario(
        name="pessimistic", residuals="skewed", residual_skewness=-2.0, random_effects="t",
        random_effect_df=5.0, heteroskedasticity_cv=0.3, dropout_odds_ratio=0.58,
        alliance_reliability=0.7),
}


def resolve_scenarios(scenarios: Any) -> dict[str, Scenario]:
    """Turn the ``scenarios=`` argument of ``power`` / ``power_curve`` into name -> Scenario.

    ``True`` is the three presets; a preset name, a :class:`Scenario`, a sequence of
    them, or a mapping of name -> Scenario (or preset name) give those. The unperturbed
    design comes first as ``"baseline"`` unless one of the scenarios perturbs nothing.

    Examples
    --------
    >>> list(resolve_scenarios(True))
    ['baseline', 'optimistic', 'realistic', 'pessimistic']
    >>> list(resolve_scenarios({"unreliable": Scenario(alliance_reliability=0.6)}))
    ['baseline', 'unreliable']
    """
    allowed = ("True, a preset name ('optimistic', 'realistic', 'pessimistic'), a "
               "Scenario, a list of them or a mapping of name -> Scenario")
    items: list[tuple[str, Scenario]]
    if scenarios is True:
        items = list(PRESETS.items())
    elif isinstance(scenarios, str | Scenario):
        sc = _one(scenarios, None)
        items = [(sc.name, sc)]
    elif isinstance(scenarios, Mapping):
        items = []
        for key, val in scenarios.items():
            if not isinstance(key, str) or not key:
                raise DesignError(f"scenario names must be non-empty strings, got {key!r}")
            items.append((key, _one(val, key)))
    elif isinstance(scenarios, Sequence) and not isinstance(scenarios, bytes):
        items = [(sc.name, sc) for sc in (_one(v, None) for v in scenarios)]
    else:
        raise DesignError(f"scenarios must be {allowed}; got {scenarios!r}")
    if not items:
        raise DesignError(f"scenarios holds no scenario; give {allowed}")
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DesignError(
            f"scenario names must be unique; {', '.join(map(repr, dup))} given more than "
            "once (pass a mapping of name -> Scenario to name them)")
    out: dict[str, Scenario] = {}
    if not any(sc.is_null for _, sc in items):
        if BASELINE in names:
            raise DesignError(
                f"the name {BASELINE!r} is kept for the unperturbed design; rename the "
                "perturbed scenario")
        out[BASELINE] = Scenario(name=BASELINE)
    out.update(items)
    return out


def _one(value: Any, name: str | None) -> Scenario:
    if isinstance(value, str):
        sc = Scenario.preset(value)
    elif isinstance(value, Scenario):
        sc = value
    else:
        raise DesignError(
            f"a scenario must be a Scenario or a preset name ('optimistic', 'realistic', "
            f"'pessimistic'); got {value!r}")
    return sc if name is None or sc.name == name else sc.replace(name=name)


# --- the simulator's hooks (called from planning.simulate) -----------------------------

def _substream(rng: np.random.Generator, part: str) -> np.random.Generator:
    """Return the Generator of one perturbation's stream for a replicate.

    ``rng`` is the replicate's own Generator (on its SeedSequence); it is not drawn
    from, so the design's draws stay those of the unperturbed replicate.
    """
    ss = rng.bit_generator.seed_seq
    if not isinstance(ss, np.random.SeedSequence):
        raise TypeError("a scenario needs the replicate's Generator built on a SeedSequence")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, _TAG, _SUB[part]), pool_size=ss.pool_size)))


def _chisq(rngs: Sequence[np.random.Generator], part: str, size: int, df: float,
           cells: np.ndarray | None = None, grid: int = 0) -> np.ndarray:
    """Chi-square(df) draws, one row per replicate (placed on ``cells`` of a grid)."""
    out = np.empty((len(rngs), size)) if cells is None else np.full((len(rngs), grid), df)
    for b, rng in enumerate(rngs):
        draws = _substream(rng, part).chisquare(df, size=size)
        if cells is None:
            out[b] = draws
        else:
            out[b, cells] = draws
    return out


def skewed_from_normal(z: np.ndarray, skewness: float) -> np.ndarray:
    """Map standard-normal draws monotonically onto a standardised skewed distribution.

    The centred, scaled chi-square with ``k = 8 / skewness**2`` df (reflected for a
    negative skewness): mean 0, variance 1, the given skewness, excess kurtosis
    ``12 / k``. Each value is the chi-square quantile of the normal draw's probability
    (tails computed on their own side, so extreme draws keep their precision).

    Examples
    --------
    >>> x = skewed_from_normal(np.random.default_rng(0).standard_normal(200_000), -1.0)
    >>> abs(round(float(x.mean()), 2)), round(float(x.var()), 2)
    (0.0, 1.0)
    """
    k = 8.0 / skewness**2
    zz = z if skewness > 0 else -z
    q = np.empty_like(zz)
    low = zz <= 0
    q[low] = special.gammaincinv(k / 2, special.ndtr(zz[low]))
    q[~low] = special.gammainccinv(k / 2, special.ndtr(-zz[~low]))
    x = (2 * q - k) / math.sqrt(2 * k)
    return x if skewness > 0 else -x


def heteroskedasticity_factors(z: np.ndarray, cv: float) -> np.ndarray:
    """Residual-SD multipliers ``exp(sigma z - sigma**2)``, ``sigma**2 = log(1 + cv**2)``.

    Lognormal with coefficient of variation ``cv`` and mean square 1.

    Examples
    --------
    >>> s = heteroskedasticity_factors(np.random.default_rng(1).standard_normal(400_000), 0.3)
    >>> round(float((s**2).mean()), 2), round(float(s.std() / s.mean()), 2)
    (1.0, 0.3)
    """
    sigma = math.sqrt(math.log1p(cv * cv))
    return np.exp(sigma * z - sigma * sigma)


def _shape(z: np.ndarray, shape: str, df: float, skew: float,
           rngs: Sequence[np.random.Generator], part: str,
           cells: np.ndarray | None = None, n: int = 0) -> None:
    """Give the standard-normal draws ``z`` (k, m) the scenario's shape, in place.

    ``t``: ``z * sqrt((df - 2) / w)`` with ``w`` chi-square(df) from the part's
    sub-stream (a t(df) scaled to variance 1); ``skewed``: :func:`skewed_from_normal`.
    """
    if shape == "t":
        m = z.shape[1]
        w = _chisq(rngs, part, n if cells is not None else m, df, cells, m)
        z *= np.sqrt((df - 2) / w)
    elif shape == "skewed":
        z[...] = skewed_from_normal(z, skew)


def perturb_outcome_draws(sc: Scenario, g_out: np.ndarray,
                          rngs: Sequence[np.random.Generator], lay: Any,
                          gaussian: bool) -> None:
    """Apply the outcome perturbations to a block's standard-normal outcome draws.

    ``g_out`` is ``(k, T + P [+ P * S])``: therapist intercepts, patient intercepts and
    (gaussian) the residuals on the grid, before their scaling by the ICCs; ``rngs`` the
    replicates' Generators (not drawn from). Shapes, then each therapist's residual-SD
    multiplier; in place.
    """
    T, P = lay.T, lay.P
    if sc.random_effects != "normal":
        for part, sl in (("therapist", slice(0, T)), ("patient", slice(T, T + P))):
            _shape(g_out[:, sl], sc.random_effects, sc.random_effect_df,
                   sc.random_effect_skewness, rngs, part)
    if not gaussian:
        return
    e = g_out[:, T + P:]
    if sc.residuals != "normal":
        _shape(e, sc.residuals, sc.residual_df, sc.residual_skewness, rngs, "residual",
               lay.cells, lay.n)
    if sc.heteroskedasticity_cv > 0:
        h = np.empty((len(rngs), T))
        for b, rng in enumerate(rngs):
            _substream(rng, "heteroskedasticity").standard_normal(out=h[b])
        s = heteroskedasticity_factors(h, sc.heteroskedasticity_cv)
        e *= np.repeat(s[:, lay.pat_ther], lay.S, axis=1)  # grid: S cells per patient


def measurement_error(sc: Scenario, alliance: np.ndarray,
                      rngs: Sequence[np.random.Generator], lay: Any) -> None:
    """Add the scenario's measurement error to the block's alliance (k, P * S), in place."""
    sd = math.sqrt((1 - sc.alliance_reliability) / sc.alliance_reliability)
    k, G = alliance.shape
    err = np.zeros((k, G))
    for b, rng in enumerate(rngs):
        r = _substream(rng, "measurement")
        if lay.cells is None:
            r.standard_normal(out=err[b])
        else:
            err[b, lay.cells] = r.standard_normal(lay.n)
    err *= sd
    alliance += err


def mnar_dropout(sc: Scenario, p_drop: np.ndarray, z: np.ndarray,
                 groups: np.ndarray | None) -> np.ndarray:
    """Per-patient dropout probabilities linked to alliance, keeping each group's mean.

    ``p_drop`` (k, P) holds the design's dropout probability of every patient (equal
    within an arm), ``z`` (k, P) the patients' standardised alliance and ``groups``
    their arm (or None). In each replicate and group the intercept of
    ``logit p = a + log(OR) z`` is solved (Newton) so that the mean of ``p`` over the
    group's patients equals the design's probability.

    Examples
    --------
    >>> z = np.random.default_rng(2).standard_normal((3, 500))
    >>> p = mnar_dropout(Scenario(dropout_odds_ratio=0.5), np.full((3, 500), 0.2), z, None)
    >>> np.round(p.mean(axis=1), 10).tolist()
    [0.2, 0.2, 0.2]
    """
    b = math.log(sc.dropout_odds_ratio)
    g = np.zeros(p_drop.shape, np.int64) if groups is None else groups.astype(np.int64)
    n_groups = int(g.max()) + 1
    k = p_drop.shape[0]
    target = np.zeros((k, n_groups))
    count = np.zeros((k, n_groups))
    rows = np.repeat(np.arange(k), p_drop.shape[1]).reshape(p_drop.shape)
    np.add.at(target, (rows, g), p_drop)
    np.add.at(count, (rows, g), 1.0)
    target = np.divide(target, count, out=np.zeros_like(target), where=count > 0)
    live = (target > 0) & (target < 1)
    a = np.where(live, special.logit(np.clip(target, 1e-12, 1 - 1e-12)), 0.0)
    bz = b * z
    for _ in range(100):
        p = special.expit(np.take_along_axis(a, g, axis=1) + bz)
        f = np.zeros((k, n_groups))
        d = np.zeros((k, n_groups))
        np.add.at(f, (rows, g), p)
        np.add.at(d, (rows, g), p * (1 - p))
        f = np.divide(f, count, out=np.zeros_like(f), where=count > 0) - target
        d = np.divide(d, count, out=np.ones_like(d), where=count > 0)
        step = np.where(live, f / np.maximum(d, 1e-300), 0.0)
        a -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    p = special.expit(np.take_along_axis(a, g, axis=1) + bz)
    return np.where(np.take_along_axis(live, g, axis=1), p, p_drop)
