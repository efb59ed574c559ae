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
sessions and the deviation from it; ``age_c``, ``autonomy_c`` and ``alliance_cwc`` are
centred as ``am.prepare`` centres real data (sample means). The noise-free fixed part of
the linear predictor is kept (``SimArrays.eta``) so the engine can state the true
coefficient of any analysis formula exactly (see :mod:`alliance_models.power.engine`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        ``alliance``, ``alliance_pm``, ``alliance_pmc``, ``alliance_cwc``, ``adherence``
        and, when the design has them, ``arm``, ``age``, ``age_c``, ``autonomy``,
        ``autonomy_c`` and the binomial counts.
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
        mu, sigma = _age_moments_of(tuple(design.age_distribution))
        cols["age"] = age_p[patient]
        z["age"] = (cols["age"] - mu) / sigma
    if "autonomy" in design.moderators:
        if design.moderators["autonomy"] == "therapist":
            aut_p = r.standard_normal(T)[pat_ther]
        else:
            aut_p = r.standard_normal(P)
        aut = aut_p[patient]
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
    # the centred columns am.prepare adds by default: moderators at the mean over
    # patients (each counted once; every patient has an observed session), alliance
    # within patient
    if "age" in cols:
        cols["age_c"] = cols["age"] - age_p.mean()
    if "autonomy" in cols:
        cols["autonomy_c"] = aut - aut_p.mean()
    cols["alliance_cwc"] = cols["alliance_pmc"]
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
             *design.count_columns, "age_c", "autonomy_c", "alliance_cwc"]
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
        ``attended``/``scheduled``; then the centred columns that ``am.prepare`` adds by
        default: ``age_c`` and ``autonomy_c`` (centred at the sample mean over patients)
        and ``alliance_cwc`` (centred within patient, equal to ``alliance_pmc``).
        Alliance and autonomy are standardised.

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


# (entropy, spawn_key, pool_size) of a replicate's root SeedSequence
_Root = tuple[Any, tuple[int, ...], int]


def _stream_seeds(seed: RNGLike) -> _Root:
    """``(entropy, spawn_key, pool_size)`` of the root seed, as :func:`simulate_arrays` does.

    The children that :func:`simulate_arrays` spawns from a fresh copy of this root are
    ``SeedSequence(entropy, spawn_key=spawn_key + (i,), pool_size=pool_size)``; building
    only the ones a design draws from gives the same streams for less work.
    """
    if isinstance(seed, np.random.Generator):
        ss = np.random.SeedSequence(int(seed.integers(2**63)))
    elif isinstance(seed, np.random.SeedSequence):
        ss = seed
    else:
        ss = np.random.SeedSequence(seed)
    return ss.entropy, tuple(ss.spawn_key), ss.pool_size


def _stream_rng(root: _Root, stream: str) -> np.random.Generator:
    """Build the Generator of one component stream (see ``_STREAMS``) of a replicate."""
    entropy, key, pool = root
    child = np.random.SeedSequence(entropy, spawn_key=(*key, _STREAMS.index(stream)),
                                   pool_size=pool)
    return np.random.Generator(np.random.PCG64(child))


# numpy's SeedSequence (O'Neill's seed_seq_fe) constants; the hash constants evolve the
# same way for every sequence, so many sequences can be hashed at once with uint32 arrays
_SS_INIT_A, _SS_MULT_A = 0x43B0D7E5, 0x931E8875
_SS_INIT_B, _SS_MULT_B = 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R = np.uint32(0xCA01F9DD), np.uint32(0x4973F715)
_M32 = 0xFFFFFFFF


class _StateWords(np.random.bit_generator.ISeedSequence):
    """Seeding words computed ahead (by :func:`_child_words`) handed to ``PCG64``."""

    __slots__ = ("words",)

    def __init__(self, words: np.ndarray) -> None:
        self.words = words

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        """Return the precomputed state (only PCG64's request, 4 uint64 words)."""
        if n_words != 4 or np.dtype(dtype) != np.uint64:  # pragma: no cover - PCG64 only
            raise ValueError("precomputed seeding words are 4 uint64 words (PCG64)")
        return self.words


def _int_words(x: int) -> list[int]:
    """Little-endian uint32 words of a non-negative int, as numpy's SeedSequence takes it."""
    if x == 0:
        return [0]
    out = []
    while x > 0:
        out.append(x & _M32)
        x >>= 32
    return out


def _child_words(roots: Sequence[_Root], streams: Sequence[int]) -> np.ndarray | None:
    """PCG64 seeding words of the children ``streams`` of every root, all at once.

    Row ``len(streams) * b + j`` equals ``SeedSequence(entropy_b, spawn_key=key_b +
    (streams[j],), pool_size=4).generate_state(4, np.uint64)``: the SeedSequence
    algorithm run on ``(rows, words)`` uint32 arrays. Returns None (use numpy's
    SeedSequence) for anything but int entropy, pool size 4 and equal entropy lengths,
    or if the first row does not match numpy's own (a guard against a changed numpy).
    """
    bases: list[list[int]] = []
    runs: dict[int, list[int]] = {}  # the words of each entropy (usually one for all)
    for entropy, key, pool in roots:
        if pool != 4 or not isinstance(entropy, int) or entropy < 0:
            return None
        run = runs.get(entropy)
        if run is None:
            run = _int_words(entropy)
            run += [0] * (4 - len(run))  # a spawn key is always there: pad to pool size
            runs[entropy] = run
        bases.append(run + [w for k in key for w in (
            (int(k),) if 0 <= k <= _M32 else _int_words(int(k)))])
    tails = [_int_words(s) for s in streams]
    if not bases or not tails or len({len(r) for r in bases}) != 1 or len(
            {len(t) for t in tails}) != 1:
        return None
    # row len(streams) * b + j: root b's words, then stream j's
    base = np.array(bases, dtype=np.uint32)
    ent = np.concatenate([np.repeat(base, len(tails), axis=0),
                          np.tile(np.array(tails, dtype=np.uint32), (len(bases), 1))], axis=1)
    hc = _SS_INIT_A

    def hashmix(v: np.ndarray) -> np.ndarray:
        nonlocal hc
        v = v ^ np.uint32(hc)
        hc = (hc * _SS_MULT_A) & _M32
        v = v * np.uint32(hc)
        return v ^ (v >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r: np.ndarray = _SS_MIX_L * x - _SS_MIX_R * y
        return r ^ (r >> np.uint32(16))

    m, n_words = ent.shape
    # n_words >= 5 (entropy padded to 4 words + the spawn key)
    pool_: list[np.ndarray] = [hashmix(ent[:, i]) for i in range(4)]
    for i_src in range(4):
        for i_dst in range(4):
            if i_src != i_dst:
                pool_[i_dst] = mix(pool_[i_dst], hashmix(pool_[i_src]))
    for i_src in range(4, n_words):
        for i_dst in range(4):
            pool_[i_dst] = mix(pool_[i_dst], hashmix(ent[:, i_src]))
    out = np.empty((m, 8), np.uint32)
    hc = _SS_INIT_B
    for i in range(8):
        v = pool_[i % 4] ^ np.uint32(hc)
        hc = (hc * _SS_MULT_B) & _M32
        v = v * np.uint32(hc)
        out[:, i] = v ^ (v >> np.uint32(16))
    words = out.view(np.uint64)  # little-endian pairs, as SeedSequence.generate_state
    entropy, key, pool = roots[0]
    check = np.random.SeedSequence(entropy, spawn_key=(*key, streams[0]), pool_size=pool)
    if not np.array_equal(check.generate_state(4, np.uint64), words[0]):
        return None  # pragma: no cover - numpy changed its SeedSequence
    return words


# PCG64 (numpy's pcg64.h): the 128-bit LCG multiplier; 2**128 - 1
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_M128 = (1 << 128) - 1


def _pcg64_states(words: np.ndarray) -> list[tuple[int, int]]:
    """``(state, inc)`` of a PCG64 seeded with each row of ``words`` (4 uint64 words).

    numpy's ``pcg64_set_seed`` (``pcg_setseq_128_srandom_r``): ``inc = initseq << 1 | 1``,
    then from state 0 one LCG step, ``+= initstate``, one more step; with ``initstate``
    the first two words and ``initseq`` the last two (high word first), mod 2**128.
    """
    out = []
    for w0, w1, w2, w3 in words.tolist():
        inc = (((w2 << 64) | w3) << 1 | 1) & _M128
        out.append((((inc + ((w0 << 64) | w1)) * _PCG_MULT + inc) & _M128, inc))
    return out


class _Streams:
    """The component-stream Generators of a batch of replicates (see ``_STREAMS``).

    The same streams as :func:`simulate_arrays` (children of a fresh copy of each
    root), with the SeedSequence hashing done for all of them at once when possible
    (:func:`_child_words`). Then, rather than building a Generator per replicate and
    stream (three objects each, and enough container allocations to set off the
    garbage collector), one Generator per stream name is re-seeded for each replicate
    by setting its PCG64 state to the one that seeding from those words gives
    (:func:`_pcg64_states`; checked against numpy's own seeding, else Generators are
    built). A replicate's draws from a stream are therefore taken before the next
    :meth:`get` of that stream; :meth:`snapshot` and :meth:`resume` carry a stream's
    state across other replicates' draws.
    """

    def __init__(self, roots: Sequence[_Root], streams: Sequence[str]) -> None:
        idx = [_STREAMS.index(s) for s in streams]
        words = _child_words(roots, idx)
        self._m = len(streams)
        self._pos = {s: j for j, s in enumerate(streams)}
        self._states: list[tuple[int, int]] | None = None
        self._gens: list[dict[str, np.random.Generator]] | None = None
        if words is not None:
            states = _pcg64_states(words)
            # PCG64 takes any ISeedSequence (the stubs list only SeedSequence)
            ref = np.random.PCG64(_StateWords(words[0])).state  # type: ignore[arg-type]
            if (ref["state"]["state"], ref["state"]["inc"]) == states[0]:
                self._states = states
        if self._states is not None:
            self._shared = {s: np.random.Generator(np.random.PCG64(0)) for s in streams}
            self._inner: dict[str, int] = {"state": 0, "inc": 0}
            self._value = {"bit_generator": "PCG64", "state": self._inner, "has_uint32": 0,
                           "uinteger": 0}
        elif words is None:
            self._gens = [{s: _stream_rng(root, s) for s in streams} for root in roots]
        else:  # pragma: no cover - numpy changed its PCG64 seeding
            self._gens = [
                {s: np.random.Generator(np.random.PCG64(
                    _StateWords(words[b * self._m + j])))  # type: ignore[arg-type]
                 for j, s in enumerate(streams)}
                for b in range(len(roots))]

    def get(self, b: int, stream: str) -> np.random.Generator:
        """Return replicate ``b``'s ``stream`` Generator, at the stream's start."""
        if self._states is None:
            assert self._gens is not None
            return self._gens[b][stream]
        g = self._shared[stream]
        self._inner["state"], self._inner["inc"] = self._states[b * self._m + self._pos[stream]]
        g.bit_generator.state = self._value  # a fresh PCG64: no buffered 32-bit half
        return g

    def snapshot(self, g: np.random.Generator) -> Any:
        """Where a Generator from :meth:`get` stands, for :meth:`resume`."""
        return g if self._states is None else g.bit_generator.state

    def resume(self, stream: str, snap: Any) -> np.random.Generator:
        """Return the Generator of ``stream`` at a :meth:`snapshot` taken from it."""
        if self._states is None:
            return snap  # type: ignore[no-any-return]
        g = self._shared[stream]
        g.bit_generator.state = snap
        return g


# replicates per block of the vectorised simulator: about this many rows (replicates x
# grid rows) at a time keep a block's working arrays (draws, alliance, linear predictor,
# outcome) in a core's L2 cache while every element-wise pass runs over them
_BLOCK_ROWS = 1 << 14


@dataclass(eq=False)
class _Layout:
    """What the replicates of a fixed-layout design share (see :func:`_batch_blocks`)."""

    design: Design
    T: int
    P: int
    S: int
    sizes: np.ndarray
    pat_ther: np.ndarray
    therapist: np.ndarray
    patient: np.ndarray
    session: np.ndarray


@dataclass(eq=False)
class _Block:
    """The columns of a block of ``k`` replicates, each at its level.

    ``pat`` holds columns constant within a patient as ``(k, P)`` arrays (``arm``,
    ``age``, ``autonomy``, ``age_c``, ``autonomy_c``, ``alliance_pm`` and the binomial
    denominator), ``row`` the others as ``(k, n)`` arrays; ``eta`` is at either level and
    ``observed`` is None when every row is observed. :meth:`view` broadcasts either level
    to ``(k, P, S)`` without copying: a patient-level value used at each of its rows is
    the value that :func:`simulate_arrays` has there, so products and sums formed through
    these views are the same floating-point operations on the same numbers.
    """

    k: int
    P: int
    S: int
    row: dict[str, np.ndarray]
    pat: dict[str, np.ndarray]
    eta: np.ndarray
    observed: np.ndarray | None

    def view(self, name: str) -> np.ndarray:
        """Column ``name`` as a ``(k, P, S)`` or broadcastable ``(k, P, 1)`` view."""
        if name in self.pat:
            return self.pat[name][:, :, None]
        return self.row[name].reshape(self.k, self.P, self.S)

    def names(self) -> list[str]:
        """Names of the columns computed for this block."""
        return [*self.row, *self.pat]


def _batch_layout(design: Design) -> _Layout:
    """Return the shared layout of a fixed-structure design."""
    T = design.n_therapists
    sizes = _draw_counts(design.patients_per_therapist, T, np.random.default_rng(0))
    S = int(design.sessions)  # fixed structure: an int
    P = int(sizes.sum())
    pat_ther = np.repeat(np.arange(T), sizes)
    patient = np.repeat(np.arange(P), S)
    return _Layout(design=design, T=T, P=P, S=S, sizes=sizes, pat_ther=pat_ther,
                   therapist=pat_ther[patient], patient=patient,
                   session=np.tile(np.arange(1, S + 1), P))


def _no_dropout(design: Design) -> bool:
    """Whether no session can be lost to dropout (its stream's draws change nothing)."""
    d = design.dropout
    return int(design.sessions) == 1 or (max(d) if isinstance(d, tuple) else float(d)) == 0.0


def _batch_blocks(lay: _Layout, seeds: Sequence[RNGLike], need: set[str] | None = None,
                  block: int | None = None,
                  y_out: np.ndarray | None = None) -> Iterator[tuple[slice, _Block]]:
    """Simulate replicates of a fixed-layout design, a block of replicates at a time.

    ``lay`` is the design's :func:`_batch_layout`. Yields ``(rows, block)``: the
    replicates ``rows`` of ``seeds`` and their columns (see :class:`_Block`). Only the
    columns in ``need`` (all if None) are formed, besides those the linear predictor
    and the outcome are built from (and ``eta`` is kept only if in ``need``, or if
    ``need`` is None). With ``y_out`` (B, n), ``adherence`` is written there (and the
    block's column is a view of it). Replicate ``b`` equals
    ``simulate_arrays(design, seeds[b])`` bit for bit: each replicate draws from its own
    component streams with the same calls in the same order as :func:`simulate_arrays`
    (consecutive ``standard_normal`` / ``random`` calls of one stream fused into one
    call, which gives the same numbers for numpy's Generator), and everything else is
    the same floating-point operations in the same order, element by element, so a
    replicate depends only on its own seed, not on the batch or block it is in.
    """
    design = lay.design
    B, n = len(seeds), lay.P * lay.S
    if block is None:
        block = max(1, _BLOCK_ROWS // n)
    age = "age" in design.moderators
    randomised = design.randomisation in ("therapist", "patient")
    streams = [*(("arm",) if randomised else ()), "alliance",
               *(("moderators",) if age or "autonomy" in design.moderators else ()),
               "outcome", *(() if _no_dropout(design) else ("dropout",))]
    src = _Streams([_stream_seeds(s) for s in seeds], streams)
    for b0 in range(0, B, block):
        rows = slice(b0, min(B, b0 + block))
        yield rows, _block_columns(lay, src, range(rows.start, rows.stop), need,
                                   None if y_out is None else y_out[rows])


def _block_columns(lay: _Layout, src: _Streams, reps: range, need: set[str] | None,
                   y_out: np.ndarray | None = None) -> _Block:
    """Simulate the replicates ``reps`` whose component streams ``src`` holds.

    See :func:`_batch_blocks`; the comments note why each step gives the values of
    :func:`simulate_arrays` (``x[idx] * c == (x * c)[idx]``: a value computed once per
    therapist or patient and then broadcast to its rows is the value computed at each
    row; ``a + b == b + a`` and ``1 * a == a`` exactly, but no sum is reordered).
    """
    design = lay.design
    T, P, S, sizes, pat_ther = lay.T, lay.P, lay.S, lay.sizes, lay.pat_ther
    k, n = len(reps), lay.P * lay.S

    def wanted(name: str) -> bool:
        return need is None or name in need

    skewed = design.alliance_skew != 0
    age = "age" in design.moderators
    aut = design.moderators.get("autonomy")
    n_aut = 0 if aut is None else (T if aut == "therapist" else P)
    gaussian = design.family == "gaussian"
    uniform_timing = design.dropout_timing == "uniform"
    d = design.dropout
    # without dropout the dropout stream's draws change nothing (no other component reads
    # them): they are not drawn, and every row is observed
    no_dropout = _no_dropout(design)

    # --- the draws: one pass over the block's replicates, each from its own streams ----
    g_all = np.empty((k, T + (2 * P + 2 * n if skewed else P + n)))
    g_out = np.empty((k, T + P + (n if gaussian else 0)))
    g_drop = np.empty((k, 2 * P if uniform_timing else P))
    g_age = np.empty((k, P)) if age else None
    g_aut = np.empty((k, n_aut)) if n_aut else None
    ther_arm = np.empty((k, T), np.int64) if design.randomisation == "therapist" else None
    arm_key = np.empty((k, P)) if design.randomisation == "patient" else None
    arm_off = np.empty((k, T), np.int64) if design.randomisation == "patient" else None
    if age:
        mean, sd, lo, hi = design.age_distribution
        u_lo, u_hi = special.ndtr((lo - mean) / sd), special.ndtr((hi - mean) / sd)
    if ther_arm is not None:
        t0, t1 = design.arm_therapists
        arms0 = np.r_[np.zeros(t0, np.int64), np.ones(t1, np.int64)]
    out_snaps: list[Any] = []
    for b, rep in enumerate(reps):
        if ther_arm is not None or arm_key is not None:
            r = src.get(rep, "arm")
            if ther_arm is not None:
                ther_arm[b] = r.permutation(arms0)
            else:
                assert arm_key is not None and arm_off is not None
                r.random(out=arm_key[b])
                arm_off[b] = r.integers(0, 2, size=T)
        src.get(rep, "alliance").standard_normal(out=g_all[b])
        if g_age is not None or g_aut is not None:
            r = src.get(rep, "moderators")
            if g_age is not None:
                g_age[b] = r.uniform(u_lo, u_hi, size=P)
            if g_aut is not None:
                r.standard_normal(out=g_aut[b])
        r = src.get(rep, "outcome")
        r.standard_normal(out=g_out[b])
        if not gaussian:  # the binomial draws come later, from where the stream stands
            out_snaps.append(src.snapshot(r))
        if not no_dropout:
            src.get(rep, "dropout").random(out=g_drop[b])

    pat: dict[str, np.ndarray] = {}
    row: dict[str, np.ndarray] = {}
    # --- arms (patient level) ----------------------------------------------------------
    pat_arm: np.ndarray | None = None
    if ther_arm is not None:
        pat_arm = ther_arm[:, pat_ther]
    elif arm_key is not None and arm_off is not None:
        order = np.lexsort((arm_key, np.broadcast_to(pat_ther, (k, P))), axis=-1)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty((k, P), np.int64)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(P) - np.repeat(first, sizes),
                                                       (k, P)), axis=-1)
        pat_arm = (rank + arm_off[:, pat_ther]) % 2
    if pat_arm is not None:
        pat["arm"] = pat_arm.astype(float)

    # --- alliance: (therapist + patient) at patient level, + session at row level -------
    c_t, c_p, c_s = design.alliance_components
    if skewed:
        a_p = _std_skewnormal_inplace(design.alliance_skew, g_all[:, T:T + P],
                                      g_all[:, T + P:T + 2 * P])
        a_s = _std_skewnormal_inplace(design.alliance_skew, g_all[:, T + 2 * P:T + 2 * P + n],
                                      g_all[:, T + 2 * P + n:])
    else:
        a_p, a_s = g_all[:, T:T + P], g_all[:, T + P:]
    tp = (math.sqrt(c_t) * g_all[:, :T])[:, pat_ther]
    tp += math.sqrt(c_p) * a_p
    a_s *= math.sqrt(c_s)
    alliance3 = a_s.reshape(k, P, S)
    alliance3 += tp[:, :, None]  # s + (t + p) == (t + p) + s
    alliance = a_s  # (k, n), in the alliance stream's buffer
    row["alliance"] = alliance

    # --- moderators (patient level) -----------------------------------------------------
    age_p: np.ndarray | None = None
    aut_p: np.ndarray | None = None
    if g_age is not None:
        age_p = mean + sd * special.ndtri(g_age)
        pat["age"] = age_p
    if g_aut is not None:
        aut_p = g_aut[:, pat_ther] if aut == "therapist" else g_aut
        pat["autonomy"] = aut_p

    # --- linear predictor: terms of patient-level factors at patient level while no
    # term varies within a patient, then added at row level in the same order ----------
    z_pat: dict[str, np.ndarray] = {}

    def z_of(var: str) -> np.ndarray:
        """Return a standardised factor: (k, P) if patient-level, else (k, P, S)."""
        if var == "alliance":
            return alliance3
        if var not in z_pat:
            if var == "age":
                assert age_p is not None
                mu, sigma = _age_moments_of(tuple(design.age_distribution))
                z_pat[var] = (age_p - mu) / sigma
            else:
                z_pat[var] = pat[var]
        return z_pat[var]

    fixed_pat: np.ndarray | None = None
    fixed_row: np.ndarray | None = None  # (k, P, S)
    for term, beta in design.effects.items():
        zs = [z_of(v) for v in term.split(":")]
        if all(z.ndim == 2 for z in zs):
            prod = beta * zs[0] if len(zs) == 1 else _product(zs, beta)
            if fixed_row is not None:
                fixed_row += prod[:, :, None]
            elif fixed_pat is None:
                fixed_pat = prod  # 0 + x == x
            else:
                fixed_pat += prod
            continue
        views = [z if z.ndim == 3 else z[:, :, None] for z in zs]
        if fixed_row is None:
            term_row = np.empty((k, P, S))
            _product(views, beta, out=term_row)
            if fixed_pat is not None:
                term_row += fixed_pat[:, :, None]  # fixed + term == term + fixed
            fixed_row = term_row
        else:
            fixed_row += _product(views, beta, out=np.empty((k, P, S)))
    if fixed_pat is None and fixed_row is None:
        fixed_pat = np.zeros((k, P))

    # --- outcome ------------------------------------------------------------------------
    u_p = (g_out[:, :T] * math.sqrt(design.icc_therapist))[:, pat_ther]
    v_p = g_out[:, T:T + P] * math.sqrt(design.icc_patient)
    eta: np.ndarray
    if gaussian:
        e = g_out[:, T + P:]
        e *= math.sqrt(1 - design.icc_therapist - design.icc_patient)
        e3 = e.reshape(k, P, S)
        if fixed_row is not None:
            eta = fixed_row.reshape(k, n)
            # ((eta + u) + v) + e; eta itself is kept only if asked for
            if y_out is not None:
                y3 = y_out.reshape(k, P, S)
            else:
                y3 = fixed_row if not wanted("eta") else np.empty((k, P, S))
            np.add(fixed_row, u_p[:, :, None], out=y3)
            y3 += v_p[:, :, None]
            y3 += e3
        else:
            assert fixed_pat is not None
            eta = fixed_pat
            yp = fixed_pat + u_p
            yp += v_p
            y3 = e3 if y_out is None else y_out.reshape(k, P, S)
            np.add(e3, yp[:, :, None], out=y3)  # e + (eta + u + v) == (eta + u + v) + e
        row["adherence"] = y3.reshape(k, n)
    else:
        scale = latent_scale(design)
        base = float(special.logit(design.baseline_adherence))
        uv = u_p + v_p
        uv *= scale
        if fixed_row is not None:
            eta = base + scale * fixed_row.reshape(k, n)
            lin = np.add(eta.reshape(k, P, S), uv[:, :, None])  # eta + u == u + eta
            prob = special.expit(lin, out=lin).reshape(k, n)
        else:
            assert fixed_pat is not None
            eta = base + scale * fixed_pat
            prob_p = special.expit(eta + uv)
            prob = np.empty((k, P, S))
            prob[...] = prob_p[:, :, None]
            prob = prob.reshape(k, n)
        ntrials = design.n_trials
        num = np.empty((k, n), np.int64)
        for b, snap in enumerate(out_snaps):  # after the stream's normal draws, as there
            num[b] = src.resume("outcome", snap).binomial(ntrials, prob[b])
        num_col, den_col = design.count_columns
        row[num_col] = num
        if wanted(den_col):
            pat[den_col] = np.full((k, P), ntrials, dtype=np.int64)
        row["adherence"] = np.divide(num, ntrials, out=y_out)

    # --- dropout, then the observed patient means ----------------------------------------
    observed: np.ndarray | None = None
    if not no_dropout:
        if isinstance(d, tuple):
            assert pat_arm is not None
            p_drop = np.where(pat_arm == 1, d[1], d[0])
        else:
            p_drop = np.full((k, P), float(d))
        drops = g_drop[:, :P] < p_drop
        if uniform_timing:
            last = np.floor(g_drop[:, P:] * max(S - 1, 1)).astype(np.int64) + 1
        else:
            last = np.full((k, P), int(design.dropout_timing))
        last = np.where(drops & (S > 1), np.minimum(last, S), S)
        obs3 = np.arange(1, S + 1) <= last[:, :, None]  # (k, P, S)
        observed = obs3.reshape(k, n)
    if any(wanted(c) for c in ("alliance_pm", "alliance_pmc", "alliance_cwc")):
        if observed is None:
            aw = alliance3  # x * 1.0 == x
            count: np.ndarray | float = float(S)
        else:
            aw = alliance3 * obs3
            count = obs3.sum(axis=-1)
        total = np.zeros((k, P))
        for s in range(S):  # the order of np.bincount's sum, for identical means
            total += aw[:, :, s]
        total /= count
        pat["alliance_pm"] = total
        if wanted("alliance_pmc") or wanted("alliance_cwc"):
            pmc = np.subtract(alliance3, total[:, :, None]).reshape(k, n)
            row["alliance_pmc"] = row["alliance_cwc"] = pmc
    # the centred columns of simulate_arrays (each replicate's mean over patients; a
    # reduction over the last axis of a C-contiguous array sums each row as row.mean())
    if age_p is not None and wanted("age_c"):
        pat["age_c"] = age_p - np.ascontiguousarray(age_p).mean(axis=1)[:, None]
    if aut_p is not None and wanted("autonomy_c"):
        pat["autonomy_c"] = aut_p - np.ascontiguousarray(aut_p).mean(axis=1)[:, None]
    return _Block(k=k, P=P, S=S, row=row, pat=pat, eta=eta, observed=observed)


def _product(factors: Sequence[np.ndarray], beta: float,
             out: np.ndarray | None = None) -> np.ndarray:
    """``((f0 * f1) * f2 ...) * beta`` (``simulate_arrays``'s ``beta * prod``), broadcast."""
    res = np.multiply(factors[0], factors[1], out=out) if len(factors) > 1 else (
        np.multiply(factors[0], beta, out=out))
    if len(factors) > 1:
        for f in factors[2:]:
            res *= f
        res *= beta  # beta * prod == prod * beta
    return res


@functools.lru_cache(maxsize=32)
def _age_moments_of(age_distribution: tuple[float, float, float, float]) -> tuple[float, float]:
    """:func:`age_moments` of an ``age_distribution``, cached (SciPy takes milliseconds)."""
    mean, sd, lo, hi = age_distribution
    a, b = (lo - mean) / sd, (hi - mean) / sd
    m, v = stats.truncnorm.stats(a, b, loc=mean, scale=sd, moments="mv")
    return float(m), float(math.sqrt(v))


def _std_skewnormal_inplace(shape: float, u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    """:func:`_std_skewnormal` from its two standard-normal draws, overwriting ``u0``/``u1``.

    The same floating-point operations as :func:`_std_skewnormal`; returns ``u0``.
    """
    delta = shape / math.sqrt(1 + shape * shape)
    np.abs(u0, out=u0)
    u0 *= delta
    u1 *= math.sqrt(1 - delta * delta)
    u0 += u1
    u0 -= delta * math.sqrt(2 / math.pi)
    u0 /= math.sqrt(1 - 2 * delta * delta / math.pi)
    return u0


def _padded_batch(
    design: Design,
    response: str,
    x_names: tuple[str, ...],
    seeds: Sequence[RNGLike],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[SimArrays]]:
    """Replicates of a random-structure design on a padded grid (see :func:`batch_arrays`)."""
    sims = [simulate_arrays(design, s) for s in seeds]
    T = design.n_therapists
    p_max = max(max(sa.sizes) for sa in sims)
    s_max = max(int(sa.session.max()) for sa in sims)
    B, n = len(sims), T * p_max * s_max
    X = np.zeros((B, n, len(x_names)))
    Y = np.zeros((B, n))
    mask = np.zeros((B, n), dtype=bool)
    for b, sa in enumerate(sims):
        first = np.concatenate([[0], np.cumsum(sa.sizes)[:-1]])
        slot = sa.patient - first[sa.therapist]
        pos = (sa.therapist * p_max + slot) * s_max + sa.session - 1
        Xb = design_matrix(sa.columns, x_names)
        assert Xb is not None  # checked by the caller
        X[b, pos] = Xb
        Y[b, pos] = sa.columns[response]
        mask[b, pos] = sa.observed
    outer = np.repeat(np.arange(T), p_max * s_max)
    inner = np.repeat(np.arange(T * p_max), s_max)
    return X, Y, outer, inner, mask, sims


def batch_arrays(
    design: Design,
    response: str,
    x_names: tuple[str, ...],
    seeds: Sequence[np.random.SeedSequence],
    *,
    padded: bool = False,
    sims: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[SimArrays]]:
    """Simulate replicates with one shared layout and stack them for the batched engine.

    Needs a design whose fixed-effect columns are plain products (see
    :func:`design_matrix`). With fixed caseloads and session counts
    (``design.has_fixed_structure``) it is vectorised over replicates, and replicate
    ``b`` is exactly ``simulate_arrays(design, seeds[b])`` (its own seed's streams, the
    same operations), so results do not depend on how replicates are batched.

    With random caseloads or session counts, ``padded=True`` simulates each replicate
    with :func:`simulate_arrays` and places it on a padded grid of ``T`` therapists x
    ``Pmax`` patient slots x ``Smax`` session slots (the largest caseload and session
    count in the batch): row ``(t * Pmax + j) * Smax + s - 1`` holds therapist ``t``'s
    ``j``-th patient's session ``s``; unused slots are zeros with ``mask`` False, so a
    patient slot can have no observed row (the batched REML engine gives such a layout
    the compact fit's results up to rounding). The grid, but not any replicate's
    values, depends on the batch.

    Parameters
    ----------
    design : Design
        The planned trial.
    response : str
        The simulated column to return as ``Y``.
    x_names : tuple of str
        The fixed-effect columns of ``X``: ``Intercept`` and plain products of simulated
        columns (``"alliance:autonomy"``).
    seeds : sequence of SeedSequence (or int, Generator)
        One seed per replicate, as :func:`simulate_arrays` takes it.
    padded : bool, default False
        Allow random caseloads or session counts (see above).
    sims : bool, default True
        Also return the replicates as :class:`SimArrays`. With False the list is empty
        and, for a fixed layout, only the columns that ``X``, ``Y`` and the outcome
        need are formed (faster; ``X``, ``Y`` and ``mask`` are the same).

    Returns
    -------
    X : ndarray (B, n, p)
    Y : ndarray (B, n)
    outer, inner : ndarray (n,)
        Therapist codes and (globally unique) patient codes (patient slots if padded).
    mask : ndarray (B, n) of bool
        Observed rows (dropout; and padding when padded).
    sims : list of SimArrays
        The replicates themselves (for the truth and diagnostics); their arrays are
        read-only views into stacked ones. Empty if ``sims=False``.

    Examples
    --------
    >>> d = Design(therapists=4, patients_per_therapist=3, sessions=2)
    >>> seeds = np.random.SeedSequence(1).spawn(5)
    >>> X, Y, outer, inner, mask, sims = batch_arrays(d, "adherence",
    ...                                               ("Intercept", "alliance"), seeds)
    >>> X.shape, Y.shape, mask.shape
    ((5, 24, 2), (5, 24), (5, 24))
    >>> bool(np.array_equal(Y[3], simulate_arrays(d, seeds[3]).columns["adherence"]))
    True
    """
    if not design.has_fixed_structure and not padded:
        raise ModelSpecError(
            "batch_arrays needs fixed caseloads and session counts, or padded=True")
    have = {"alliance", "alliance_pm", "alliance_pmc", "alliance_cwc", "adherence",
            *design.moderators, *(f"{m}_c" for m in design.moderators)}
    if design.randomisation != "none":
        have.add("arm")
    if design.family != "gaussian":
        have.update(design.count_columns)
    facs = [_plain_factors(nm) for nm in x_names]
    if response not in have or any(
            f is None or any(v not in have for v in f) for f in facs):
        raise ModelSpecError(
            f"the formula's columns {x_names} are not plain products of simulated "
            "columns; use a data-frame engine"
        )
    if not design.has_fixed_structure:
        out = _padded_batch(design, response, x_names, seeds)
        return (*out[:5], out[5] if sims else [])
    lay = _batch_layout(design)
    B, P, S = len(seeds), lay.P, lay.S
    n = P * S
    X = np.empty((B, n, len(x_names)))
    Y = np.empty((B, n))
    mask = np.ones((B, n), dtype=bool)
    need = None if sims else {response, *(v for f in facs for v in f or [])}
    full: dict[str, np.ndarray] = {}
    own_y = response == "adherence"  # written into Y as it is formed
    for rows, blk in _batch_blocks(lay, seeds, need, y_out=Y if own_y else None):
        k = blk.k
        _fill_x(X[rows], blk, facs)
        if not own_y:
            Y[rows].reshape(k, P, S)[...] = blk.view(response)
        if blk.observed is not None:
            mask[rows] = blk.observed
        if sims:
            parts = {c: blk.view(c) for c in blk.names() if c != "alliance_cwc"}
            parts["eta"] = blk.eta[:, :, None] if blk.eta.shape[1] == P else (
                blk.eta.reshape(k, P, S))
            for c, v in parts.items():
                if c not in full:
                    full[c] = np.empty((B, n), dtype=v.dtype)
                full[c][rows].reshape(k, P, S)[...] = v
    if not sims:
        return X, Y, lay.therapist.copy(), lay.patient.copy(), mask, []
    observed = mask.copy()
    eta = full.pop("eta")
    full["alliance_cwc"] = full["alliance_pmc"]  # the same column, as in simulate_arrays
    layout = {"therapist": lay.therapist, "patient": lay.patient, "session": lay.session}
    for a in (*layout.values(), observed, eta, *full.values()):
        a.flags.writeable = False
    sizes = tuple(int(s) for s in lay.sizes)
    reps = [SimArrays(observed=observed[b], columns={c: a[b] for c, a in full.items()},
                      eta=eta[b], sizes=sizes, **layout) for b in range(B)]
    return X, Y, lay.therapist.copy(), lay.patient.copy(), mask, reps


def _fill_x(X: np.ndarray, blk: _Block, facs: list[list[str] | None]) -> None:
    """Write the plain-product design columns ``facs`` of a block into ``X`` (k, n, p).

    Each column is written once, from the block's columns at their own level
    (``1 * a * b ... == a * b ...``: the values of :func:`design_matrix`); the block is
    small enough for the strided writes to stay in cache.
    """
    k, P, S = blk.k, blk.P, blk.S
    for j, f in enumerate(facs):
        Xj = X[:, :, j].reshape(k, P, S)
        if not f:
            Xj[...] = 1.0
        elif len(f) == 1:
            Xj[...] = blk.view(f[0])
        else:
            np.multiply(blk.view(f[0]), blk.view(f[1]), out=Xj)
            for v in f[2:]:
                Xj *= blk.view(v)
