"""Detect (quasi-)complete separation of the fixed effects by linear programming.

The maximum-likelihood estimate of a binomial model is infinite when some direction
``d != 0`` of the coefficients has ``x_i' d >= 0`` for every row with all successes,
``x_i' d <= 0`` for every row without a success and ``x_i' d = 0`` for the rows in
between, with strict inequality somewhere (Albert & Anderson 1984; the linear
program of Konis 2007, R's ``detectseparation``). For Poisson counts the rows with
``y = 0`` play the part of the no-success rows (``x_i' d <= 0``) and every other row
must have ``x_i' d = 0``. Random effects cannot rescue such a fit: the estimates run
off towards infinity and their standard errors are meaningless.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

__all__ = ["separating_direction"]


def separating_direction(
    X: np.ndarray, y: np.ndarray, n: np.ndarray, family: str
) -> np.ndarray | None:
    """Return a separating direction of the coefficients (unit max-norm), or ``None``.

    Examples
    --------
    >>> X = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> d = separating_direction(X, np.array([0.0, 0, 5, 5]), np.full(4, 5.0), "binomial")
    >>> d is not None and bool(d[1] > 0)
    True
    >>> separating_direction(X, np.array([0.0, 3, 2, 5]), np.full(4, 5.0), "binomial") is None
    True
    """
    X = np.asarray(X, dtype=float)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
    Xs = X / scale
    if family == "binomial":
        top, bottom = y >= n, y <= 0
    else:
        top, bottom = np.zeros(y.shape, dtype=bool), y <= 0
    middle = ~(top | bottom)
    # maximise sum_top x'd - sum_bottom x'd subject to the sign constraints, |d| <= 1
    sign = np.where(top, -1.0, np.where(bottom, 1.0, 0.0))  # row constraints sign*x'd <= 0
    c = -(Xs[top].sum(axis=0) - Xs[bottom].sum(axis=0))
    a_ub = (sign[:, None] * Xs)[top | bottom]
    a_eq = Xs[middle]
    res = linprog(
        c,
        A_ub=a_ub if a_ub.size else None,
        b_ub=np.zeros(len(a_ub)) if a_ub.size else None,
        A_eq=a_eq if a_eq.size else None,
        b_eq=np.zeros(len(a_eq)) if a_eq.size else None,
        bounds=[(-1.0, 1.0)] * X.shape[1],
        method="highs",
    )
    if res.status != 0 or -res.fun <= 1e-7 * max(1, len(y)):
        return None
    d = res.x / scale
    return d / np.abs(d).max()
