"""Standardisation of the design and the outcome for sampling, and its exact inverse.

:func:`~alliance_models.fit_bayes` samples a model whose fixed design has every
non-intercept column centred and scaled and, for the gaussian family, a standardised
outcome; :class:`Scaling` records that map and turns standardised coefficients back into
data-scale ones. Plain numpy: no PyMC here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ModelSpecError

__all__ = ["Scaling", "make_scaling"]


@dataclass(frozen=True)
class Scaling:
    """Centring and scaling of the design used for sampling, and its inverse.

    Attributes
    ----------
    x_mean, x_sd : ndarray, shape (p,)
        Column means (0 for the intercept, and for every column when the model has no
        intercept) and SDs (1 for the intercept).
    y_mean, y_sd : float
        Outcome mean and SD for the gaussian family; 0 and 1 otherwise.
    intercept : int or None
        Position of the ``Intercept`` column.

    Examples
    --------
    >>> s = Scaling(np.array([0.0, 2.0]), np.array([1.0, 0.5]), 10.0, 4.0, intercept=0)
    >>> s.to_data(np.array([0.0, 1.0])).tolist()  # slope 4 / 0.5; intercept at x = 0
    [-6.0, 8.0]
    """

    x_mean: np.ndarray
    x_sd: np.ndarray
    y_mean: float
    y_sd: float
    intercept: int | None

    def standardise_X(self, X: np.ndarray) -> np.ndarray:
        """Return ``(X - x_mean) / x_sd`` (the intercept column stays at 1)."""
        return (np.asarray(X, dtype=float) - self.x_mean) / self.x_sd

    def back_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``(T, shift)`` with ``beta = shift + T @ b_std`` (data-scale fixed effects).

        Slopes: ``beta_j = s_y b_j / s_j``. Intercept (when present):
        ``m_y + s_y (a - sum_j b_j m_j / s_j)``.
        """
        p = self.x_mean.shape[0]
        T = np.diag(self.y_sd / self.x_sd)
        shift = np.zeros(p)
        if self.intercept is not None:
            k = self.intercept
            T[k, :] = -self.y_sd * self.x_mean / self.x_sd
            T[k, k] = self.y_sd
            shift[k] = self.y_mean
        return T, shift

    def to_data(self, b_std: np.ndarray) -> np.ndarray:
        """Map standardised coefficients (..., p) to the data scale."""
        T, shift = self.back_matrix()
        return shift + np.asarray(b_std) @ T.T


def make_scaling(X: np.ndarray, y: np.ndarray, x_names: tuple[str, ...], gaussian: bool) -> Scaling:
    """Compute the :class:`Scaling` of a design (plain numpy).

    Parameters
    ----------
    X : ndarray, shape (n, p)
        Fixed-effects design.
    y : ndarray, shape (n,)
        Outcome.
    x_names : tuple of str
        Column names (``"Intercept"`` marks the intercept).
    gaussian : bool
        Standardise the outcome too.

    Returns
    -------
    Scaling

    Raises
    ------
    ModelSpecError
        A constant outcome with ``gaussian=True``.

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [1.0, 2.0, 3.0, 4.0]])
    >>> s = make_scaling(X, np.array([2.0, 4.0, 6.0, 8.0]), ("Intercept", "x"), True)
    >>> np.allclose(s.to_data(s.standardise_X(X)[:1] * 0 + [0.0, 1.0]), [0.0, 2.0])
    True
    """
    X = np.asarray(X, dtype=float)
    p = X.shape[1]
    intercept = x_names.index("Intercept") if "Intercept" in x_names else None
    mean = X.mean(axis=0) if intercept is not None else np.zeros(p)
    sd = X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    if intercept is not None:
        mean[intercept] = 0.0
        sd[intercept] = 1.0
    if gaussian:
        y_mean, y_sd = float(np.mean(y)), float(np.std(y))
        if not y_sd > 0:
            raise ModelSpecError("the outcome is constant; a gaussian model cannot be fitted")
    else:
        y_mean, y_sd = 0.0, 1.0
    return Scaling(mean, sd, y_mean, y_sd, intercept)
