"""Plain-numpy core of probing: effect weights, Johnson-Neyman roots, HDIs.

Nothing here knows about pandas, statsmodels, PyMC or how numbers are printed. The
public layer (:mod:`alliance_models.probing`) extracts ``(b, V, df)`` and the factors of
each design column from a fit and calls these.

A conditional effect is a linear contrast ``w' b`` of the fixed effects. For a focal
variable ``x`` the weight of a term is the derivative of that term with respect to ``x``:
1 for ``x`` itself, the value of ``m`` for ``x:m``, ``m * z`` for ``x:m:z`` and 0 for terms
without ``x``. Because every other factor enters linearly, the weight vector is affine in
the moderator value, ``w(m) = a + m c``, which is what makes the Johnson-Neyman bounds the
roots of a quadratic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import ModelSpecError

__all__ = [
    "JNSolution",
    "affine_weights",
    "bayes_jn",
    "clip_intervals",
    "prob_direction",
    "effect_weights",
    "hdi",
    "jn_quadratic",
    "jn_solve",
    "significant_intervals",
    "t_critical",
]

REGIONS = ("inside", "outside", "above", "below", "all", "none")


def effect_weights(
    columns: Sequence[Sequence[str]],
    wrt: Sequence[str],
    values: Mapping[str, float],
    reads: Mapping[str, Sequence[str]] | None = None,
) -> np.ndarray:
    """Weights ``w`` such that ``w' b`` is the (cross-)derivative of the linear predictor.

    Parameters
    ----------
    columns : sequence of sequence of str
        For each column of the fixed-effects design, the factors whose product it is
        (``()`` for the intercept, ``("x", "m")`` for ``x:m``).
    wrt : sequence of str
        Variables to differentiate by: ``[focal]`` gives the conditional effect of
        ``focal``; ``[focal, moderator]`` the conditional ``focal x moderator``
        interaction (used for moderated moderation).
    values : mapping
        Value of every other factor that multiplies a ``wrt`` variable in some term.
    reads : mapping of str to sequence of str, optional
        The data variables each factor reads (``{"I(x ** 2)": ["x"]}``), to reject a
        ``wrt`` variable that enters a factor other than itself.

    Returns
    -------
    ndarray, shape (len(columns),)

    Raises
    ------
    ModelSpecError
        When a ``wrt`` variable enters a term non-linearly (``I(x**2)``, ``np.log(x)``)
        or a needed factor value is missing.

    Examples
    --------
    >>> effect_weights([(), ("x",), ("m",), ("x", "m")], ["x"], {"m": 2.0}).tolist()
    [0.0, 1.0, 0.0, 2.0]
    """
    reads = reads or {}
    w = np.zeros(len(columns))
    for j, factors in enumerate(columns):
        factors = tuple(factors)
        name = ":".join(factors)
        for v in wrt:
            for f in factors:
                if f != v and v in reads.get(f, ()):
                    raise ModelSpecError(
                        f"{v!r} enters term {name!r} through {f!r}, not linearly; the "
                        "conditional effect is then not a linear contrast of the "
                        "coefficients. Create the transformed variable as a column, or "
                        f"name the factor itself (e.g. {f!r}) as focal/moderator"
                    )
            if factors.count(v) > 1:
                raise ModelSpecError(f"{v!r} appears twice in term {name!r}")
        if not all(v in factors for v in wrt):
            continue
        weight = 1.0
        for f in factors:
            if f in wrt:
                continue
            if f not in values:
                raise ModelSpecError(
                    f"term {name!r} needs a value for {f!r} to compute the conditional effect"
                )
            weight *= float(values[f])
        w[j] = weight
    return w


def affine_weights(
    columns: Sequence[Sequence[str]],
    wrt: Sequence[str],
    moderator: str,
    values: Mapping[str, float],
    reads: Mapping[str, Sequence[str]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(a, c)`` with ``effect_weights(..., moderator=m) == a + m c``.

    Examples
    --------
    >>> a, c = affine_weights([("x",), ("m",), ("x", "m")], ["x"], "m", {})
    >>> a.tolist(), c.tolist()
    ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    """
    v0 = {**values, moderator: 0.0}
    v1 = {**values, moderator: 1.0}
    a = effect_weights(columns, wrt, v0, reads)
    c = effect_weights(columns, wrt, v1, reads) - a
    return a, c


def t_critical(df: float, alpha: float) -> float:
    """Two-sided critical value of t (normal when ``df`` is infinite).

    Examples
    --------
    >>> round(t_critical(np.inf, 0.05), 4)
    1.96
    """
    if not np.isfinite(df):
        return float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.t.ppf(1 - alpha / 2, df))


def jn_quadratic(
    est0: float, est1: float, v00: float, v01: float, v11: float, tcrit: float
) -> tuple[float, float, float]:
    """Coefficients ``(A, B, C)`` of ``(e0 + e1 m)^2 - t^2 (v00 + 2 v01 m + v11 m^2)``.

    The conditional effect is significant where ``A m^2 + B m + C > 0``.

    Examples
    --------
    >>> jn_quadratic(1.0, 0.5, 0.04, 0.0, 0.01, 2.0)
    (0.21, 1.0, 0.84)
    """
    t2 = tcrit**2
    return (
        float(est1**2 - t2 * v11),
        float(2.0 * (est0 * est1 - t2 * v01)),
        float(est0**2 - t2 * v00),
    )


def _classify(A: float, B: float, C: float, scale: float) -> tuple[str, tuple[float, ...]]:
    """Region type and sorted real roots of ``A m^2 + B m + C`` (significant where > 0)."""
    if abs(A) <= 1e-12 * scale:
        if abs(B) <= 1e-12 * scale:
            return ("all" if C > 0 else "none"), ()
        root = -C / B
        return ("above" if B > 0 else "below"), (root,)
    disc = B * B - 4.0 * A * C
    if disc <= 0:
        return ("all" if A > 0 else "none"), ()
    sq = np.sqrt(disc)
    # numerically stable roots
    q = -0.5 * (B + np.copysign(sq, B))
    r1, r2 = q / A, (C / q if q != 0 else -q / A)
    roots = tuple(sorted((float(r1), float(r2))))
    return ("outside" if A > 0 else "inside"), roots


@dataclass(frozen=True)
class JNSolution:
    """Johnson-Neyman bounds of a conditional effect ``(a + m c)' b``.

    Attributes
    ----------
    bounds : tuple of float
        Moderator values where the two-sided p-value equals ``alpha`` (0, 1 or 2 values).
    region : str
        Where the effect is significant: ``"inside"`` (between the bounds), ``"outside"``
        (below the lower and above the upper), ``"above"`` / ``"below"`` (one bound,
        unbounded on one side), ``"all"`` or ``"none"``.
    df : tuple of float
        Degrees of freedom used at each bound.
    iterations : tuple of int
        Fixed-point iterations per bound (1 when df does not depend on ``m``).
    converged : bool
        Whether every reported bound solves the equation with its own df: each
        fixed-point branch converged, or (with a ``search`` window) the bounds were
        confirmed by scanning the window.
    """

    bounds: tuple[float, ...]
    region: str
    df: tuple[float, ...]
    iterations: tuple[int, ...]
    converged: bool


def jn_solve(
    b: np.ndarray,
    V: np.ndarray,
    a: np.ndarray,
    c: np.ndarray,
    df: float | Callable[[float], float],
    alpha: float = 0.05,
    *,
    m_ref: float = 0.0,
    search: tuple[float, float] | None = None,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> JNSolution:
    """Solve for the Johnson-Neyman bounds of the effect ``(a + m c)' b``.

    With a constant ``df`` the bounds are the exact roots of the quadratic
    ``(e0 + e1 m)^2 = t^2 (v00 + 2 v01 m + v11 m^2)``. When ``df`` is a function of
    the contrast (Satterthwaite), it is called with ``m`` and each root is iterated to
    the fixed point ``m = root(t(df(m)))``.

    Parameters
    ----------
    b, V : ndarray
        Coefficients (p,) and their covariance (p, p).
    a, c : ndarray
        Affine weights from :func:`affine_weights`.
    df : float or callable
        Denominator df (``inf`` for z tests) or ``m -> df`` for contrast-dependent df.
    alpha : float
        Two-sided significance level.
    m_ref : float
        Moderator value whose df starts the iteration (e.g. the moderator mean).
    search : (float, float), optional
        With a callable ``df``, a window (e.g. the observed moderator range) that is
        also scanned on a grid for sign changes of the significance margin, so that a
        bound is not missed when the df vary so much that the quadratic at the starting
        df has the wrong shape. The window is widened by twice its width on each side.
    tol, max_iter : float, int
        Fixed-point tolerance (relative to ``1 + |m|``) and iteration cap.

    Returns
    -------
    JNSolution

    Examples
    --------
    >>> b = np.array([0.2, 0.5]); V = np.diag([0.01, 0.01])
    >>> sol = jn_solve(b, V, np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.inf)
    >>> sol.region, [round(x, 4) for x in sol.bounds]
    ('outside', [-0.9373, -0.008])
    """
    b = np.asarray(b, float)
    V = np.asarray(V, float)
    a = np.asarray(a, float)
    c = np.asarray(c, float)
    e0, e1 = float(a @ b), float(c @ b)
    v00, v01, v11 = float(a @ V @ a), float(a @ V @ c), float(c @ V @ c)
    if callable(df):
        df_fn: Callable[[float], float] = df
    else:
        const_df = float(df)

        def df_fn(_m: float) -> float:
            return const_df

    def quad(t: float) -> tuple[str, tuple[float, ...], float]:
        A, B, C = jn_quadratic(e0, e1, v00, v01, v11, t)
        scale = e1**2 + t**2 * abs(v11) + abs(e0 * e1) + t**2 * abs(v01) + 1e-300
        region, roots = _classify(A, B, C, scale)
        return region, roots, scale

    t0 = t_critical(df_fn(m_ref), alpha)
    region, roots, _ = quad(t0)
    if not callable(df):
        d = float(df)
        return JNSolution(roots, region, tuple(d for _ in roots), tuple(1 for _ in roots), True)

    def h(m: float) -> float:
        """Significance margin with the df of the contrast at ``m`` (> 0: significant)."""
        t = t_critical(df_fn(m), alpha)
        return (e0 + e1 * m) ** 2 - t * t * (v00 + 2.0 * v01 * m + v11 * m * m)

    out_roots, out_it = [], []
    converged = True
    for i, r in enumerate(roots):
        cur, ok, it = r, False, 0
        for it in range(1, max_iter + 1):  # noqa: B007 - used after the loop
            _, cand, _ = quad(t_critical(df_fn(cur), alpha))
            if not cand:
                break
            # follow the same branch of the quadratic (smaller / larger root)
            new = cand[i] if len(cand) == len(roots) else min(cand, key=lambda x: abs(x - cur))
            if abs(new - cur) <= tol * (1.0 + abs(cur)):
                cur, ok = new, True
                break
            cur = new
        if not ok:
            polished = _bracket_root(h, r)
            if polished is not None:
                cur, ok = polished, True
        converged &= ok
        out_roots.append(float(cur))
        out_it.append(it)
    # keep only genuine roots (a runaway branch is dropped), then add any sign change of
    # the margin in the search window that the branches did not reach
    keep = [
        (r, it)
        for r, it in zip(out_roots, out_it, strict=True)
        if np.isfinite(r) and abs(h(r)) <= 1e-6 * (e1 * e1 * (1.0 + r * r) + e0 * e0 + 1e-300)
    ]
    if search is not None:
        lo, hi = float(search[0]), float(search[1])
        width = max(hi - lo, 1e-12)
        grid = np.linspace(lo - 2 * width, hi + 2 * width, 501)
        vals = np.array([h(m) for m in grid])
        from scipy.optimize import brentq

        for k in np.flatnonzero(np.sign(vals[1:]) != np.sign(vals[:-1])):
            r = float(brentq(h, grid[k], grid[k + 1], xtol=1e-14, rtol=1e-14))
            if all(abs(r - q) > 1e-8 * (1.0 + abs(r)) for q, _ in keep):
                keep.append((r, 0))
    # drop duplicates (two branches that met the same fixed point)
    uniq: list[tuple[float, int]] = []
    for r, it in sorted(keep):
        if not uniq or abs(r - uniq[-1][0]) > 1e-8 * (1.0 + abs(r)):
            uniq.append((r, it))
    bounds = tuple(r for r, _ in uniq)
    # every reported bound must solve the df-dependent equation; a branch that ran away
    # (no root on that side) is not a failure once the window scan confirms the bounds
    converged = bool(search is not None or converged) and all(
        abs(h(r)) <= 1e-6 * (e1 * e1 * (1.0 + r * r) + e0 * e0 + 1e-300) for r in bounds
    )
    # classify from the sign of the margin with the contrast's own df
    if not bounds:
        region = "all" if h(m_ref) > 0 else "none"
    elif len(bounds) == 1:
        step = 1.0 + abs(bounds[0])
        region = "above" if h(bounds[0] + step) > 0 else "below"
    else:
        region = "inside" if h(0.5 * (bounds[0] + bounds[-1])) > 0 else "outside"
    return JNSolution(
        bounds,
        region,
        tuple(float(df_fn(r)) for r in bounds),
        tuple(it for _, it in uniq),
        converged,
    )


def _bracket_root(h: Callable[[float], float], x0: float) -> float | None:
    """Find a sign change of ``h`` around ``x0`` by widening steps, then refine (brentq)."""
    from scipy.optimize import brentq

    step = 1e-6 * (1.0 + abs(x0))
    f0 = h(x0)
    if f0 == 0:
        return x0
    for _ in range(80):
        for x in (x0 - step, x0 + step):
            if np.sign(h(x)) != np.sign(f0):
                lo, hi = sorted((x0, x))
                return float(brentq(h, lo, hi, xtol=1e-14, rtol=1e-14))
        step *= 2.0
    return None


def significant_intervals(
    region: str, bounds: Sequence[float]
) -> tuple[tuple[float, float], ...]:
    """Intervals of the moderator where the effect is significant (``inf`` ends allowed).

    Examples
    --------
    >>> significant_intervals("outside", [1.0, 2.0])
    ((-inf, 1.0), (2.0, inf))
    """
    inf = float("inf")
    if region == "all":
        return ((-inf, inf),)
    if region == "none":
        return ()
    if region == "inside":
        return ((float(bounds[0]), float(bounds[1])),)
    if region == "outside":
        return ((-inf, float(bounds[0])), (float(bounds[1]), inf))
    if region == "above":
        return ((float(bounds[0]), inf),)
    if region == "below":
        return ((-inf, float(bounds[0])),)
    raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")


def clip_intervals(
    intervals: Sequence[tuple[float, float]], lo: float, hi: float
) -> tuple[tuple[float, float], ...]:
    """Intersect intervals with ``[lo, hi]`` and drop empty pieces.

    Examples
    --------
    >>> clip_intervals([(-np.inf, 1.0), (2.0, np.inf)], 0.0, 1.5)
    ((0.0, 1.0),)
    """
    out = []
    for s, e in intervals:
        s2, e2 = max(s, lo), min(e, hi)
        if s2 < e2:
            out.append((float(s2), float(e2)))
    return tuple(out)


def hdi(x: np.ndarray, prob: float = 0.95) -> tuple[float, float]:
    """Shortest interval holding a fraction ``prob`` of the draws ``x`` (1-d).

    Examples
    --------
    >>> hdi(np.arange(101.0), 0.9)
    (0.0, 90.0)
    """
    s = np.sort(np.asarray(x, float).ravel())
    n = s.size
    k = int(np.floor(prob * n))
    if k >= n:
        return float(s[0]), float(s[-1])
    widths = s[k:] - s[: n - k]
    i = int(np.argmin(widths))
    return float(s[i]), float(s[i + k])


def prob_direction(x: np.ndarray) -> float:
    """Probability of direction: the larger of P(x > 0) and P(x < 0).

    Examples
    --------
    >>> prob_direction(np.array([-1.0, 1.0, 2.0, 3.0]))
    0.75
    """
    x = np.asarray(x, float)
    return float(max(np.mean(x > 0), np.mean(x < 0)))


def hdi_excludes_zero_margin(draws_eff: np.ndarray, prob: float) -> float:
    """Signed margin: positive when the HDI excludes zero (distance of nearest end to 0)."""
    lo, hi = hdi(draws_eff, prob)
    return max(lo, -hi)


def bayes_jn(
    draws: np.ndarray,
    a: np.ndarray,
    c: np.ndarray,
    lo: float,
    hi: float,
    *,
    prob: float = 0.95,
    n_grid: int = 201,
    tol: float = 1e-8,
) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...]]:
    """Moderator values in ``[lo, hi]`` where the HDI of ``(a + m c)' b`` excludes zero.

    A grid locates the changes; bisection refines each to ``tol * (hi - lo)``.

    Returns
    -------
    bounds : tuple of float
        Where the HDI end crosses zero.
    intervals : tuple of (float, float)
        Sub-intervals of ``[lo, hi]`` where the HDI excludes zero.
    """
    draws = np.asarray(draws, float)
    ea, ec = draws @ a, draws @ c

    def margin(m: float) -> float:
        return hdi_excludes_zero_margin(ea + m * ec, prob)

    grid = np.linspace(lo, hi, n_grid)
    sig = np.array([margin(m) > 0 for m in grid])
    bounds = []
    for i in np.flatnonzero(sig[1:] != sig[:-1]):
        left, right = grid[i], grid[i + 1]
        s_left = sig[i]
        while right - left > tol * (hi - lo):
            mid = 0.5 * (left + right)
            if (margin(mid) > 0) == s_left:
                left = mid
            else:
                right = mid
        bounds.append(float(0.5 * (left + right)))
    edges = [float(lo), *bounds, float(hi)]
    states = [bool(sig[0])]
    for _ in bounds:
        states.append(not states[-1])
    intervals = tuple(
        (edges[k], edges[k + 1]) for k in range(len(edges) - 1) if states[k]
    )
    return tuple(bounds), intervals
