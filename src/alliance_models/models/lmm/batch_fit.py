"""Fast batched REML for power simulation (random intercepts; a random slope).

A power run fits the same model to thousands of simulated data sets. For Gaussian
models whose random part is random intercepts only -- one grouping factor
(``(1 | therapist)``) or two nested ones (``(1 | therapist/patient)`` or
``(1 | therapist) + (1 | therapist:patient)``) -- or a correlated random slope with the
nested intercept (``(1 + alliance | therapist) + (1 | therapist:patient)``, ``slope=``;
:mod:`alliance_models.models.lmm.batched_slopes`) -- :func:`fit_batch` fits a whole batch
of replicates at once with the vectorised estimator of
:mod:`alliance_models.models.lmm.batched`: per-cluster sufficient statistics,
closed-form (Woodbury) inverses, a Newton iteration over the relative standard
deviations for all replicates together, and lmerTest's Satterthwaite df for the tested
term. Results match ``fit_mixed`` (lme4's estimates) replicate by replicate.

Memory
------
Replicates are processed in chunks of at most :func:`chunk_size` replicates: the
working set of a chunk is about ``8 * (n (p + 3) + K (p + 1 + T) + T (p + 1)^2 +
J T (p + 2))`` bytes per replicate (``n`` rows, ``p`` coefficients, ``K`` level-1 and
``J`` level-2 clusters, ``T`` distinct cluster sizes, bounded by the largest cluster
size plus one), and the chunk size is the memory budget (default 64 MB) divided by
that, capped at 2048. Peak memory therefore does not grow with the number of
replicates, only the (B, p) outputs do. With ``threads > 1`` each thread holds one
chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...errors import DataValidationError, ModelSpecError, format_rows
from ...spec import ModelFrame, ModelSpec
from . import batched as core
from . import batched_slopes as slopes

__all__ = ["BatchFit", "chunk_size", "fit_batch", "fit_sums", "frame_codes", "qualifies",
           "random_slope"]

#: Default working-memory budget of one chunk, in bytes.
DEFAULT_MEMORY = 64 * 2**20
#: Largest chunk (beyond this, vectorisation gains nothing).
MAX_CHUNK = 2048


def _nested_pair(spec: ModelSpec) -> tuple[str, str] | None:
    """``(outer, inner)`` grouping expressions of a nested random-intercept pair."""
    a, b = sorted(spec.random, key=lambda t: len(t.factors))
    if len(a.factors) == 1 and len(b.factors) == 2 and a.factors[0] in b.factors:
        return a.group, b.group
    return None


def random_slope(spec: ModelSpec) -> str | None:
    """Return the random slope's variable when the random part is ``(1 + x | a) + (1 | a:b)``.

    That is a correlated random intercept and slope of one variable over ``a`` plus a
    random intercept of ``b`` nested in ``a``: the random-slope model of the batched
    engine (``fit_batch(..., slope=...)``). Anything else gives None.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    str or None

    Examples
    --------
    >>> from alliance_models import parse_formula
    >>> random_slope(parse_formula(
    ...     "adherence ~ alliance + (1 + alliance | therapist) + (1 | therapist:patient)"))
    'alliance'
    >>> random_slope(parse_formula("adherence ~ alliance + (1 | therapist/patient)")) is None
    True
    """
    if len(spec.random) != 2 or _nested_pair(spec) is None:
        return None
    a, b = sorted(spec.random, key=lambda t: len(t.factors))
    if (a.intercept and a.correlated and len(a.slopes) == 1 and b.intercept
            and not b.slopes):
        return a.slopes[0]
    return None


def qualifies(spec: ModelSpec) -> bool:
    """Whether the batched engine can fit ``spec``.

    It can when the random part is random intercepts only, with one grouping factor or
    two nested ones (``(1 | a/b)``, ``(1 | a) + (1 | a:b)``), or a correlated random slope
    over the outer factor with the nested intercept (``(1 + x | a) + (1 | a:b)``, see
    :func:`random_slope`; fit it with ``slope=`` the column of ``x``). The response is
    taken as Gaussian (the engine is a linear mixed model).

    Parameters
    ----------
    spec : ModelSpec
        A parsed formula.

    Returns
    -------
    bool

    Examples
    --------
    >>> from alliance_models import parse_formula
    >>> qualifies(parse_formula("adherence ~ alliance * age + (1 | therapist/patient)"))
    True
    >>> qualifies(parse_formula("adherence ~ alliance + (1 + alliance | therapist)"))
    False
    >>> qualifies(parse_formula(
    ...     "adherence ~ alliance + (1 + alliance | therapist) + (1 | therapist:patient)"))
    True
    """
    terms = spec.random
    if random_slope(spec) is not None:
        return True
    if not terms or any((not t.intercept) or t.slopes for t in terms):
        return False
    if len(terms) == 1:
        return True
    if len(terms) == 2:
        return _nested_pair(spec) is not None
    return False


def frame_codes(frame: ModelFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """``(outer, inner)`` cluster codes of a qualifying :class:`ModelFrame`.

    Parameters
    ----------
    frame : ModelFrame
        ``spec.build(data)`` for a spec with ``qualifies(spec)``.

    Returns
    -------
    outer : ndarray of int
    inner : ndarray of int or None

    Raises
    ------
    ModelSpecError
        If the frame's formula does not qualify.

    Examples
    --------
    >>> import pandas as pd
    >>> from alliance_models import parse_formula
    >>> d = pd.DataFrame({"y": np.arange(10.0), "t": list("aabbccddee"), "p": list("uvwxyzUVWX")})
    >>> fr = parse_formula("y ~ 1 + (1 | t/p)").build(d)
    >>> outer, inner = frame_codes(fr)
    >>> outer.tolist(), len(set(inner.tolist()))
    ([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 10)
    """
    spec = frame.spec
    if not qualifies(spec):
        raise ModelSpecError(
            f"formula {spec.formula!r} does not qualify for the batched REML engine: it "
            "needs random intercepts only, with one grouping factor or two nested ones, "
            "or (1 + x | a) + (1 | a:b)"
        )
    if len(spec.random) == 1:
        return frame.groups[spec.random[0].group], None
    pair = _nested_pair(spec)
    assert pair is not None
    return frame.groups[pair[0]], frame.groups[pair[1]]


def chunk_size(
    n: int, p: int, n_inner: int, n_outer: int, max_size: int, *, memory: int = DEFAULT_MEMORY,
    slope: bool = False, sums: bool = False,
) -> int:
    """Replicates per chunk for a working-memory budget (see the module docstring).

    Parameters
    ----------
    n, p : int
        Rows and fixed-effect coefficients.
    n_inner, n_outer : int
        Level-1 and level-2 clusters (``n_outer = 0`` with one factor).
    max_size : int
        Largest level-1 cluster.
    memory : int, default 64 MB
        Budget in bytes.
    slope : bool, default False
        For the random-slope model (wider working copies and per-cluster 2 x (p + 3)
        blocks: about ``8 * (n (2 p + 8) + n_inner (p + 1 + T + 8 (p + 3)) +
        T (p + 1)^2 + 6 n_outer T (p + 3))`` bytes per replicate).
    sums : bool, default False
        For :func:`fit_sums` (no rows, only the cluster sums and statistics: about
        ``8 * (n_inner (4 p + 6 + T) + T (p + 1)^2 + n_outer T (p + 2))`` bytes per
        replicate).

    Returns
    -------
    int

    Examples
    --------
    >>> chunk_size(1440, 6, 240, 30, 6)  # 30 therapists x 8 patients x 6 sessions, 6 coefficients
    457
    >>> chunk_size(1440, 6, 240, 30, 6, sums=True)
    769
    """
    q = p + 1
    T = max_size + 1
    if slope:
        r = q + 2
        per = 8 * (n * (2 * p + 8) + n_inner * (q + T + 8 * r) + T * q * q
                   + 6 * n_outer * T * r)
    elif sums:
        per = 8 * (n_inner * (4 * p + 6 + T) + T * q * q + n_outer * T * (q + 1))
    else:
        per = 8 * (n * (p + 3) + n_inner * (q + T) + T * q * q + n_outer * T * (q + 1))
    return int(max(1, min(MAX_CHUNK, memory // per)))


@dataclass(frozen=True)
class BatchFit:
    """Fits of a batch of replicates (arrays over the batch).

    Attributes
    ----------
    beta, se : ndarray, shape (B, p)
        Fixed effects and their standard errors.
    df : ndarray, shape (B,), (B, r) or (B, p)
        Satterthwaite df for the contrast (per listed coefficient when ``contrast`` was a
        list of indices, per coefficient when it was None).
    estimate, estimate_se : ndarray, shape (B,), (B, r) or (B, p)
        The contrast ``L beta`` and its standard error (``beta``/``se`` of the listed
        coefficients, or of all of them when None).
    sigma2 : ndarray, shape (B,)
        Residual variance.
    tau2 : ndarray, shape (B, k)
        Variance components, outer first (``k`` = 1 or 2); with a random slope
        (``k = 4``): outer intercept variance, intercept-slope covariance, slope variance,
        inner variance.
    theta : ndarray, shape (B, k)
        Relative standard deviations ``tau / sigma`` (lme4's ``theta``); with a random
        slope lme4's ``theta`` of ``(1 + x | outer) + (1 | outer:inner)``: the relative
        covariance factor ``(l11, l21, l22)`` of the outer term and the inner SD.
    loglik : ndarray, shape (B,)
        REML (or ML) log-likelihood, on lme4's scale.
    converged, singular : ndarray of bool, shape (B,)
        Optimiser convergence; a relative SD below ``1e-4`` (lme4's ``isSingular``).
    names : tuple of str
        Coefficient names.
    components : tuple of str
        Names of the variance components (``("outer", "inner")`` unless given).
    reml : bool
        REML or ML.
    contrasts : tuple of int or None
        The coefficient indices whose df were asked for as a list (columns of ``df``),
        else None.
    """

    beta: np.ndarray
    se: np.ndarray
    df: np.ndarray
    estimate: np.ndarray
    estimate_se: np.ndarray
    sigma2: np.ndarray
    tau2: np.ndarray
    theta: np.ndarray
    loglik: np.ndarray
    converged: np.ndarray
    singular: np.ndarray
    names: tuple[str, ...]
    components: tuple[str, ...]
    reml: bool = True
    contrasts: tuple[int, ...] | None = None

    @property
    def n_rep(self) -> int:
        """Number of replicates."""
        return int(self.beta.shape[0])

    def p_values(self) -> np.ndarray:
        """Two-sided t-test p-values of the contrast with its Satterthwaite df.

        Returns
        -------
        ndarray, same shape as ``estimate``
        """
        from scipy import stats

        t = self.estimate / self.estimate_se
        return 2.0 * stats.t.sf(np.abs(t), self.df)

    def to_frame(self) -> pd.DataFrame:
        """One row per replicate: estimates, SEs, df, variance components, diagnostics.

        Returns
        -------
        DataFrame
        """
        cols: dict[str, np.ndarray] = {}
        for j, nm in enumerate(self.names):
            cols[f"beta[{nm}]"] = self.beta[:, j]
        for j, nm in enumerate(self.names):
            cols[f"se[{nm}]"] = self.se[:, j]
        if self.df.ndim == 2:
            listed = range(len(self.names)) if self.contrasts is None else self.contrasts
            for j, k in enumerate(listed):
                cols[f"df[{self.names[k]}]"] = self.df[:, j]
        else:
            cols["estimate"] = self.estimate
            cols["estimate_se"] = self.estimate_se
            cols["df"] = self.df
        cols["sigma2"] = self.sigma2
        for j, nm in enumerate(self.components):
            cols[f"tau2[{nm}]"] = self.tau2[:, j]
        cols["loglik"] = self.loglik
        cols["converged"] = self.converged
        cols["singular"] = self.singular
        return pd.DataFrame(cols, index=pd.RangeIndex(self.n_rep, name="replicate"))

    def summary(self) -> str:
        """Short text summary over the batch (medians and counts).

        Returns
        -------
        str
        """
        crit = "REML" if self.reml else "ML"
        lines = [
            f"Batched {crit} fits of {self.n_rep} replicates "
            f"({len(self.components)} random-intercept factor(s))",
            f"converged: {int(self.converged.sum())}/{self.n_rep}; "
            f"singular: {int(self.singular.sum())}/{self.n_rep}",
            f"{'term':<28}{'median est':>12}{'median SE':>12}",
        ]
        med_b = np.nanmedian(self.beta, axis=0)
        med_s = np.nanmedian(self.se, axis=0)
        for nm, b, s in zip(self.names, med_b, med_s, strict=True):
            lines.append(f"{nm:<28}{b:>12.4g}{s:>12.4g}")
        if self.df.ndim == 1:
            lines.append(f"contrast: median df {np.nanmedian(self.df):.4g}")
        lines.append(f"median sigma2 {np.nanmedian(self.sigma2):.4g}; median tau2 " + ", ".join(
            f"{c} {v:.4g}" for c, v in zip(
                self.components, np.nanmedian(self.tau2, axis=0), strict=True)
        ))
        return "\n".join(lines)


def _contrast_rows(contrast: np.ndarray | int | Sequence[int] | None, p: int
                   ) -> tuple[np.ndarray, bool, tuple[int, ...] | None]:
    """Contrast rows, whether one contrast was asked for, and the coefficient indices."""
    if contrast is None:
        return np.eye(p), False, None
    if isinstance(contrast, (int, np.integer)):
        if not -p <= int(contrast) < p:
            raise ModelSpecError(
                f"contrast index {int(contrast)} is out of range for {p} coefficients "
                f"(allowed 0..{p - 1})"
            )
        return np.eye(p)[[int(contrast)]], True, None
    if isinstance(contrast, (list, tuple)):
        idx = []
        for c in contrast:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < p:
                raise ModelSpecError(
                    f"contrast index {c!r} in {list(contrast)!r} is not a coefficient index "
                    f"(allowed 0..{p - 1})")
            idx.append(int(c))
        if not idx or len(set(idx)) != len(idx):
            raise ModelSpecError(
                f"a list of contrast indices must be non-empty without repeats, got {idx}")
        return np.eye(p)[idx], False, tuple(idx)
    L = np.asarray(contrast, dtype=float)
    if L.shape != (p,):
        raise ModelSpecError(
            f"contrast must be a coefficient index or a vector of length {p}, got shape {L.shape}"
        )
    if not np.all(np.isfinite(L)) or not np.any(L != 0):
        raise ModelSpecError(f"contrast vector {L.tolist()} must be finite and not all zero")
    return L[None, :], True, None


def _check_finite(a: np.ndarray, name: str, mask: np.ndarray | None) -> None:
    bad = ~np.isfinite(a)
    if mask is not None:
        bad &= mask if a.ndim == 2 else mask[..., None]
    if bad.any():
        idx = np.argwhere(bad)
        rows = [tuple(int(v) for v in r) for r in idx[:5]]
        more = f" (and {idx.shape[0] - 5} more)" if idx.shape[0] > 5 else ""
        raise DataValidationError(
            f"{name} has non-finite values at (replicate, row{', column' if a.ndim == 3 else ''})"
            f" {format_rows(rows)}{more} (first value {float(a[tuple(idx[0])])!r}); observed "
            "entries must be finite: mark missing observations with mask=False instead"
        )


def fit_batch(
    X: np.ndarray,
    Y: np.ndarray,
    outer: np.ndarray,
    inner: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    contrast: np.ndarray | int | Sequence[int] | None = None,
    reml: bool = True,
    names: tuple[str, ...] | list[str] | None = None,
    components: tuple[str, ...] | None = None,
    memory: int = DEFAULT_MEMORY,
    threads: int = 1,
    slope: int | None = None,
) -> BatchFit:
    """Fit a random-intercept LMM to every replicate of a batch at once.

    Parameters
    ----------
    X : ndarray, shape (n, p) or (B, n, p)
        Fixed-effects design, shared by all replicates or per replicate.
    Y : ndarray, shape (B, n)
        Responses (a 1-D ``y`` is one replicate).
    outer : ndarray of int, shape (n,)
        Codes of the outer (or only) grouping factor, e.g. therapist.
    inner : ndarray of int, shape (n,), optional
        Codes of the nested factor (e.g. patient), unique across ``outer``; None for a
        single factor.
    mask : ndarray of bool, shape (B, n), optional
        ``False`` marks an observation missing in that replicate (dropout).
    contrast : int, list of int or ndarray of shape (p,), optional
        Coefficient index or vector ``L``; ``df`` is then (B,) for ``L beta``. A list of
        coefficient indices gives df for those coefficients, shape (B, r), each equal to
        its single-index value. None gives df for every coefficient, shape (B, p).
    reml : bool, default True
        REML (lme4's and ``fit_mixed``'s default) or ML.
    names : sequence of str, optional
        Coefficient names (for :meth:`BatchFit.to_frame`).
    components : tuple of str, optional
        Names of the variance components, outer first.
    memory : int, default 64 MB
        Working-memory budget that sets the chunk size (see :func:`chunk_size`).
    threads : int, default 1
        Chunks fitted at once in this many threads of this process (numpy releases the
        GIL in the vectorised work); ``-1`` uses every core. Each thread holds one chunk,
        so peak memory is about ``threads * memory``; with more than one thread the
        chunks are made small enough that every thread gets one. Results do not depend
        on ``threads`` (every replicate is fitted on its own row of the batch). Leave
        BLAS single-threaded meanwhile (e.g. ``threadpoolctl``) to avoid oversubscription.
    slope : int, optional
        Column of ``X`` with a random slope over ``outer``, correlated with the outer
        intercept: the model ``(1 + x | outer) + (1 | outer:inner)`` (``inner`` required).
        ``tau2`` then holds (outer intercept variance, intercept-slope covariance, slope
        variance, inner variance) and ``theta`` lme4's ``(l11, l21, l22, s_inner)``.

    Returns
    -------
    BatchFit

    Raises
    ------
    DataValidationError
        Shapes that do not match, non-finite observed values, codes that are not nested.
    ModelSpecError
        A contrast out of range, or too few observations for the coefficients.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> ther = np.repeat(np.arange(10), 12)
    >>> pat = np.repeat(np.arange(40), 3)
    >>> X = np.column_stack([np.ones(120), rng.normal(size=120)])
    >>> Y = X @ [0.5, 0.3] + rng.normal(size=(50, 10))[:, ther] * 0.4 + rng.normal(
    ...     size=(50, 40))[:, pat] * 0.6 + rng.normal(size=(50, 120))
    >>> fit = fit_batch(X, Y, ther, pat, contrast=1)
    >>> fit.beta.shape, fit.df.shape, bool(fit.converged.all())
    ((50, 2), (50,), True)
    """
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2:
        raise DataValidationError(f"Y must have shape (B, n), got {Y.shape}")
    B, n = Y.shape
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:
        if X.shape[0] != n:
            raise DataValidationError(
                f"X has {X.shape[0]} rows but Y has {n} columns (rows); they must match"
            )
    elif X.ndim == 3:
        if X.shape[:2] != (B, n):
            raise DataValidationError(
                f"X has shape {X.shape} but Y has shape {Y.shape}; a per-replicate X must be "
                f"({B}, {n}, p)"
            )
    else:
        raise DataValidationError(f"X must have shape (n, p) or (B, n, p), got {X.shape}")
    p = X.shape[-1]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (B, n) or mask.dtype != bool:
            raise DataValidationError(
                f"mask must be a boolean array of shape ({B}, {n}), got {mask.dtype} {mask.shape}"
            )
    _check_finite(Y, "Y", mask)
    _check_finite(X, "X", mask if X.ndim == 3 else None)
    nobs = np.full(B, n) if mask is None else mask.sum(axis=1)
    few = np.flatnonzero(nobs <= p + 1)
    if few.size:
        raise ModelSpecError(
            f"replicates {format_rows(list(few))} have {int(nobs[few[0]])} observations for "
            f"{p} coefficients; a mixed model needs more observations than coefficients + 1"
        )
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or not (
        threads >= 1 or threads == -1
    ):
        raise ModelSpecError(
            f"threads must be a positive number of threads or -1 for every core; got {threads!r}"
        )
    n_threads = (os.cpu_count() or 1) if threads == -1 else int(threads)
    Lrows, single, indices = _contrast_rows(contrast, p)
    if slope is not None:
        if isinstance(slope, bool) or not isinstance(slope, int | np.integer) or not (
                0 <= int(slope) < p):
            raise ModelSpecError(
                f"slope must be the index of a column of X (0..{p - 1}), got {slope!r}")
        if inner is None:
            raise ModelSpecError(
                "a random slope needs the nested inner factor too (the model "
                "(1 + x | outer) + (1 | outer:inner)); give inner codes")
    layout = core.make_layout(outer, inner)
    if layout.n_obs != n:
        raise DataValidationError(
            f"outer has {layout.n_obs} codes but the data have {n} rows; give one code per row"
        )
    sizes = np.diff(np.r_[layout.inner_starts, n])
    J = 0 if layout.outer_starts is None else layout.outer_starts.shape[0]
    step = chunk_size(n, p, layout.n_inner, J, int(sizes.max()), memory=memory,
                      slope=slope is not None)
    row_block = max(1, min(step, memory // (8 * 6 * n * (p + 1))))

    if n_threads > 1:  # one chunk per thread at least
        step = max(1, min(step, -(-B // n_threads)))
        row_block = min(row_block, step)

    def fit_chunk(lo: int) -> dict[str, np.ndarray]:
        hi = min(B, lo + step)
        if slope is not None:
            sst = slopes.slope_stats(
                X if X.ndim == 2 else X[lo:hi], Y[lo:hi], layout, int(slope),
                None if mask is None else mask[lo:hi], row_block=row_block)
            return core.batched_fit(sst, Lrows, reml=reml)
        st = core.sufficient_stats(
            X if X.ndim == 2 else X[lo:hi],
            Y[lo:hi],
            layout,
            None if mask is None else mask[lo:hi],
            row_block=row_block,
        )
        return core.batched_fit(st, Lrows, reml=reml)

    starts = range(0, B, step)
    if n_threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(n_threads, len(starts))) as pool:
            outs = list(pool.map(fit_chunk, starts))
    else:
        outs = [fit_chunk(lo) for lo in starts]

    k = 4 if slope is not None else layout.n_levels
    return _result(outs, Lrows, single, k, slope is not None, names, components, p, reml,
                   indices)


def _result(outs: list[dict[str, np.ndarray]], Lrows: np.ndarray, single: bool, k: int,
            slope: bool, names: tuple[str, ...] | list[str] | None,
            components: tuple[str, ...] | None, p: int, reml: bool,
            indices: tuple[int, ...] | None = None) -> BatchFit:
    """Assemble a :class:`BatchFit` from the chunks' :func:`core.batched_fit` outputs."""

    def cat(key: str) -> np.ndarray:
        return np.concatenate([o[key] for o in outs], axis=0)

    beta, se, var_l, df = cat("beta"), cat("se"), cat("var_l"), cat("df")
    if single:
        est = beta @ Lrows[0]
        est_se = np.sqrt(var_l[:, 0])
        df = df[:, 0]
    elif indices is not None:
        est, est_se = beta[:, list(indices)], se[:, list(indices)]
    else:
        est, est_se = beta, se
    default = (("outer", "outer:slope", "slope", "inner") if slope else
               ("outer", "inner") if k == 2 else ("outer",))
    comps = components or default
    if len(comps) != k:
        raise ModelSpecError(f"components must name {k} variance component(s), got {comps}")
    nm = tuple(names) if names is not None else tuple(f"x{j}" for j in range(p))
    if len(nm) != p:
        raise ModelSpecError(f"names must give {p} coefficient names, got {len(nm)}")
    return BatchFit(
        beta=beta,
        se=se,
        df=df,
        estimate=est,
        estimate_se=est_se,
        sigma2=cat("sigma2"),
        tau2=cat("tau2"),
        theta=cat("theta"),
        loglik=cat("loglik"),
        converged=cat("converged"),
        singular=cat("singular"),
        names=nm,
        components=tuple(comps),
        reml=reml,
        contrasts=indices,
    )


def fit_sums(
    G: np.ndarray,
    xty: np.ndarray,
    yty: np.ndarray,
    sx: np.ndarray,
    sy: np.ndarray,
    nk: np.ndarray,
    outer: np.ndarray,
    inner: np.ndarray | None = None,
    *,
    contrast: np.ndarray | int | Sequence[int] | None = None,
    reml: bool = True,
    names: tuple[str, ...] | list[str] | None = None,
    components: tuple[str, ...] | None = None,
) -> BatchFit:
    """:func:`fit_batch` from cross-products and level-1 cluster sums instead of ``X``, ``y``.

    The random-intercept models of :func:`fit_batch` (no random slope) fitted from what
    they depend on: ``X'X``, ``X'y``, ``y'y`` and the column sums of ``X`` and ``y`` in
    each level-1 cluster, over the observed rows (see
    :func:`~alliance_models.models.lmm.batched.sufficient_stats_from_sums`). A caller
    that can form these sums directly (a simulator) skips the ``(B, n, p)`` design.

    Parameters
    ----------
    G, xty, yty : ndarray, shapes (B, p, p), (B, p), (B,)
        ``X'X``, ``X'y`` and ``y'y`` of each replicate.
    sx, sy, nk : ndarray, shapes (B, K, p), (B, K), (B, K)
        Column sums of ``X``, sums of ``y`` and observed rows in each level-1 cluster,
        the clusters numbered as the codes ``inner`` (or ``outer`` with one factor) are.
    outer : ndarray of int, shape (K,)
        The outer (or only) cluster of each level-1 cluster.
    inner : ndarray of int, shape (K,), optional
        The level-1 cluster codes ``0..K-1`` (nested in ``outer``); None with one factor.
    contrast, reml, names, components
        As in :func:`fit_batch`.

    Returns
    -------
    BatchFit
        As :func:`fit_batch` gives for the same data, up to rounding.

    Raises
    ------
    DataValidationError
        Non-finite sums, shapes that do not match, an empty cluster.
    ModelSpecError
        A contrast out of range, or too few observations for the coefficients.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> ther = np.repeat(np.arange(10), 12)
    >>> X = np.column_stack([np.ones(120), rng.normal(size=120)])
    >>> Y = X @ [0.5, 0.3] + rng.normal(size=(4, 10))[:, ther] + rng.normal(size=(4, 120))
    >>> sx = np.broadcast_to(X.reshape(10, 12, 2).sum(axis=1), (4, 10, 2))
    >>> fit = fit_sums(np.broadcast_to(X.T @ X, (4, 2, 2)), Y @ X, (Y**2).sum(axis=1),
    ...                sx, Y.reshape(4, 10, 12).sum(axis=2), np.full((4, 10), 12.0),
    ...                np.arange(10), contrast=1)
    >>> bool(np.allclose(fit.beta, fit_batch(X, Y, ther, contrast=1).beta))
    True
    """
    G, xty, yty, sx, sy, nk = (np.asarray(a, dtype=float) for a in (G, xty, yty, sx, sy, nk))
    B, K, p = sx.shape
    shapes = {"G": (G.shape, (B, p, p)), "xty": (xty.shape, (B, p)), "yty": (yty.shape, (B,)),
              "sy": (sy.shape, (B, K)), "nk": (nk.shape, (B, K))}
    for name, (got, want) in shapes.items():
        if got != want:
            raise DataValidationError(f"{name} has shape {got}; sx {sx.shape} needs {want}")
    for name, a in (("G", G), ("xty", xty), ("yty", yty), ("sx", sx), ("sy", sy)):
        # a finite total means finite entries (one pass, no temporary); otherwise (a
        # non-finite entry, or a total that overflows) every entry is checked
        with np.errstate(over="ignore", invalid="ignore"):
            total = a.sum()
        if not np.isfinite(total) and not np.all(np.isfinite(a)):
            raise DataValidationError(f"{name} has non-finite values; the sums must be finite")
    if not np.all(nk >= 1):
        raise DataValidationError("every level-1 cluster needs an observed row (nk >= 1)")
    nobs = nk.sum(axis=1)
    few = np.flatnonzero(nobs <= p + 1)
    if few.size:
        raise ModelSpecError(
            f"replicates {format_rows(list(few))} have {int(nobs[few[0]])} observations for "
            f"{p} coefficients; a mixed model needs more observations than coefficients + 1"
        )
    Lrows, single, indices = _contrast_rows(contrast, p)
    o = np.asarray(outer)
    codes = np.arange(K) if inner is None else np.asarray(inner)
    if o.shape != (K,) or codes.shape != (K,) or not np.array_equal(codes, np.arange(K)):
        raise DataValidationError(
            f"outer and inner must give the {K} level-1 clusters in order (inner = 0..{K - 1})")
    layout = core.make_layout(o, None if inner is None else codes)
    perm = codes[layout.order]  # the clusters in the layout's (outer, inner) order
    if not np.array_equal(perm, np.arange(K)):
        sx, sy, nk = sx[:, perm], sy[:, perm], nk[:, perm]
    st = core.sufficient_stats_from_sums(G, xty, yty, sx, sy, nk, layout)
    outs = [core.batched_fit(st, Lrows, reml=reml)]
    return _result(outs, Lrows, single, layout.n_levels, False, names, components, p, reml,
                   indices)
