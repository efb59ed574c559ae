"""Satterthwaite denominator df (lmerTest's method and parameterisation), for both engines.

The variance parameters are ``phi = (theta, sigma)``. With ``H`` the Hessian of the
(non-profiled) deviance in ``phi`` at the estimate, ``A = 2 H^{-1}`` is their asymptotic
covariance, and for a contrast ``L``

    ``df = 2 Var(L beta)^2 / (g' A g)``,  ``g_i = d Var(L beta) / d phi_i``.

Entries of ``theta`` estimated at zero (a variance on its boundary) are held fixed:
the deviance is flat to first order there and they carry no sampling variance, which is
what lmerTest effectively does. :func:`degrees_of_freedom` is the one implementation; the
dense engine reaches it through :class:`SatterthwaiteSetup` (the Jacobian of
``vcov(beta)`` and ``H`` computed once, so a df for any contrast is a few small products)
and the batched engine with the gradients of its contrasts directly.
:func:`central_jacobian` is the one finite-difference rule both use for ``H``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DF_STEP",
    "SatterthwaiteSetup",
    "central_jacobian",
    "contrast_df",
    "degrees_of_freedom",
]

#: Central-difference step (times ``max(floor, |x|)``) for the Hessian of the deviance.
DF_STEP = 1e-4


def central_jacobian(
    fun: Callable[[np.ndarray], tuple[np.ndarray, ...]], x: np.ndarray, step: np.ndarray
) -> list[np.ndarray]:
    """Central-difference Jacobians in ``x`` (B, k) of each output of ``fun(x) -> tuple``.

    The outputs are analytic first derivatives (or ``Var(L beta)``), so the truncation
    error is O(step^2) relative (about 1e-8 at :data:`DF_STEP`) and the rounding error
    about 1e-12 / step. Returns arrays of shape (B, k, ...): entry ``[:, i]`` is the
    derivative in ``x[:, i]``.

    Examples
    --------
    >>> x = np.array([[1.0, 2.0]])
    >>> jac = central_jacobian(lambda t: (t**2,), x, np.full((1, 2), 1e-4))[0]
    >>> np.round(jac[0], 6).tolist()
    [[2.0, 0.0], [0.0, 4.0]]
    """
    k = x.shape[1]
    cols: list[list[np.ndarray]] = []
    for i in range(k):
        xp, xm = x.copy(), x.copy()
        xp[:, i] += step[:, i]
        xm[:, i] -= step[:, i]
        op, om = fun(xp), fun(xm)
        cols.append(
            [(a - b) / (2.0 * step[:, i].reshape((-1,) + (1,) * (a.ndim - 1)))
             for a, b in zip(op, om, strict=True)]
        )
    return [np.stack([c[o] for c in cols], axis=1) for o in range(len(cols[0]))]


def degrees_of_freedom(
    var: np.ndarray, grad: np.ndarray, hessian: np.ndarray, held: np.ndarray
) -> np.ndarray:
    """Satterthwaite df of ``r`` contrasts in each of ``B`` fits.

    Parameters
    ----------
    var : ndarray, shape (B, r)
        ``Var(L beta)`` per contrast.
    grad : ndarray, shape (B, m, r)
        Its gradient in the ``m`` variance parameters ``phi``.
    hessian : ndarray, shape (B, m, m)
        Hessian of the deviance in ``phi``.
    held : ndarray of bool, shape (B, m)
        Parameters held fixed (a variance at zero): dropped from ``phi``.

    Returns
    -------
    ndarray, shape (B, r)
        ``2 var^2 / (g' A g)`` with ``A = 2 H^{-1}`` over the free parameters; NaN where
        the Hessian is not finite or the denominator not positive.

    Examples
    --------
    >>> degrees_of_freedom(np.ones((1, 1)), np.ones((1, 2, 1)), 20 * np.eye(2)[None],
    ...                    np.array([[False, True]])).tolist()
    [[20.0]]
    """
    B, m = held.shape
    diag = np.arange(m)
    H = np.where(held[:, :, None] | held[:, None, :], 0.0, hessian)
    H[:, diag, diag] = np.where(held, 1.0, H[:, diag, diag])
    G = np.where(held[:, :, None], 0.0, grad)
    finite = np.all(np.isfinite(H), axis=(1, 2))
    H[~finite] = np.eye(m)
    try:
        HinvG = np.linalg.solve(H, G)
    except np.linalg.LinAlgError:
        HinvG = np.einsum("bij,bjr->bir", np.linalg.pinv(H), G)
    denom = 2.0 * (G * HinvG).sum(axis=1)  # g' A g with A = 2 H^{-1}
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * var**2 / denom
    return np.where(finite[:, None] & (denom > 0), df, np.nan)


@dataclass(frozen=True)
class SatterthwaiteSetup:
    """What a df for any contrast of one fit needs (computed once).

    Attributes
    ----------
    vcov : ndarray, shape (p, p)
        ``vcov(beta)`` at the estimate.
    jac : ndarray, shape (m, p, p)
        ``d vcov(beta) / d phi`` over the ``m`` variance parameters ``(theta, sigma)``.
    hessian : ndarray, shape (m, m)
        Hessian of the deviance in ``phi`` (rows of held parameters are not used).
    held : ndarray of bool, shape (m,)
        Parameters held fixed (theta entries at zero).
    hessian_eigmin : float
        Smallest eigenvalue of the free theta block of ``hessian`` divided by
        ``max(1, largest)`` (scale-free; ``<= 0`` means not positive definite).
    """

    vcov: np.ndarray
    jac: np.ndarray
    hessian: np.ndarray
    held: np.ndarray
    hessian_eigmin: float


def contrast_df(setup: SatterthwaiteSetup, L: np.ndarray) -> float:
    """Satterthwaite df of the contrast ``L @ beta``; ``inf`` when it is undefined.

    Examples
    --------
    >>> s = SatterthwaiteSetup(np.eye(1), np.ones((1, 1, 1)), np.array([[10.0]]),
    ...                        np.array([False]), 1.0)
    >>> contrast_df(s, np.array([1.0]))
    10.0
    """
    L = np.asarray(L, dtype=float).ravel()
    var = float(L @ setup.vcov @ L)
    g = np.einsum("i,kij,j->k", L, setup.jac, L)
    df = degrees_of_freedom(
        np.array([[var]]), g[None, :, None], setup.hessian[None], setup.held[None]
    )[0, 0]
    return float(df) if np.isfinite(df) else float("inf")
