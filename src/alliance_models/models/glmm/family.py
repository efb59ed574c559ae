"""Response families of the GLMM: binomial (logit link) and Poisson (log link).

Everything is written per observation on the linear-predictor scale ``eta``, with the
binomial response as ``y`` successes out of ``n`` trials (``n = 1`` for a 0/1 outcome)
and the Poisson response as a count ``y`` (``n`` unused). The quantities are R's
``binomial()`` / ``poisson()`` ones, as lme4's ``glmFamily`` uses them:

* ``mean(eta)``: the mean per trial (probability) or the Poisson mean;
* ``working(eta)``: the IRLS working weights ``n mu_eta^2 / V(mu)`` and the working
  residual ``(y / n - mu) / mu_eta``;
* ``dev_resid``: deviance residuals (``family$dev.resid``), which sum to the deviance
  relative to the saturated model;
* ``loglik``: the full log-likelihood per observation (with the binomial coefficient or
  ``-log y!``), so ``-2 sum(loglik)`` is R's ``family$aic`` term that lme4's Laplace
  deviance uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["FAMILIES", "Family", "get_family"]

#: ``|eta|`` beyond which the logit mean is clamped (lme4's glmFamily: mu in
#: [eps, 1 - eps]), so that weights stay positive under (quasi-)separation.
_ETA_CLAMP = 30.0


@dataclass(frozen=True)
class Family:
    """One response family with its canonical link.

    Attributes
    ----------
    name : str
        ``"binomial"`` or ``"poisson"``.
    link : str
        ``"logit"`` or ``"log"``.

    Examples
    --------
    >>> fam = get_family("binomial")
    >>> float(fam.mean(np.array([0.0]))[0])
    0.5
    >>> w, r = fam.working(np.array([0.0]), np.array([3.0]), np.array([4.0]))
    >>> float(w[0]), float(r[0])
    (1.0, 1.0)
    """

    name: str
    link: str

    def mean(self, eta: np.ndarray) -> np.ndarray:
        """Inverse link: probabilities (binomial) or means (Poisson)."""
        if self.name == "binomial":
            return special.expit(np.clip(eta, -_ETA_CLAMP, _ETA_CLAMP))
        return np.exp(eta)

    def working(
        self, eta: np.ndarray, y: np.ndarray, n: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """IRLS working weights and working residuals at ``eta``."""
        mu = self.mean(eta)
        if self.name == "binomial":
            mu_eta = mu * (1.0 - mu)
            return n * mu_eta, (y / n - mu) / mu_eta
        return mu, (y - mu) / mu

    def dev_resid(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Deviance residuals (non-negative; zero at the saturated fit)."""
        mu = self.mean(eta)
        if self.name == "binomial":
            return 2.0 * (special.xlogy(y, y / (n * mu))
                          + special.xlogy(n - y, (n - y) / (n * (1 - mu))))
        return 2.0 * (special.xlogy(y, y / mu) - (y - mu))

    def loglik(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Log-likelihood of every observation (normalising constants included)."""
        return self.log_normaliser(y, n) + self.loglik_kernel(eta, y, n)

    def log_normaliser(self, y: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Return the part of :meth:`loglik` free of ``eta``: ``log C(n, y)`` or ``-log y!``."""
        if self.name == "binomial":
            return special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
        return -special.gammaln(y + 1)

    def loglik_kernel(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray,
                      mu: np.ndarray | None = None) -> np.ndarray:
        """:meth:`loglik` without :meth:`log_normaliser` (zero where ``n = y = 0``).

        For the Poisson family ``n`` is 1 for a row and 0 for a row to leave out.
        ``mu``, when given, is ``mean(eta)`` (saves its evaluation).
        """
        if self.name == "binomial":
            e = np.clip(eta, -_ETA_CLAMP, _ETA_CLAMP)
            # y log p + (n - y) log(1 - p), with log(1 - p) = log p - e
            logp = special.log_expit(e) if mu is None else np.log(mu)
            return n * logp - (n - y) * e
        return y * eta - n * (np.exp(eta) if mu is None else mu)

    def derivatives(
        self, eta: np.ndarray, y: np.ndarray, n: np.ndarray, mu: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score, information and its slope in ``eta`` of every observation.

        Returns ``d loglik / d eta = y - n mu``, the working weight
        ``w = -d^2 loglik / d eta^2`` (``n mu (1 - mu)`` or ``mu``; the weights of
        :meth:`working`, canonical links) and ``dw / d eta`` (``w (1 - 2 mu)`` or ``mu``).
        For the Poisson family ``n`` is 1 for a row and 0 for a row to leave out.
        ``mu``, when given, is ``mean(eta)``.

        Examples
        --------
        >>> g, w, dw = get_family("binomial").derivatives(
        ...     np.array([0.0]), np.array([3.0]), np.array([4.0]))
        >>> float(g[0]), float(w[0]), float(dw[0])
        (1.0, 1.0, 0.0)
        """
        if mu is None:
            mu = self.mean(eta)
        if self.name == "binomial":
            w = n * mu * (1.0 - mu)
            return y - n * mu, w, w * (1.0 - 2.0 * mu)
        m = n * mu
        return y - m, m, m

    def saturated_loglik(self, y: np.ndarray, n: np.ndarray) -> float:
        """Log-likelihood of the saturated model (each mean at its observation)."""
        if self.name == "binomial":
            p = y / n
            const = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
            return float(np.sum(const + special.xlogy(y, p) + special.xlog1py(n - y, -p)))
        return float(np.sum(special.xlogy(y, y) - y - special.gammaln(y + 1)))

    def start_eta(self, y: np.ndarray, n: np.ndarray) -> np.ndarray:
        """R's ``mustart`` on the link scale: ``(n y + 0.5) / (n + 1)``, ``y + 0.1``."""
        if self.name == "binomial":
            mu = (y + 0.5) / (n + 1.0)
            return np.log(mu / (1 - mu))
        return np.log(y + 0.1)


FAMILIES = {"binomial": Family("binomial", "logit"), "poisson": Family("poisson", "log")}


def get_family(name: str) -> Family:
    """Return the :class:`Family` called ``name`` (``"binomial"`` or ``"poisson"``)."""
    return FAMILIES[name]
