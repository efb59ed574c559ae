"""Simulate data from a planned :class:`~alliance_models.power.design.Design`.

Two layers: :func:`simulate_arrays` is the plain-numpy core (one replicate as arrays on
the full therapist x patient x session grid plus an ``observed`` mask for dropout);
:func:`simulate` is the thin pandas shell returning the canonical long data frame of
``docs/CONTRACTS.md``; :func:`batch_arrays` stacks replicates into the
``(X, Y, outer, inner, mask)`` arrays that the batched REML engine takes, without a data
frame per replicate.

Scales of the simulated columns
-------------------------------
``alliance`` and ``autonomy`` are standardised (population mean 0, SD 1; alliance is
left-skewed); ``age`` is in years (truncated normal); ``arm`` is 0/1; ``adherence`` is
the outcome on the residual-SD scale (gaussian) or the proportion numerator/denominator
(binomial). ``alliance_pm`` / ``alliance_pmc`` are the patient mean of the *observed*
sessions and the deviation from it. The noise-free fixed part of the linear predictor is
kept (``SimArrays.eta``) so the engine can state the true coefficient of any analysis
formula exactly (see :mod:`alliance_models.power.engine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special, stats

from .._utils import RNGLike
from ..errors import ModelSpecError
from .design import Design

__all__ = [
    "SimArrays",
    "age_moments",
    "batch_arrays",
    "design_matrix",
    "latent_scale",
    "simulate",
    "simulate_arrays",
    "to_frame",
]

# independent streams per component, so that changing one part of a design (e.g. the
# number of therapists) leaves the other draws of a replicate as similar as possible
_STREAMS = ("structure", "arm", "alliance", "moderators", "outcome", "dropout")


@dataclass(frozen=True, eq=False)
class SimArrays:
    """One simulated replicate as numpy arrays on the full (pre-dropout) grid.

    Attributes
    ----------
    therapist, patient, session : ndarray of int, shape (n,)
        Therapist codes 0..T-1, patient codes 0..P-1 (unique across therapists) and
        session numbers 1..m.
    observed : ndarray of bool, shape (n,)
        False for sessions lost to dropout.
    columns : dict of str to ndarray
        ``alliance``, ``alliance_pm``, ``alliance_pmc``, ``adherence`` and, when the
        design has them, ``arm``, ``age``, ``autonomy`` and the binomial counts.
    eta : ndarray, shape (n,)
        The fixed part of the linear predictor (outcome scale for gaussian, logit scale
        for binomial), without random effects or noise.
    sizes : tuple of int
        Patients per therapist.
    """

    therapist: np.ndarray
    patient: np.ndarray
    session: np.ndarray
    observed: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    eta: np.ndarray = field(default_factory=lambda: np.empty(0))
    sizes: tuple[int, ...] = ()

    @property
    def n_rows(self) -> int:
        """Rows on the full grid (observed or not)."""
        return int(self.therapist.shape[0])


def _draw_counts(spec: object, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` positive counts from an int, a list of sizes or a distribution tuple."""
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    assert isinstance(spec, tuple)
    if not isinstance(spec[0], str):
        return np.asarray(spec, dtype=np.int64)
    mean = float(spec[1]) - 1.0  # shifted so that every unit has at least one
    if mean <= 0:
        return np.ones(n, dtype=np.int64)
    if spec[0] == "poisson":
        return 1 + rng.poisson(mean, size=n)
    k = float(spec[2])
    return 1 + rng.negative_binomial(k, k / (k + mean), size=n)


def _std_skewnormal(shape: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Skew-normal draws standardised to mean 0 and variance 1 (exact moments)."""
    if shape == 0:
        return rng.standard_normal(size)
    delta = shape / math.sqrt(1 + shape * shape)
    u0 = np.abs(rng.standard_normal(size))
    u1 = rng.standard_normal(size)
    x = delta * u0 + math.sqrt(1 - delta * delta) * u1
    mean = delta * math.sqrt(2 / math.pi)
    sd = math.sqrt(1 - 2 * delta * delta / math.pi)
    return (x - mean) / sd


def age_moments(design: Design) -> tuple[float, float]:
    """Exact mean and SD of the truncated-normal age distribution (years).

    Examples
    --------
    >>> m, s = age_moments(Design())
    >>> round(m, 2), round(s, 2)
    (50.17, 13.19)
    """
    mean, sd, lo, hi = design.age_distribution
    a, b = (lo - mean) / sd, (hi - mean) / sd
    m, v = stats.truncnorm.stats(a, b, loc=mean, scale=sd, moments="mv")
    return float(m), float(math.sqrt(v))


def latent_scale(design: Design) -> float:
    """SD of the residual (therapist + patient + session) part on the linear-predictor scale.

    1 for gaussian outcomes; for binomial outcomes the latent-logistic total,
    ``sqrt((pi^2 / 3) / (1 - icc_therapist - icc_patient))``, so that the ICCs hold on
    the latent scale and standardised effects are in latent residual-SD units.
    """
    if design.family == "gaussian":
        return 1.0
    return math.sqrt((math.pi**2 / 3) / (1 - design.icc_therapist - design.icc_patient))


def simulate_arrays(design: Design, seed: RNGLike = None) -> SimArrays:
    """Simulate one replicate of ``design`` as arrays (the numpy core of :func:`simulate`).

    Parameters
    ----------
    design : Design
        The planned trial.
    seed : int, SeedSequence, Generator or None
        Source of randomness. Components (structure, arms, alliance, moderators,
        outcome, dropout) draw from separate child streams.

    Returns
    -------
    SimArrays

    Examples
    --------
    >>> sa = simulate_arrays(Design(therapists=4, patients_per_therapist=3, sessions=2), 1)
    >>> sa.n_rows, int(sa.observed.sum())
    (24, 24)
    """
    if isinstance(seed, np.random.Generator):
        ss = np.random.SeedSequence(int(seed.integers(2**63)))
    elif isinstance(seed, np.random.SeedSequence):
        # a fresh copy: spawning mutates a SeedSequence, and the same seed must give
        # the same data every time
        ss = np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key,
                                    pool_size=seed.pool_size)
    else:
        ss = np.random.SeedSequence(seed)
    rngs = dict(zip(_STREAMS, (np.random.default_rng(s) for s in ss.spawn(len(_STREAMS))),
                    strict=True))
    T = design.n_therapists

    # structure: patients per therapist, sessions per patient
    r = rngs["structure"]
    sizes = _draw_counts(design.patients_per_therapist, T, r)
    P = int(sizes.sum())
    pat_ther = np.repeat(np.arange(T), sizes)
    m = _draw_counts(design.sessions, P, r)
    n = int(m.sum())
    patient = np.repeat(np.arange(P), m)
    therapist = pat_ther[patient]
    starts = np.concatenate([[0], np.cumsum(m)[:-1]])
    session = np.arange(n) - np.repeat(starts, m) + 1

    cols: dict[str, np.ndarray] = {}
    # arms
    r = rngs["arm"]
    pat_arm: np.ndarray | None = None
    if design.randomisation == "therapist":
        t0, t1 = design.arm_therapists
        ther_arm = r.permutation(np.r_[np.zeros(t0, np.int64), np.ones(t1, np.int64)])
        pat_arm = ther_arm[pat_ther]
    elif design.randomisation == "patient":
        key = r.random(P)
        order = np.lexsort((key, pat_ther))
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty(P, np.int64)
        rank[order] = np.arange(P) - np.repeat(first, sizes)
        offset = r.integers(0, 2, size=T)
        pat_arm = (rank + offset[pat_ther]) % 2
    if pat_arm is not None:
        cols["arm"] = pat_arm[patient].astype(float)

    # alliance: therapist + patient + session parts, each standardised
    r = rngs["alliance"]
    c_t, c_p, c_s = design.alliance_components
    a_t = r.standard_normal(T)
    a_p = _std_skewnormal(design.alliance_skew, P, r)
    a_s = _std_skewnormal(design.alliance_skew, n, r)
    alliance = math.sqrt(c_t) * a_t[therapist] + math.sqrt(c_p) * a_p[patient] + math.sqrt(
        c_s) * a_s
    cols["alliance"] = alliance
    z: dict[str, np.ndarray] = {"alliance": alliance}
    if "arm" in cols:
        z["arm"] = cols["arm"]

    # moderators
    r = rngs["moderators"]
    if "age" in design.moderators:
        mean, sd, lo, hi = design.age_distribution
        u = r.uniform(special.ndtr((lo - mean) / sd), special.ndtr((hi - mean) / sd), size=P)
        age_p = mean + sd * special.ndtri(u)
        mu, sigma = age_moments(design)
        cols["age"] = age_p[patient]
        z["age"] = (cols["age"] - mu) / sigma
    if "autonomy" in design.moderators:
        if design.moderators["autonomy"] == "therapist":
            aut = r.standard_normal(T)[therapist]
        else:
            aut = r.standard_normal(P)[patient]
        cols["autonomy"] = aut
        z["autonomy"] = aut

    # outcome
    r = rngs["outcome"]
    scale = latent_scale(design)
    fixed = np.zeros(n)
    for term, beta in design.effects.items():
        prod = np.ones(n)
        for var in term.split(":"):
            prod = prod * z[var]
        fixed += beta * prod
    u = r.standard_normal(T)[therapist] * math.sqrt(design.icc_therapist)
    v = r.standard_normal(P)[patient] * math.sqrt(design.icc_patient)
    if design.family == "gaussian":
        eta = fixed
        e = r.standard_normal(n) * math.sqrt(1 - design.icc_therapist - design.icc_patient)
        cols["adherence"] = eta + u + v + e
    else:
        eta = float(special.logit(design.baseline_adherence)) + scale * fixed
        prob = special.expit(eta + scale * (u + v))
        k = design.n_trials
        num = r.binomial(k, prob)
        num_col, den_col = design.count_columns
        cols[num_col] = num.astype(np.int64)
        cols[den_col] = np.full(n, k, dtype=np.int64)
        cols["adherence"] = num / k

    # dropout (missing completely at random), then the observed patient means
    r = rngs["dropout"]
    d = design.dropout
    if isinstance(d, tuple):
        assert pat_arm is not None
        p_drop = np.where(pat_arm == 1, d[1], d[0])
    else:
        p_drop = np.full(P, float(d))
    drops = r.random(P) < p_drop
    if design.dropout_timing == "uniform":
        last = np.floor(r.random(P) * np.maximum(m - 1, 1)).astype(np.int64) + 1
    else:
        last = np.full(P, int(design.dropout_timing))
    last = np.where(drops & (m > 1), np.minimum(last, m), m)
    observed = session <= last[patient]

    w = observed.astype(float)
    cnt = np.bincount(patient, weights=w, minlength=P)
    pm = np.bincount(patient, weights=alliance * w, minlength=P) / cnt
    cols["alliance_pm"] = pm[patient]
    cols["alliance_pmc"] = alliance - pm[patient]
    return SimArrays(
        therapist=therapist,
        patient=patient,
        session=session,
        observed=observed,
        columns=cols,
        eta=eta,
        sizes=tuple(int(s) for s in sizes),
    )


def to_frame(sa: SimArrays, design: Design) -> pd.DataFrame:
    """Turn :class:`SimArrays` into the canonical long data frame (observed rows only)."""
    keep = sa.observed
    width_t = len(str(design.n_therapists))
    width_p = len(str(int(sa.patient.max()) + 1))
    t_lab = np.array([f"T{i + 1:0{width_t}d}" for i in range(design.n_therapists)])
    p_lab = np.array([f"P{i + 1:0{width_p}d}" for i in range(int(sa.patient.max()) + 1)])
    out: dict[str, object] = {
        "therapist": t_lab[sa.therapist[keep]],
        "patient": p_lab[sa.patient[keep]],
        "session": sa.session[keep].astype(np.int64),
    }
    if "arm" in sa.columns:
        out["arm"] = sa.columns["arm"][keep].astype(np.int64)
    order = ["alliance", "alliance_pm", "alliance_pmc", "age", "autonomy", "adherence",
             *design.count_columns]
    for c in order:
        if c in sa.columns:
            out[c] = sa.columns[c][keep]
    return pd.DataFrame(out)


def simulate(design: Design, seed: RNGLike = None) -> pd.DataFrame:
    """Simulate one data set from a planned trial, in the canonical analysis shape.

    Parameters
    ----------
    design : Design
        The planned trial.
    seed : int, SeedSequence, Generator or None
        Source of randomness; the same seed gives the same data.

    Returns
    -------
    DataFrame
        One row per observed session with ``therapist``, ``patient`` (unique ids),
        ``session``, ``arm`` (if randomised), ``alliance``, ``alliance_pm``,
        ``alliance_pmc``, ``age`` (years) and ``autonomy`` (if the design has them),
        ``adherence`` and, for binomial designs, ``completed``/``prescribed`` or
        ``attended``/``scheduled``. Alliance and autonomy are standardised.

    Examples
    --------
    >>> import alliance_models as am
    >>> d = am.Design(therapists=6, patients_per_therapist=4, sessions=3,
    ...               randomisation="therapist", effects={"arm": 0.3})
    >>> df = am.simulate(d, seed=1)
    >>> df.shape[0], sorted(df["arm"].unique().tolist())
    (72, [0, 1])
    >>> list(df.columns[:4])
    ['therapist', 'patient', 'session', 'arm']
    """
    return to_frame(simulate_arrays(design, seed), design)


# --- arrays for the batched engine ---------------------------------------------------

def _plain_factors(name: str) -> list[str] | None:
    """Split a formulaic column name into plain variable names, or None if not plain."""
    if name == "Intercept":
        return []
    parts = name.split(":")
    if all(p.isidentifier() for p in parts):
        return parts
    return None


def design_matrix(columns: dict[str, np.ndarray], x_names: tuple[str, ...],
                  rows: np.ndarray | None = None) -> np.ndarray | None:
    """Evaluate a fixed-effects design from arrays when every column is a plain product.

    Handles ``Intercept`` and products of numeric columns (``"alliance:autonomy"``);
    returns None when a column needs formulaic (``C(arm)[T.1]``, ``I(...)``,
    transformations), in which case the caller builds a data frame instead.

    Examples
    --------
    >>> cols = {"x": np.array([1.0, 2.0]), "m": np.array([3.0, 5.0])}
    >>> design_matrix(cols, ("Intercept", "x", "x:m"))
    array([[ 1.,  1.,  3.],
           [ 1.,  2., 10.]])
    """
    facs = [_plain_factors(nm) for nm in x_names]
    if any(f is None for f in facs) or any(v not in columns for f in facs for v in f or []):
        return None
    n = len(next(iter(columns.values()))) if rows is None else int(rows.sum())
    X = np.ones((n, len(x_names)))
    for j, f in enumerate(facs):
        for v in f or []:
            col = columns[v] if rows is None else columns[v][rows]
            X[:, j] *= col
    return X


def batch_arrays(
    design: Design,
    response: str,
    x_names: tuple[str, ...],
    seeds: list[np.random.SeedSequence],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[SimArrays]]:
    """Simulate replicates with one shared layout and stack them for the batched engine.

    Requires ``design.has_fixed_structure`` (fixed caseloads and session counts) and a
    design whose fixed-effect columns are plain products (see :func:`design_matrix`).

    Returns
    -------
    X : ndarray (B, n, p)
    Y : ndarray (B, n)
    outer, inner : ndarray (n,)
        Therapist codes and (globally unique) patient codes.
    mask : ndarray (B, n) of bool
        Observed rows (dropout).
    sims : list of SimArrays
        The replicates themselves (for the truth and diagnostics).
    """
    if not design.has_fixed_structure:
        raise ModelSpecError("batch_arrays needs fixed caseloads and session counts")
    sims = [simulate_arrays(design, s) for s in seeds]
    Xs, Ys = [], []
    for sa in sims:
        X = design_matrix(sa.columns, x_names)
        if X is None or response not in sa.columns:
            raise ModelSpecError(
                f"the formula's columns {x_names} are not plain products of simulated "
                "columns; use a data-frame engine"
            )
        Xs.append(X)
        Ys.append(sa.columns[response])
    first = sims[0]
    return (np.stack(Xs), np.stack(Ys), first.therapist, first.patient,
            np.stack([sa.observed for sa in sims]), sims)
