"""The profile-grouped outer-cluster path and the face search of the batched REML engine.

``sufficient_stats`` groups the outer clusters of each replicate by their size profile
(see ``_profile_groups``) when that is cheaper, and ``_evaluate`` then works on per-group
sums of ``S_tj S_uj'`` instead of per-cluster sums. These tests compare that path with
the per-cluster path (the statistics with the group fields removed) on balanced designs
and on designs whose profiles differ within and across replicates (dropout), and check
the grouping itself. They also check the face Newton run with a component held at zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import optimize

from alliance_models.models.lmm import batched as core
from alliance_models.models.lmm import search


def _design(rng, n_outer, n_inner, size, B, *, shared_x=True):
    """Balanced nested design: ``n_outer`` x ``n_inner`` level-1 clusters of ``size``."""
    outer = np.repeat(np.arange(n_outer), n_inner * size)
    inner = np.repeat(np.arange(n_outer * n_inner), size)
    n = outer.size

    def one_x():
        x1 = rng.normal(size=n) + 0.5 * rng.normal(size=n_outer)[outer]
        x2 = rng.normal(size=n_outer * n_inner)[inner]
        return np.column_stack([np.ones(n), x1, x2, x1 * x2])

    X = one_x() if shared_x else np.stack([one_x() for _ in range(B)])
    lin = X @ np.array([1.0, 0.3, -0.2, 0.1])
    Y = (lin + 0.5 * rng.normal(size=(B, n_outer))[:, outer]
         + 0.7 * rng.normal(size=(B, n_outer * n_inner))[:, inner]
         + rng.normal(size=(B, n)))
    return X, Y, outer, inner


def _per_cluster(st: core.SuffStats) -> core.SuffStats:
    """The same statistics without the profile groups (the per-outer-cluster path)."""
    return dataclasses.replace(st, P2=None, N2g=None, Ng=None)


def _dropout_mask(rng, outer, inner, B):
    """Drop one row in a random subset of level-1 clusters; replicate 0 keeps every row.

    Level-1 sizes become 2 or 3 (from 3), so each outer cluster with two level-1
    clusters has one of three profiles; which ones occur differs between replicates.
    """
    n = outer.size
    mask = np.ones((B, n), dtype=bool)
    starts = np.flatnonzero(np.r_[True, inner[1:] != inner[:-1]])
    for b in range(1, B):
        hit = starts[rng.random(starts.size) < 0.3]
        mask[b, hit] = False  # the first row of the chosen level-1 clusters
    return mask


CASES = ["balanced", "balanced_per_rep_x", "dropout", "dropout_per_rep_x"]


def _case(name):
    rng = np.random.default_rng(CASES.index(name) + 7)
    shared = "per_rep" not in name
    X, Y, outer, inner = _design(rng, 40, 2, 3, 5, shared_x=shared)
    mask = _dropout_mask(rng, outer, inner, 5) if "dropout" in name else None
    st = core.sufficient_stats(X, Y, core.make_layout(outer, inner), mask, row_block=2)
    return st, mask


@pytest.mark.parametrize("name", CASES)
def test_groups_are_used_and_padded_per_replicate(name):
    st, mask = _case(name)
    assert st.P2 is not None and st.N2g is not None and st.Ng is not None
    assert st.N2 is not None
    J = st.N2.shape[2]
    np.testing.assert_array_equal(st.Ng.sum(axis=1), J)  # every outer cluster in a group
    if mask is None:
        assert st.Ng.shape[1] == 1
    else:
        # profiles (counts of size-2 and size-3 clusters) differ across replicates:
        # replicate 0 (no dropout) has one group, padded with empty ones
        assert st.Ng.shape[1] > 1
        assert np.count_nonzero(st.Ng[0]) == 1 and np.any(st.Ng[0] == 0)
        assert np.all(np.count_nonzero(st.Ng[1:], axis=1) > 1)
    # the group sums equal the per-cluster sums: sum_g P2[g, t, u] = sum_j S_tj S_uj'
    S = st.S2
    assert S is not None
    direct = np.einsum("btjx,bujy->btuxy", S, S)
    np.testing.assert_allclose(st.P2.sum(axis=1), direct, rtol=1e-12,
                               atol=1e-12 * np.abs(direct).max())
    # each group's profile is the profile of its members
    for b in range(st.n_rep):
        for g in np.flatnonzero(st.Ng[b]):
            prof = st.N2g[b, :, g]
            members = np.flatnonzero(np.all(st.N2[b] == prof[:, None], axis=0))
            assert members.size == st.Ng[b, g]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_grouped_evaluation_equals_per_cluster_evaluation(name, reml):
    st, _ = _case(name)
    ref = _per_cluster(st)
    rng = np.random.default_rng(3)
    B = st.n_rep
    for s in (rng.uniform(0.05, 2.0, size=(B, 2)),
              np.column_stack([np.zeros(B), rng.uniform(0.1, 1.0, B)]),
              np.column_stack([rng.uniform(0.1, 1.0, B), np.zeros(B)]),
              np.full((B, 2), 30.0)):
        got = core._evaluate(st, s, reml, grad=True)
        want = core._evaluate(ref, s, reml, grad=True)
        for a, b in zip(got[:3], want[:3], strict=True):  # f, R, h
            np.testing.assert_allclose(a, b, rtol=1e-10)
        np.testing.assert_allclose(got[3], want[3], rtol=1e-10, atol=1e-10 * np.abs(want[3]).max())
        for a, b in zip(got[4:], want[4:], strict=True):  # dR, dh
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
        np.testing.assert_allclose(core.gradient(st, s, reml=reml),
                                   core.gradient(ref, s, reml=reml), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_grouped_fit_equals_per_cluster_fit(name):
    st, _ = _case(name)
    L = np.eye(4)[[3, 1]]
    got = core.batched_fit(st, L)
    want = core.batched_fit(_per_cluster(st), L)
    assert got["converged"].all() and want["converged"].all()
    for key in ("beta", "se", "df", "theta", "sigma2", "loglik", "var_l"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-8, atol=1e-12, err_msg=key)
    # subsets keep the groups (take) and their results
    sub = st.take(np.array([4, 0]))
    assert sub.P2 is not None and sub.Ng is not None
    np.testing.assert_allclose(core.batched_fit(sub, L)["beta"], got["beta"][[4, 0]], rtol=1e-8)


def test_profile_groups_unit():
    # two replicates, T = 2 sizes, J = 16 outer clusters
    N2 = np.zeros((2, 2, 16))
    N2[0, 1, :] = 2  # replicate 0: one profile, (0, 2)
    N2[1, 0, :4], N2[1, 1, :4] = 1, 1  # replicate 1: profiles (1, 1), (0, 2), (2, 0)
    N2[1, 1, 4:9] = 2
    N2[1, 0, 9:] = 2
    out = core._profile_groups(N2)
    assert out is not None
    member, N2g, Ng = out
    assert member.shape == (2, 3, 16)
    np.testing.assert_array_equal(Ng[0], [16, 0, 0])  # padded with empty groups
    np.testing.assert_array_equal(np.sort(Ng[1]), [4, 5, 7])
    assert np.all(member.sum(axis=1) == 1)  # every cluster in exactly one group
    for b in range(2):
        for g in range(3):
            js = np.flatnonzero(member[b, g])
            assert js.size == Ng[b, g]
            if js.size:
                want = np.repeat(N2g[b, :, g, None], js.size, axis=1)
                np.testing.assert_array_equal(N2[b][:, js], want)
    # a profile structure shared by the batch is grouped once
    shared = core._profile_groups(np.repeat(N2[1:], 3, axis=0))
    assert shared is not None and shared[0].shape == (3, 3, 16)
    np.testing.assert_array_equal(shared[2], np.repeat(Ng[1:], 3, axis=0))
    # G T^2 = 3 * 4 >= J = 12 clusters: the grouped form would not pay
    assert core._profile_groups(N2[:, :, 3:15]) is None


def test_one_factor_and_unbalanced_designs_use_the_per_cluster_path():
    rng = np.random.default_rng(5)
    X, Y, outer, inner = _design(rng, 6, 2, 3, 3)
    st1 = core.sufficient_stats(X, Y, core.make_layout(outer))
    assert st1.P2 is None and st1.S2 is None
    # every outer cluster with its own profile: no grouping
    sizes = [1, 2, 3, 4, 5, 6]
    outer2 = np.repeat(np.arange(6), sizes)
    inner2 = np.arange(outer2.size)  # one level-1 cluster of size 1 each: T = 1
    n = outer2.size
    X2 = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y2 = rng.normal(size=(2, n))
    st2 = core.sufficient_stats(X2, Y2, core.make_layout(outer2, inner2))
    assert st2.P2 is None  # 6 profiles for 6 clusters


def test_face_newton_holds_the_zero_component_and_finds_the_face_optimum():
    rng = np.random.default_rng(8)
    X, Y, outer, inner = _design(rng, 12, 2, 3, 3)
    st = core.sufficient_stats(X, Y, core.make_layout(outer, inner))
    start = np.column_stack([np.zeros(3), np.full(3, 1.0)])
    s, conv = core._newton(st, start, True, fixed=(0,))
    assert conv.all()
    assert np.all(s[:, 0] == 0.0)
    g = core.gradient(st, s)
    assert np.all(np.abs(g[:, 1]) <= search.GRAD_TOL)
    for b in range(3):
        sub = st.take(np.array([b]))
        res = optimize.minimize_scalar(
            lambda x, sub=sub: core.criterion(sub, np.array([[0.0, x]]))[0][0],
            bounds=(1e-3, 5.0), method="bounded", options={"xatol": 1e-10},
        )
        np.testing.assert_allclose(s[b, 1], res.x, rtol=1e-5)


def test_a_solution_stuck_on_zero_that_is_no_minimum_is_refined():
    # zero is a stationary point of the criterion in each relative SD, so a Newton step
    # that lands on exactly 0.0 reports convergence there; the search must notice that the
    # criterion falls inward and move to the interior optimum of the full fit
    rng = np.random.default_rng(22)
    X, Y, outer, inner = _design(rng, 40, 3, 3, 4)
    st = core.sufficient_stats(X, Y, core.make_layout(outer, inner))
    full = core.batched_fit(st, np.eye(4)[[3]])
    theta = full["theta"]
    assert np.all(theta > 0.05)  # both components clearly away from zero here
    stuck = theta.copy()
    stuck[:, 0] = 0.0  # pretend Newton ended with the therapist SD at exactly zero
    f_stuck = core.criterion(st, stuck)[0]
    assert np.all(core.criterion(st, theta)[0] < f_stuck)  # it is not the optimum
    s, conv = search.search(core.BatchedCriterion(st, True), stuck, np.ones(4, dtype=bool))
    assert conv.all()
    np.testing.assert_allclose(s, theta, rtol=1e-6)


# ----------------------------------------------------------------------------------
# sufficient_stats helpers
# ----------------------------------------------------------------------------------
def test_row_segment_sum_matches_reduceat_and_does_not_depend_on_the_batch():
    rng = np.random.default_rng(2)
    a3 = rng.normal(size=(3, 24, 5)) * 10.0 ** rng.integers(-8, 8, size=(3, 24, 5))
    a2 = a3[..., 0].copy()
    starts = np.arange(0, 24, 4)
    m = core._equal_segments(starts, 24)
    assert m == 4
    for a in (a2, a3):
        got = core._row_segment_sum(a, starts, m)
        want = np.add.reduceat(a, starts, axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14 * np.abs(a).max())
        for b in range(3):  # one replicate alone: the very same numbers
            alone = core._row_segment_sum(a[b:b + 1], starts, m)
            np.testing.assert_array_equal(alone, got[b:b + 1])
    uneven = np.array([0, 4, 9, 20])
    assert core._equal_segments(uneven, 24) == 0
    assert core._equal_segments(np.arange(0, 24, 5), 24) == 0  # 24 rows, 5 starts
    np.testing.assert_array_equal(core._row_segment_sum(a3, uneven, 0),
                                  np.add.reduceat(a3, uneven, axis=1))


def test_rank_and_ols_matches_eigenvalue_rule_and_solver():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(6, 30, 4))
    Z[1, :, 3] = Z[1, :, 2]  # exactly collinear: singular
    Z[2, :, 3] = Z[2, :, 2] + 1e-7 * rng.normal(size=30)  # ratio ~1e-15: rank deficient
    Z[3, :, 3] = Z[3, :, 2] + 1e-4 * rng.normal(size=30)  # ratio ~1e-9: full rank
    G = np.swapaxes(Z, 1, 2) @ Z
    sc = 1.0 / np.sqrt(np.diagonal(G, axis1=1, axis2=2) / 30)
    Gs = G * sc[:, :, None] * sc[:, None, :]
    rhs = rng.normal(size=(6, 4))
    ev = np.linalg.eigvalsh(Gs)
    want_full = ev[:, 0] > core.RANK_TOL * ev[:, -1]
    np.testing.assert_array_equal(want_full, [True, False, False, True, True, True])
    for idx in (np.arange(6), np.array([0, 3, 4, 5]), np.array([3])):  # with/without singular
        full, b = core._rank_and_ols(Gs[idx], rhs[idx])
        np.testing.assert_array_equal(full, want_full[idx])
        ok = full
        np.testing.assert_allclose(
            b[ok], np.linalg.solve(Gs[idx][ok], rhs[idx][ok, :, None])[..., 0], rtol=1e-6
        )
