"""Closed-form power for balanced cluster-randomised designs (noncentral t).

For a trial that randomises whole therapists (clusters) to two arms, with ``J0`` and
``J1`` therapists, ``n`` patients per therapist and ``m`` sessions per patient, and an
outcome whose residual variance 1 splits into a therapist share ``icc_therapist``, a
patient share ``icc_patient`` and a session share ``1 - icc_therapist - icc_patient``,
the REML / cluster-means estimate of the standardised treatment effect ``d`` has

``Var(d_hat) = (icc_therapist + icc_patient / n + (1 - icc_therapist - icc_patient) / (n m))
* (1 / J0 + 1 / J1)``

and ``d_hat / SE`` follows a noncentral t with ``J0 + J1 - 2`` degrees of freedom and
noncentrality ``d / SE`` (the analysis of therapist means, which the balanced mixed model
reproduces exactly). With ``m = 1`` this is the familiar two-level result with design
effect ``1 + (n - 1) * icc``. These formulas are the reference the Monte Carlo engine is
tested against.

With a cost ``c_t`` per therapist and ``c_p`` per patient, a design costs
``J (c_t + c_p n)`` and the variance above is ``(a + b / n) (1 / J0 + 1 / J1)`` with
``a = icc_therapist`` and ``b = icc_patient + (1 - icc_therapist - icc_patient) / m``; for a
fixed variance the cost is least at the caseload ``n* = sqrt((b / a) (c_t / c_p))``
(:func:`optimal_caseload`; with ``m = 1`` and no patient share the classic
``sqrt((c_t / c_p) (1 - icc) / icc)``, Raudenbush 1997), and
:func:`cluster_randomised_optimum` finds the cheapest integer design for a target power.
"""

from __future__ import annotations

import math

from scipy import stats

from .._validate import probability
from ..errors import DesignError
from .design import Design

__all__ = [
    "cluster_randomised_optimum",
    "cluster_randomised_power",
    "cluster_randomised_se",
    "cluster_randomised_therapists",
    "design_effect",
    "design_power",
    "noncentral_t_power",
    "optimal_caseload",
]


def design_effect(icc: float, cluster_size: float) -> float:
    """Variance inflation of a cluster mean: ``1 + (cluster_size - 1) * icc``.

    Examples
    --------
    >>> design_effect(0.05, 10)
    1.45
    """
    if not 0 <= icc < 1:
        raise DesignError(f"icc must be in [0, 1), got {icc!r}")
    if cluster_size < 1:
        raise DesignError(f"cluster_size must be >= 1, got {cluster_size!r}")
    return 1.0 + (cluster_size - 1.0) * icc


def noncentral_t_power(ncp: float, df: float, alpha: float = 0.05) -> float:
    """Two-sided power of a t test with noncentrality ``ncp`` and ``df`` degrees of freedom.

    Examples
    --------
    >>> round(noncentral_t_power(0.0, 20, 0.05), 6)
    0.05
    """
    probability("alpha", alpha, DesignError)
    if df <= 0:
        raise DesignError(f"degrees of freedom must be positive, got {df!r}")
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def _arms(therapists: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(therapists, tuple):
        j0, j1 = therapists
    else:
        j0, j1 = therapists // 2, therapists - therapists // 2
    if min(j0, j1) < 1 or j0 + j1 < 3:
        raise DesignError(
            f"a cluster-randomised design needs at least one therapist per arm and 3 in all, "
            f"got {therapists!r}"
        )
    return int(j0), int(j1)


def cluster_randomised_se(
    *,
    therapists: int | tuple[int, int],
    patients_per_therapist: int,
    icc_therapist: float,
    sessions: int = 1,
    icc_patient: float = 0.0,
) -> float:
    """Return the SE of the standardised treatment effect in a balanced cluster trial.

    Examples
    --------
    >>> round(cluster_randomised_se(therapists=20, patients_per_therapist=10,
    ...                             icc_therapist=0.05), 4)
    0.1703
    """
    j0, j1 = _arms(therapists)
    if patients_per_therapist < 1 or sessions < 1:
        raise DesignError("patients_per_therapist and sessions must be >= 1")
    if icc_therapist < 0 or icc_patient < 0 or icc_therapist + icc_patient >= 1:
        raise DesignError(
            f"ICCs must be non-negative with a sum below 1, got {icc_therapist!r} and "
            f"{icc_patient!r}"
        )
    n, m = patients_per_therapist, sessions
    per_cluster = icc_therapist + icc_patient / n + (1 - icc_therapist - icc_patient) / (n * m)
    return math.sqrt(per_cluster * (1 / j0 + 1 / j1))


def cluster_randomised_power(
    effect: float,
    *,
    therapists: int | tuple[int, int],
    patients_per_therapist: int,
    icc_therapist: float,
    sessions: int = 1,
    icc_patient: float = 0.0,
    alpha: float = 0.05,
) -> float:
    """Noncentral-t power for a balanced therapist-randomised trial.

    Parameters
    ----------
    effect : float
        Standardised treatment effect (Cohen's d on the residual SD).
    therapists : int or (int, int)
        Total therapists (split in half) or per arm.
    patients_per_therapist, sessions : int
        Cluster sizes.
    icc_therapist, icc_patient : float
        Residual-variance shares (see the module docstring).
    alpha : float
        Two-sided level.

    Returns
    -------
    float

    Examples
    --------
    >>> round(cluster_randomised_power(0.5, therapists=20, patients_per_therapist=10,
    ...                                icc_therapist=0.05), 3)
    0.793
    """
    j0, j1 = _arms(therapists)
    se = cluster_randomised_se(therapists=therapists, patients_per_therapist=patients_per_therapist,
                               icc_therapist=icc_therapist, sessions=sessions,
                               icc_patient=icc_patient)
    return noncentral_t_power(effect / se, j0 + j1 - 2, alpha)


def cluster_randomised_therapists(
    effect: float,
    *,
    target: float = 0.8,
    patients_per_therapist: int,
    icc_therapist: float,
    sessions: int = 1,
    icc_patient: float = 0.0,
    alpha: float = 0.05,
    max_therapists: int = 10_000,
) -> int:
    """Smallest even number of therapists (half per arm) reaching ``target`` power.

    Examples
    --------
    >>> cluster_randomised_therapists(0.5, patients_per_therapist=10, icc_therapist=0.05)
    22
    """
    if not 0 < target < 1:
        raise DesignError(f"target power must be in (0, 1), got {target!r}")
    if effect == 0:
        raise DesignError("an effect of 0 cannot reach any power above alpha")
    for j in range(4, max_therapists + 1, 2):
        p = cluster_randomised_power(effect, therapists=j,
                                     patients_per_therapist=patients_per_therapist,
                                     icc_therapist=icc_therapist, sessions=sessions,
                                     icc_patient=icc_patient, alpha=alpha)
        if p >= target:
            return j
    raise DesignError(f"target power {target} not reached with {max_therapists} therapists")


def optimal_caseload(
    cost_ratio: float,
    *,
    icc_therapist: float,
    sessions: int = 1,
    icc_patient: float = 0.0,
) -> float:
    """Patients per therapist that minimise cost for a given SE of the arm effect.

    ``sqrt((b / a) * cost_ratio)`` with ``a = icc_therapist``,
    ``b = icc_patient + (1 - icc_therapist - icc_patient) / sessions`` and
    ``cost_ratio`` the cost of a therapist over the cost of a patient (see the module
    docstring); infinite when ``icc_therapist`` is 0 (then therapists add nothing that
    patients cannot).

    Examples
    --------
    >>> round(optimal_caseload(10.0, icc_therapist=0.05), 2)  # sqrt(10 * 0.95 / 0.05)
    13.78
    """
    if isinstance(cost_ratio, bool) or not isinstance(cost_ratio, int | float) or not (
            math.isfinite(cost_ratio)) or cost_ratio <= 0:
        raise DesignError(f"cost_ratio (therapist cost / patient cost) must be a positive "
                          f"finite number, got {cost_ratio!r}")
    if sessions < 1:
        raise DesignError(f"sessions must be >= 1, got {sessions!r}")
    if icc_therapist < 0 or icc_patient < 0 or icc_therapist + icc_patient >= 1:
        raise DesignError(
            f"ICCs must be non-negative with a sum below 1, got {icc_therapist!r} and "
            f"{icc_patient!r}"
        )
    if icc_therapist == 0:
        return math.inf
    b = icc_patient + (1 - icc_therapist - icc_patient) / sessions
    return math.sqrt(b / icc_therapist * cost_ratio)


def cluster_randomised_optimum(
    effect: float,
    *,
    cost: tuple[float, float],
    target: float = 0.8,
    icc_therapist: float,
    sessions: int = 1,
    icc_patient: float = 0.0,
    alpha: float = 0.05,
    max_patients: int = 500,
    max_therapists: int = 10_000,
) -> tuple[int, int, float]:
    """Cheapest balanced therapist-randomised trial reaching ``target`` power.

    Over caseloads ``1 .. max_patients`` and even therapist totals (half per arm, at
    least 4), the pair of least cost ``J * (c_t + c_p * n)`` whose noncentral-t power
    (:func:`cluster_randomised_power`) reaches ``target``; ties go to fewer therapists.

    Parameters
    ----------
    effect : float
        Standardised treatment effect.
    cost : (float, float)
        Cost per therapist and per patient (non-negative, not both 0).
    target, icc_therapist, sessions, icc_patient, alpha
        As in :func:`cluster_randomised_power`.
    max_patients, max_therapists : int
        Search limits.

    Returns
    -------
    (therapists, patients_per_therapist, cost)

    Examples
    --------
    >>> cluster_randomised_optimum(0.5, cost=(2000.0, 300.0), icc_therapist=0.05)
    (22, 9, 103400.0)
    """
    c_t, c_p = (float(c) for c in cost)
    if min(c_t, c_p) < 0 or not math.isfinite(c_t + c_p) or c_t + c_p == 0:
        raise DesignError(f"cost = (per therapist, per patient) must be finite, >= 0 and "
                          f"not both 0; got {cost!r}")

    def fewest(n: float) -> int | None:
        # smallest even J (>= 4) reaching the target at caseload n; bisection on the
        # monotone power (doubling first to bracket it)
        def reaches(j: int) -> bool:
            return noncentral_t_power(effect / math.sqrt(per(n) * 4 / j), j - 2,
                                      alpha) >= target
        hi = 4
        while not reaches(hi):
            if hi >= max_therapists:
                return None
            hi = min(max_therapists - max_therapists % 2, hi * 2)
        lo = 2  # stands for "falls short"
        while hi - lo > 2:
            mid = lo + ((hi - lo) // 4) * 2
            if reaches(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def per(n: float) -> float:
        return icc_therapist + icc_patient / n + (1 - icc_therapist - icc_patient) / (
            n * sessions)

    if not 0 < target < 1:
        raise DesignError(f"target power must be in (0, 1), got {target!r}")
    if effect == 0:
        raise DesignError("an effect of 0 cannot reach any power above alpha")
    optimal_caseload(1.0, icc_therapist=icc_therapist, sessions=sessions,
                     icc_patient=icc_patient)  # checks the ICCs and sessions
    # with unlimited patients per therapist no design needs fewer therapists than this
    floor = fewest(math.inf) if icc_therapist > 0 else 4
    best: tuple[float, int, int] | None = None
    for n in range(1, max_patients + 1):
        if best is not None and floor is not None and floor * (c_t + c_p * n) > best[0]:
            break  # every larger caseload costs more than the best
        j = fewest(n)
        if j is not None and (best is None or (j * (c_t + c_p * n), j) < best[:2]):
            best = (j * (c_t + c_p * n), j, n)
    if best is None:
        raise DesignError(
            f"target power {target} not reached with {max_therapists} therapists and "
            f"{max_patients} patients per therapist")
    return best[1], best[2], best[0]


def design_power(design: Design, *, test: str = "arm", alpha: float = 0.05) -> float:
    """Analytic power of a :class:`Design` that is a balanced cluster-randomised trial.

    Valid when randomisation is by therapist, caseloads and session counts are fixed,
    the outcome is gaussian, there is no dropout and the only non-zero effect is
    ``arm`` (other effects would change the residual variance of the arm comparison).

    Examples
    --------
    >>> d = Design(therapists=20, patients_per_therapist=10, sessions=1,
    ...            randomisation="therapist", icc_therapist=0.05, icc_patient=0.0,
    ...            effects={"arm": 0.5})
    >>> round(design_power(d), 3)
    0.793
    """
    problems = []
    if design.randomisation != "therapist":
        problems.append("randomisation is not 'therapist'")
    if not isinstance(design.patients_per_therapist, int) or not isinstance(design.sessions,
                                                                            int):
        problems.append("caseloads and sessions must be fixed integers")
    if design.family != "gaussian":
        problems.append("the outcome must be gaussian")
    if design.dropout != 0.0:
        problems.append("there must be no dropout")
    others = {k: v for k, v in design.effects.items() if k != "arm" and v != 0}
    if others:
        problems.append(f"non-zero effects other than arm: {sorted(others)}")
    if test != "arm":
        problems.append(f"only the arm effect has a closed form here (test={test!r})")
    if design.alliance_slope_sd:
        problems.append("therapists' random alliance slopes (alliance_slope_sd > 0) add "
                        "between-therapist variance")
    if problems:
        raise DesignError("design_power needs a balanced cluster-randomised design: "
                          + "; ".join(problems))
    return cluster_randomised_power(
        design.effects.get("arm", 0.0),
        therapists=design.arm_therapists,
        patients_per_therapist=int(design.patients_per_therapist),
        icc_therapist=design.icc_therapist,
        sessions=int(design.sessions),
        icc_patient=design.icc_patient,
        alpha=alpha,
    )
