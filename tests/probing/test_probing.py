"""Probing: simple slopes, Johnson-Neyman and conditional effects on every kind of fit.

Independent references: numpy lstsq and closed-form variances of linear combinations,
the quadratic formula, brute-force root finding of p(m) = alpha, and direct HDI
computations on synthetic posterior draws. Tolerances are stated per test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from formulaic import Formula
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special, stats

import alliance_models as am
from alliance_models import _format
from alliance_models.errors import ModelSpecError
from alliance_models.probing import _core as core

R_DIR = Path(__file__).parents[1] / "r"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(R_DIR / "ols_data.csv")


def _ols_by_hand(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Classical OLS: coefficients, s^2 (X'X)^-1 and residual df, from lstsq."""
    b, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ b
    n, p = X.shape
    return b, (e @ e) / (n - p) * np.linalg.inv(X.T @ X), n - p


def _encoding(formula: str):
    """The formulaic encoding of ``formula`` (what a real fit keeps as fixed_model_spec)."""
    d = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "m": [1.0, 0.0, 3.0, 2.0]})
    return Formula(formula).get_model_matrix(d).model_spec


@dataclass
class FakeFit:
    """A minimal fit object: params, covariance, df (constant or by contrast), draws.

    Its frame carries a real formulaic encoding of ``formula``, whose columns must be
    ``x_names``: probing reads the term structure from it.
    """

    x_names: tuple[str, ...]
    b: np.ndarray
    V: np.ndarray
    data: pd.DataFrame
    df: object = np.inf
    draws: pd.DataFrame | None = None
    formula: str = "x * m"

    def __post_init__(self):
        X = np.column_stack([
            np.ones(len(self.data)) if n == "Intercept" else np.ones(len(self.data))
            for n in self.x_names
        ])
        self.frame = SimpleNamespace(x_names=self.x_names, data=self.data, X=X,
                                     y=np.zeros(len(self.data)),
                                     fixed_model_spec=_encoding(self.formula))
        self.spec = None

    @property
    def params(self):
        return pd.Series(self.b, index=list(self.x_names))

    def cov_params(self):
        return pd.DataFrame(self.V, index=list(self.x_names), columns=list(self.x_names))

    def contrast_df(self, L):
        return self.df(np.asarray(L)) if callable(self.df) else float(self.df)

    @property
    def fixed_draws(self):
        return self.draws


def _fake(b1, b3, v11, v13, v33, *, df=np.inf, m=None, draws=None):
    """Fit with terms x, m, x:m where the effect of x is b1 + b3 m."""
    names = ("Intercept", "x", "m", "x:m")
    b = np.array([0.0, b1, 0.0, b3])
    V = np.eye(4) * 0.01
    V[1, 1], V[1, 3], V[3, 1], V[3, 3] = v11, v13, v13, v33
    mvals = np.linspace(-10, 10, 41) if m is None else m
    d = pd.DataFrame({"x": np.linspace(0, 1, len(mvals)), "m": mvals})
    return FakeFit(names, b, V, d, df=df, draws=draws)


# --------------------------------------------------------------------------- OLS by hand
@pytest.mark.parametrize("hc", [None, "HC3"])
def test_simple_slopes_ols_match_hand_computation(data, hc):
    fit = am.fit_ols("y ~ x * w", data, hc=hc)
    X = np.column_stack([np.ones(len(data)), data.x, data.w, data.x * data.w])
    b, V, df = _ols_by_hand(X, data.y.to_numpy())
    if hc == "HC3":  # recompute V with the HC3 formula written out here
        e = data.y.to_numpy() - X @ b
        h = np.diag(X @ np.linalg.inv(X.T @ X) @ X.T)
        bread = np.linalg.inv(X.T @ X)
        V = bread @ (X.T * (e**2 / (1 - h) ** 2)) @ X @ bread
    ss = am.simple_slopes(fit, focal="x", moderator="w", at="meansd")
    m = data.w.mean() + np.array([-1, 0, 1]) * data.w.std(ddof=1)
    est = b[1] + b[3] * m
    se = np.sqrt(V[1, 1] + 2 * m * V[1, 3] + m**2 * V[3, 3])
    t = est / se
    q = stats.t.ppf(0.975, df)
    tab = ss.table
    np.testing.assert_allclose(tab["w_value"], m, rtol=1e-12)
    np.testing.assert_allclose(tab["estimate"], est, rtol=1e-6)
    np.testing.assert_allclose(tab["se"], se, rtol=1e-6)
    np.testing.assert_allclose(tab["t"], t, rtol=1e-6)
    np.testing.assert_allclose(tab["p"], 2 * stats.t.sf(np.abs(t), df), rtol=1e-6)
    np.testing.assert_allclose(tab["ci_lower"], est - q * se, rtol=1e-6)
    assert (tab["df"] == df).all()
    assert ss.method == "t"


def test_against_r_rockchalk_and_emmeans(data):
    # tests/r/probing_reference.R: rockchalk::testSlopes (simple slopes, JN roots) and
    # emmeans::emtrends (three-way grid); classical covariance; rtol 1e-6
    ref = pd.read_csv(R_DIR / "probing_reference.csv")
    m1 = am.fit_ols("y ~ x * w", data, hc=None)
    r = ref[ref.what == "m1_slope"]
    ss = am.simple_slopes(m1, focal="x", moderator="w", at=list(r["w"]))
    np.testing.assert_allclose(ss.table["estimate"], r["estimate"], rtol=1e-6)
    np.testing.assert_allclose(ss.table["se"], r["se"], rtol=1e-6)
    np.testing.assert_allclose(ss.table["df"], r["df"])
    jn = am.johnson_neyman(m1, focal="x", moderator="w")
    roots = [float(ref.loc[ref.what == k, "w"].iloc[0]) for k in ("m1_jn_lo", "m1_jn_hi")]
    np.testing.assert_allclose(jn.bounds, roots, rtol=1e-6)
    assert jn.region == "outside"  # rockchalk: "values of w OUTSIDE this interval"
    m3 = am.fit_ols("y ~ x * w * z", data, hc=None)
    r3 = ref[ref.what == "m3_slope"]
    ss3 = am.simple_slopes(m3, focal="x", moderator="w", at=[2.0, 3.0, 4.5], moderator2="z",
                           at2=[-0.2, 0.8])
    merged = ss3.table.merge(r3, left_on=["w_value", "z_value"], right_on=["w", "z"],
                             suffixes=("", "_r"))
    assert len(merged) == 6
    np.testing.assert_allclose(merged["estimate"], merged["estimate_r"], rtol=1e-6)
    np.testing.assert_allclose(merged["se"], merged["se_r"], rtol=1e-6)
    np.testing.assert_allclose(merged["df"], merged["df_r"])


def test_johnson_neyman_ols_matches_quadratic_formula(data):
    fit = am.fit_ols("y ~ x * w", data, hc=None)
    X = np.column_stack([np.ones(len(data)), data.x, data.w, data.x * data.w])
    b, V, df = _ols_by_hand(X, data.y.to_numpy())
    t2 = stats.t.ppf(0.975, df) ** 2
    A = b[3] ** 2 - t2 * V[3, 3]
    B = 2 * (b[1] * b[3] - t2 * V[1, 3])
    C = b[1] ** 2 - t2 * V[1, 1]
    disc = B**2 - 4 * A * C
    roots = sorted([(-B - np.sqrt(disc)) / (2 * A), (-B + np.sqrt(disc)) / (2 * A)])
    jn = am.johnson_neyman(fit, focal="x", moderator="w")
    np.testing.assert_allclose(jn.bounds, roots, rtol=1e-6)
    assert jn.region == ("outside" if A > 0 else "inside")
    # at each bound the two-sided p-value is exactly alpha
    for r in jn.bounds:
        se = np.sqrt(V[1, 1] + 2 * r * V[1, 3] + r * r * V[3, 3])
        p = 2 * stats.t.sf(abs(b[1] + b[3] * r) / se, df)
        assert p == pytest.approx(0.05, abs=1e-9)
    lo, hi = data.w.min(), data.w.max()
    assert jn.observed_range == pytest.approx((lo, hi))
    assert jn.bounds_in_range == tuple(lo <= r <= hi for r in roots)
    assert "Observed range of w" in jn.summary()
    frame = jn.to_frame()
    assert list(frame.columns) == ["bound", "df", "in_observed_range"]


def test_three_way_simple_slopes_and_conditional_interaction(data):
    fit = am.fit_ols("y ~ x * w * z", data, hc=None)
    X = np.column_stack([np.ones(len(data)), data.x, data.w, data.z, data.x * data.w,
                         data.x * data.z, data.w * data.z, data.x * data.w * data.z])
    b, V, df = _ols_by_hand(X, data.y.to_numpy())
    ws, zs = [2.0, 3.0, 4.5], [-0.2, 0.8]
    ss = am.simple_slopes(fit, focal="x", moderator="w", at=ws, moderator2="z", at2=zs)
    tab = ss.table
    assert len(tab) == 6
    for _, row in tab.iterrows():
        w_, z_ = row["w_value"], row["z_value"]
        g = np.array([0, 1, 0, 0, w_, z_, 0, w_ * z_])
        assert row["estimate"] == pytest.approx(g @ b, rel=1e-6)
        assert row["se"] == pytest.approx(np.sqrt(g @ V @ g), rel=1e-6)
    inter = ss.interaction
    assert inter is not None and list(inter["z_value"]) == zs
    for _, row in inter.iterrows():
        g = np.array([0, 0, 0, 0, 1, 0, 0, row["z_value"]])
        assert row["estimate"] == pytest.approx(g @ b, rel=1e-6)
        assert row["se"] == pytest.approx(np.sqrt(g @ V @ g), rel=1e-6)
        assert row["p"] == pytest.approx(
            2 * stats.t.sf(abs(g @ b) / np.sqrt(g @ V @ g), df), rel=1e-6)
    assert "Conditional x:w interaction" in ss.summary()


def test_three_way_without_moderator2_holds_z_at_mean(data):
    fit = am.fit_ols("y ~ x * w * z", data, hc=None)
    ss = am.simple_slopes(fit, focal="x", moderator="w", at=[3.0])
    zbar = data.z.mean()
    p = fit.params
    expected = p["x"] + p["x:w"] * 3 + p["x:z"] * zbar + p["x:w:z"] * 3 * zbar
    assert ss.table["estimate"].iloc[0] == pytest.approx(expected, rel=1e-10)
    assert ss.held == pytest.approx({"z": zbar})
    assert "z = " in ss.summary() and "its mean" in ss.summary()
    ss2 = am.simple_slopes(fit, focal="x", moderator="w", at=[3.0], at_values_other={"z": 1.0})
    exp2 = p["x"] + p["x:w"] * 3 + p["x:z"] + p["x:w:z"] * 3
    assert ss2.table["estimate"].iloc[0] == pytest.approx(exp2, rel=1e-10)
    assert "as given" in ss2.summary()


def test_model2_grid_of_two_moderators(data):
    fit = am.fit_ols("y ~ x * w + x * z", data)
    ss = am.simple_slopes(fit, focal="x", moderator="w", moderator2="z")
    assert len(ss.table) == 9 and ss.interaction is None
    p = fit.params
    r = ss.table.iloc[4]
    assert r["estimate"] == pytest.approx(
        p["x"] + p["x:w"] * r["w_value"] + p["x:z"] * r["z_value"], rel=1e-10)


def test_at_options(data):
    fit = am.fit_ols("y ~ x * w", data)
    pct = am.simple_slopes(fit, focal="x", moderator="w", at="percentiles").table
    np.testing.assert_allclose(pct["w_value"], np.percentile(data.w, [16, 50, 84]))
    assert list(pct["w"]) == ["p16", "p50", "p84"]
    one = am.simple_slopes(fit, focal="x", moderator="w", at=2.5).table
    assert list(one["w_value"]) == [2.5]
    d = data.assign(g=(data.z > 0.5).astype(int))
    fit2 = am.fit_ols("y ~ x * g", d)
    tab = am.simple_slopes(fit2, focal="x", moderator="g").table
    assert list(tab["g_value"]) == [0.0, 1.0]  # a two-valued moderator: its values


def test_bootstrap_percentile_ci(data):
    fit = am.fit_ols("y ~ x * w", data, bootstrap=300, seed=5)
    ss = am.simple_slopes(fit, focal="x", moderator="w", at=[2.0, 4.0])
    boot = fit.boot_params.to_numpy()
    for k, m in enumerate([2.0, 4.0]):
        eff = boot[:, 1] + m * boot[:, 3]
        assert ss.table["boot_lower"].iloc[k] == pytest.approx(np.quantile(eff, 0.025))
        assert ss.table["boot_upper"].iloc[k] == pytest.approx(np.quantile(eff, 0.975))
    assert ss.n_boot == 300 and "percentile bootstrap" in ss.summary()
    # requested at probing time instead, seeded
    plain = am.fit_ols("y ~ x * w", data)
    a = am.simple_slopes(plain, focal="x", moderator="w", bootstrap=200, seed=9)
    b = am.simple_slopes(plain, focal="x", moderator="w", bootstrap=200, seed=9)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert "boot_lower" not in am.simple_slopes(plain, focal="x", moderator="w").table


# --------------------------------------------------------------------------- JN regions
T = stats.norm.ppf(0.975)


@pytest.mark.parametrize("args,region,nb", [
    ((1.0, 0.1, 0.04, 0.0, 0.04), "inside", 2),      # interaction n.s., effect sig near 0
    ((0.2, 0.5, 0.01, 0.0, 0.01), "outside", 2),     # interaction sig, crosses zero
    # "all" needs var(effect) > 0 where the effect is zero: impossible when b3 != 0, so
    # only the degenerate case b3 = v33 = 0 (a moderator with a known-zero interaction)
    ((1.0, 0.0, 0.01, 0.0, 0.0), "all", 0),
    ((0.1, 0.05, 1.0, 0.0, 1.0), "none", 0),
    ((0.0, 1.0, 1.0, -0.1, 1.0 / T**2), "above", 1),  # b3^2 = t^2 v33: one bound
    ((0.0, 1.0, 1.0, 0.1, 1.0 / T**2), "below", 1),
])
def test_jn_region_types(args, region, nb):
    fit = _fake(*args)
    jn = am.johnson_neyman(fit, focal="x", moderator="m")
    assert jn.region == region
    assert len(jn.bounds) == nb
    b1, b3, v11, v13, v33 = args

    def z(m):
        return (b1 + b3 * m) / np.sqrt(v11 + 2 * m * v13 + m * m * v33)

    for r in jn.bounds:
        assert abs(z(r)) == pytest.approx(T, rel=1e-9)
    # check the classification at points inside each significant interval and outside
    ints = jn.intervals
    for s, e in ints:
        mid = 0.5 * (s + e) if np.isfinite(s) and np.isfinite(e) else (
            (e - 1.0) if np.isfinite(e) else (s + 1.0) if np.isfinite(s) else 0.0)
        assert abs(z(mid)) > T
    if region == "above":
        assert abs(z(jn.bounds[0] - 1)) < T and jn.intervals[0][1] == np.inf
    if region == "below":
        assert abs(z(jn.bounds[0] + 1)) < T and jn.intervals[0][0] == -np.inf
    if region == "inside":
        assert abs(z(jn.bounds[1] + 1)) < T and abs(z(jn.bounds[0] - 1)) < T
    if region == "outside":
        assert abs(z(np.mean(jn.bounds))) < T
    assert jn.method == "z"
    assert region in jn.summary()


def test_jn_in_range_bookkeeping():
    fit = _fake(0.2, 0.5, 0.01, 0.0, 0.01, m=np.linspace(-0.5, 2.0, 11))
    jn = am.johnson_neyman(fit, focal="x", moderator="m")
    lo_b, hi_b = jn.bounds  # about -0.937 and -0.008
    assert jn.bounds_in_range == (False, True)
    assert jn.intervals_in_range == ((hi_b, 2.0),)
    assert jn.intervals_in_range == core.clip_intervals(jn.intervals, -0.5, 2.0)
    assert "lies outside the observed range" in jn.summary()


# --------------------------------------------------------------------------- Satterthwaite
def _varying_df(L):
    m = L[3]  # the weight on x:m is the moderator value
    return 3.0 + 40.0 / (1.0 + 0.5 * m * m)


def _mild_df(L):
    return 30.0 + 5.0 * np.tanh(L[3])


def _brute_bounds(b1, b3, v11, v13, v33, df_fn, lo=-100.0, hi=100.0):
    def excess(m):  # |t(m)| - t_crit(df(m)) with the df of that very contrast
        t = (b1 + b3 * m) / np.sqrt(v11 + 2 * v13 * m + v33 * m * m)
        return abs(t) - stats.t.ppf(0.975, df_fn(np.array([0, 1.0, 0, m])))

    grid = np.linspace(lo, hi, 20001)
    vals = np.array([excess(m) for m in grid])
    return [optimize.brentq(excess, grid[i], grid[i + 1], xtol=1e-14)
            for i in np.flatnonzero(np.sign(vals[1:]) != np.sign(vals[:-1]))]


def test_jn_fixed_point_iteration_with_contrast_dependent_df():
    args = (0.5, 0.4, 0.05, -0.01, 0.02)
    fit = _fake(*args, df=_mild_df)
    jn = am.johnson_neyman(fit, focal="x", moderator="m")
    assert jn.method == "satterthwaite" and jn.converged
    brute = _brute_bounds(*args, _mild_df)
    assert len(brute) == len(jn.bounds) == 2
    np.testing.assert_allclose(jn.bounds, brute, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jn.df, [_mild_df(np.array([0, 1, 0, r])) for r in brute],
                               rtol=1e-6)
    assert jn.region == "outside"
    # the bounds differ from those with a constant df: the iteration mattered
    const = core.jn_solve(fit.b, fit.V, np.array([0, 1.0, 0, 0]), np.array([0, 0, 0, 1.0]),
                          _mild_df(np.array([0, 1, 0, 0.0])))
    assert not np.allclose(const.bounds, jn.bounds, rtol=1e-4)


def test_jn_strongly_varying_df_changes_the_region_shape():
    # with df at the moderator mean the quadratic says "outside"; with each contrast's
    # own df the effect is significant only between two bounds ("inside")
    args = (0.5, 0.4, 0.05, -0.01, 0.02)
    fit = _fake(*args, df=_varying_df)
    jn = am.johnson_neyman(fit, focal="x", moderator="m")
    brute = _brute_bounds(*args, _varying_df)
    assert len(brute) == len(jn.bounds) == 2
    np.testing.assert_allclose(jn.bounds, brute, rtol=1e-6, atol=1e-9)
    assert jn.region == "inside" and jn.converged
    ref = core.jn_solve(fit.b, fit.V, np.array([0, 1.0, 0, 0]), np.array([0, 0, 0, 1.0]),
                        _varying_df(np.array([0, 1, 0, 0.0])))
    assert ref.region == "outside"


def test_core_fixed_point_reports_iterations():
    a, c = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    sol = core.jn_solve(np.array([0.5, 0.4]), np.array([[0.05, -0.01], [-0.01, 0.02]]), a, c,
                        lambda m: 30.0 + 5.0 * np.tanh(m))
    assert sol.converged and all(i > 1 for i in sol.iterations)


@pytest.mark.slow
def test_jn_on_real_mixed_fit_matches_grid_search():
    _mixed_jn_check(n_patients=40)


def test_jn_on_real_mixed_fit_small():
    _mixed_jn_check(n_patients=16)


def _mixed_jn_check(n_patients):
    rng = np.random.default_rng(21)
    pid = np.repeat(np.arange(n_patients), 6)
    w = np.repeat(rng.normal(0, 1, n_patients), 6)  # patient-level moderator
    x = rng.normal(size=pid.size)
    u = np.repeat(rng.normal(0, 0.7, n_patients), 6)
    y = 0.3 * x + 0.2 * w + 0.35 * x * w + u + rng.normal(size=pid.size)
    d = pd.DataFrame({"patient": pid.astype(str), "x": x, "w": w, "y": y})
    fit = am.fit_mixed("y ~ x * w + (1 | patient)", d)
    jn = am.johnson_neyman(fit, focal="x", moderator="w")
    b = fit.params.to_numpy()
    V = fit.cov_params().to_numpy()
    names = list(fit.params.index)
    ix, ixw = names.index("x"), names.index("x:w")

    def pval(m):
        L = np.zeros(len(b))
        L[ix], L[ixw] = 1.0, m
        t = (L @ b) / np.sqrt(L @ V @ L)
        return 2 * stats.t.sf(abs(t), fit.contrast_df(L)) - 0.05

    grid = np.linspace(-8, 8, 161)
    vals = np.array([pval(m) for m in grid])
    brute = [optimize.brentq(pval, grid[i], grid[i + 1], xtol=1e-13)
             for i in np.flatnonzero(np.sign(vals[1:]) != np.sign(vals[:-1]))]
    assert len(brute) == len(jn.bounds)
    np.testing.assert_allclose(jn.bounds, brute, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- GEE (z tests)
def test_probing_gee_uses_z():
    sim = pd.read_csv(R_DIR / "gee_sim_data.csv")
    fit = am.fit_gee("attended ~ alliance * age", sim, trials="scheduled")
    ss = am.simple_slopes(fit, focal="alliance", moderator="age", at=[40.0, 60.0])
    assert "z" in ss.table.columns and np.isinf(ss.table["df"]).all()
    p, V = fit.params, fit.cov_params()
    g = np.array([0, 1, 0, 40.0])
    assert ss.table["estimate"].iloc[0] == pytest.approx(g @ p.to_numpy(), rel=1e-10)
    assert ss.table["se"].iloc[0] == pytest.approx(np.sqrt(g @ V.to_numpy() @ g), rel=1e-10)
    z = ss.table["z"].iloc[0]
    assert ss.table["p"].iloc[0] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    jn = am.johnson_neyman(fit, focal="alliance", moderator="age")
    assert jn.method == "z"
    ce = am.conditional_effects(fit, focal="alliance", moderator="age", at=[50.0],
                                n_points=3, scale="response")
    x0 = np.array([1, ce.table["alliance"].iloc[0], 50.0, 50.0 * ce.table["alliance"].iloc[0]])
    assert ce.table["estimate"].iloc[0] == pytest.approx(special.expit(x0 @ p.to_numpy()))
    assert (ce.table["lower"] < ce.table["estimate"]).all()
    with pytest.raises(ModelSpecError, match="bootstrap CIs are available for fit_ols"):
        am.simple_slopes(fit, focal="alliance", moderator="age", bootstrap=10)


# --------------------------------------------------------------------------- Bayesian
def _bayes_fake(seed, S=4000):
    rng = np.random.default_rng(seed)
    b = np.array([0.0, 0.2, 0.0, 0.5])
    V = np.diag([0.01, 0.01, 0.01, 0.01])
    draws = rng.multivariate_normal(b, V, size=S)
    names = ("Intercept", "x", "m", "x:m")
    df = pd.DataFrame(draws, columns=list(names))
    return _fake(0.2, 0.5, 0.01, 0.0, 0.01, m=np.linspace(-2, 2, 21), draws=df), draws


def _hdi_brute(x, prob):
    s = np.sort(x)
    k = int(np.floor(prob * len(s)))
    best = min(range(len(s) - k), key=lambda i: s[i + k] - s[i])
    return s[best], s[best + k]


@pytest.mark.parametrize("seed", [1, 2])
def test_bayesian_simple_slopes_from_draws(seed):
    fit, draws = _bayes_fake(seed)
    ss = am.simple_slopes(fit, focal="x", moderator="m", at=[-1.0, 0.0, 1.5])
    assert ss.method == "bayes"
    for k, m in enumerate([-1.0, 0.0, 1.5]):
        eff = draws[:, 1] + m * draws[:, 3]
        row = ss.table.iloc[k]
        assert row["estimate"] == pytest.approx(np.median(eff), rel=1e-12)
        lo, hi = _hdi_brute(eff, 0.95)
        assert (row["hdi_lower"], row["hdi_upper"]) == pytest.approx((lo, hi), rel=1e-12)
        assert row["pd"] == pytest.approx(max((eff > 0).mean(), (eff < 0).mean()))
        # Monte Carlo check against the exact normal posterior (any seed): HDI ends within
        # 0.2 posterior SD (about 5 Monte Carlo SEs with 4000 draws)
        sd = np.sqrt(0.01 + m * m * 0.01)
        mu = 0.2 + 0.5 * m
        assert abs(row["hdi_lower"] - (mu - T * sd)) < 0.2 * sd
        assert abs(row["hdi_upper"] - (mu + T * sd)) < 0.2 * sd
    assert "HDI" in ss.summary()


def test_bayesian_johnson_neyman_bounds_flip_hdi():
    fit, draws = _bayes_fake(3)
    jn = am.johnson_neyman(fit, focal="x", moderator="m")
    assert jn.method == "bayes"
    assert len(jn.bounds) >= 1
    for r in jn.bounds:
        flips = []
        for m in (r - 1e-5, r + 1e-5):
            lo, hi = _hdi_brute(draws[:, 1] + m * draws[:, 3], 0.95)
            flips.append(lo > 0 or hi < 0)
        assert flips[0] != flips[1]
    # close to the exact normal-theory bound (-0.008) within Monte Carlo error
    assert min(abs(np.array(jn.bounds) - (-0.00803))) < 0.1
    assert jn.region in ("above", "outside")
    assert "HDI excludes 0" in jn.summary()


def test_bayesian_conditional_effects():
    fit, draws = _bayes_fake(4)
    fit.frame.data["x"] = np.linspace(-1, 1, len(fit.data))
    # the fake has no fixed_design: give it by hand
    fit.frame.fixed_design = lambda nd: np.column_stack(
        [np.ones(len(nd)), nd["x"], nd["m"], nd["x"] * nd["m"]])
    fit.spec = SimpleNamespace(response="y", variables=("y", "x", "m"))
    ce = am.conditional_effects(fit, focal="x", moderator="m", at=[1.0], n_points=3)
    for k, xv in enumerate(ce.table["x"]):
        pred = draws @ np.array([1, xv, 1.0, xv])
        assert ce.table["estimate"].iloc[k] == pytest.approx(np.median(pred))
        assert (ce.table["lower"].iloc[k], ce.table["upper"].iloc[k]) == pytest.approx(
            _hdi_brute(pred, 0.95))


def test_hdi_core_matches_brute_force():
    x = np.random.default_rng(0).gamma(2.0, size=501)
    assert core.hdi(x, 0.9) == pytest.approx(_hdi_brute(x, 0.9))


# --------------------------------------------------------------------------- predictions
def test_conditional_effects_ols_by_hand(data):
    d = data.assign(site=np.where(data.z > 0.5, "b", "a"))
    fit = am.fit_ols("y ~ x * w + z + C(site)", d, hc=None)
    ce = am.conditional_effects(fit, focal="x", moderator="w", at=[2.0, 4.0], n_points=4)
    tab = ce.table
    assert len(tab) == 8
    assert ce.held["z"] == pytest.approx(d.z.mean())
    assert ce.held["site"] == d.site.mode().iloc[0]
    b = fit.params.to_numpy()
    V = fit.cov_params().to_numpy()
    names = list(fit.params.index)
    site_b = 1.0 if ce.held["site"] == "b" else 0.0
    for _, r in tab.iterrows():
        x0 = dict.fromkeys(names, 0.0)
        x0.update({"Intercept": 1.0, "x": r["x"], "w": r["w_value"], "z": d.z.mean(),
                   "C(site)[T.b]": site_b, "x:w": r["x"] * r["w_value"]})
        v = np.array([x0[n] for n in names])
        assert r["estimate"] == pytest.approx(v @ b, rel=1e-10)
        assert r["se"] == pytest.approx(np.sqrt(v @ V @ v), rel=1e-10)
        q = stats.t.ppf(0.975, len(d) - len(b))
        assert r["upper"] == pytest.approx(v @ b + q * np.sqrt(v @ V @ v), rel=1e-10)
    np.testing.assert_allclose(tab["x"].iloc[[0, 3]], [d.x.min(), d.x.max()])
    assert "Held at" in ce.summary()


# --------------------------------------------------------------------------- bad input
def test_focal_not_a_term_lists_terms(data):
    fit = am.fit_ols("y ~ x * w", data)
    with pytest.raises(ModelSpecError,
                       match=r"focal 'alliance' is not a variable.*Intercept, x, w, x:w"):
        am.simple_slopes(fit, focal="alliance", moderator="w")
    with pytest.raises(ModelSpecError, match=r"moderator 'age' is not a variable.*x:w"):
        am.johnson_neyman(fit, focal="x", moderator="age")


def test_moderator_not_interacting(data):
    fit = am.fit_ols("y ~ x * w + z", data)
    with pytest.raises(ModelSpecError,
                       match=r"'x' and moderator 'z' do not interact.*terms are: Intercept"):
        am.simple_slopes(fit, focal="x", moderator="z")
    with pytest.raises(ModelSpecError, match="moderator 'x' is the focal variable"):
        am.johnson_neyman(fit, focal="x", moderator="x")


def test_nonlinear_focal_rejected(data):
    fit = am.fit_ols("y ~ x * w + I(x ** 2)", data)
    with pytest.raises(ModelSpecError, match=r"'x' enters term 'I\(x \*\* 2\)'.*not linearly"):
        am.simple_slopes(fit, focal="x", moderator="w")


def test_constant_moderator_in_probing():
    fit = _fake(0.2, 0.5, 0.01, 0.0, 0.01, m=np.full(10, 3.0))
    with pytest.raises(ModelSpecError, match="moderator 'm' is constant \\(3 in all 10 rows\\)"):
        am.simple_slopes(fit, focal="x", moderator="m")
    with pytest.raises(ModelSpecError, match="moderator 'm' is constant"):
        am.johnson_neyman(fit, focal="x", moderator="m")


@pytest.mark.parametrize("at,msg", [
    ("quartiles", "at='quartiles' is not allowed; use 'meansd', 'percentiles'"),
    ([], "at= is empty"),
    (["low", "high"], r"at= values for 'w' must be numbers; got \['low', 'high'\]"),
    ([1.0, np.nan], "at= values for 'w' must be finite numbers"),
])
def test_invalid_at(data, at, msg):
    fit = am.fit_ols("y ~ x * w", data)
    with pytest.raises(ModelSpecError, match=msg):
        am.simple_slopes(fit, focal="x", moderator="w", at=at)


def test_invalid_other_arguments(data):
    fit = am.fit_ols("y ~ x * w * z", data)
    with pytest.raises(ModelSpecError, match=r"alpha must lie in \(0, 1\)"):
        am.simple_slopes(fit, focal="x", moderator="w", alpha=1.5)
    with pytest.raises(ModelSpecError, match=r"at_values_other: 'q' does not interact.*z"):
        am.simple_slopes(fit, focal="x", moderator="w", at_values_other={"q": 1.0})
    with pytest.raises(ModelSpecError, match="at2='x' is not allowed"):
        am.simple_slopes(fit, focal="x", moderator="w", moderator2="z", at2="x")
    with pytest.raises(ModelSpecError, match="probing needs a fitted model"):
        am.simple_slopes(object(), focal="x", moderator="w")
    with pytest.raises(ModelSpecError, match="n_grid must be an integer >= 10, got 3"):
        am.johnson_neyman(fit, focal="x", moderator="w", n_grid=3)
    with pytest.raises(ModelSpecError, match="n_points must be an integer >= 2"):
        am.conditional_effects(fit, focal="x", moderator="w", n_points=1)


def test_categorical_moderator_by_design_column(data):
    d = data.assign(arm=np.where(data.z > 0.5, "b", "a"))
    fit = am.fit_ols("y ~ x * C(arm)", d, hc=None)
    ss = am.simple_slopes(fit, focal="x", moderator="C(arm)[T.b]")
    p = fit.params
    assert list(ss.table["C(arm)[T.b]_value"]) == [0.0, 1.0]
    np.testing.assert_allclose(ss.table["estimate"],
                               [p["x"], p["x"] + p["x:C(arm)[T.b]"]], rtol=1e-12)
    with pytest.raises(ModelSpecError, match=r"moderator 'arm' is not a variable.*C\(arm\)"):
        am.simple_slopes(fit, focal="x", moderator="arm")


def test_term_structure_comes_from_the_encoding_not_the_names(data):
    # a level label with an unbalanced bracket: splitting the column names at top-level
    # colons found no x:C(arm) term here; the fit's encoding names the factors
    d = data.assign(arm=np.where(data.z > 0.5, "b) high", "a"))
    fit = am.fit_ols("y ~ C(arm) * x", d, hc=None)
    mod = "C(arm)[T.b) high]"
    ss = am.simple_slopes(fit, focal="x", moderator=mod)
    p = fit.params
    np.testing.assert_allclose(ss.table["estimate"], [p["x"], p["x"] + p[f"{mod}:x"]],
                               rtol=1e-12)
    assert fit.process_model == 1
    jn = am.johnson_neyman(fit, focal="x", moderator=mod)
    assert jn.observed_range == (0.0, 1.0)


def test_simple_slopes_on_mixed_fit_use_satterthwaite_df_per_value():
    rng = np.random.default_rng(8)
    pid = np.repeat(np.arange(14), 5)
    w = np.repeat(rng.normal(0, 1, 14), 5)
    x = rng.normal(size=pid.size)
    y = 0.3 * x + 0.4 * x * w + np.repeat(rng.normal(0, 0.8, 14), 5) + rng.normal(size=pid.size)
    d = pd.DataFrame({"patient": pid.astype(str), "x": x, "w": w, "y": y})
    fit = am.fit_mixed("y ~ x * w + (1 | patient)", d)
    ss = am.simple_slopes(fit, focal="x", moderator="w", at=[-1.0, 0.0, 2.0])
    b = fit.params.to_numpy()
    V = fit.cov_params().to_numpy()
    for k, m in enumerate([-1.0, 0.0, 2.0]):
        L = np.array([0.0, 1.0, 0.0, m])
        row = ss.table.iloc[k]
        assert row["estimate"] == pytest.approx(L @ b, rel=1e-10)
        assert row["se"] == pytest.approx(np.sqrt(L @ V @ L), rel=1e-10)
        assert row["df"] == pytest.approx(fit.contrast_df(L), rel=1e-10)
        assert row["p"] == pytest.approx(2 * stats.t.sf(abs(row["t"]), fit.contrast_df(L)))
    assert ss.table["df"].nunique() > 1  # the df really vary with the moderator value


@pytest.mark.slow
def test_probing_a_real_bayesian_fit():
    rng = np.random.default_rng(30)
    pid = np.repeat(np.arange(20), 5)
    w = np.repeat(rng.normal(0, 1, 20), 5)
    x = rng.normal(size=pid.size)
    y = 0.3 * x + 0.5 * x * w + np.repeat(rng.normal(0, 0.5, 20), 5) + rng.normal(size=pid.size)
    d = pd.DataFrame({"patient": pid.astype(str), "x": x, "w": w, "y": y})
    import warnings

    with warnings.catch_warnings():  # short chains may fail the ESS threshold
        warnings.simplefilter("ignore", am.DiagnosticsWarning)
        bfit = am.fit_bayes("y ~ x * w + (1 | patient)", d, draws=300, tune=300, chains=2,
                            seed=1, sampler="pymc")
    draws = bfit.fixed_draws
    ss = am.simple_slopes(bfit, focal="x", moderator="w", at=[-1.0, 1.0])
    eff = draws["x"].to_numpy() + 1.0 * draws["x:w"].to_numpy()
    assert ss.method == "bayes"
    assert ss.table["estimate"].iloc[1] == pytest.approx(np.median(eff))
    assert (ss.table["hdi_lower"].iloc[1], ss.table["hdi_upper"].iloc[1]) == pytest.approx(
        _hdi_brute(eff, 0.95))
    jn = am.johnson_neyman(bfit, focal="x", moderator="w")
    assert jn.method == "bayes" and jn.region in ("inside", "above", "below", "outside",
                                                   "all", "none")
    # frequentist and Bayesian slopes agree roughly (weak priors, 100 rows)
    mfit = am.fit_mixed("y ~ x * w + (1 | patient)", d)
    fs = am.simple_slopes(mfit, focal="x", moderator="w", at=[-1.0, 1.0])
    assert abs(fs.table["estimate"].iloc[1] - ss.table["estimate"].iloc[1]) < 0.5 * fs.table[
        "se"].iloc[1]


def test_centred_ols_fit_reports_raw_scale(data):
    fit = am.fit_ols("y ~ x * w", data, center=True)
    ss = am.simple_slopes(fit, focal="x", moderator="w")
    np.testing.assert_allclose(ss.table["w_uncentred"],
                               ss.table["w_value"] + data.w.mean(), rtol=1e-12)
    np.testing.assert_allclose(ss.table["w_uncentred"].iloc[1], data.w.mean(), rtol=1e-12)
    raw = am.johnson_neyman(am.fit_ols("y ~ x * w", data), focal="x", moderator="w")
    jn = am.johnson_neyman(fit, focal="x", moderator="w")
    # the same bounds once the mean is added back
    np.testing.assert_allclose(np.array(jn.bounds) + jn.centred_mean, raw.bounds, rtol=1e-8)
    assert "was mean-centred before fitting" in jn.summary()
    assert raw.centred_mean is None


def test_conditional_effects_integer_and_c_encoded_columns(data):
    rng = np.random.default_rng(12)
    d = data.assign(age=rng.integers(20, 80, len(data)),  # int column, held at its mean
                    arm=rng.integers(0, 2, len(data)))    # int column used as C(arm)
    fit = am.fit_ols("y ~ x * w + age + C(arm)", d, hc=None)
    ce = am.conditional_effects(fit, focal="x", moderator="w", at=[3.0], n_points=2)
    assert ce.held["age"] == pytest.approx(d.age.mean())  # not truncated to an int
    assert ce.held["arm"] == d.arm.mode().iloc[0]
    p = fit.params
    x0 = ce.table["x"].iloc[0]
    expected = (p["Intercept"] + p["x"] * x0 + p["w"] * 3 + p["x:w"] * 3 * x0
                + p["age"] * d.age.mean() + p["C(arm)[T.1]"] * (ce.held["arm"] == 1))
    assert ce.table["estimate"].iloc[0] == pytest.approx(expected, rel=1e-10)


def test_conditional_effects_on_mixed_fit_use_each_predictions_satterthwaite_df():
    d = pd.read_csv(R_DIR / "nested_data.csv")
    fit = am.fit_mixed("y ~ x * m + (1 | therapist/patient)", d)
    ce = am.conditional_effects(fit, focal="x", moderator="m", at=[-1.0, 1.0], n_points=3)
    b = fit.params.to_numpy()
    V = fit.cov_params().to_numpy()
    dfs = []
    for _, r in ce.table.iterrows():
        x0 = np.array([1.0, r["x"], r["m_value"], r["x"] * r["m_value"]])
        est, se, df = x0 @ b, np.sqrt(x0 @ V @ x0), fit.contrast_df(x0)
        dfs.append(df)
        assert r["estimate"] == pytest.approx(est, rel=1e-10)
        assert r["se"] == pytest.approx(se, rel=1e-10)
        assert r["upper"] == pytest.approx(est + stats.t.ppf(0.975, df) * se, rel=1e-10)
        assert r["lower"] == pytest.approx(est - stats.t.ppf(0.975, df) * se, rel=1e-10)
    assert np.ptp(dfs) > 1  # predictions near the intercept have therapist-level df
    np.testing.assert_allclose(ce.table["x"].iloc[[0, 2]], [d.x.min(), d.x.max()])


def test_tiny_p_values_are_not_printed_as_zero():
    rng = np.random.default_rng(3)
    d = pd.DataFrame({"x": rng.normal(size=200), "w": rng.normal(size=200)})
    d["y"] = 2 * d.x + d.x * d.w + 0.1 * rng.normal(size=200)
    fit = am.fit_ols("y ~ x * w", d, hc=None)
    ss = am.simple_slopes(fit, focal="x", moderator="w")
    assert (ss.table["p"] < 1e-12).all()
    text = ss.summary()
    assert text.count("<1e-12") == 3
    assert "<1e-12" in fit.summary()
    assert _format.fmt_p(0.0312) == "0.03120" and _format.fmt_p(2e-13) == "<1e-12"


def _significant_by_region(m, region, bounds):
    if region == "all":
        return True
    if region == "none":
        return False
    if region == "inside":
        return bounds[0] < m < bounds[1]
    if region == "outside":
        return m < bounds[0] or m > bounds[1]
    if region == "above":
        return m > bounds[0]
    return m < bounds[0]  # below


@settings(max_examples=200, deadline=None)
@given(
    b1=st.floats(-3, 3), b3=st.floats(-3, 3),
    s1=st.floats(0.05, 2), s3=st.floats(0.05, 2), rho=st.floats(-0.95, 0.95),
    df=st.sampled_from([5.0, 30.0, 300.0, np.inf]),
)
def test_jn_property_region_matches_pointwise_tests(b1, b3, s1, s3, rho, df):
    """Property: at every probe the t test of b1 + b3 m is significant exactly where the
    reported region says, and each bound has p = alpha (constant df; exact quadratic)."""
    V = np.array([[s1 * s1, rho * s1 * s3], [rho * s1 * s3, s3 * s3]])
    sol = core.jn_solve(np.array([b1, b3]), V, np.array([1.0, 0.0]), np.array([0.0, 1.0]), df)
    crit = stats.norm.ppf(0.975) if np.isinf(df) else stats.t.ppf(0.975, df)

    def tstat(m):
        return abs(b1 + b3 * m) / np.sqrt(V[0, 0] + 2 * m * V[0, 1] + m * m * V[1, 1])

    for r in sol.bounds:
        assert tstat(r) == pytest.approx(crit, rel=1e-7)
    probes = np.concatenate([np.linspace(-50, 50, 101), np.array(sol.bounds) + 1e-3,
                             np.array(sol.bounds) - 1e-3])
    for m in probes:
        if any(abs(m - r) < 1e-5 for r in sol.bounds) or abs(tstat(m) - crit) < 1e-6:
            continue  # numerically on a bound
        assert (tstat(m) > crit) == _significant_by_region(m, sol.region, sol.bounds), (
            m, sol)
