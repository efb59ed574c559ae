"""Simulate an item-level alliance/adherence study in a REDCap-style export layout.

The generative model is written as plain numpy on patient- and session-level arrays;
:func:`simulate_study` only assembles the arrays into the export's rows and columns.
Every parameter, its default and where the default comes from is listed in the
docstring of :func:`simulate_study` (sources: ``DOMAIN.md`` of the project).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from .._random import RNGLike, as_generator
from .._validate import interval, probability
from ..errors import DesignError
from ..instruments.keys import EARS, HCCQ_SHORT, WAI_SR

__all__ = [
    "EARS_REVERSED",
    "EXPORT_COLUMNS",
    "HCCQ_SHORT_ITEMS",
    "ordinal_items",
    "simulate_study",
]

HCCQ_SHORT_ITEMS: tuple[int, ...] = HCCQ_SHORT.items
"""HCCQ items kept in the short form (the instrument's key in :mod:`..instruments.keys`)."""

EARS_REVERSED: tuple[int, ...] = EARS.reversed
"""EARS items that are negatively worded (the instrument's key)."""

_N_WAI, _N_EARS = len(WAI_SR.items), len(EARS.items)

WAI_SR_THRESHOLDS: tuple[float, ...] = (-2.2, -1.5, -0.8, 0.1)
"""Cut points of the latent item response for WAI-SR answers 1-5 (ceiling-skewed)."""

HCCQ_THRESHOLDS: tuple[float, ...] = (-2.6, -2.0, -1.4, -0.8, -0.1, 0.7)
"""Cut points of the latent item response for HCCQ answers 1-7."""

EARS_THRESHOLDS: tuple[float, ...] = (-1.6, -0.6, 0.3, 1.2)
"""Cut points of the latent item response for EARS answers 0-4 (before reversal)."""

EXPORT_COLUMNS: tuple[str, ...] = (
    "record_id",
    "redcap_event_name",
    "redcap_repeat_instrument",
    "redcap_repeat_instance",
    "therapist_id",
    "age",
    "sex",
    *(f"hccq_{i}" for i in HCCQ_SHORT_ITEMS),
    "session_date",
    "attended",
    "scheduled",
    *(f"wai_{i}" for i in WAI_SR.items),
    "ex_prescribed",
    "ex_completed",
    *(f"ears_{i}" for i in EARS.items),
)
"""Columns of the simulated export, in order."""


def ordinal_items(
    latent: np.ndarray,
    n_items: int,
    thresholds: Sequence[float],
    item_sd: float,
    rng: np.random.Generator,
    *,
    low: int = 1,
) -> np.ndarray:
    """Map a latent score to ``n_items`` ordinal answers through a threshold model.

    Each item's response is ``latent + e`` with ``e ~ N(0, item_sd**2)``; the answer is
    ``low`` plus the number of ``thresholds`` the response exceeds (graded-response
    style, equal loadings).

    Parameters
    ----------
    latent : ndarray of shape (n,)
        Latent score per respondent (or per session).
    n_items : int
        Number of items.
    thresholds : sequence of float
        Increasing cut points; ``len(thresholds) + 1`` categories.
    item_sd : float
        Standard deviation of the item-specific noise.
    rng : numpy.random.Generator
        Random generator.
    low : int, default 1
        The lowest answer.

    Returns
    -------
    ndarray of int, shape (n, n_items)

    Examples
    --------
    >>> import numpy as np
    >>> x = ordinal_items(np.zeros(3), 2, (-1.0, 1.0), 0.5, np.random.default_rng(0))
    >>> x.shape, int(x.min()) >= 1, int(x.max()) <= 3
    ((3, 2), True, True)
    """
    cuts = np.asarray(thresholds, dtype=float)
    if np.any(np.diff(cuts) <= 0):
        raise DesignError(f"thresholds must increase; got {list(cuts)}")
    resp = np.asarray(latent, dtype=float)[:, None] + rng.normal(
        0.0, item_sd, size=(len(latent), n_items)
    )
    return low + (resp[:, :, None] > cuts[None, None, :]).sum(axis=2)


def _cluster_sizes(
    n_therapists: int,
    patients_per_therapist: int | Sequence[int],
    unequal_sizes: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    if not isinstance(patients_per_therapist, int | np.integer):
        sizes = np.asarray(patients_per_therapist, dtype=int)
        if sizes.shape != (n_therapists,) or np.any(sizes < 1):
            raise DesignError(
                "patients_per_therapist as a sequence needs one positive count per therapist "
                f"({n_therapists}); got {list(sizes)}"
            )
        return sizes
    if patients_per_therapist < 1:
        raise DesignError(f"patients_per_therapist must be >= 1; got {patients_per_therapist}")
    if not unequal_sizes or patients_per_therapist == 1:
        return np.full(n_therapists, int(patients_per_therapist))
    total = n_therapists * int(patients_per_therapist)
    # Dirichlet-multinomial split of the total: caseloads differ (CV about 0.4 at mean 10)
    # but the number of patients is exactly n_therapists * patients_per_therapist.
    weights = rng.dirichlet(np.full(n_therapists, 10.0))
    return 1 + rng.multinomial(total - n_therapists, weights)


def simulate_study(
    n_therapists: int = 40,
    patients_per_therapist: int | Sequence[int] = 10,
    *,
    seed: RNGLike = None,
    unequal_sizes: bool = True,
    mean_sessions: float = 8.0,
    sessions_dispersion: float = 4.0,
    max_sessions: int = 20,
    alliance_sd_therapist: float = 0.35,
    alliance_sd_patient: float = 0.75,
    alliance_sd_session: float = 0.45,
    alliance_growth: float = 0.04,
    item_sd_wai: float = 0.6,
    autonomy_sd_therapist: float = 0.4,
    autonomy_sd_patient: float = 0.9,
    autonomy_alliance_corr: float = 0.4,
    item_sd_hccq: float = 0.75,
    diary_rate: float = 0.6,
    attendance_rate: float = 0.87,
    prescribed_per_week: int = 7,
    alliance_effect: float = 0.4,
    age_effect: float = 0.1,
    autonomy_effect: float = 0.2,
    alliance_x_age: float = -0.1,
    alliance_x_autonomy: float = 0.1,
    adherence_icc: float = 0.05,
    adherence_sd_patient: float = 0.8,
    dropout: float = 0.15,
    dropout_alliance_effect: float = -0.5,
    missing_items: float = 0.0,
    missing_diary: float = 0.0,
    missing_age: float = 0.0,
) -> pd.DataFrame:
    """Simulate an item-level physiotherapy study as a REDCap-style flat export.

    The layout follows a REDCap "flat" CSV export of a longitudinal project with a
    repeating instrument: one **baseline** row per patient (``redcap_event_name =
    "baseline_arm_1"``; ``therapist_id, age, sex`` and the six HCCQ short-form items),
    one **session** row per scheduled session (``"treatment_arm_1"``,
    ``redcap_repeat_instrument = "session"``, ``redcap_repeat_instance = 1..k``;
    ``session_date, attended, scheduled``, WAI-SR items ``wai_1..wai_12`` (1-5, blank when
    the session was not attended), the home-exercise diary ``ex_prescribed,
    ex_completed``), and one **discharge** row (``"discharge_arm_1"``; EARS section B
    items ``ears_1..ears_6``, 0-4, items 2, 3, 5 negatively worded so stored reversed)
    for every patient who did not drop out. Fields that do not belong to a row's form
    are blank, as in a real export.

    Generative model (latent scales; ``z`` means standardised):

    * **Alliance** at session ``s`` of patient ``p`` of therapist ``t``:
      ``eta = u_t + u_p + alliance_growth * (s - 1) + e_ps`` with
      ``u_t ~ N(0, alliance_sd_therapist^2)``, ``u_p ~ N(0, alliance_sd_patient^2)``,
      ``e_ps ~ N(0, alliance_sd_session^2)``. Separate therapist and patient parts
      because between-therapist differences in alliance drive much of the
      alliance-outcome link (Baldwin, Imel & Wampold 2007; Del Re et al. 2012); with the
      defaults about 14% of the latent variance lies between therapists. Each WAI-SR
      item is ``eta + N(0, item_sd_wai^2)`` cut at ``WAI_SR_THRESHOLDS``, so over half
      the answers are 5 (the ceiling seen in physiotherapy samples: over half at the
      maximum in a Japanese WAI-SC study, >15% in a Brazilian WAI-S study).
    * **Autonomy support** (HCCQ short form, items 1, 2, 4, 7, 10, 14; 1-7): latent
      ``a_t + a_p`` (sd ``autonomy_sd_therapist``, ``autonomy_sd_patient``), the patient
      part correlated ``autonomy_alliance_corr`` with ``u_p`` (an autonomy-supportive
      climate and the bond overlap; an assumption). Item noise ``item_sd_hccq = 0.75``
      gives Cronbach's alpha about .91, as reported for the HCCQ short form.
    * **Age** ``~ N(50, 14^2)`` truncated to 18-85 (musculoskeletal samples, means 46-50).
      **Sex** female with probability 0.6 (an assumption typical of MSK physiotherapy).
    * **Sessions** per patient ``1 + NegBin`` with mean ``mean_sessions`` (trials report
      medians about 8; range 5-10) and size ``sessions_dispersion``, capped at
      ``max_sessions``.
    * **Adherence** on the logit scale, for the diary completion probability and the
      attendance probability alike::

          lp = alliance_effect * A + age_effect * G + autonomy_effect * S
               + alliance_x_age * A * G + alliance_x_autonomy * A * S + v_t + v_p

      with ``A`` the latent session alliance standardised, ``G = (age - 50) / 14``,
      ``S`` the latent autonomy support standardised; diary ``logit(p) = logit(diary_rate)
      + lp``, ``ex_completed ~ Binomial(prescribed_per_week, p)``; attendance
      ``logit(q) = logit(attendance_rate) + lp``, ``attended ~ Bernoulli(q)`` (session 1
      is always attended: it is the assessment). ``alliance_effect = 0.4`` gives a
      session-level correlation of about .3 between the WAI-SR total and diary completion
      (psychotherapy alliance-outcome r = .28, Fluckiger et al. 2018; range .10-.45).
      ``autonomy_effect = 0.2`` follows the indirect HCCQ -> autonomous motivation ->
      adherence path (.22 x .64, Chan et al. 2009). No
      moderation effect has been published numerically: ``alliance_x_age = -0.1`` (alliance
      matters less for older patients) and ``alliance_x_autonomy = +0.1`` (alliance and
      autonomy support reinforce each other) are assumptions within the standardised range
      0.05-0.10 of DOMAIN.md; set them for your own question. ``attendance_rate = 0.87``
      makes about 73% of patients with 8 sessions miss at least one (Bhavsar et al.
      2021); ``diary_rate = 0.6`` reflects that up to 65% are non- or partially adherent
      to home programmes. Therapist and patient random intercepts ``v_t``, ``v_p``:
      ``adherence_sd_patient = 0.8`` and the therapist variance set so that the
      latent-scale therapist ICC ``sd_t^2 / (sd_t^2 + sd_p^2 + pi^2/3)`` equals
      ``adherence_icc = 0.05`` (Johns et al. 2019: 5%; Lewis et al. 2010: 2.6-7.1%).
    * **Dropout**: a patient with two or more sessions drops out with probability
      ``logit^-1(logit(dropout) + dropout_alliance_effect * z(u_p))`` (about ``dropout``
      overall; lower alliance, more dropout - an assumption). The dropout stops attending
      after a uniformly chosen session; one or two further scheduled sessions are recorded
      as no-shows (``attended = 0``, items and diary blank), later sessions are not in the
      export and there is no discharge row.
    * **EARS** at discharge: latent = the patient's standardised adherence intercept
      ``v_t + v_p`` plus item noise N(0, 0.7^2), cut at ``EARS_THRESHOLDS`` into 0-4;
      items 2, 3, 5 are then stored reversed (``4 - x``), as answered on the form.
    * **Messes** (off by default; the shipped example uses small rates, documented in
      ``scripts/make_example_data.py``): ``missing_items`` is the share of attended
      sessions whose WAI-SR form has blanks (1 blank item in 70% of those forms, 4-6 in
      30%); ``missing_diary`` the share of attended sessions without a diary;
      ``missing_age`` the share of patients with a blank age. Every value stays inside
      its instrument's range.

    Parameters
    ----------
    n_therapists : int, default 40
        Number of therapists.
    patients_per_therapist : int or sequence of int, default 10
        Mean caseload (split unequally when ``unequal_sizes``) or one count per therapist.
    seed : int, Generator, SeedSequence or None
        Randomness; the same seed gives the same data.
    unequal_sizes : bool, default True
        Split ``n_therapists * patients_per_therapist`` patients over therapists by a
        Dirichlet-multinomial draw (each therapist at least one patient).
    mean_sessions, sessions_dispersion, max_sessions : float, float, int
        Negative-binomial sessions per patient (mean, size) and the cap.
    alliance_sd_therapist, alliance_sd_patient, alliance_sd_session : float
        Standard deviations of the latent alliance components.
    alliance_growth : float, default 0.04
        Latent alliance gain per session (alliance tends to build over treatment).
    item_sd_wai : float, default 0.6
        WAI-SR item noise on the latent scale.
    autonomy_sd_therapist, autonomy_sd_patient, autonomy_alliance_corr : float
        Latent autonomy-support components and the patient-level correlation with alliance.
    item_sd_hccq : float, default 0.75
        HCCQ item noise (alpha about .91).
    diary_rate, attendance_rate : float
        Diary completion and attendance probabilities at average covariates.
    prescribed_per_week : int, default 7
        Home-exercise sessions prescribed between visits (the diary denominator).
    alliance_effect, age_effect, autonomy_effect : float
        Main effects on the logit scale per standard deviation.
    alliance_x_age, alliance_x_autonomy : float
        Moderation effects on the logit scale per standard deviation squared.
    adherence_icc : float, default 0.05
        Latent-scale therapist ICC of adherence.
    adherence_sd_patient : float, default 0.8
        Patient random-intercept standard deviation of adherence (logit scale).
    dropout : float, default 0.15
        Dropout probability at average alliance.
    dropout_alliance_effect : float, default -0.5
        Log-odds change of dropout per SD of the patient's alliance component.
    missing_items, missing_diary, missing_age : float, default 0.0
        Rates of the documented messes (see above).

    Returns
    -------
    pandas.DataFrame
        The export, columns :data:`EXPORT_COLUMNS`; integer fields use the nullable
        ``Int64`` dtype so that blanks stay blank.

    Examples
    --------
    >>> from alliance_models.datasets import simulate_study
    >>> raw = simulate_study(n_therapists=3, patients_per_therapist=2, seed=1)
    >>> sorted(raw["redcap_event_name"].unique())
    ['baseline_arm_1', 'discharge_arm_1', 'treatment_arm_1']
    >>> int((raw["redcap_event_name"] == "baseline_arm_1").sum())
    6
    """
    if n_therapists < 1:
        raise DesignError(f"n_therapists must be >= 1; got {n_therapists}")
    for name, value in {
        "diary_rate": diary_rate,
        "attendance_rate": attendance_rate,
        "adherence_icc": adherence_icc,
        "dropout": dropout,
    }.items():
        probability(name, value, DesignError)
    for name, value in {
        "missing_items": missing_items,
        "missing_diary": missing_diary,
        "missing_age": missing_age,
    }.items():
        interval(name, value, 0.0, 1.0, DesignError, closed="both")
    if sessions_dispersion <= 0 or prescribed_per_week < 1:
        raise DesignError(
            "sessions_dispersion must be > 0 and prescribed_per_week >= 1; got "
            f"{sessions_dispersion}, {prescribed_per_week}"
        )
    if mean_sessions < 1 or max_sessions < 1:
        raise DesignError(
            f"mean_sessions and max_sessions must be >= 1; got {mean_sessions}, {max_sessions}"
        )
    interval("autonomy_alliance_corr", autonomy_alliance_corr, -1.0, 1.0, DesignError)
    rng = as_generator(seed)

    # ---- therapists and patients -------------------------------------------------
    sizes = _cluster_sizes(n_therapists, patients_per_therapist, unequal_sizes, rng)
    n_pat = int(sizes.sum())
    ther = np.repeat(np.arange(n_therapists), sizes)
    u_t = rng.normal(0.0, alliance_sd_therapist, n_therapists)
    z_p = rng.standard_normal(n_pat)
    u_p = alliance_sd_patient * z_p
    a_t = rng.normal(0.0, autonomy_sd_therapist, n_therapists)
    rho = autonomy_alliance_corr
    a_p = autonomy_sd_patient * (rho * z_p + np.sqrt(1 - rho**2) * rng.standard_normal(n_pat))
    autonomy_lat = a_t[ther] + a_p
    autonomy_z = autonomy_lat / np.sqrt(autonomy_sd_therapist**2 + autonomy_sd_patient**2)
    age = stats.truncnorm.rvs(
        (18 - 50) / 14, (85 - 50) / 14, loc=50, scale=14, size=n_pat, random_state=rng
    )
    age = np.round(age)  # whole years, as recorded
    age_z = (age - 50.0) / 14.0
    sex = np.where(rng.random(n_pat) < 0.6, "female", "male")
    hccq = ordinal_items(autonomy_lat, len(HCCQ_SHORT_ITEMS), HCCQ_THRESHOLDS, item_sd_hccq, rng)

    sd_p = adherence_sd_patient
    sd_t = np.sqrt(adherence_icc * (sd_p**2 + np.pi**2 / 3) / (1 - adherence_icc))
    v = rng.normal(0.0, sd_t, n_therapists)[ther] + rng.normal(0.0, sd_p, n_pat)

    # sessions: 1 + NegBin(mean - 1, size)
    mu = mean_sessions - 1.0
    k = 1 + rng.negative_binomial(
        sessions_dispersion, sessions_dispersion / (sessions_dispersion + mu), n_pat
    )
    k = np.minimum(k, max_sessions)

    # dropout: stop attending after session d; 1-2 no-shows follow; later sessions absent
    p_drop = special.expit(special.logit(dropout) + dropout_alliance_effect * z_p)
    drops = (rng.random(n_pat) < p_drop) & (k >= 2)
    last_attended = np.where(drops, 1 + np.floor(rng.random(n_pat) * (k - 1)).astype(int), k)
    n_noshow = np.where(drops, 1 + rng.integers(0, 2, n_pat), 0)
    n_rows = np.where(drops, np.minimum(k, last_attended + n_noshow), k)

    # ---- session level -------------------------------------------------------------
    pid = np.repeat(np.arange(n_pat), n_rows)
    sess = np.concatenate([np.arange(1, n + 1) for n in n_rows]) if n_pat else np.array([], int)
    n_sess = len(pid)
    eta = (
        u_t[ther[pid]]
        + u_p[pid]
        + alliance_growth * (sess - 1)
        + rng.normal(0.0, alliance_sd_session, n_sess)
    )
    sd_eta = np.sqrt(alliance_sd_therapist**2 + alliance_sd_patient**2 + alliance_sd_session**2)
    A = eta / sd_eta
    G = age_z[pid]
    S = autonomy_z[pid]
    lp = (
        alliance_effect * A
        + age_effect * G
        + autonomy_effect * S
        + alliance_x_age * A * G
        + alliance_x_autonomy * A * S
        + v[pid]
    )
    q_attend = special.expit(special.logit(attendance_rate) + lp)
    attended = (rng.random(n_sess) < q_attend).astype(int)
    attended[sess == 1] = 1
    noshow = sess > last_attended[pid]
    attended[noshow] = 0
    p_diary = special.expit(special.logit(diary_rate) + lp)
    completed = rng.binomial(prescribed_per_week, p_diary)
    wai = ordinal_items(eta, _N_WAI, WAI_SR_THRESHOLDS, item_sd_wai, rng).astype(float)
    wai[attended == 0] = np.nan

    # messes
    att_idx = np.flatnonzero(attended == 1)
    if missing_items > 0 and len(att_idx):
        hit = att_idx[rng.random(len(att_idx)) < missing_items]
        for i in hit:
            n_blank = 1 if rng.random() < 0.7 else int(rng.integers(4, 7))
            wai[i, rng.choice(_N_WAI, size=n_blank, replace=False)] = np.nan
    diary_blank = attended == 0
    if missing_diary > 0 and len(att_idx):
        diary_blank[att_idx[rng.random(len(att_idx)) < missing_diary]] = True
    age_out = age.copy()
    if missing_age > 0:
        age_out[rng.random(n_pat) < missing_age] = np.nan

    start = pd.Timestamp("2023-01-02") + pd.to_timedelta(rng.integers(0, 540, n_pat), unit="D")
    offset = 7 * (sess - 1) + np.where(sess > 1, rng.integers(-2, 3, n_sess), 0)
    dates = (start[pid] + pd.to_timedelta(offset, unit="D")).strftime("%Y-%m-%d")

    # ---- discharge (EARS) ------------------------------------------------------------
    completers = np.flatnonzero(~drops)
    ears_lat = v[completers] / np.sqrt(sd_t**2 + sd_p**2)
    ears = ordinal_items(ears_lat, _N_EARS, EARS_THRESHOLDS, 0.7, rng, low=EARS.min)
    rev = np.asarray(EARS_REVERSED) - 1
    ears[:, rev] = EARS.min + EARS.max - ears[:, rev]

    # ---- assemble the export ---------------------------------------------------------
    record = np.arange(1, n_pat + 1)
    therapist_id = np.array([f"T{t + 1:02d}" for t in range(n_therapists)])
    base = pd.DataFrame(
        {
            "record_id": record,
            "redcap_event_name": "baseline_arm_1",
            "therapist_id": therapist_id[ther],
            "age": age_out,
            "sex": sex,
            **{f"hccq_{i}": hccq[:, j] for j, i in enumerate(HCCQ_SHORT_ITEMS)},
            "_order": 0,
        }
    )
    sessions = pd.DataFrame(
        {
            "record_id": record[pid],
            "redcap_event_name": "treatment_arm_1",
            "redcap_repeat_instrument": "session",
            "redcap_repeat_instance": sess,
            "session_date": dates,
            "attended": attended,
            "scheduled": 1,
            **{f"wai_{i}": wai[:, j] for j, i in enumerate(WAI_SR.items)},
            "ex_prescribed": np.where(diary_blank, np.nan, prescribed_per_week),
            "ex_completed": np.where(diary_blank, np.nan, completed),
            "_order": 1,
        }
    )
    discharge = pd.DataFrame(
        {
            "record_id": record[completers],
            "redcap_event_name": "discharge_arm_1",
            **{f"ears_{i}": ears[:, j] for j, i in enumerate(EARS.items)},
            "_order": 2,
        }
    )
    out = pd.concat([base, sessions, discharge], ignore_index=True)
    out = out.sort_values(["record_id", "_order", "redcap_repeat_instance"], kind="stable")
    out = out.drop(columns="_order").reset_index(drop=True)
    out = out.reindex(columns=list(EXPORT_COLUMNS))
    int_cols = [
        "record_id",
        "redcap_repeat_instance",
        "age",
        *(f"hccq_{i}" for i in HCCQ_SHORT_ITEMS),
        "attended",
        "scheduled",
        *(f"wai_{i}" for i in WAI_SR.items),
        "ex_prescribed",
        "ex_completed",
        *(f"ears_{i}" for i in EARS.items),
    ]
    for col in int_cols:
        out[col] = out[col].astype("Float64").astype("Int64")
    return out
