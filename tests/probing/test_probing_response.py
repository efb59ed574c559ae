"""Probing of binomial / Poisson GLMM fits on the link and the response scale.

References: emmeans::emtrends on the glmer fit (tests/r/glmer_probing_reference.R, R 4.2.2,
lme4 1.1-31, emmeans 1.8.4-1) for the link-scale slopes (rtol 1e-4; SEs 1e-3, the
tolerance of our SEs against lme4's) and the response-scale slopes (rtol 1e-3:
emtrends differences the probability forward over 0.1% of alliance's range, an O(h)
error of ~3e-4 here); the delta-method SEs against a central-difference gradient of the
same function (rtol 1e-6); Johnson-Neyman bounds by their defining equation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import alliance_models as am
from alliance_models.probing.delta import mean_derivatives, response_means, response_slopes

R_DIR = Path(__file__).resolve().parents[1] / "r"
NESTED = "attended ~ alliance * (age_c + autonomy_c) + (1 | therapist/patient)"


@pytest.fixture(scope="module")
def att() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "glmer_attendance.csv")


@pytest.fixture(scope="module")
def fit(att):
    return am.fit_mixed(NESTED, att, family="binomial", trials="scheduled")


@pytest.fixture(scope="module")
def emtrends() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "glmer_emtrends.csv")


@pytest.mark.parametrize(("scale", "rtol_est", "rtol_se"),
                         [("link", 1e-4, 1e-3), ("response", 1e-3, 2e-3)])
def test_slopes_match_emtrends(fit, emtrends, scale, rtol_est, rtol_se):
    ref = emtrends[emtrends.scale == scale]
    ss = am.simple_slopes(fit, focal="alliance", moderator="autonomy_c",
                          at=ref.autonomy_c.tolist(), scale=scale)
    assert ss.method == "z" and ss.scale == scale
    np.testing.assert_allclose(ss.table["estimate"], ref["trend"], rtol=rtol_est)
    np.testing.assert_allclose(ss.table["se"], ref["se"], rtol=rtol_se)
    q = stats.norm.ppf(0.975)
    np.testing.assert_allclose(ss.table["ci_upper"] - ss.table["estimate"],
                               q * ss.table["se"], rtol=1e-12)


def test_delta_method_se_against_a_numerical_gradient(fit, att):
    names = list(fit.frame.x_names)
    b = fit.params[names].to_numpy()
    V = fit.cov_params().loc[names, names].to_numpy()
    ss = am.simple_slopes(fit, focal="alliance", moderator="autonomy_c", at=[-1.5, 0.5],
                          scale="response")
    age = float(att.age_c.mean())
    for row in ss.table.itertuples():
        m = row.autonomy_c_value
        x0 = np.array([1, att.alliance.mean(), age, m, att.alliance.mean() * age,
                       att.alliance.mean() * m])
        w = np.array([0, 1, 0, 0, age, m])

        def slope(beta: np.ndarray, x0: np.ndarray = x0, w: np.ndarray = w) -> float:
            p = special.expit(x0 @ beta)
            return float(p * (1 - p) * (w @ beta))

        h = 1e-6
        grad = np.array([(slope(b + h * e) - slope(b - h * e)) / (2 * h) for e in np.eye(b.size)])
        assert row.estimate == pytest.approx(slope(b), rel=1e-12)
        assert row.se == pytest.approx(float(np.sqrt(grad @ V @ grad)), rel=1e-6)


def test_response_means_and_log_link_closed_forms():
    rng = np.random.default_rng(3)
    b = rng.normal(size=3)
    A = rng.normal(size=(3, 3))
    V = A @ A.T / 10
    X0, W = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    est, se = response_slopes(b, V, X0, W, "log")
    mu = np.exp(X0 @ b)
    np.testing.assert_allclose(est, mu * (W @ b), rtol=1e-13)
    grad = (mu * (W @ b))[:, None] * X0 + mu[:, None] * W
    np.testing.assert_allclose(se, np.sqrt(np.einsum("ij,jk,ik->i", grad, V, grad)), rtol=1e-13)
    m, sm = response_means(b, V, X0, "logit")
    np.testing.assert_allclose(m, special.expit(X0 @ b), rtol=1e-13)
    d1 = mean_derivatives(X0 @ b, "logit")[1]
    np.testing.assert_allclose(sm, d1 * np.sqrt(np.einsum("ij,jk,ik->i", X0, V, X0)),
                               rtol=1e-13)
    est_id, _ = response_slopes(b, V, X0, W, "identity")
    np.testing.assert_allclose(est_id, W @ b, rtol=1e-13)


@pytest.mark.parametrize("scale", ["link", "response"])
def test_johnson_neyman_bounds_solve_their_equation(fit, scale):
    jn = am.johnson_neyman(fit, focal="alliance", moderator="autonomy_c", scale=scale)
    assert jn.method == "z" and len(jn.bounds) == 2 and jn.region == "inside"
    for m in jn.bounds:
        ss = am.simple_slopes(fit, focal="alliance", moderator="autonomy_c", at=[m],
                              scale=scale)
        # at a bound the Wald z statistic equals the normal critical value
        assert abs(ss.table["z"].iloc[0]) == pytest.approx(stats.norm.ppf(0.975), rel=1e-7)
    sig = jn.curve.set_index("autonomy_c")["significant"]
    inside = (sig.index > jn.bounds[0]) & (sig.index < jn.bounds[1])
    assert sig[inside].all() and not sig[~inside].any()


def test_conditional_effects_response_scale(fit):
    link = am.conditional_effects(fit, focal="alliance", moderator="autonomy_c", n_points=4)
    resp = am.conditional_effects(fit, focal="alliance", moderator="autonomy_c", n_points=4,
                                  scale="response")
    np.testing.assert_allclose(resp.table["estimate"], special.expit(link.table["estimate"]),
                               rtol=1e-12)
    np.testing.assert_allclose(resp.table["lower"], special.expit(link.table["lower"]),
                               rtol=1e-12)
    p = resp.table["estimate"]
    np.testing.assert_allclose(resp.table["se"], p * (1 - p) * link.table["se"], rtol=1e-12)
    assert resp.table["lower"].between(0, 1).all() and resp.table["upper"].between(0, 1).all()


def test_identity_link_response_scale_is_the_link_scale():
    rng = np.random.default_rng(8)
    d = pd.DataFrame({"alliance": rng.normal(size=80), "age": rng.normal(size=80)})
    d["adherence"] = d.alliance * (1 + 0.3 * d.age) + rng.normal(size=80)
    ols = am.fit_ols("adherence ~ alliance * age", d)
    a = am.simple_slopes(ols, focal="alliance", moderator="age").table
    b = am.simple_slopes(ols, focal="alliance", moderator="age", scale="response").table
    pd.testing.assert_frame_equal(a, b)


def test_poisson_fit_response_slopes(att):
    pf = am.fit_mixed("completed ~ alliance * age_c + (1 | therapist)", att, family="poisson")
    ss = am.simple_slopes(pf, focal="alliance", moderator="age_c", at=[0.0], scale="response")
    names = list(pf.frame.x_names)
    b = pf.params[names].to_numpy()
    mu = np.exp(b @ np.array([1, att.alliance.mean(), 0.0, 0.0]))
    assert ss.table["estimate"].iloc[0] == pytest.approx(mu * b[1], rel=1e-10)


def test_plots_say_the_scale(fit):
    ss = am.simple_slopes(fit, focal="alliance", moderator="autonomy_c", scale="response")
    assert "response scale" in ss.plot().get_xlabel()
    jn = am.johnson_neyman(fit, focal="alliance", moderator="autonomy_c", scale="response")
    assert "response scale" in jn.plot().get_ylabel()
    ax = am.plot_interaction(fit, focal="alliance", moderator="autonomy_c", scale="response")
    assert "response scale" in ax.get_ylabel()


def test_scale_errors(fit):
    with pytest.raises(am.ModelSpecError, match="scale='prob'"):
        am.simple_slopes(fit, focal="alliance", moderator="autonomy_c", scale="prob")
    with pytest.raises(am.ModelSpecError, match="scale='prob'"):
        am.johnson_neyman(fit, focal="alliance", moderator="autonomy_c", scale="prob")
