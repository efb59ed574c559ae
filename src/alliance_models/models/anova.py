"""F tests of fixed effects in linear mixed models: multi-row contrasts and Type III tables.

The same tests as lmerTest's ``contest(fit, L, joint = TRUE, ddf = ...)`` and
``anova(fit, type = 3, ddf = ...)``, on a :class:`~alliance_models.models.mixed.MixedFit`:

* **Satterthwaite** (lmerTest's ``contestMD``): ``L Var(beta) L'`` is diagonalised,
  ``L Var(beta) L' = P D P'``; the F statistic is the mean of the ``q`` squared t
  statistics of the rows of ``P' L`` (eigenvalues above ``sqrt(eps)`` times the largest
  only, so ``q`` is the rank), each with its own Satterthwaite df ``nu_m``, and the
  denominator df are ``2 E / (E - q)`` with ``E = sum nu_m / (nu_m - 2)`` (2 when any
  ``nu_m <= 2``; their mean when they are all equal).
* **Kenward-Roger** (pbkrtest's ``KRmodcomp``, :mod:`.lmm.kenward_roger`): the Wald
  statistic on the adjusted covariance over ``q``, times the scaling ``lambda``, with
  the Kenward-Roger df; REML fits only.

Rows report ``Sum Sq`` and ``Mean Sq`` as lmerTest does (the unscaled F statistic times
``sigma^2``, times ``q`` for the sum of squares).

Type III hypotheses: for every term of the fixed part, its coefficients are zero. For
numeric predictors this is lmerTest's Type III (the effect of ``x`` in ``x * m`` at
``m = 0``, which is why centred moderators matter); for a categorical factor it holds
when no higher-order term contains the factor. Terms of a categorical factor that
appear in an interaction are refused with an explanation (lmerTest builds
coding-invariant hypotheses there; use :meth:`MixedFit.contrast` with your own ``L``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._terms import design_columns
from .._validate import one_of
from ..errors import ModelSpecError
from .lmm import kenward_roger, satterthwaite

__all__ = ["COLUMNS", "anova_table", "contrast_table", "fstat_ddf", "type3_contrasts"]

#: Columns of every F-test row (lmerTest's names).
COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """Denominator df of the mean of independent squared t statistics (lmerTest).

    Examples
    --------
    >>> fstat_ddf(np.array([10.0, 10.0])), round(fstat_ddf(np.array([5.0, 20.0])), 4)
    (10.0, 7.1429)
    """
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2.0 * E / (E - nu.size)


def _row(F_unscaled: float, scale: float, ndf: float, ddf: float, sigma: float) -> list:
    ms = F_unscaled * sigma**2
    F = F_unscaled * scale
    return [ms * ndf, ms, ndf, ddf, F, float(stats.f.sf(F, ndf, ddf))]


def _satterthwaite(setup: satterthwaite.SatterthwaiteSetup, L: np.ndarray,
                   beta: np.ndarray, rhs: np.ndarray) -> tuple[float, float, float]:
    """Unscaled F, numerator df and denominator df (lmerTest's contestMD)."""
    V = setup.vcov
    b = beta - np.linalg.pinv(L) @ rhs if np.any(rhs != 0) else beta
    d, P = np.linalg.eigh(L @ V @ L.T)
    order = np.argsort(d)[::-1]
    d, P = d[order], P[:, order]
    pos = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0.0)
    q = int(pos.sum())
    if q == 0:
        raise ModelSpecError("the contrast rows L have no variance (L Var(beta) L' is zero)")
    PtL = (P.T @ L)[:q]
    t2 = (PtL @ b) ** 2 / d[:q]
    nu = np.array([satterthwaite.contrast_df(setup, row) for row in PtL])
    return float(t2.sum() / q), float(q), fstat_ddf(nu)


def contrast_table(fit: Any, L: np.ndarray, rhs: Any = 0.0, ddf: str | None = None,
                   names: list[str] | None = None) -> pd.DataFrame:
    """F test of ``L beta = rhs`` (one row per hypothesis in ``names``; see module doc).

    ``L`` is one (q, p) matrix; ``ddf`` defaults to the fit's own method
    (``"satterthwaite"`` for ``"residual"`` and ``"none"`` fits).
    """
    L = _check_L(fit, L)
    rhs_arr = np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],)).copy()
    method = _method(fit, ddf)
    beta = fit.fixed["estimate"].to_numpy()
    if method == "kenward-roger":
        if np.linalg.matrix_rank(L) < L.shape[0]:
            raise ModelSpecError(
                f"the {L.shape[0]} contrast rows are linearly dependent (rank "
                f"{np.linalg.matrix_rank(L)}); drop the redundant rows"
            )
        res = kenward_roger.f_test(fit.kenward_roger(), L, beta, rhs_arr)
        row = _row(res["F_unscaled"], res["scaling"], res["ndf"], res["ddf"], fit.sigma)
    else:
        assert fit._satt is not None
        F, q, ddf_val = _satterthwaite(fit._satt, L, beta, rhs_arr)
        row = _row(F, 1.0, q, ddf_val, fit.sigma)
    return pd.DataFrame([row], columns=COLUMNS, index=names or ["contrast"])


def type3_contrasts(frame: Any) -> dict[str, np.ndarray]:
    """Type III hypothesis matrices, one per term of the fixed part (intercept excluded).

    Examples
    --------
    >>> import pandas as pd
    >>> from alliance_models import parse_formula
    >>> d = pd.DataFrame({"y": [1.0, 2, 4, 3, 5], "x": [0.0, 1, 2, 3, 5],
    ...                   "m": [1.0, 0, 2, 1, 1]})
    >>> L = type3_contrasts(parse_formula("y ~ x * m").build(d))
    >>> {k: v.tolist() for k, v in L.items()}["x:m"]
    [[0.0, 0.0, 0.0, 1.0]]
    """
    spec = frame.fixed_model_spec
    cols = design_columns(spec)
    p = len(cols)
    out: dict[str, np.ndarray] = {}
    start = 0
    blocks = list(spec.structure)
    facs = [frozenset(f.expr for f in b.term.factors if f.eval_method.value != "literal")
            for b in blocks]
    for k, block in enumerate(blocks):
        width = len(block.columns)
        idx = np.arange(start, start + width)
        start += width
        if not facs[k]:
            continue
        categorical = any(any(cols[i].categorical) for i in idx)
        contained = any(facs[k] < facs[j] for j in range(len(blocks)))
        if categorical and contained:
            raise ModelSpecError(
                f"Type III test of term {str(block.term)!r}: it contains a categorical "
                "factor that also appears in a higher-order term, where a test of its "
                "treatment-coded coefficients is not lmerTest's Type III hypothesis; test "
                "the hypothesis you mean with fit.contrast(L)"
            )
        L = np.zeros((width, p))
        L[np.arange(width), idx] = 1.0
        out[str(block.term)] = L
    return out


def anova_table(fit: Any, ddf: str | None = None) -> pd.DataFrame:
    """Type III F tests of every fixed-effect term (lmerTest's ``anova(fit, type = 3)``)."""
    tables = [contrast_table(fit, L, 0.0, ddf, [name])
              for name, L in type3_contrasts(fit.frame).items()]
    if not tables:
        return pd.DataFrame(columns=COLUMNS, dtype=float)
    return pd.concat(tables)


def _method(fit: Any, ddf: str | None) -> str:
    if ddf is None:
        return "kenward-roger" if fit.ddf == "kenward-roger" else "satterthwaite"
    return one_of("ddf", ddf, ("satterthwaite", "kenward-roger"), ModelSpecError, quote=True)


def _check_L(fit: Any, L: Any) -> np.ndarray:
    names = list(fit.fixed.index)
    if isinstance(L, pd.DataFrame):
        missing = [c for c in names if c not in L.columns]
        extra = [c for c in L.columns if c not in names]
        if missing or extra:
            raise ModelSpecError(
                f"contrast columns must be the fixed effects {names}; missing {missing}, "
                f"unknown {extra}"
            )
        L = L[names].to_numpy(dtype=float)
    arr = np.atleast_2d(np.asarray(L, dtype=float))
    if arr.ndim != 2 or arr.shape[1] != len(names) or arr.shape[0] == 0:
        raise ModelSpecError(
            f"contrast L must have one column per fixed effect ({len(names)}: "
            f"{', '.join(names)}) and at least one row, got shape {np.shape(L)}"
        )
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        r, c = bad[0]
        raise ModelSpecError(f"contrast L row {r} column {names[c]!r} is {float(arr[r, c])}; "
                             "weights must be finite numbers")
    return arr
