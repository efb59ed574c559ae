"""Effects on the response scale by the delta method (numpy only).

For a fit with link ``g`` and mean ``mu = g^{-1}(eta)``, ``eta = x0' b``, the slope of the
mean in the focal variable at the point ``x0`` is ``mu'(eta) w' b``, ``w`` the link-scale
effect weights (the derivative of ``eta`` in the focal variable). Its gradient in ``b`` is
``mu''(eta) (w' b) x0 + mu'(eta) w``, so its delta-method variance is ``g' V g``. The
predicted mean itself has SE ``mu'(eta) sqrt(x0' V x0)``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["LINKS", "mean_derivatives", "response_means", "response_slopes"]

LINKS = ("identity", "logit", "log")


def mean_derivatives(eta: np.ndarray, link: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mu``, ``d mu / d eta`` and ``d2 mu / d eta2`` for ``link``.

    Examples
    --------
    >>> mu, d1, d2 = mean_derivatives(np.array([0.0]), "logit")
    >>> float(mu[0]), float(d1[0]), float(d2[0])
    (0.5, 0.25, 0.0)
    """
    eta = np.asarray(eta, dtype=float)
    if link == "identity":
        return eta, np.ones_like(eta), np.zeros_like(eta)
    if link == "logit":
        mu = special.expit(eta)
        d1 = mu * (1 - mu)
        return mu, d1, d1 * (1 - 2 * mu)
    if link == "log":
        mu = np.exp(eta)
        return mu, mu, mu
    raise ValueError(f"unknown link {link!r}; use one of {LINKS}")


def response_slopes(
    b: np.ndarray, V: np.ndarray, X0: np.ndarray, W: np.ndarray, link: str
) -> tuple[np.ndarray, np.ndarray]:
    """Slopes of the mean ``mu'(x0' b) w' b`` per row of ``X0``/``W``, with delta SEs.

    Examples
    --------
    >>> b, V = np.array([0.0, 1.0]), np.eye(2) * 0.01
    >>> est, se = response_slopes(b, V, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]),
    ...                           "logit")
    >>> round(float(est[0]), 4), round(float(se[0]), 4)
    (0.25, 0.025)
    """
    X0, W = np.atleast_2d(X0), np.atleast_2d(W)
    _, d1, d2 = mean_derivatives(X0 @ b, link)
    s = W @ b
    grad = (d2 * s)[:, None] * X0 + d1[:, None] * W
    se = np.sqrt(np.einsum("ij,jk,ik->i", grad, V, grad))
    return d1 * s, se


def response_means(
    b: np.ndarray, V: np.ndarray, X0: np.ndarray, link: str
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted means ``mu(x0' b)`` per row of ``X0`` with delta-method SEs.

    Examples
    --------
    >>> mu, se = response_means(np.array([0.0]), np.eye(1) * 0.04, np.ones((1, 1)), "logit")
    >>> float(mu[0]), float(se[0])
    (0.5, 0.05)
    """
    X0 = np.atleast_2d(X0)
    mu, d1, _ = mean_derivatives(X0 @ b, link)
    return mu, d1 * np.sqrt(np.einsum("ij,jk,ik->i", X0, V, X0))
