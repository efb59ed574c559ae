"""The search for the REML / ML optimum over relative standard deviations (both engines).

The profiled criterion of a linear mixed model is a function of ``theta``, the relative
covariance factors (for a random intercept: its SD over the residual SD). It is even in
the SD of every scalar term, so zero is a stationary point an optimiser started inside
never leaves and one started at zero never leaves either, and it can have a local
optimum inside and a better one on a face (one or more variances at zero), or the
reverse. An optimiser from one start finds one of them. The search here is the one
strategy both engines use (:mod:`.dense` behind ``fit_mixed``, :mod:`.batched` behind
the power engine), written against a :class:`Criterion` -- the engine's criterion for
any (replicate, point) pairs and its local optimiser with some components held at zero:

1. **Local optimum.** The engine runs its optimiser from its own start (lme4's start
   for the dense engine, a moment estimate for the batched one); :func:`search` starts
   from that solution.
2. **Grid over every face** (at most :data:`MAX_GRID_TERMS` components, all scalar
   SDs): the criterion is evaluated on the product grid :data:`GRID` of relative SDs,
   which includes 0 in every component, so every face (set of components at zero) has
   grid points. For every zero pattern other than the solution's own, the best grid
   point of that pattern is polished -- the local optimiser runs from it with the
   pattern's zeros held -- when it lies within :data:`FACE_MARGIN` of the current
   solution (a coarse grid point can lie well above the optimum near it), and the
   polished point replaces the solution when it is better. Larger problems (more terms,
   random slopes) get the face checks instead: for every bounded entry not at zero (a
   scalar SD, or a diagonal entry of a covariance factor), the optimiser runs from the
   solution with that entry held at zero (its other zero entries start at ``INSIDE[0]``,
   near zero: from far out a run can leave for a worse face). A face check whose start
   lies more than :data:`START_MARGIN` above the solution is not run (it would have to
   descend further than that to win); nor is such a rerun from inside (step 3).
3. **Across the face.** A solution with a component at exactly zero is a stationary
   point in that component even when the criterion falls inward, and one a hair above
   zero (below :data:`BOUNDARY_SNAP`, where an optimiser stalls on a flat criterion and
   :func:`snap` leaves it when zero is higher by a rounding error) is as good as one
   there: both count as zero here. Each such component is
   moved to the probe values :data:`INWARD` (very small to far out) in turn; when a
   probe beats the solution, the free optimiser runs from the best probe. A zero
   diagonal entry of a covariance factor (a random slope's term) is probed with the
   unbounded (off-diagonal) entries as they are and negated: on that face the criterion
   depends on their norm only, so the sign the local optimiser left them with is
   arbitrary, while off the face it sets the sign of the correlation. A factor that is
   zero altogether (a 2 x 2 one) is also probed along the rank-one direction in which
   the criterion falls fastest (estimated from three small probes): a correlated pair
   of variances can raise the likelihood where neither alone does; one with only its
   first diagonal entry at zero depends on the norm of the rest, and is also probed
   rotated to rank one (correlation +-1 off the face). Before the probes,
   in the problems of the face checks (no grid), a solution with a bounded entry at
   zero is rerun by the free optimiser from itself with that entry at each of
   :data:`INSIDE`: a face (for a covariance factor: a rank-deficient one, where runs
   from a start mostly end) can hold a local optimum with a better one inside that no
   single-entry probe beats, where the way there moves other entries too. Repeated up
   to :data:`INWARD_ROUNDS` times, for the solutions the last round moved (each may end
   on another face).
4. **Snap.** Bounded components below :data:`BOUNDARY_SNAP` are set to exactly zero
   when the criterion does not rise (:func:`snap`).

Every comparison ignores differences below :data:`ROUNDING` (relative to the
criterion), the level to which both engines compute it.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import numpy as np

__all__ = [
    "BOUNDARY_SNAP",
    "FACTOR_PROBE",
    "FACE_MARGIN",
    "GRAD_TOL",
    "GRID",
    "HELD_TOL",
    "INSIDE",
    "INWARD",
    "INWARD_ROUNDS",
    "MAX_GRID_TERMS",
    "ROUNDING",
    "SINGULAR_TOL",
    "START_MARGIN",
    "Criterion",
    "search",
    "snap",
]

# -- the one table of constants ----------------------------------------------------
#: Convergence target of the local optimisers: max |d criterion / d theta| (free entries).
GRAD_TOL = 1e-8
#: lme4's ``isSingular``: a bounded theta entry (relative SD) below this is singular.
SINGULAR_TOL = 1e-4
#: Bounded entries below this are tried at exactly zero (:func:`snap`).
BOUNDARY_SNAP = 1e-5
#: A grid point within this (criterion units, ``-2 log L``) of the solution is polished.
FACE_MARGIN = 3.0
#: A face check or rerun from inside whose start lies more than this above the solution
#: (``-2 log L``) is not run: it would have to descend further than that to win. Over the
#: random-slope regression cases and 200 random designs, the largest start gap of a run
#: that replaced its solution was 14.0; on a 30 x 8 x 6 power design 1,828 replicates
#: ran 6,684 such runs, none of which won, and 3,000 of them started 45 to 250 above.
START_MARGIN = 40.0
#: Relative SDs of the search grid, per component; 0 puts grid points on every face and
#: the far values catch optima at variance ratios near 100 in tiny designs.
GRID = (0.0, 0.1, 0.3, 0.8, 2.0, 5.0, 10.0)
#: Problems with at most this many components (all scalar SDs) are searched on the grid.
MAX_GRID_TERMS = 3
#: Relative SDs probed inward from a zero component (very flat optima lie near 1e-3,
#: and a slope-intercept covariance factor's near 1e-4).
INWARD = (1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0)
#: Values a zero bounded entry is rerun from (step 3, problems without the grid).
INSIDE = (0.3, 1.0)
#: Size of the entries of a zero 2 x 2 covariance factor in the probes that estimate the
#: criterion's derivative there (:func:`_rank_one_probes`).
FACTOR_PROBE = 1e-3
#: Rounds of the inward check (each may end on another face).
INWARD_ROUNDS = 3
#: Relative rounding level of the criterion: smaller differences are ties.
ROUNDING = 1e-12
#: Components at or below this are held at zero in the Satterthwaite df.
HELD_TOL = 1e-8


class Criterion(Protocol):
    """What :func:`search` needs from an engine.

    Attributes
    ----------
    n_rep : int
        Replicates (1 for the dense engine).
    k : int
        Components of theta.
    bounded : ndarray of bool, shape (k,)
        Entries with a lower bound of zero (SDs, diagonals of the covariance factors).
    scalar : ndarray of bool, shape (k,)
        Entries that are the SD of a scalar term (the criterion is even in them).

    Notes
    -----
    An engine that polishes many replicates at once may also offer
    ``polish_faces(jobs)``: :meth:`polish` for a list of ``(rep, theta0, held)`` in one
    run, returning the list of its results. The face step and the reruns from inside
    then run their polishes together (the results are those of one call per job).
    """

    n_rep: int
    k: int
    bounded: np.ndarray
    scalar: np.ndarray

    def values(self, rep: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Criterion (``-2 log L`` up to a constant) of replicate ``rep[i]`` at ``theta[i]``."""
        ...

    def polish(
        self, rep: np.ndarray, theta0: np.ndarray, held: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Local optimum from ``theta0[i]`` for ``rep[i]`` with ``held`` kept at zero.

        Returns the optima (m, k) and whether each converged (m,).
        """
        ...


def _tol(f: np.ndarray) -> np.ndarray:
    """Ties: :data:`ROUNDING` relative (0 where the criterion failed, ``inf``)."""
    return ROUNDING * np.maximum(1.0, np.abs(np.where(np.isfinite(f), f, 0.0)))


def snap(crit: Criterion, rep: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Set bounded entries below :data:`BOUNDARY_SNAP` to zero when the criterion does not rise.

    An optimiser approaching a zero variance from inside can stop a hair above it; the
    estimate on the boundary is then the better (and reproducible) answer. Negative
    scalar SDs (the criterion is even in them) become positive first.

    Examples
    --------
    >>> class Quad:  # minimum at zero in the second component
    ...     n_rep, k = 1, 2
    ...     bounded = scalar = np.array([True, True])
    ...     def values(self, rep, t):
    ...         return (t[:, 0] - 1.0) ** 2 + t[:, 1] ** 2
    >>> snap(Quad(), np.array([0]), np.array([[1.0, 3e-6]])).tolist()
    [[1.0, 0.0]]
    """
    theta = np.array(theta, dtype=float)
    theta[:, crit.scalar] = np.abs(theta[:, crit.scalar])
    near = crit.bounded[None, :] & (theta > 0.0) & (theta < BOUNDARY_SNAP)
    rows = np.flatnonzero(near.any(axis=1))
    if rows.size == 0:
        return theta
    t, f = theta[rows], crit.values(rep[rows], theta[rows])
    for i in np.flatnonzero(near[rows].any(axis=0)):
        sel = np.flatnonzero(near[rows, i])
        x = t[sel].copy()
        x[:, i] = 0.0
        fx = crit.values(rep[rows][sel], x)
        ok = fx <= f[sel]
        t[sel[ok], i] = 0.0
        f[sel[ok]] = fx[ok]
    theta[rows] = t
    return theta


def _accept(
    crit: Criterion,
    state: tuple[np.ndarray, np.ndarray, np.ndarray],
    idx: np.ndarray,
    cand: np.ndarray,
    conv: np.ndarray,
) -> None:
    """Replace the solutions ``idx`` by ``cand`` where it is better (in place)."""
    theta, f, converged = state
    cand = snap(crit, idx, cand)
    fc = crit.values(idx, cand)
    ok = fc < f[idx] - _tol(f[idx])
    theta[idx[ok]], f[idx[ok]], converged[idx[ok]] = cand[ok], fc[ok], conv[ok]


def _on_grid(crit: Criterion) -> bool:
    """Whether step 2 is the grid (small problems, scalar SDs only)."""
    return bool(crit.k <= MAX_GRID_TERMS and crit.scalar.all())


def _grid_values(crit: Criterion, reps: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Criterion of every replicate in ``reps`` at every point ``pts``, shape (reps, pts).

    Most replicates: one call per point over all of them (no copies of their data); a
    few: one call over every (replicate, point) pair.
    """
    if 2 * reps.size > crit.n_rep:
        every = np.arange(crit.n_rep)
        cols = [crit.values(every, np.broadcast_to(p, (crit.n_rep, p.size))) for p in pts]
        return np.column_stack(cols)[reps]
    f = crit.values(np.repeat(reps, len(pts)), np.tile(pts, (reps.size, 1)))
    return f.reshape(reps.size, len(pts))


def _grid_step(crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Step 2 on the grid: polish the best grid point of every other zero pattern."""
    theta, f, _ = state
    k = crit.k
    pts = np.array(list(itertools.product(GRID, repeat=k)), dtype=float)
    zero_of = pts == 0.0
    own = theta == 0.0  # the local solution's zero pattern
    for pattern in np.unique(zero_of, axis=0):
        cols = np.flatnonzero((zero_of == pattern).all(axis=1))
        reps = np.flatnonzero(~(own == pattern).all(axis=1))
        if reps.size == 0:
            continue
        fg = _grid_values(crit, reps, pts[cols])
        best = fg.argmin(axis=1)
        fb = fg[np.arange(reps.size), best]
        near = fb < f[reps] + FACE_MARGIN
        if not near.any():
            continue
        idx, start = reps[near], pts[cols[best[near]]]
        held = tuple(int(i) for i in np.flatnonzero(pattern))
        if len(held) == k:
            cand, conv = start, np.ones(idx.size, dtype=bool)
        else:
            cand, conv = crit.polish(idx, start, held)
        _accept(crit, state, idx, cand, conv)


def _face_step(crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Step 2 without the grid: every bounded entry not at zero is held at zero in turn.

    For a scalar SD that is its term's zero-variance face; for a diagonal entry of a
    covariance factor, a rank-deficient factor (for ``(1 + x | g)``: correlation +-1 or
    no intercept variance), which an optimiser inside approaches slowly when the
    criterion is flat there.
    """
    theta, _, _ = state
    faces = [int(i) for i in np.flatnonzero(crit.bounded)]

    def job(i: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = rows[theta[rows, i] != 0.0]
        start = theta[idx].copy()
        # other components at zero start inside (zero is a stationary point), near it:
        # far out (1.0) the run can leave the solution's basin for a worse face
        start[(start == 0.0) & crit.bounded[None, :]] = INSIDE[0]
        start[:, i] = 0.0
        return _promising(crit, state, idx, start)

    everyone = np.arange(crit.n_rep)
    many = getattr(crit, "polish_faces", None)
    if many is None:  # one face after the other
        for i in faces:
            idx, start = job(i, everyone)
            if idx.size:
                cand, conv = crit.polish(idx, start, (i,))
                _accept(crit, state, idx, cand, conv)
        return
    # every face in one run (an engine that polishes many replicates at once) from the
    # solutions as they stand; where a face replaced a solution, the later faces run
    # again from the new one, so the result is that of one face after the other
    theta0 = theta.copy()
    jobs = [job(i, everyone) for i in faces]
    results = many([(idx, start, (i,)) for i, (idx, start) in zip(faces, jobs, strict=True)])
    for i, (idx, _), (cand, conv) in zip(faces, jobs, results, strict=True):
        moved = np.flatnonzero((theta != theta0).any(axis=1))
        if moved.size:
            keep = ~np.isin(idx, moved)
            idx, cand, conv = idx[keep], cand[keep], conv[keep]
            idx2, start2 = job(i, moved)
            if idx2.size:
                cand2, conv2 = crit.polish(idx2, start2, (i,))
                idx = np.concatenate([idx, idx2])
                cand = np.concatenate([cand, cand2])
                conv = np.concatenate([conv, conv2])
        if idx.size:
            _accept(crit, state, idx, cand, conv)


def _promising(
    crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray], idx: np.ndarray,
    start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the runs ``(idx, start)`` that start within :data:`START_MARGIN` of the solution."""
    if idx.size == 0:
        return idx, start
    f = state[1]
    keep = crit.values(idx, start) <= f[idx] + START_MARGIN
    return idx[keep], start[keep]


def _inside_step(
    crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray
) -> None:
    """Rerun from inside the solutions ``rows`` with a bounded entry at zero (no grid).

    A zero variance, or for ``(1 + x | g)`` correlation +-1 (``l22 = 0``) or no
    intercept variance (``l11 = 0``); the free run starts from the solution with the
    entry at each of :data:`INSIDE` (zero as in :func:`_near_zero`). Problems searched on
    the grid have their faces and the points near them covered by it. The runs of one
    entry start from the same solutions, so an engine that polishes many replicates at
    once (``polish_faces``) runs them together.
    """
    if _on_grid(crit):
        return
    theta, f, _ = state
    near = _near_zero(crit, theta[rows]) & np.isfinite(f[rows])[:, None]
    many = getattr(crit, "polish_faces", None)
    for i in np.flatnonzero(near.any(axis=0)):
        idx = rows[near[:, i]]
        base = theta[idx].copy()
        runs = []
        for v in INSIDE:
            start = base.copy()
            start[:, i] = v
            runs.append(_promising(crit, state, idx, start))
        if many is None:
            for rows_v, start in runs:
                if rows_v.size:
                    cand, conv = crit.polish(rows_v, start, ())
                    _accept(crit, state, rows_v, cand, conv)
        else:
            for (rows_v, _), (cand, conv) in zip(
                    runs, many([(r, start, ()) for r, start in runs]), strict=True):
                if rows_v.size:
                    _accept(crit, state, rows_v, cand, conv)


def _rank_one_probes(
    crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray,
    rows: np.ndarray, todo: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Add rank-one probes for a 2 x 2 covariance factor that is zero altogether.

    At ``Lambda = 0`` (``(1 + x | g)`` with neither variance) the criterion can fall
    only along a correlated pair (neither variance alone lowers it): its derivative in
    ``S = Lambda Lambda'``, ``G``, has a negative eigenvalue but positive diagonal. ``G``
    is estimated from three probes at ``|Lambda| =`` :data:`FACTOR_PROBE` (``S`` of
    order ``1e-6``: the first-order term dominates), and the factor is probed along the
    eigenvector of its smallest eigenvalue (``l11 = h cos a``, ``l21 = h sin a``,
    ``l22 = 0``, ``h`` in :data:`INWARD`). Applies when the non-scalar entries are one
    lower-triangular 2 x 2 factor (``l11, l21, l22``: bounded, free, bounded); only the
    solutions ``todo`` are probed.

    A factor with ``l11 = 0`` only (no intercept variance) depends on
    ``r^2 = l21^2 + l22^2`` alone, so the split the optimiser left is arbitrary; off the
    face it sets the correlation. Such a factor is also probed rotated to rank one
    (``l11 = h``, ``l21 = +-r``, ``l22 = 0``: correlation +-1).
    """
    theta, f, _ = state
    ns = np.flatnonzero(~crit.scalar)
    if ns.size != 3 or crit.bounded[ns].tolist() != [True, False, True]:
        return x, rows
    i11, i21, i22 = ns
    # zero: every entry below BOUNDARY_SNAP (as in _near_zero; the free one too)
    near = _near_zero(crit, theta[todo])
    ok = np.isfinite(f[todo])
    zero21 = np.abs(theta[todo, i21]) < BOUNDARY_SNAP
    h = np.array(INWARD)
    rot = todo[near[:, i11] & ~(near[:, i22] & zero21) & ok]
    if rot.size:
        r = np.hypot(theta[rot, i21], theta[rot, i22])
        xr = np.repeat(np.concatenate([theta[rot], theta[rot]]), h.size, axis=0)
        xr[:, i11] = np.tile(h, 2 * rot.size)
        xr[:, i21] = np.repeat(np.r_[r, -r], h.size)
        xr[:, i22] = 0.0
        x, rows = np.concatenate([x, xr]), np.r_[rows, np.repeat(np.r_[rot, rot], h.size)]
    whole = todo[near[:, i11] & near[:, i22] & zero21 & ok]
    if whole.size == 0:
        return x, rows
    e = FACTOR_PROBE
    base = theta[whole].copy()
    base[:, [i11, i21, i22]] = 0.0
    f0 = crit.values(whole, base)
    p = np.repeat(base, 3, axis=0)
    p[0::3, i11] = e  # S = e^2 [[1, 0], [0, 0]]
    p[1::3, i22] = e  # S = e^2 [[0, 0], [0, 1]]
    p[2::3, i11] = e  # S = e^2 [[1, 1], [1, 1]]
    p[2::3, i21] = e
    d = (crit.values(np.repeat(whole, 3), p).reshape(-1, 3) - f0[:, None]) / e**2
    g11, g22 = d[:, 0], d[:, 1]
    g12 = 0.5 * (d[:, 2] - g11 - g22)
    a = 0.5 * np.arctan2(2.0 * g12, g11 - g22) + 0.5 * np.pi  # smallest eigenvalue's
    c, sn = np.cos(a), np.sin(a)
    sign = np.where(c < 0, -1.0, 1.0)  # l11 >= 0
    xj = np.repeat(base, h.size, axis=0)
    hv = np.tile(h, whole.size)
    xj[:, i11] = np.repeat(sign * c, h.size) * hv
    xj[:, i21] = np.repeat(sign * sn, h.size) * hv
    xj[:, i22] = 0.0
    return np.concatenate([x, xj]), np.r_[rows, np.repeat(whole, h.size)]


def _near_zero(crit: Criterion, theta: np.ndarray) -> np.ndarray:
    """Bounded entries at zero or within :data:`BOUNDARY_SNAP` of it, shape (n_rep, k).

    An optimiser that approaches a stationary point on a face can stop a hair off it
    (``1e-8``) where the criterion is flat, and :func:`snap` keeps it there when the
    face is higher by a rounding error; such an entry is probed as if it were zero.
    """
    return crit.bounded[None, :] & (theta < BOUNDARY_SNAP)


def _inward_step(
    crit: Criterion, state: tuple[np.ndarray, np.ndarray, np.ndarray], todo: np.ndarray
) -> np.ndarray:
    """Step 3 for the solutions ``todo``; returns those that moved.

    Reruns from inside (:func:`_inside_step`), then probes inward from every zero
    component (:func:`_rank_one_probes` too).
    """
    theta, f, _ = state
    before = theta[todo].copy()
    _inside_step(crit, state, todo)
    at_zero = np.zeros(theta.shape, dtype=bool)
    at_zero[todo] = _near_zero(crit, theta[todo])
    reps, comps = np.nonzero(at_zero)
    if reps.size == 0:
        return todo[np.any(theta[todo] != before, axis=1)]
    h = np.array(INWARD)
    base = theta[reps]
    # a zero diagonal entry of a covariance factor leaves the signs of the entries below
    # it free (the criterion depends on their norm only): probe with them negated too,
    # since moving the diagonal off zero makes the sign of the correlation matter
    flip = ~crit.bounded
    extra = np.flatnonzero(~crit.scalar[comps]) if flip.any() else np.empty(0, np.int64)
    if extra.size:
        neg = base[extra].copy()
        neg[:, flip] = -neg[:, flip]
        base = np.concatenate([base, neg])
        reps, comps = np.r_[reps, reps[extra]], np.r_[comps, comps[extra]]
    x = np.repeat(base, h.size, axis=0)
    x[np.arange(x.shape[0]), np.repeat(comps, h.size)] = np.tile(h, reps.size)
    rows = np.repeat(reps, h.size)
    x, rows = _rank_one_probes(crit, state, x, rows, todo)
    fx = crit.values(rows, x)
    # the best probe per replicate (the first of equal ones, in probe order)
    order = np.lexsort((fx, rows))
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    lower = fx[first] < f[rows[first]] - _tol(f[rows[first]])
    if lower.any():
        pick = first[lower]
        cand, conv = crit.polish(rows[pick], x[pick], ())
        _accept(crit, state, rows[pick], cand, conv)
    return todo[np.any(theta[todo] != before, axis=1)]


def search(
    crit: Criterion, theta: np.ndarray, converged: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move local solutions to the best optimum the strategy finds (module docstring).

    Parameters
    ----------
    crit : Criterion
        The engine.
    theta : ndarray, shape (n_rep, k)
        The engine's local solutions (step 1).
    converged : ndarray of bool, shape (n_rep,)
        Whether the local optimiser converged there.

    Returns
    -------
    theta : ndarray, shape (n_rep, k)
    converged : ndarray of bool, shape (n_rep,)
        Of the returned solution's local run.

    Examples
    --------
    >>> class TwoWells:  # stationary at 0, the minimum at sqrt(4.5) (even in t)
    ...     n_rep, k = 1, 1
    ...     bounded = scalar = np.array([True])
    ...     def values(self, rep, t):
    ...         return t[:, 0] ** 2 * (t[:, 0] ** 2 - 9.0) / 10
    ...     def polish(self, rep, t0, held):
    ...         return np.full_like(t0, np.sqrt(4.5)), np.ones(len(t0), bool)
    >>> theta, conv = search(TwoWells(), np.array([[0.0]]), np.array([True]))
    >>> round(float(theta[0, 0]), 3)
    2.121
    """
    theta = snap(crit, np.arange(crit.n_rep), theta)
    everyone = np.arange(crit.n_rep)
    state = (theta, crit.values(everyone, theta), np.array(converged, dtype=bool))
    if _on_grid(crit):
        _grid_step(crit, state)
    else:
        _face_step(crit, state)
    todo = everyone
    for _ in range(INWARD_ROUNDS):
        todo = _inward_step(crit, state, todo)
        if todo.size == 0:
            break
    return state[0], state[2]
