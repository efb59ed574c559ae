"""Simple slopes: the conditional effect of a focal variable at chosen moderator values.

A conditional effect is the linear contrast ``w' b`` whose weights are the derivative of
the linear predictor with respect to the focal variable (:mod:`._core`). Frequentist fits
give estimate, SE, df (Satterthwaite, Kenward-Roger, ``n - p`` or infinite), t or z, p and
CI; Bayesian fits the posterior median, HDI and probability of direction computed draw by draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._format import table_text
from .._random import RNGLike
from .._validate import integer
from ..errors import ModelSpecError
from ._fit import (
    Terms,
    bayes_effect_rows,
    bayes_rows,
    check_alpha,
    check_fit,
    check_scale,
    check_terms,
    factor_values,
    freq_rows,
    held_note,
    held_values,
    link_of,
    posterior_draws,
    probe_values,
    reference_design,
    wald_rows,
)
from .delta import mean_derivatives, response_slopes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["AtSpec", "SimpleSlopes", "simple_slopes"]

AtSpec = Literal["meansd", "percentiles"] | Sequence[float] | float | np.ndarray


@dataclass(frozen=True)
class SimpleSlopes:
    """Conditional effects of ``focal`` at chosen moderator values.

    Attributes
    ----------
    focal, moderator : str
        The focal variable and the (first) moderator.
    moderator2 : str or None
        The second moderator (grid of both, e.g. for moderated moderation).
    table : DataFrame
        One row per moderator value (or pair): ``estimate, se, df, t`` (``z`` when df is
        infinite)``, p, ci_lower, ci_upper`` for frequentist fits, plus ``boot_lower``,
        ``boot_upper`` with a bootstrap; ``estimate`` (posterior median)``, mean, sd,
        hdi_lower, hdi_upper, pd`` for Bayesian fits.
    interaction : DataFrame or None
        With a three-way term: the conditional ``focal x moderator`` interaction at
        each value of ``moderator2`` (PROCESS model 3).
    held : dict of str to float
        Values at which other variables that interact with ``focal`` were held.
    alpha : float
        1 - confidence (or HDI) level.
    method : str
        ``"t"``, ``"z"`` or ``"bayes"``.
    n_boot : int
        Bootstrap resamples behind ``boot_lower``/``boot_upper`` (0 if none).
    note : str
        Text describing held values.
    scale : str
        ``"link"`` (slopes of the linear predictor: log-odds for binomial fits) or
        ``"response"`` (slopes of the mean: probability per unit of ``focal``).
    """

    focal: str
    moderator: str
    moderator2: str | None
    table: pd.DataFrame
    interaction: pd.DataFrame | None
    held: dict[str, float]
    alpha: float
    method: str
    n_boot: int = 0
    note: str = ""
    scale: str = "link"

    def to_frame(self) -> pd.DataFrame:
        """Return the table of conditional effects (a copy)."""
        return self.table.copy()

    def summary(self) -> str:
        """Text table of conditional effects with the notes on held values."""
        level = f"{100 * (1 - self.alpha):g}%"
        head = f"Conditional effect of {self.focal!r} at values of {self.moderator!r}"
        if self.moderator2:
            head += f" and {self.moderator2!r}"
        kind = {
            "bayes": f"posterior median, {level} HDI and probability of direction",
            "z": f"Wald z tests, {level} CI",
            "t": f"t tests, {level} CI",
        }[self.method]
        if self.scale == "response":
            head += " on the response scale (slope of the mean, delta-method SEs)"
        lines = [head, f"({kind})", table_text(self.table, index=False)]
        if self.n_boot:
            lines.append(f"boot_lower/boot_upper: {level} percentile bootstrap CI, "
                         f"{self.n_boot} resamples")
        if self.interaction is not None:
            lines += [
                "",
                f"Conditional {self.focal}:{self.moderator} interaction at values of "
                f"{self.moderator2!r}:",
                table_text(self.interaction, index=False),
            ]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None) -> Axes:
        """Point estimates with interval bars at each moderator value."""
        from ..plots import plot_simple_slopes

        return plot_simple_slopes(self, ax=ax)


def simple_slopes(
    fit: Any,
    *,
    focal: str,
    moderator: str,
    at: AtSpec = "meansd",
    moderator2: str | None = None,
    at2: AtSpec = "meansd",
    over: str | Sequence[str] = "rows",
    over2: str | Sequence[str] | None = None,
    alpha: float = 0.05,
    at_values_other: Mapping[str, float] | None = None,
    bootstrap: int = 0,
    seed: RNGLike = None,
    scale: Literal["link", "response"] = "link",
) -> SimpleSlopes:
    """Conditional effect of ``focal`` at values of one or two moderators.

    Parameters
    ----------
    fit : fitted model
        Any of ``fit_mixed``, ``fit_ols``, ``fit_gee``, ``fit_bayes``.
    focal : str
        The focal predictor (a variable or design column name, e.g. ``"alliance"``).
    moderator : str
        A variable that interacts with ``focal`` in the model.
    at : "meansd", "percentiles", number or list of numbers, default "meansd"
        Moderator values: mean and ±1 SD (SD with ``ddof=1``), the 16th/50th/84th
        percentiles, or given values. A two-valued moderator is probed at its two values.
        Mean, SD and percentiles are taken over the units chosen by ``over``.
    moderator2, at2 : str and as ``at``, optional
        A second moderator; the result is the grid of both. With a three-way term
        ``focal:moderator:moderator2`` the conditional two-way interaction is also
        reported (PROCESS model 3).
    over : "rows" or column name(s), default "rows"
        Whose distribution ``at="meansd"``/``"percentiles"`` describe. ``"rows"``: every
        fitted row (session) counts once, so patients with more sessions weigh more.
        A column such as ``"patient"`` (or ``"therapist:patient"``, or a tuple of
        columns, when patient labels repeat across therapists): every level counts once,
        and the moderator must be constant within each level.
        :func:`alliance_models.prepare` centres a patient-level moderator (``age_c``) at
        the mean over patients, so with
        ``over="patient"`` the "mean" row is at ``age_c = 0``; with ``"rows"`` it is at
        the session-weighted mean, which differs when patients have different numbers
        of sessions. Given ``at`` values are used as they are.
    over2 : as ``over``, optional
        The same for ``moderator2`` (default: ``over``).
    alpha : float, default 0.05
        1 - level of the CIs (HDIs for Bayesian fits).
    at_values_other : dict, optional
        Values of other variables that interact with ``focal`` (default: their means).
    bootstrap : int, default 0
        If positive, draw this many bootstrap refits (OLS fits only) for percentile CIs;
        an OLS fit made with ``bootstrap=`` uses its stored resamples automatically.
    seed : int, Generator or SeedSequence, optional
        Seed of that bootstrap.
    scale : {"link", "response"}, default "link"
        ``"link"``: slopes of the linear predictor (log-odds per unit of ``focal`` for a
        binomial fit; exact Wald z tests). ``"response"``: slopes of the mean (the
        probability, for a binomial fit) at ``focal`` = its mean, each moderator value
        and every other predictor at its mean (emmeans' ``emtrends(regrid =
        "response")``), with delta-method SEs and Wald z intervals (posterior draws of
        the slope for Bayesian fits). The same as ``"link"`` for identity links.

    Returns
    -------
    SimpleSlopes

    Raises
    ------
    ModelSpecError
        ``focal``/``moderator`` not in the model or not interacting, constant moderator,
        invalid ``at`` values.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import alliance_models as am
    >>> rng = np.random.default_rng(2)
    >>> d = pd.DataFrame({"alliance": rng.normal(size=100), "age": rng.normal(size=100)})
    >>> d["adherence"] = d.alliance * (1 + 0.5 * d.age) + rng.normal(size=100)
    >>> ss = am.simple_slopes(am.fit_ols("adherence ~ alliance * age", d),
    ...                       focal="alliance", moderator="age")
    >>> ss.table["age"].tolist() == ["-1 SD", "mean", "+1 SD"]
    True
    """
    check_fit(fit)
    check_alpha(alpha)
    check_scale(scale)
    terms = Terms.of(fit.frame)
    x_names = list(terms.names)
    mods = [moderator] + ([moderator2] if moderator2 is not None else [])
    check_terms(terms, focal, mods)
    if moderator2 is not None and moderator2 == moderator:
        raise ModelSpecError("moderator2 must differ from moderator")
    held = held_values(fit, terms, focal, mods, at_values_other)
    v1, l1 = probe_values(fit.frame, moderator, at, "at", over)
    if moderator2 is not None:
        v2, l2 = probe_values(fit.frame, moderator2, at2, "at2",
                              over if over2 is None else over2)
        grid = [(a, la, c, lc) for c, lc in zip(v2, l2, strict=True)
                for a, la in zip(v1, l1, strict=True)]
    else:
        grid = [(a, la, None, None) for a, la in zip(v1, l1, strict=True)]

    W = np.array(
        [
            terms.weights(
                [focal],
                {**held, moderator: a, **({moderator2: c} if moderator2 else {})},
            )
            for a, _, c, _ in grid
        ]
    )
    labels = pd.DataFrame(
        {moderator: [g[1] for g in grid], f"{moderator}_value": [g[0] for g in grid]}
    )
    if moderator2 is not None:
        labels[moderator2] = [g[3] for g in grid]
        labels[f"{moderator2}_value"] = [g[2] for g in grid]
    centering = getattr(fit, "centering", None) or {}
    for mname in mods:
        if mname in centering:  # fit_ols(center=...): also show the raw-scale value
            labels[f"{mname}_uncentred"] = labels[f"{mname}_value"] + centering[mname]
    draws = posterior_draws(fit)
    n_boot = 0
    link = link_of(fit)
    note = held_note(held, at_values_other)
    if scale == "response" and link != "identity":
        if bootstrap or getattr(fit, "boot_params", None) is not None:
            raise ModelSpecError("bootstrap CIs are on the link scale; use scale='link'")
        fmean = float(factor_values(fit.frame, focal).mean())
        points = [{focal: fmean, **held, moderator: a, **({moderator2: c} if moderator2 else {})}
                  for a, _, c, _ in grid]
        X0, others = reference_design(fit, terms, points)
        if draws is not None:
            _, d1, _ = mean_derivatives(draws @ X0.T, link)
            body = bayes_effect_rows(d1 * (draws @ W.T), alpha)
            method = "bayes"
        else:
            b = np.asarray(fit.params[x_names], float)
            V = np.asarray(fit.cov_params().loc[x_names, x_names], float)
            body = wald_rows(*response_slopes(b, V, X0, W, link), alpha)
            method = "z"
        at_txt = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                           for k, v in {focal: fmean, **others}.items())
        note = (note + "\n" if note else "") + (
            f"Response scale: slope of the predicted mean ({link} link inverted) at {at_txt}")
        table = pd.concat([labels, body], axis=1)
        return SimpleSlopes(focal=focal, moderator=moderator, moderator2=moderator2,
                            table=table, interaction=None, held=held, alpha=float(alpha),
                            method=method, n_boot=0, note=note, scale="response")
    if draws is not None:
        if bootstrap:
            raise ModelSpecError("bootstrap= is for frequentist fits; a Bayesian fit has draws")
        body = bayes_rows(draws, W, alpha)
        method = "bayes"
    else:
        body = freq_rows(fit, W, alpha)
        method = "z" if "z" in body.columns else "t"
        boot = _boot_params(fit, bootstrap, seed)
        if boot is not None:
            eff = np.asarray(boot[x_names], float) @ W.T
            body["boot_lower"] = np.quantile(eff, alpha / 2, axis=0)
            body["boot_upper"] = np.quantile(eff, 1 - alpha / 2, axis=0)
            n_boot = len(boot)
    table = pd.concat([labels, body], axis=1)

    interaction = None
    if moderator2 is not None and any(
        {focal, moderator, moderator2} <= set(fs) for fs in terms.factors
    ):
        W2 = np.array(
            [terms.weights([focal, moderator], {**held, moderator2: c})
             for c in v2]
        )
        lab2 = pd.DataFrame({moderator2: l2, f"{moderator2}_value": v2})
        body2 = bayes_rows(draws, W2, alpha) if draws is not None else freq_rows(fit, W2, alpha)
        interaction = pd.concat([lab2, body2], axis=1)
    return SimpleSlopes(
        focal=focal,
        moderator=moderator,
        moderator2=moderator2,
        table=table,
        interaction=interaction,
        held=held,
        alpha=float(alpha),
        method=method,
        n_boot=n_boot,
        note=note,
    )


def _boot_params(fit: Any, bootstrap: int, seed: RNGLike) -> pd.DataFrame | None:
    integer("bootstrap", bootstrap, ModelSpecError)
    if bootstrap > 0:
        if not hasattr(fit, "bootstrap_params"):
            raise ModelSpecError(
                f"bootstrap CIs are available for fit_ols fits; {type(fit).__name__} has no "
                "bootstrap (use its model-based CIs)"
            )
        return fit.bootstrap_params(bootstrap, seed=seed)
    return getattr(fit, "boot_params", None)


