"""Binomial and Poisson mixed models (lme4's ``glmer``) on the Gaussian core's blocks.

* :mod:`.family` -- binomial (logit) and Poisson (log) families;
* :mod:`.pirls` -- penalised IRLS for the conditional modes (:class:`GLMMProblem`);
* :mod:`.agq` -- adaptive Gauss-Hermite quadrature for one scalar random effect;
* :mod:`.laplace` -- the deviance over ``(theta, beta)``, lme4's two optimisation stages
  and its finite-difference Hessian;
* :mod:`.counts`, :mod:`.separation` -- data checks;
* :mod:`.fit` -- :func:`fit_glmm` (what ``fit_mixed(family=...)`` calls) and
  :mod:`.result` -- :class:`GLMMFit`.
"""

from .fit import fit_glmm
from .result import GLMMFit

__all__ = ["GLMMFit", "fit_glmm"]
