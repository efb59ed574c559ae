"""fit_sums (the batched engine from cross-products and cluster sums) against fit_batch.

The same data given as X, Y (fit_batch) and as their sums (fit_sums) give the same fits
to rounding: the sums enter the same sufficient statistics, the OLS residual through
r'r = y'y - 2 b0'X'y + b0'X'X b0 instead of explicitly (relative differences of order
1e-13 in the statistics; the fits are compared at 1e-9, the df at 1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

from alliance_models.errors import DataValidationError, ModelSpecError
from alliance_models.models.lmm import batched as core
from alliance_models.models.lmm.batch_fit import fit_batch, fit_sums


def _data(seed, T=8, P=4, S=5, B=6):
    rng = np.random.default_rng(seed)
    ther = np.repeat(np.arange(T), P * S)
    pat = np.repeat(np.arange(T * P), S)
    n = T * P * S
    X = np.empty((B, n, 3))
    X[..., 0] = 1.0
    X[..., 1] = rng.normal(size=(B, n))
    X[..., 2] = rng.normal(size=(B, T * P))[:, pat] + 3.0
    Y = (X @ [0.5, 0.3, -0.2] + 0.5 * rng.normal(size=(B, T))[:, ther]
         + 0.7 * rng.normal(size=(B, T * P))[:, pat] + rng.normal(size=(B, n)))
    return X, Y, ther, pat, rng


def _sums(X, Y, w, codes, K):
    B = X.shape[0]
    Xm, Ym = X * w[..., None], Y * w
    sx = np.stack([[np.bincount(codes, Xm[b, :, j], K) for j in range(X.shape[2])]
                   for b in range(B)]).swapaxes(1, 2)
    return (np.swapaxes(Xm, 1, 2) @ Xm, (np.swapaxes(Xm, 1, 2) @ Ym[..., None])[..., 0],
            (Ym**2).sum(axis=1), sx, np.stack([np.bincount(codes, Ym[b], K) for b in range(B)]),
            np.stack([np.bincount(codes, w[b], K) for b in range(B)]))


def _same(a, b):
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.se, b.se, rtol=1e-9)
    np.testing.assert_allclose(a.tau2, b.tau2, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.sigma2, b.sigma2, rtol=1e-9)
    np.testing.assert_allclose(a.df, b.df, rtol=1e-7)
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-10)
    np.testing.assert_array_equal(a.converged, b.converged)
    np.testing.assert_array_equal(a.singular, b.singular)


@pytest.mark.parametrize("masked", [False, True])
def test_nested_fit_from_sums_equals_fit_batch(masked):
    X, Y, ther, pat, rng = _data(1)
    mask = rng.random(Y.shape) > 0.25 if masked else None
    w = np.ones(Y.shape) if mask is None else mask.astype(float)
    K = int(pat.max()) + 1
    pat_ther = ther[::5]
    ref = fit_batch(X, Y, ther, pat, mask=mask, contrast=1)
    got = fit_sums(*_sums(X, Y, w, pat, K), pat_ther, np.arange(K), contrast=1)
    _same(got, ref)
    assert got.components == ref.components == ("outer", "inner")


def test_one_factor_fit_from_sums_equals_fit_batch():
    X, Y, ther, _, _ = _data(2)
    ref = fit_batch(X, Y, ther, contrast=2)
    got = fit_sums(*_sums(X, Y, np.ones(Y.shape), ther, 8), np.arange(8), contrast=2)
    _same(got, ref)
    # the clusters may come in any order of the outer codes
    perm = np.random.default_rng(3).permutation(8)
    G, xty, yty, sx, sy, nk = _sums(X, Y, np.ones(Y.shape), ther, 8)
    shuffled = fit_sums(G, xty, yty, sx[:, perm], sy[:, perm], nk[:, perm], perm,
                        contrast=2)
    _same(shuffled, ref)


def test_statistics_from_sums_equal_sufficient_stats():
    X, Y, ther, pat, rng = _data(4)
    mask = rng.random(Y.shape) > 0.2
    lay = core.make_layout(ther, pat)
    ref = core.sufficient_stats(X, Y, lay, mask)
    got = core.sufficient_stats_from_sums(*_sums(X, Y, mask.astype(float), pat, 32), lay)
    for name in ("xtx", "Q", "S2", "count", "N2", "n", "scale", "beta0", "sizes"):
        a, b = getattr(got, name), getattr(ref, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max(), err_msg=name)


def test_fit_sums_errors():
    X, Y, ther, pat, _ = _data(5, B=2)
    sums = list(_sums(X, Y, np.ones(Y.shape), pat, 32))
    pt = ther[::5]
    with pytest.raises(DataValidationError, match="xty has shape"):
        fit_sums(sums[0], sums[1][:, :2], *sums[2:], pt, np.arange(32))
    bad = [a.copy() for a in sums]
    bad[4][1, 3] = np.nan
    with pytest.raises(DataValidationError, match="sy has non-finite values"):
        fit_sums(*bad, pt, np.arange(32))
    bad = [a.copy() for a in sums]
    bad[5][0, 7] = 0.0
    with pytest.raises(DataValidationError, match="nk >= 1"):
        fit_sums(*bad, pt, np.arange(32))
    with pytest.raises(DataValidationError, match="in order"):
        fit_sums(*sums, pt, np.arange(32)[::-1])
    with pytest.raises(ModelSpecError, match="out of range"):
        fit_sums(*sums, pt, np.arange(32), contrast=5)


@pytest.mark.parametrize("kind", ["one", "counts", "gaps", "fractional"])
def test_size_classes_are_those_of_unique(kind):
    # the distinct cluster sizes and each cluster's index, as np.unique gives them
    rng = np.random.default_rng(3)
    nk = {"one": np.full((4, 9), 6.0),
          "counts": rng.integers(1, 7, size=(5, 11)).astype(float),
          "gaps": rng.choice([1.0, 4.0, 30.0], size=(3, 8)),
          "fractional": rng.choice([1.0, 2.5, 3.0], size=(3, 8))}[kind]
    sizes, tidx = core._size_classes(nk)
    want_sizes, want_idx = np.unique(nk, return_inverse=True)
    np.testing.assert_array_equal(sizes, want_sizes)
    np.testing.assert_array_equal(tidx, want_idx.reshape(nk.shape))
    np.testing.assert_array_equal(sizes[tidx], nk)
