"""Simulate data from a planned :class:`~alliance_models.planning.design.Design`.

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
coefficient of any analysis formula exactly (see :mod:`alliance_models.planning.run`).
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

from .._random import RNGLike, SeedBlock, seed_sequence
from ..errors import ModelSpecError
from . import scenarios as _sc
from .design import Design

__all__ = [
    "SimArrays",
    "age_moments",
    "batch_arrays",
    "batch_sums",
    "design_matrix",
    "latent_scale",
    "simulate",
    "simulate_arrays",
    "to_frame",
]

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


def _draw_counts(spec: object, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Draw ``n`` positive counts from an int, a list of sizes or a distribution tuple."""
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    assert isinstance(spec, tuple)
    if not isinstance(spec[0], str):
        return np.asarray(spec, dtype=np.int64)
    mean = float(spec[1]) - 1.0  # shifted so that every unit has at least one
    if mean <= 0:
        return np.ones(n, dtype=np.int64)
    assert rng is not None
    if spec[0] == "poisson":
        return 1 + rng.poisson(mean, size=n)
    k = float(spec[2])
    return 1 + rng.negative_binomial(k, k / (k + mean), size=n)


def age_moments(design: Design) -> tuple[float, float]:
    """Exact mean and SD of the truncated-normal age distribution (years).

    Examples
    --------
    >>> m, s = age_moments(Design())
    >>> round(m, 2), round(s, 2)
    (50.17, 13.19)
    """
    return _age_moments_of(tuple(design.age_distribution))


def latent_scale(design: Design) -> float:
    """SD of the residual (therapist + patient + session) part on the linear-predictor scale.

    1 for gaussian outcomes; for binomial outcomes the latent-logistic total,
    ``sqrt((pi^2 / 3) / (1 - icc_therapist - icc_patient))``, so that the ICCs hold on
    the latent scale and standardised effects are in latent residual-SD units.
    """
    if design.family == "gaussian":
        return 1.0
    return math.sqrt((math.pi**2 / 3) / (1 - design.icc_therapist - design.icc_patient))


def simulate_arrays(design: Design, seed: RNGLike = None, *,
                    scenario: _sc.Scenario | None = None) -> SimArrays:
    """Simulate one replicate of ``design`` as arrays (the numpy core of :func:`simulate`).

    A batch of one of the simulator behind :func:`batch_arrays`: the same seed gives the
    same replicate whichever of the two simulates it.

    Parameters
    ----------
    design : Design
        The planned trial.
    seed : int, SeedSequence, Generator or None
        Source of randomness (see :mod:`alliance_models._random`). Every draw of the
        replicate comes from one Generator on this seed, in a fixed order (structure,
        arms, standard normals, uniforms, random slopes, binomial counts).
    scenario : Scenario, optional
        Simulate under a robustness scenario (:mod:`alliance_models.planning.scenarios`);
        the draws the scenario does not perturb are those of the same seed without it.

    Returns
    -------
    SimArrays

    Examples
    --------
    >>> sa = simulate_arrays(Design(therapists=4, patients_per_therapist=3, sessions=2), 1)
    >>> sa.n_rows, int(sa.observed.sum())
    (24, 24)
    """
    (root,) = _roots([seed])
    rng = _generator(root)
    lay = _layout(design, rng, scenario)
    return _replicates(lay, _simulate_block(lay, [rng], None))[0]


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
             *design.count_columns, "age_c", "autonomy_c", "alliance_cwc", "alliance_true"]
    for c in order:
        if c in sa.columns:
            out[c] = sa.columns[c][keep]
    return pd.DataFrame(out)


def simulate(design: Design, seed: RNGLike = None, *,
             scenario: _sc.Scenario | None = None) -> pd.DataFrame:
    """Simulate one data set from a planned trial, in the canonical analysis shape.

    Parameters
    ----------
    design : Design
        The planned trial.
    seed : int, SeedSequence, Generator or None
        Source of randomness; the same seed gives the same data.
    scenario : Scenario, optional
        A robustness scenario (:class:`~alliance_models.Scenario`: non-normal residuals
        or random effects, heteroskedasticity, dropout linked to alliance, alliance
        measured with error); with measurement error, ``alliance_true`` holds the true
        alliance and the other alliance columns are observed values.

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
    return to_frame(simulate_arrays(design, seed, scenario=scenario), design)


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


# replicates per block of the vectorised simulator: about this many rows (replicates x
# grid rows) at a time (45 replicates of 1,440 rows): fewer, longer element-wise passes
# than blocks that fit a core's L2 cache; measured on 2 cores, 2**16 rows simulated R1
# about 7% faster than 2**14 and 4% faster than 2**17 (benchmarks/power_speed.py)
_BLOCK_ROWS = 1 << 16


@dataclass(eq=False)
class _Layout:
    """The therapist x patient x session grid of a replicate (see :func:`_layout`).

    Replicates are simulated on a ``P x S`` grid of patients and session slots, ``S``
    the most sessions a patient has. ``therapist``, ``patient`` and ``session`` label
    the ``n`` rows (each patient's sessions in order); ``cells`` is the grid cell of each
    row, or None when every patient has ``S`` sessions (then rows and cells coincide).
    """

    design: Design
    T: int
    P: int
    S: int
    sizes: np.ndarray
    m: np.ndarray
    pat_ther: np.ndarray
    therapist: np.ndarray
    patient: np.ndarray
    session: np.ndarray
    cells: np.ndarray | None
    #: the robustness scenario simulated (planning.scenarios), or None
    scenario: _sc.Scenario | None = None

    @property
    def n(self) -> int:
        """Rows (sessions) of a replicate."""
        return int(self.patient.size)


@dataclass(eq=False)
class _Block:
    """The columns of a block of ``k`` replicates, each at its level.

    ``pat`` holds columns constant within a patient as ``(k, P)`` arrays (``arm``,
    ``age``, ``autonomy``, ``age_c``, ``autonomy_c``, ``alliance_pm`` and the binomial
    denominator), ``row`` the others as ``(k, P, S)`` grid arrays, usually transposed
    views of session-major ``(k, S, P)`` arrays (see :func:`_simulate_block`); ``eta``
    is at either level and ``observed`` (``(k, P * S)``) is None when every grid cell is
    an observed row. :meth:`view` broadcasts either level to ``(k, P, S)`` without
    copying.
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
        return self.row[name]

    def eta_view(self) -> np.ndarray:
        """``eta`` as a ``(k, P, S)`` or broadcastable ``(k, P, 1)`` view."""
        return self.eta[:, :, None] if self.eta.ndim == 2 else self.eta

    def names(self) -> list[str]:
        """Names of the columns computed for this block."""
        return [*self.row, *self.pat]


#: a replicate's seed as ``(entropy, spawn_key, pool_size)`` (a SeedSequence's recipe)
_Root = tuple[Any, tuple[int, ...], int]


def _roots(seeds: Sequence[RNGLike]) -> list[_Root]:
    """Return the replicates' seeds (the package's rule) as recipes (see SeedBlock)."""
    if isinstance(seeds, SeedBlock):
        return seeds.recipes()
    out = []
    for s in seeds:
        ss = s if isinstance(s, np.random.SeedSequence) else seed_sequence(s)
        out.append((ss.entropy, tuple(ss.spawn_key), ss.pool_size))
    return out


def _generator(root: _Root) -> np.random.Generator:
    """Return the one Generator a replicate draws everything from.

    ``Generator(PCG64(SeedSequence(entropy, spawn_key, pool_size)))``: numpy's
    SeedSequence and Generator on the replicate's own seed, so a replicate depends only
    on the root seed and its index.
    """
    entropy, key, pool = root
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        entropy, spawn_key=key, pool_size=pool)))


def _layout(design: Design, rng: np.random.Generator | None = None,
            scenario: _sc.Scenario | None = None) -> _Layout:
    """Return the grid of a replicate.

    With fixed caseloads and session counts (``design.has_fixed_structure``) every
    replicate has the same grid and ``rng`` is not used; otherwise caseloads and
    session counts are the first draws of the replicate's Generator. A ``scenario``
    (checked against the design) is simulated on that grid.
    """
    if scenario is not None:
        scenario.check(design)
    T = design.n_therapists
    r = None
    if not design.has_fixed_structure:
        if rng is None:
            raise ValueError("a random-structure design needs the replicate's Generator")
        r = rng
    sizes = _draw_counts(design.patients_per_therapist, T, r)
    P = int(sizes.sum())
    m = _draw_counts(design.sessions, P, r)
    S = int(m.max())
    pat_ther = np.repeat(np.arange(T), sizes)
    patient = np.repeat(np.arange(P), m)
    cells: np.ndarray | None = None
    if (m == S).all():
        session = np.tile(np.arange(1, S + 1), P)
    else:
        starts = np.concatenate([[0], np.cumsum(m)[:-1]])
        session = np.arange(patient.size) - np.repeat(starts, m) + 1
        cells = patient * S + session - 1
    return _Layout(design=design, T=T, P=P, S=S, sizes=sizes, m=m, pat_ther=pat_ther,
                   therapist=pat_ther[patient], patient=patient, session=session,
                   cells=cells, scenario=scenario)


def _no_dropout(design: Design) -> bool:
    """Whether no session can be lost to dropout (its draws would change nothing)."""
    d = design.dropout
    return design.sessions == 1 or (max(d) if isinstance(d, tuple) else float(d)) == 0.0


def _batch_blocks(lay: _Layout, seeds: Sequence[RNGLike], need: set[str] | None = None,
                  block: int | None = None,
                  y_out: np.ndarray | None = None) -> Iterator[tuple[slice, _Block]]:
    """Simulate replicates of a fixed-layout design, a block of replicates at a time.

    ``lay`` is the design's :func:`_layout`. Yields ``(rows, block)``: the replicates
    ``rows`` of ``seeds`` and their columns (see :func:`_simulate_block`). A block holds
    about ``_BLOCK_ROWS`` rows, so that its working arrays stay in a core's cache.
    """
    B, n = len(seeds), lay.P * lay.S
    if block is None:
        block = max(1, _BLOCK_ROWS // n)
    roots = _roots(seeds)
    for b0 in range(0, B, block):
        rows = slice(b0, min(B, b0 + block))
        yield rows, _simulate_block(lay, [_generator(r) for r in roots[rows]], need,
                                    None if y_out is None else y_out[rows])


def _on_grid(draws: np.ndarray, head: int, lay: _Layout) -> np.ndarray:
    """Move the row-level parts of a replicate's draws onto the grid (zeros elsewhere).

    ``draws`` is ``(k, head + j * n)``: ``head`` therapist/patient-level numbers, then
    ``j`` runs of ``n`` row-level ones; the result is ``(k, head + j * P * S)``.
    """
    assert lay.cells is not None
    k, n, G = draws.shape[0], lay.n, lay.P * lay.S
    parts = (draws.shape[1] - head) // n
    out = np.zeros((k, head + parts * G))
    out[:, :head] = draws[:, :head]
    for j in range(parts):
        out[:, head + j * G + lay.cells] = draws[:, head + j * n:head + (j + 1) * n]
    return out


def _simulate_block(lay: _Layout, rngs: Sequence[np.random.Generator],
                    need: set[str] | None, y_out: np.ndarray | None = None) -> _Block:
    """Simulate one replicate per seed on the grid ``lay``: the package's simulator.

    The generative model is described in :mod:`alliance_models.planning.design`. Each
    replicate draws everything from its own Generator (``rngs``, see :func:`_generator`),
    one replicate after the other and in a fixed order, so a replicate depends only on
    its own seed, not on the block it is in; everything else is vectorised over the block,
    element by element. Values constant within a therapist or patient are computed at
    that level and broadcast to the rows.

    Only the columns in ``need`` (all if None) are formed, besides those the linear
    predictor and the outcome are built from (and ``eta`` is kept only if in ``need``,
    or if ``need`` is None). With ``y_out`` (k, P * S), ``adherence`` is written there
    (and the block's column is a view of it). A grid with empty cells (random session
    counts, ``lay.cells`` not None) takes one replicate at a time.
    """
    design = lay.design
    T, P, S, sizes, pat_ther = lay.T, lay.P, lay.S, lay.sizes, lay.pat_ther
    k, n, G = len(rngs), lay.n, lay.P * lay.S
    ragged = lay.cells is not None
    if ragged and k != 1:
        raise ValueError("a grid with empty cells takes one replicate at a time")

    def wanted(name: str) -> bool:
        return need is None or name in need

    skewed = design.alliance_skew != 0
    age = "age" in design.moderators
    aut = design.moderators.get("autonomy")
    n_aut = 0 if aut is None else (T if aut == "therapist" else P)
    gaussian = design.family == "gaussian"
    uniform_timing = design.dropout_timing == "uniform"
    d = design.dropout
    # without dropout the dropout uniforms would change nothing: they are not drawn, and
    # every row is observed
    no_dropout = _no_dropout(design)

    # --- the draws: one Generator per replicate (see _generator), one replicate after
    # the other, in a fixed order: (the structure, drawn by _layout), the arms, every
    # standard normal (alliance, autonomy, outcome) in one call, every uniform (age,
    # dropout) in one call, the random slopes, and last the binomial counts -----------
    n_all = T + (2 * P + 2 * n if skewed else P + n)
    n_out = T + P + (n if gaussian else 0)
    normals = np.empty((k, n_all + n_aut + n_out))
    g_all = normals[:, :n_all]
    g_aut = normals[:, n_all:n_all + n_aut] if n_aut else None
    g_out = normals[:, n_all + n_aut:]
    # the therapists' random alliance slopes, if any: drawn after the uniforms, so that
    # a slope changes the outcome only
    slope_sd = design.alliance_slope_sd
    g_slope = np.empty((k, T)) if slope_sd else None
    n_age = P if age else 0
    n_drop = 0 if no_dropout else (2 * P if uniform_timing else P)
    uniforms = np.empty((k, n_age + n_drop)) if n_age + n_drop else None
    ther_arm = np.empty((k, T), np.int64) if design.randomisation == "therapist" else None
    arm_key = np.empty((k, P)) if design.randomisation == "patient" else None
    arm_off = np.empty((k, T), np.int64) if design.randomisation == "patient" else None
    if age:
        mean, sd, lo, hi = design.age_distribution
        u_lo, u_hi = special.ndtr((lo - mean) / sd), special.ndtr((hi - mean) / sd)
    if ther_arm is not None:
        t0, t1 = design.arm_therapists
        arms0 = np.r_[np.zeros(t0, np.int64), np.ones(t1, np.int64)]
    for b, r in enumerate(rngs):
        if ther_arm is not None:
            ther_arm[b] = r.permutation(arms0)
        elif arm_key is not None and arm_off is not None:
            r.random(out=arm_key[b])
            arm_off[b] = r.integers(0, 2, size=T)
        r.standard_normal(out=normals[b])
        if uniforms is not None:
            r.random(out=uniforms[b])
        if g_slope is not None:
            r.standard_normal(out=g_slope[b])
    g_age = g_drop = None
    if uniforms is not None:
        if age:
            # uniform(u_lo, u_hi) as numpy's Generator.uniform forms it
            g_age = u_lo + (u_hi - u_lo) * uniforms[:, :P]
        if n_drop:
            g_drop = uniforms[:, n_age:]
    if ragged:
        g_all = _on_grid(g_all, T + (2 * P if skewed else P), lay)
        if gaussian:
            g_out = _on_grid(g_out, T + P, lay)
    scenario = lay.scenario
    if scenario is not None:  # robustness scenario: shapes and heteroskedasticity
        _sc.perturb_outcome_draws(scenario, g_out, rngs, lay, gaussian)

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
    # Row-level arrays are session-major, (k, S, P) in memory: a patient-level value is
    # then broadcast along contiguous runs of P patients (instead of runs of S sessions),
    # and sums over sessions add contiguous slabs. The first operation on each row-level
    # draw reads it from the draws' patient-major grid order; the values are those of the
    # same operations on the patient-major grid, element by element. ``row`` holds the
    # columns as (k, P, S) views of these arrays. Draws once read leave their place in
    # the draws' buffer to later (k, S, P) arrays (``spare``), so that a block allocates
    # little afresh.
    def sm(x: np.ndarray) -> np.ndarray:
        """View a patient-major (k, P * S) grid array as session-major (k, S, P)."""
        return x.reshape(k, P, S).transpose(0, 2, 1)

    def pm(x: np.ndarray) -> np.ndarray:
        """View a session-major (k, S, P) array as (k, P, S)."""
        return x.transpose(0, 2, 1)

    spare: list[np.ndarray] = []  # (k, S, P) workspaces: read draws, finished temporaries

    def scratch() -> np.ndarray:
        """Return a (k, S, P) workspace (its values are garbage)."""
        return spare.pop() if spare else np.empty((k, S, P))

    def slot(x: np.ndarray) -> np.ndarray:
        """Return the place of read (k, P * S) draws as a (k, S, P) workspace."""
        return x.reshape(k, S, P)

    c_t, c_p, c_s = design.alliance_components
    if skewed:
        a_p = _std_skewnormal_inplace(design.alliance_skew, g_all[:, T:T + P],
                                      g_all[:, T + P:T + 2 * P])
        u0, u1 = g_all[:, T + 2 * P:T + 2 * P + G], g_all[:, T + 2 * P + G:]
        work = scratch()
        a_s = _std_skewnormal_inplace(design.alliance_skew, sm(u0), sm(u1), out=slot(u1),
                                      work=work)
        spare += [slot(u0), work]
        a_s *= math.sqrt(c_s)
    else:
        a_p = g_all[:, T:T + P]
        a_s = np.multiply(sm(g_all[:, T + P:]), math.sqrt(c_s), out=scratch())
        spare.append(slot(g_all[:, T + P:]))
    tp = (math.sqrt(c_t) * g_all[:, :T])[:, pat_ther]
    tp += math.sqrt(c_p) * a_p
    a_s += tp[:, None, :]  # s + (t + p) == (t + p) + s
    alliance_sm = a_s  # (k, S, P)
    row["alliance"] = pm(alliance_sm)

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
        """Return a standardised factor: (k, P) if patient-level, else (k, S, P)."""
        if var == "alliance":
            return alliance_sm
        if var not in z_pat:
            if var == "age":
                assert age_p is not None
                mu, sigma = _age_moments_of(tuple(design.age_distribution))
                z_pat[var] = (age_p - mu) / sigma
            else:
                z_pat[var] = pat[var]
        return z_pat[var]

    fixed_pat: np.ndarray | None = None
    fixed_row: np.ndarray | None = None  # (k, S, P)
    for term, beta in design.effects.items():
        zs = [z_of(v) for v in term.split(":")]
        if all(z.ndim == 2 for z in zs):
            prod = beta * zs[0] if len(zs) == 1 else _product(zs, beta)
            if fixed_row is not None:
                fixed_row += prod[:, None, :]
            elif fixed_pat is None:
                fixed_pat = prod  # 0 + x == x
            else:
                fixed_pat += prod
            continue
        views = [z if z.ndim == 3 else z[:, None, :] for z in zs]
        if fixed_row is None:
            term_row = _product(views, beta, out=scratch())
            if fixed_pat is not None:
                term_row += fixed_pat[:, None, :]  # fixed + term == term + fixed
            fixed_row = term_row
        else:
            term_row = _product(views, beta, out=scratch())
            fixed_row += term_row
            spare.append(term_row)
    if fixed_pat is None and fixed_row is None:
        fixed_pat = np.zeros((k, P))

    # --- outcome ------------------------------------------------------------------------
    u_p = (g_out[:, :T] * math.sqrt(design.icc_therapist))[:, pat_ther]
    v_p = g_out[:, T:T + P] * math.sqrt(design.icc_patient)
    # the therapists' random alliance slopes times alliance (k, S, P), or None: w_t =
    # sd * (rho * z_u + sqrt(1 - rho^2) * z_w) with z_u the therapist intercept's draw
    slope3: np.ndarray | None = None
    if g_slope is not None:
        rho = design.alliance_slope_correlation
        w = g_slope * (slope_sd * math.sqrt(1 - rho * rho))
        if rho:
            w += g_out[:, :T] * (slope_sd * rho)
        slope3 = w[:, pat_ther][:, None, :] * alliance_sm
    eta: np.ndarray
    if gaussian:
        # the residuals, scaled (session-major)
        e3 = np.multiply(sm(g_out[:, T + P:]),
                         math.sqrt(1 - design.icc_therapist - design.icc_patient),
                         out=scratch())
        y_pm = None if y_out is None else y_out.reshape(k, P, S)  # written last
        if fixed_row is not None:
            eta = pm(fixed_row)
            # ((eta + u) + v) + e; eta itself is kept only if asked for
            y3 = np.add(fixed_row, u_p[:, None, :],
                        out=fixed_row if not wanted("eta") else scratch())
            y3 += v_p[:, None, :]
            last = e3
        else:
            assert fixed_pat is not None
            eta = fixed_pat
            yp = fixed_pat + u_p
            yp += v_p
            y3 = e3  # e + (eta + u + v) == (eta + u + v) + e
            last = yp[:, None, :]
        if slope3 is not None:
            y3 += last
            last = slope3
        if y_pm is not None:
            np.add(y3, last, out=pm(y_pm))
            row["adherence"] = y_pm
        else:
            y3 += last
            row["adherence"] = pm(y3)
    else:
        scale = latent_scale(design)
        base = float(special.logit(design.baseline_adherence))
        uv = u_p + v_p
        uv *= scale
        if fixed_row is not None:
            eta_sm = base + scale * fixed_row
            eta = pm(eta_sm)
            lin = np.add(eta_sm, uv[:, None, :])  # eta + u == u + eta
            if slope3 is not None:
                lin += scale * slope3
            prob = np.ascontiguousarray(pm(special.expit(lin, out=lin))).reshape(k, G)
        elif slope3 is not None:
            assert fixed_pat is not None
            eta = base + scale * fixed_pat
            lin = (eta + uv)[:, None, :] + scale * slope3
            prob = np.ascontiguousarray(pm(special.expit(lin, out=lin))).reshape(k, G)
        else:
            assert fixed_pat is not None
            eta = base + scale * fixed_pat
            prob_p = special.expit(eta + uv)
            prob = np.empty((k, P, S))
            prob[...] = prob_p[:, :, None]
            prob = prob.reshape(k, G)
        ntrials = design.n_trials
        num = np.zeros((k, G), np.int64)
        for b, r in enumerate(rngs):  # after the replicate's other draws
            if ragged:
                num[b, lay.cells] = r.binomial(ntrials, prob[b, lay.cells])
            else:
                num[b] = r.binomial(ntrials, prob[b])
        num_col, den_col = design.count_columns
        row[num_col] = num.reshape(k, P, S)
        if wanted(den_col):
            pat[den_col] = np.full((k, P), ntrials, dtype=np.int64)
        row["adherence"] = np.divide(num, ntrials, out=y_out).reshape(k, P, S)

    if scenario is not None and scenario.alliance_reliability < 1:
        # robustness scenario: the outcome is built; the analysis sees measured alliance
        if wanted("alliance_true"):
            row["alliance_true"] = pm(alliance_sm.copy())
        measured = np.ascontiguousarray(pm(alliance_sm)).reshape(k, G)
        _sc.measurement_error(scenario, measured, rngs, lay)
        alliance_sm[...] = sm(measured)

    # --- dropout, then the observed patient means ----------------------------------------
    observed: np.ndarray | None = None
    obs3: np.ndarray | None = None  # (k, P, S)
    m = lay.m
    if not no_dropout:
        if isinstance(d, tuple):
            assert pat_arm is not None
            p_drop = np.where(pat_arm == 1, d[1], d[0])
        else:
            p_drop = np.full((k, P), float(d))
        if scenario is not None and scenario.dropout_odds_ratio != 1:
            # robustness scenario: dropout linked to the patient-level (true) alliance
            p_drop = _sc.mnar_dropout(scenario, p_drop, tp / math.sqrt(c_t + c_p), pat_arm)
        assert g_drop is not None
        drops = g_drop[:, :P] < p_drop
        if uniform_timing:
            last_s = np.floor(g_drop[:, P:] * np.maximum(m - 1, 1)).astype(np.int64) + 1
        else:
            last_s = np.full((k, P), int(design.dropout_timing))
        last_s = np.where(drops & (m > 1), np.minimum(last_s, m), m)
        obs3 = np.arange(1, S + 1) <= last_s[:, :, None]
    elif ragged:
        obs3 = np.broadcast_to(np.arange(1, S + 1) <= m[:, None], (k, P, S))
    if obs3 is not None:
        observed = obs3.reshape(k, G)
    if any(wanted(c) for c in ("alliance_pm", "alliance_pmc", "alliance_cwc")):
        if obs3 is None:
            aw = alliance_sm  # x * 1.0 == x
            count: np.ndarray | float = float(S)
        else:
            aw = alliance_sm * obs3.transpose(0, 2, 1)
            count = obs3.sum(axis=-1)
        total = np.zeros((k, P))
        for s in range(S):  # each patient's sessions summed in order
            total += aw[:, s]
        total /= count
        pat["alliance_pm"] = total
        if wanted("alliance_pmc") or wanted("alliance_cwc"):
            pmc = pm(np.subtract(alliance_sm, total[:, None, :]))
            row["alliance_pmc"] = row["alliance_cwc"] = pmc
    # the centred columns am.prepare adds by default: moderators at the mean over
    # patients (each counted once; every patient has an observed session), alliance
    # within patient (alliance_cwc, equal to alliance_pmc)
    if age_p is not None and wanted("age_c"):
        pat["age_c"] = age_p - np.ascontiguousarray(age_p).mean(axis=1)[:, None]
    if aut_p is not None and wanted("autonomy_c"):
        pat["autonomy_c"] = aut_p - np.ascontiguousarray(aut_p).mean(axis=1)[:, None]
    return _Block(k=k, P=P, S=S, row=row, pat=pat, eta=eta, observed=observed)


def _replicates(lay: _Layout, blk: _Block) -> list[SimArrays]:
    """Return the replicates of a block as :class:`SimArrays` (rows, no empty cells)."""
    k, P, S = blk.k, lay.P, lay.S

    def rows(v: np.ndarray) -> np.ndarray:
        full = np.broadcast_to(v, (k, P, S)).reshape(k, P * S)
        return full if lay.cells is None else full[:, lay.cells]

    cols = {c: rows(blk.view(c)) for c in blk.names() if c != "alliance_cwc"}
    cols["alliance_cwc"] = cols["alliance_pmc"]  # the same column
    eta = rows(blk.eta_view())
    observed = np.ones((k, lay.n), bool) if blk.observed is None else rows(
        blk.observed.reshape(k, P, S))
    sizes = tuple(int(s) for s in lay.sizes)
    return [SimArrays(therapist=lay.therapist, patient=lay.patient, session=lay.session,
                      observed=observed[b], columns={c: a[b] for c, a in cols.items()},
                      eta=eta[b], sizes=sizes) for b in range(k)]


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


def _std_skewnormal_inplace(shape: float, u0: np.ndarray, u1: np.ndarray,
                            out: np.ndarray | None = None,
                            work: np.ndarray | None = None) -> np.ndarray:
    """:func:`_std_skewnormal` from its two standard-normal draws, overwriting ``u0``/``u1``.

    The same floating-point operations as :func:`_std_skewnormal`; returns ``u0``. With
    ``out`` (of the draws' shape, e.g. a different memory order) the values are written
    there instead and ``work`` (the same shape; allocated if None) takes the scaled
    ``u1``: ``out`` may share memory with ``u1`` (read before ``out`` is written), not
    with ``u0``; ``work`` with neither.
    """
    delta = shape / math.sqrt(1 + shape * shape)
    if out is None:
        out = u0
        u1 *= math.sqrt(1 - delta * delta)
    else:
        u1 = np.multiply(u1, math.sqrt(1 - delta * delta), out=work)
    np.abs(u0, out=out)
    out *= delta
    out += u1
    out -= delta * math.sqrt(2 / math.pi)
    out /= math.sqrt(1 - 2 * delta * delta / math.pi)
    return out


def _padded_batch(
    design: Design,
    response: str,
    x_names: tuple[str, ...],
    seeds: Sequence[RNGLike],
    scenario: _sc.Scenario | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[SimArrays]]:
    """Replicates of a random-structure design on a padded grid (see :func:`batch_arrays`)."""
    sims = [simulate_arrays(design, s, scenario=scenario) for s in seeds]
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
    scenario: _sc.Scenario | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[SimArrays]]:
    """Simulate replicates with one shared layout and stack them for the batched engine.

    Needs a design whose fixed-effect columns are plain products (see
    :func:`design_matrix`). With fixed caseloads and session counts
    (``design.has_fixed_structure``) it is vectorised over replicates, and replicate
    ``b`` is exactly ``simulate_arrays(design, seeds[b])`` (its own seed's Generator, the
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
    scenario : Scenario, optional
        A robustness scenario, as in :func:`simulate_arrays`.

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
        out = _padded_batch(design, response, x_names, seeds, scenario)
        return (*out[:5], out[5] if sims else [])
    lay = _layout(design, scenario=scenario)
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
            parts["eta"] = blk.eta_view()
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


def batch_sums(
    design: Design,
    response: str,
    x_names: tuple[str, ...],
    seeds: Sequence[np.random.SeedSequence],
    *,
    scenario: _sc.Scenario | None = None,
) -> dict[str, np.ndarray]:
    """Simulate replicates and reduce them to the batched engine's sums, without ``X``.

    The replicates of :func:`batch_arrays` (same seeds, same values) reduced to what the
    batched REML engine needs from them
    (:func:`~alliance_models.models.lmm.batched.sufficient_stats_from_sums`): per
    replicate ``X'X``, ``X'y``, ``y'y`` and, per patient, the column sums of ``X`` and
    ``y`` and the number of observed sessions, over the observed rows. Every column of
    ``X`` is a product of patient-level factors ``C`` and session-level ones ``R``, so
    a patient's sums are ``C`` times sums of ``R`` products over its sessions: the
    ``(B, n, p)`` design is never formed. Needs a fixed layout
    (``design.has_fixed_structure``) and plain-product columns (see :func:`batch_arrays`);
    a robustness ``scenario`` is simulated as in :func:`simulate_arrays`.

    Returns
    -------
    dict
        ``G`` (B, p, p), ``xty`` (B, p), ``yty`` (B,), ``sx`` (B, P, p) (a transposed
        view of a (B, p, P) array), ``sy`` (B, P), ``nk`` (B, P); ``therapist`` and
        ``patient`` (n,) the row codes, ``pat_ther`` (P,) each patient's therapist.

    Examples
    --------
    >>> d = Design(therapists=4, patients_per_therapist=3, sessions=2)
    >>> seeds = np.random.SeedSequence(1).spawn(5)
    >>> names = ("Intercept", "alliance")
    >>> sums = batch_sums(d, "adherence", names, seeds)
    >>> X, Y, *_ = batch_arrays(d, "adherence", names, seeds, sims=False)
    >>> bool(np.allclose(sums["G"][2], X[2].T @ X[2], rtol=1e-12))
    True
    """
    facs = [_plain_factors(nm) for nm in x_names]
    if not design.has_fixed_structure or any(f is None for f in facs):
        raise ModelSpecError("batch_sums needs a fixed layout and plain-product columns")
    lay = _layout(design, scenario=scenario)
    B, P, p = len(seeds), lay.P, len(x_names)
    # sx is a (B, P, p) view of a (B, p, P) array: each column's sums are contiguous,
    # as the block writes them and the engine reads them
    out = {"G": np.empty((B, p, p)), "xty": np.empty((B, p)), "yty": np.empty(B),
           "sx": np.empty((B, p, P)).transpose(0, 2, 1), "sy": np.empty((B, P)),
           "nk": np.empty((B, P))}
    need = {response, *(v for f in facs for v in f or [])}
    plan: _SumPlan | None = None
    for rows, blk in _batch_blocks(lay, seeds, need):
        if plan is None:
            plan = _SumPlan(blk, [f or [] for f in facs], response)
        plan.block_sums(blk, {c: v[rows] for c, v in out.items()})
    out.update(therapist=lay.therapist.copy(), patient=lay.patient.copy(),
               pat_ther=lay.pat_ther.copy())
    return out


class _SumPlan:
    """How :func:`batch_sums` reduces a block (the same for every block of a batch).

    Every column of ``X`` (and the response) is a product of patient-level factors ``c``
    and row-level ones ``r``; over a patient's observed sessions its sums are ``c`` times
    the session sum of the product of the ``r`` (a *moment*; the moment of no factor
    counts the sessions). So ``G[i, j] = sum_P c_i M[r_i r_j] c_j`` and
    ``xty[j] = sum_P c_y M[r_j r_y] c_j``: with *left* rows ``c M`` (one per distinct
    (patient factor, moment) pair) and *right* columns ``c`` (one per distinct patient
    factor), every cross-product of a replicate is an entry of one product
    ``left @ right'`` over its patients. A block forms its moments once each (``(k, P)``,
    from the session-major columns), the left rows and the right columns, one stacked
    matrix product, and picks the entries. Each replicate's sums come from its own rows
    only, in an order that does not depend on the block.
    """

    def __init__(self, blk: _Block, facs: list[list[str]], response: str) -> None:
        def split(f: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
            row = tuple(sorted(v for v in f if blk.view(v).shape[-1] != 1))
            pat = tuple(sorted(v for v in f if blk.view(v).shape[-1] == 1))
            return row, pat

        def key(*rs: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(sorted(sum(rs, ())))

        cols = [split(f) for f in facs]
        ry, cy = split([response])
        p = len(cols)
        self.ry, self.cy, self.p = ry, cy, p
        lefts: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        rights: dict[tuple[str, ...], int] = {}

        def left(c: tuple[str, ...], m: tuple[str, ...]) -> int:
            return lefts.setdefault((c, m), len(lefts))

        def right(c: tuple[str, ...]) -> int:
            return rights.setdefault(c, len(rights))

        # entry (left row, right column) of each sum; G symmetric by construction
        self.sx_rows = np.array([left(c, r) for r, c in cols])
        gl, gr = np.empty((p, p), np.int64), np.empty((p, p), np.int64)
        for i, (ri, ci) in enumerate(cols):
            for j in range(i, p):
                rj, cj = cols[j]
                gl[i, j] = gl[j, i] = left(ci, key(ri, rj))
                gr[i, j] = gr[j, i] = right(cj)
        self.g_entry = (gl, gr)
        self.xty_entry = (np.array([left(cy, key(r, ry)) for r, _ in cols]),
                          np.array([right(c) for _, c in cols]))
        self.lefts = list(lefts)
        self.rights = list(rights)

    def block_sums(self, blk: _Block, out: dict[str, np.ndarray]) -> None:
        """Write the sums of the block's replicates into the views ``out``."""
        k, P, S = blk.k, blk.P, blk.S
        obs = None if blk.observed is None else (
            blk.observed.reshape(k, P, S).transpose(0, 2, 1).astype(float))
        moments: dict[tuple[str, ...], np.ndarray] = {}
        pats: dict[tuple[str, ...], np.ndarray] = {}

        def moment(key: tuple[str, ...]) -> np.ndarray:
            """Sum over each patient's observed sessions of the product of ``key`` (k, P)."""
            if key not in moments:
                # session-major (k, S, P) views of the factors (and the observed mask)
                fs = [blk.view(v).transpose(0, 2, 1) for v in key]
                if obs is not None:
                    fs.append(obs)
                if not fs:
                    moments[key] = np.full((k, P), float(S))
                elif len(fs) == 1:
                    moments[key] = np.sum(fs[0], axis=1, dtype=float)
                else:
                    sub = ",".join(["ksp"] * len(fs))
                    moments[key] = np.einsum(f"{sub}->kp", *fs, dtype=float)
            return moments[key]

        def pat(names: tuple[str, ...], into: np.ndarray) -> np.ndarray:
            """Write the product of the patient-level factors ``names`` (k, P) into ``into``."""
            if not names:
                into[...] = 1.0
                return into
            into[...] = blk.view(names[0])[:, :, 0]
            for v in names[1:]:
                into *= blk.view(v)[:, :, 0]
            return into

        right = np.empty((k, len(self.rights), P))
        for i, c in enumerate(self.rights):
            pats[c] = pat(c, right[:, i])
        left = np.empty((k, len(self.lefts), P))
        for i, (c, m) in enumerate(self.lefts):
            if c:
                np.multiply(pats[c] if c in pats else pat(c, np.empty((k, P))), moment(m),
                            out=left[:, i])
            else:
                left[:, i] = moment(m)
        prods = left @ np.swapaxes(right, 1, 2)  # (k, lefts, rights), per replicate
        out["G"][...] = prods[:, self.g_entry[0], self.g_entry[1]]
        out["xty"][...] = prods[:, self.xty_entry[0], self.xty_entry[1]]
        out["sx"][...] = np.swapaxes(left[:, self.sx_rows], 1, 2)
        out["nk"][...] = moment(())
        c_y = pats.get(self.cy) if self.cy else None
        if self.cy and c_y is None:
            c_y = pat(self.cy, np.empty((k, P)))
        my, myy = moment(self.ry), moment(tuple(sorted(self.ry + self.ry)))
        out["sy"][...] = my if c_y is None else c_y * my
        out["yty"][...] = (myy if c_y is None else (c_y * c_y) * myy).sum(axis=1)


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
