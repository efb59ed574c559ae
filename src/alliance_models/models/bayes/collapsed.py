"""Nested random intercepts integrated out: the marginal likelihood and the exact draws.

For the gaussian family with random intercepts only, on grouping factors that nest in one
another (``(1 | therapist)``, ``(1 | therapist/patient)``, ...), the random intercepts can
be integrated out of the likelihood in closed form. :func:`~alliance_models.fit_bayes`
then samples only the fixed effects, the residual SD and the random-effect SDs (nine
parameters for the example model instead of 446), and draws the random intercepts
afterwards, once per posterior draw, from their exact gaussian conditional posterior
(:func:`draw_intercepts`). The joint draws have the distribution of the full model's
posterior; the sampler just no longer has to explore the funnel-shaped geometry of
hundreds of intercepts, so it needs far fewer gradient evaluations per effective draw.

On the standardised scale the residual ``r = y_std - X_std b`` of an observation is the
sum of one intercept per level plus noise, ``r_i = a_1[g_1(i)] + ... + a_K[g_K(i)] + e_i``
with ``a_k ~ N(0, tau_k^2)``, ``e ~ N(0, sigma^2)``, levels ordered coarse to fine. The
covariance of a group's block is the block-diagonal covariance of its children plus
``tau^2 11'``, so the Sherman-Morrison identity gives, from the children's sums
``S = 1'C^-1 1``, ``t = 1'C^-1 r``, ``q = r'C^-1 r``, ``log|C|``:

``S' = S / D``, ``t' = t / D``, ``q' = q - tau^2 t^2 / D``, ``log|C'| = log|C| + log D``
with ``D = 1 + tau^2 S``; from the observations (``S = 1/sigma^2``, ``t = r/sigma^2``) up
to the top level that is ``O(n)``. The conditional posterior of a group's intercept given
its ancestors' is normal with precision ``1/tau^2 + S`` and mean ``(t - A S) / (1/tau^2 +
S)``, ``A`` the sum of the ancestors' intercepts.

Plain numpy except :func:`marginal_loglik`, which builds the PyTensor graph (its
``pt`` argument is :mod:`pytensor.tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # build.py imports this module inside build_collapsed_model
    from .build import RETerm

__all__ = ["Nesting", "complete_draws", "draw_intercepts", "marginal_loglik", "marginal_loglik_np",
           "nesting"]


@dataclass(frozen=True)
class Nesting:
    """Random-intercept terms that nest, ordered from the coarsest to the finest level.

    Attributes
    ----------
    terms : tuple of RETerm
        The terms, coarsest grouping first.
    parents : tuple of ndarray
        ``parents[k][g]`` is the level ``k - 1`` group of level ``k`` group ``g``
        (``parents[0]`` is empty: the top level has no parent).
    obs_codes : ndarray
        Finest-level group of each observation.
    counts : ndarray
        Observations per finest-level group.
    """

    terms: tuple[RETerm, ...]
    parents: tuple[np.ndarray, ...]
    obs_codes: np.ndarray
    counts: np.ndarray

    @property
    def n_levels(self) -> int:
        """Number of random-intercept levels."""
        return len(self.terms)


def nesting(terms: list[RETerm], family: str) -> Nesting | None:
    """Return the :class:`Nesting` of ``terms`` when they can be integrated out, else None.

    They can when the family is gaussian, every term is a random intercept and, ordered by
    their number of groups, each term's groups lie within one group of the term before.

    Examples
    --------
    >>> from alliance_models.models.bayes.build import RETerm
    >>> def term(name, codes):
    ...     codes = np.asarray(codes)
    ...     return RETerm(name, name, ("(Intercept)",), codes, int(codes.max()) + 1,
    ...                   np.ones((codes.size, 1)), np.ones(1), False)
    >>> nest = nesting([term("t", [0, 0, 1, 1]), term("p", [0, 1, 2, 2])], "gaussian")
    >>> [t.name for t in nest.terms], nest.parents[1].tolist()
    (['t', 'p'], [0, 0, 1])
    >>> nesting([term("t", [0, 0, 1, 1]), term("s", [0, 1, 0, 1])], "gaussian") is None
    True
    """
    if family != "gaussian" or not terms:
        return None
    if any(t.coef_names != ("(Intercept)",) for t in terms):
        return None
    ordered = sorted(terms, key=lambda t: t.n_groups)  # stable: formula order on ties
    parents: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for coarse, fine in zip(ordered[:-1], ordered[1:], strict=True):
        parent = np.full(fine.n_groups, -1, dtype=np.int64)
        parent[fine.codes] = coarse.codes
        # nested: every observation of a fine group has that group's one coarse group
        if (parent < 0).any() or not np.array_equal(parent[fine.codes], coarse.codes):
            return None
        parents.append(parent)
    finest = ordered[-1]
    counts = np.bincount(finest.codes, minlength=finest.n_groups).astype(float)
    return Nesting(tuple(ordered), tuple(parents), np.asarray(finest.codes), counts)


# ----------------------------------------------------------------------------------------
# the marginal likelihood
# ----------------------------------------------------------------------------------------


def marginal_loglik(pt: Any, nest: Nesting, r: Any, sigma: Any, taus: list[Any]) -> Any:
    """PyTensor graph of the log density of residuals ``r`` with the intercepts integrated out.

    Parameters
    ----------
    pt : module
        :mod:`pytensor.tensor`.
    nest : Nesting
        The levels.
    r : TensorVariable, shape (n,)
        Residuals from the fixed part (standardised scale).
    sigma : TensorVariable
        Residual SD.
    taus : list of TensorVariable
        Random-intercept SDs, in the order of ``nest.terms``.

    Returns
    -------
    TensorVariable
        The scalar log density (the normalising constant included).
    """
    n = nest.obs_codes.size
    inv_s2 = 1.0 / pt.sqr(sigma)
    S_children = pt.as_tensor(nest.counts) * inv_s2
    t_children = _segment_sum(pt, r, nest.obs_codes, nest.counts.size) * inv_s2
    quad = pt.sum(pt.sqr(r)) * inv_s2
    logdet = 2.0 * n * pt.log(sigma)
    for k in range(nest.n_levels - 1, -1, -1):
        tau2 = pt.sqr(taus[k])
        D = 1.0 + tau2 * S_children
        quad = quad - tau2 * pt.sum(pt.sqr(t_children) / D)
        logdet = logdet + pt.sum(pt.log(D))
        if k == 0:
            break
        parent, n_par = nest.parents[k], nest.terms[k - 1].n_groups
        S_children = _segment_sum(pt, S_children / D, parent, n_par)
        t_children = _segment_sum(pt, t_children / D, parent, n_par)
    return -0.5 * (n * np.log(2.0 * np.pi) + logdet + quad)


def _segment_sum(pt: Any, values: Any, codes: np.ndarray, n_groups: int) -> Any:
    return pt.inc_subtensor(pt.zeros(n_groups)[pt.as_tensor(codes)], values)


def marginal_loglik_np(nest: Nesting, r: np.ndarray, sigma: float,
                       taus: list[float]) -> float:
    """Return the same log density computed in numpy, for one parameter value (tests)."""
    n = r.size
    S = nest.counts / sigma**2
    t = np.bincount(nest.obs_codes, r, minlength=nest.counts.size) / sigma**2
    quad = float(r @ r) / sigma**2
    logdet = 2.0 * n * np.log(sigma)
    for k in range(nest.n_levels - 1, -1, -1):
        D = 1.0 + taus[k] ** 2 * S
        quad -= taus[k] ** 2 * float(np.sum(t**2 / D))
        logdet += float(np.sum(np.log(D)))
        if k:
            n_par = nest.terms[k - 1].n_groups
            S = np.bincount(nest.parents[k], S / D, minlength=n_par)
            t = np.bincount(nest.parents[k], t / D, minlength=n_par)
    return -0.5 * (n * np.log(2.0 * np.pi) + logdet + quad)


# ----------------------------------------------------------------------------------------
# the exact conditional draws
# ----------------------------------------------------------------------------------------


def draw_intercepts(nest: Nesting, r: np.ndarray, sigma: np.ndarray, taus: list[np.ndarray],
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Draw every level's intercepts from their conditional posterior, one draw per row.

    Parameters
    ----------
    nest : Nesting
        The levels.
    r : ndarray, shape (m, n)
        Residuals from the fixed part, one row per posterior draw (standardised scale).
    sigma : ndarray, shape (m,)
        Residual SDs.
    taus : list of ndarray, shape (m,)
        Random-intercept SDs per level, in the order of ``nest.terms``.
    rng : Generator
        Source of the standard normal draws.

    Returns
    -------
    list of ndarray, shape (m, n_groups of the level)
        The intercepts ``a_k`` (standardised scale), in the order of ``nest.terms``.

    Examples
    --------
    >>> from alliance_models.models.bayes.build import RETerm
    >>> codes = np.array([0, 0, 1, 1])
    >>> t = RETerm("g", "g", ("(Intercept)",), codes, 2, np.ones((4, 1)), np.ones(1), False)
    >>> nest = nesting([t], "gaussian")
    >>> r = np.array([[1.0, 1.0, -1.0, -1.0]])
    >>> a, = draw_intercepts(nest, r, np.array([1e-6]), [np.array([1.0])],
    ...                      np.random.default_rng(0))
    >>> np.round(a, 3).tolist()  # with almost no noise the group means are the intercepts
    [[1.0, -1.0]]
    """
    m = r.shape[0]
    inv_s2 = (1.0 / sigma**2)[:, None]
    # bottom-up: each level's children sums S and t (before its own tau is applied)
    S_levels: list[np.ndarray] = [np.empty(0)] * nest.n_levels
    t_levels: list[np.ndarray] = [np.empty(0)] * nest.n_levels
    S = np.broadcast_to(nest.counts, (m, nest.counts.size)) * inv_s2
    t = _rows_bincount(nest.obs_codes, r, nest.counts.size) * inv_s2
    for k in range(nest.n_levels - 1, -1, -1):
        S_levels[k], t_levels[k] = S, t
        if k == 0:
            break
        D = 1.0 + taus[k][:, None] ** 2 * S
        n_par = nest.terms[k - 1].n_groups
        S = _rows_bincount(nest.parents[k], S / D, n_par)
        t = _rows_bincount(nest.parents[k], t / D, n_par)
    # top-down: a level's intercepts given the sum of their ancestors' intercepts
    out: list[np.ndarray] = []
    above = np.zeros((m, nest.terms[0].n_groups))
    for k in range(nest.n_levels):
        if k:
            above = (above + out[-1])[:, nest.parents[k]]
        prec = 1.0 / taus[k][:, None] ** 2 + S_levels[k]
        mean = (t_levels[k] - above * S_levels[k]) / prec
        out.append(mean + rng.standard_normal(mean.shape) / np.sqrt(prec))
    return out


def _rows_bincount(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the columns of ``values`` (m, len(codes)) by ``codes``: shape (m, n_groups)."""
    m = values.shape[0]
    flat = (np.arange(m)[:, None] * n_groups + codes[None, :]).ravel()
    return np.bincount(flat, values.ravel(), minlength=m * n_groups).reshape(m, n_groups)


def complete_draws(nest: Nesting, X_std: np.ndarray, y_std: np.ndarray, b_std: np.ndarray,
                   sigma: np.ndarray, taus: list[np.ndarray],
                   rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw the intercepts for each posterior draw; return them and the linear predictor.

    Parameters
    ----------
    nest : Nesting
        The levels.
    X_std, y_std : ndarray, shapes (n, p) and (n,)
        Standardised design and outcome.
    b_std : ndarray, shape (m, p)
        Standardised fixed effects, one row per draw.
    sigma : ndarray, shape (m,)
        Residual SDs (standardised).
    taus : list of ndarray, shape (m,)
        Random-intercept SDs (standardised), in the order of ``nest.terms``.
    rng : Generator
        Source of the intercept draws.

    Returns
    -------
    intercepts : list of ndarray, shape (m, n_groups)
        ``a_k`` per level (standardised scale), in the order of ``nest.terms``.
    eta : ndarray, shape (m, n)
        The standardised linear predictor ``X_std b + sum_k a_k[g_k]``.
    """
    fixed = b_std @ X_std.T
    intercepts = draw_intercepts(nest, y_std[None, :] - fixed, sigma, taus, rng)
    eta = fixed
    for t, a in zip(nest.terms, intercepts, strict=True):
        eta = eta + a[:, t.codes]
    return intercepts, eta
