"""Standardisation of the design and its inverse (models/bayes/scaling.py): closed forms."""

from __future__ import annotations

import numpy as np

from alliance_models.models.bayes.scaling import make_scaling


def test_scaling_round_trip_closed_form():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(50), rng.normal(5, 2, 50), rng.normal(-1, 0.3, 50)])
    X = np.column_stack([X, X[:, 1] * X[:, 2]])
    y = rng.normal(10, 4, 50)
    s = make_scaling(X, y, ("Intercept", "a", "b", "a:b"), gaussian=True)
    b_std = rng.normal(size=(7, 4))
    beta = s.to_data(b_std)
    # the linear predictor is the same on both scales: X beta = m_y + s_y Xs b_std
    np.testing.assert_allclose(X @ beta.T, s.y_mean + s.y_sd * s.standardise_X(X) @ b_std.T,
                               rtol=1e-10, atol=1e-10)
    # without an intercept nothing is centred
    s0 = make_scaling(X[:, 1:], y, ("a", "b", "a:b"), gaussian=False)
    assert np.all(s0.x_mean == 0) and s0.y_mean == 0 and s0.y_sd == 1


def test_posterior_beta_is_back_transform_of_sampled(gfit):
    post = gfit.idata.posterior
    b_std = post["beta_std"].transpose("chain", "draw", "term").values.reshape(-1, 6)
    np.testing.assert_allclose(gfit.fixed_draws.to_numpy(), gfit.scaling.to_data(b_std),
                               rtol=1e-10, atol=1e-12)
