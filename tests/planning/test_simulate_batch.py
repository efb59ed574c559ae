"""Batches of the simulator (``batch_arrays``) against replicates simulated one at a time.

There is one simulator; ``simulate_arrays`` runs it on a batch of one. A replicate
depends only on its own seed, never on the batch or block it is simulated in, so these
comparisons are bit-for-bit (``np.array_equal``, tolerance 0). The seeding rule itself
is checked against numpy's own Generators, and the moments against the model.
"""

from __future__ import annotations

import numpy as np
import pytest

import alliance_models as am
from alliance_models._random import spawn
from alliance_models.planning.simulate import (
    batch_arrays,
    batch_sums,
    design_matrix,
    simulate_arrays,
)

DESIGNS = {
    "default": am.Design(therapists=5, patients_per_therapist=3, sessions=4, dropout=0.5),
    "patient-rand-unequal": am.Design(
        therapists=6, patients_per_therapist=(2, 3, 4, 2, 5, 3), sessions=3,
        dropout=(0.1, 0.4), randomisation="patient",
        effects={"arm": 0.2, "alliance": 0.3, "alliance:arm": 0.1}),
    "therapist-rand": am.Design(
        therapists=6, patients_per_therapist=4, sessions=5, randomisation="therapist",
        effects={"arm": 0.2, "alliance:arm": 0.3}, alliance_skew=0.0, dropout=0.3,
        dropout_timing=2, moderators={"autonomy": "therapist"},
        icc_therapist=0.1, icc_patient=0.2),
    "binomial": am.Design(therapists=8, patients_per_therapist=4, sessions=6,
                          family="binomial", dropout=0.2,
                          effects={"alliance": 0.3, "alliance:autonomy": 0.2}),
    "one-session": am.Design(therapists=8, patients_per_therapist=4, sessions=1),
    "r1": am.Design(therapists=30, patients_per_therapist=8, sessions=6,
                    moderators={"age": "patient", "autonomy": "patient"},
                    effects={"alliance": 0.25, "autonomy": 0.1, "alliance:autonomy": 0.1}),
    # linear predictors constant within patients (formed at patient level), none at all,
    # and patient-level terms before and after row-level ones
    "patient-level-effects": am.Design(
        therapists=6, patients_per_therapist=4, sessions=3, randomisation="patient",
        dropout=(0.2, 0.5), moderators={"age": "patient", "autonomy": "therapist"},
        effects={"arm": 0.3, "age": 0.2, "arm:autonomy": -0.1}),
    "no-effects": am.Design(therapists=5, patients_per_therapist=3, sessions=4,
                            effects={}, dropout=0.2, dropout_timing=2),
    "mixed-order": am.Design(
        therapists=6, patients_per_therapist=4, sessions=4, randomisation="therapist",
        moderators={"age": "patient", "autonomy": "patient"}, dropout=0.3,
        effects={"age:autonomy": 0.2, "alliance:age": 0.1, "arm": 0.3,
                 "alliance:arm:autonomy": 0.05}),
    "binomial-patient-level": am.Design(
        therapists=6, patients_per_therapist=3, sessions=5, family="binomial",
        randomisation="therapist", moderators={"autonomy": "therapist"}, dropout=0.3,
        effects={"arm": 0.4, "autonomy": 0.2}),
    "binomial-therapist-rand": am.Design(
        therapists=6, patients_per_therapist=3, sessions=5, family="binomial",
        randomisation="therapist", moderators={"age": "patient"}, alliance_skew=0.0,
        effects={"alliance": 0.2, "arm": 0.4, "alliance:age": 0.1}),
}


def _names(d: am.Design) -> tuple[str, ...]:
    names = ["Intercept", "alliance"]
    if d.randomisation != "none":
        names += ["arm", "alliance:arm"]
    names += [f"alliance:{m}" for m in d.moderators]
    return tuple(names)


@pytest.mark.parametrize("key", list(DESIGNS))
def test_batch_equals_simulate_arrays_bit_for_bit(key):
    d = DESIGNS[key]
    seeds = np.random.SeedSequence(11).spawn(6)
    names = _names(d)
    X, Y, outer, inner, mask, sims = batch_arrays(d, "adherence", names, seeds)
    # without the replicates (only the columns X and Y need): the same arrays
    Xs, Ys, outer_s, inner_s, mask_s, none = batch_arrays(d, "adherence", names, seeds,
                                                          sims=False)
    assert none == []
    for a, b in ((X, Xs), (Y, Ys), (outer, outer_s), (inner, inner_s), (mask, mask_s)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert X.shape == (6, outer.size, len(names)) and Y.shape == mask.shape == (6, outer.size)
    for b, ss in enumerate(seeds):
        sa = simulate_arrays(d, ss)
        np.testing.assert_array_equal(outer, sa.therapist)
        np.testing.assert_array_equal(inner, sa.patient)
        np.testing.assert_array_equal(mask[b], sa.observed)
        np.testing.assert_array_equal(Y[b], sa.columns["adherence"])
        np.testing.assert_array_equal(X[b], design_matrix(sa.columns, names))
        # the returned replicates are the same SimArrays
        got = sims[b]
        assert got.sizes == sa.sizes and set(got.columns) == set(sa.columns)
        for c in sa.columns:
            np.testing.assert_array_equal(got.columns[c], sa.columns[c], err_msg=c)
        np.testing.assert_array_equal(got.eta, sa.eta)
        np.testing.assert_array_equal(got.session, sa.session)


def test_replicate_does_not_depend_on_batch():
    d = DESIGNS["patient-rand-unequal"]
    seeds = spawn(5, 12)
    names = _names(d)
    X, Y, _, _, mask, _ = batch_arrays(d, "adherence", names, seeds)
    # the same replicates in other batches and orders
    for part in ([seeds[7]], seeds[3:9], seeds[::-1]):
        Xp, Yp, _, _, mp, _ = batch_arrays(d, "adherence", names, list(part))
        for b, ss in enumerate(part):
            i = seeds.index(ss)
            np.testing.assert_array_equal(Xp[b], X[i])
            np.testing.assert_array_equal(Yp[b], Y[i])
            np.testing.assert_array_equal(mp[b], mask[i])
    # the seeds are not consumed: a second call gives the same data
    np.testing.assert_array_equal(batch_arrays(d, "adherence", names, seeds)[1], Y)


def test_int_and_generator_seeds_as_simulate_arrays():
    d = DESIGNS["default"]
    _, Y, _, _, _, _ = batch_arrays(d, "adherence", ("Intercept",), [3, 4])
    np.testing.assert_array_equal(Y[1], simulate_arrays(d, 4).columns["adherence"])
    _, Yg, _, _, _, _ = batch_arrays(d, "adherence", ("Intercept",),
                                     [np.random.default_rng(9)])
    np.testing.assert_array_equal(
        Yg[0], simulate_arrays(d, np.random.default_rng(9)).columns["adherence"])


def test_outputs_are_independent_of_the_replicates():
    d = DESIGNS["default"]
    X, Y, outer, inner, mask, sims = batch_arrays(d, "adherence", ("Intercept", "alliance"),
                                                  np.random.SeedSequence(2).spawn(3))
    before = sims[0].columns["adherence"].copy()
    Y[0] += 1.0
    mask[0] = False
    outer[:] = 0
    np.testing.assert_array_equal(sims[0].columns["adherence"], before)
    assert sims[0].observed.any() and sims[0].therapist.max() == 4
    with pytest.raises(ValueError, match="read-only"):
        sims[1].columns["alliance"][0] = 0.0


def test_moments_of_batched_columns():
    # population values: alliance standardised (mean 0, SD 1; components c_t + c_p + c_s
    # = 1), left-skewed; gaussian outcome with variance icc_t + icc_p + residual = 1 when
    # there are no fixed effects. The within-replicate variance (ddof 0) has expectation
    # 1 - Var(replicate mean) = 1 - (v_t / T + v_p / P + v_s / n). Tolerance: 5 Monte
    # Carlo SEs from the between-replicate spread.
    T, m, S = 10, 6, 5
    d = am.Design(therapists=T, patients_per_therapist=m, sessions=S,
                  effects={}, icc_therapist=0.1, icc_patient=0.3)
    P, n = T * m, T * m * S
    B = 400
    _, Y, _, _, _, sims = batch_arrays(d, "adherence", ("Intercept",),
                                       spawn(123, B))
    al = np.stack([s.columns["alliance"] for s in sims])
    c_t, c_p, c_s = d.alliance_components
    checks = [
        (al.mean(axis=1), 0.0),
        (al.var(axis=1), 1 - (c_t / T + c_p / P + c_s / n)),
        (Y.mean(axis=1), 0.0),
        (Y.var(axis=1), 1 - (0.1 / T + 0.3 / P + 0.6 / n)),
    ]
    for values, target in checks:
        se = values.std(ddof=1) / np.sqrt(B)
        assert abs(values.mean() - target) < 5 * se, (values.mean(), target, se)
    centred = al - al.mean(axis=1, keepdims=True)
    assert np.mean(centred**3) < 0  # alliance_skew < 0: left-skewed


def test_errors():
    d = DESIGNS["default"]
    seeds = np.random.SeedSequence(1).spawn(2)
    with pytest.raises(am.ModelSpecError, match="fixed caseloads"):
        batch_arrays(d.replace(sessions=("poisson", 4)), "adherence", ("Intercept",), seeds)
    with pytest.raises(am.ModelSpecError, match=r"not plain products.*data-frame engine"):
        batch_arrays(d, "adherence", ("Intercept", "C(arm)[T.1]"), seeds)
    with pytest.raises(am.ModelSpecError, match="not plain products"):
        batch_arrays(d, "adherence", ("Intercept", "arm"), seeds)  # not randomised
    with pytest.raises(am.ModelSpecError, match="not plain products"):
        batch_arrays(d, "completed", ("Intercept",), seeds)


@pytest.mark.parametrize("seeds", [
    np.random.SeedSequence([1, 2, 3]).spawn(3),  # sequence entropy: numpy's path
    [np.random.SeedSequence(1, spawn_key=(k,)) for k in (1, 2**40)],  # unequal key words
])
def test_fallback_seed_paths_equal_simulate_arrays(seeds):
    d = DESIGNS["therapist-rand"]
    _, Y, _, _, mask, _ = batch_arrays(d, "adherence", ("Intercept",), seeds)
    for b, ss in enumerate(seeds):
        sa = simulate_arrays(d, ss)
        np.testing.assert_array_equal(Y[b], sa.columns["adherence"])
        np.testing.assert_array_equal(mask[b], sa.observed)


RANDOM_STRUCTURE = am.Design(therapists=5, patients_per_therapist=("poisson", 4),
                             sessions=("negbin", 5, 3.0), dropout=0.3,
                             effects={"alliance": 0.3, "alliance:autonomy": 0.2})


def test_random_structure_needs_padding():
    with pytest.raises(am.ModelSpecError, match=r"fixed caseloads.*padded=True"):
        batch_arrays(RANDOM_STRUCTURE, "adherence", ("Intercept",),
                     np.random.SeedSequence(1).spawn(2))


def test_padded_layout_holds_each_replicate():
    names = ("Intercept", "alliance", "autonomy", "alliance:autonomy")
    seeds = np.random.SeedSequence(8).spawn(6)
    X, Y, outer, inner, mask, sims = batch_arrays(RANDOM_STRUCTURE, "adherence", names,
                                                  seeds, padded=True)
    p_max = max(max(sa.sizes) for sa in sims)
    s_max = max(int(sa.session.max()) for sa in sims)
    assert X.shape == (6, 5 * p_max * s_max, 4) and outer.shape == inner.shape == (X.shape[1],)
    assert len({sa.sizes for sa in sims}) > 1  # the structure really varies
    for b, ss in enumerate(seeds):
        sa = simulate_arrays(RANDOM_STRUCTURE, ss)
        keep = sa.observed
        # observed rows in the same order, bit-for-bit, with the same clusters
        np.testing.assert_array_equal(X[b][mask[b]], design_matrix(sa.columns, names, keep))
        np.testing.assert_array_equal(Y[b][mask[b]], sa.columns["adherence"][keep])
        np.testing.assert_array_equal(outer[mask[b]], sa.therapist[keep])
        pat = inner[mask[b]]
        _, relabel = np.unique(pat, return_inverse=True)
        np.testing.assert_array_equal(relabel, sa.patient[keep])
        # padding (slots outside the replicate's grid) is zeros; rows lost to dropout
        # keep their simulated values, masked, as in the fixed layout
        real = X[b][:, 0] == 1.0  # the intercept column marks the replicate's grid
        assert real.sum() == sa.n_rows and not mask[b][~real].any()
        assert not X[b][~real].any() and not Y[b][~real].any()
    # a replicate's values do not depend on its batch (the grid may)
    X1, Y1, _, _, m1, _ = batch_arrays(RANDOM_STRUCTURE, "adherence", names, [seeds[4]],
                                       padded=True)
    np.testing.assert_array_equal(X1[0][m1[0]], X[4][mask[4]])
    np.testing.assert_array_equal(Y1[0][m1[0]], Y[4][mask[4]])


def test_padded_batch_fit_equals_compact_fits():
    # patient slots without any observed row leave the REML fit unchanged: the padded
    # batch gives each replicate's compact fit up to rounding
    from alliance_models.models.lmm.batch_fit import fit_batch

    names = ("Intercept", "alliance", "autonomy", "alliance:autonomy")
    seeds = np.random.SeedSequence(21).spawn(5)
    X, Y, outer, inner, mask, sims = batch_arrays(RANDOM_STRUCTURE, "adherence", names,
                                                  seeds, padded=True)
    counts = [np.bincount(inner[mask[b]], minlength=inner.max() + 1) for b in range(5)]
    assert all((c == 0).any() for c in counts)  # every replicate has empty patient slots
    fit = fit_batch(X, Y, outer, inner, mask=mask, contrast=3)
    for b, sa in enumerate(sims):
        keep = sa.observed
        one = fit_batch(design_matrix(sa.columns, names, keep),
                        sa.columns["adherence"][keep][None, :],
                        sa.therapist[keep], sa.patient[keep], contrast=3)
        # beta to 1e-8 of its SE: the optimum is found to ~1e-9 of the variance ratios
        np.testing.assert_allclose(fit.beta[b], one.beta[0], rtol=0, atol=1e-8 * one.se[0].min())
        np.testing.assert_allclose(fit.se[b], one.se[0], rtol=1e-9)
        np.testing.assert_allclose(fit.df[b], one.df[0], rtol=1e-6)
        np.testing.assert_allclose(fit.tau2[b], one.tau2[0], rtol=1e-7, atol=1e-12)


def test_batch_bit_for_bit_three_way_terms_across_x_blocks():
    # a first effect that is a three-way product, a standardised moderator (age) in the
    # linear predictor, a three-way design column, and a batch larger than the block of
    # replicates in which batch_arrays writes X (about 1 MB: 13 replicates here), with
    # dropout; reference: simulate_arrays per replicate, tolerance 0
    d = am.Design(therapists=30, patients_per_therapist=8, sessions=6, dropout=0.3,
                  moderators={"age": "patient", "autonomy": "patient"},
                  effects={"alliance:age:autonomy": 0.05, "age": 0.1, "alliance": 0.2,
                           "alliance:autonomy": 0.1})
    names = ("Intercept", "alliance", "age", "autonomy", "alliance:age",
             "alliance:autonomy", "alliance:age:autonomy")
    seeds = np.random.SeedSequence(23).spawn(30)
    X, Y, _, _, mask, sims = batch_arrays(d, "adherence", names, seeds)
    assert not mask.all()
    for b, ss in enumerate(seeds):
        sa = simulate_arrays(d, ss)
        np.testing.assert_array_equal(X[b], design_matrix(sa.columns, names))
        np.testing.assert_array_equal(Y[b], sa.columns["adherence"])
        np.testing.assert_array_equal(mask[b], sa.observed)
        np.testing.assert_array_equal(sims[b].eta, sa.eta)
        for c in sa.columns:
            np.testing.assert_array_equal(sims[b].columns[c], sa.columns[c], err_msg=c)


def _all_names(d: am.Design) -> tuple[str, ...]:
    """Every plain column of a design (derived ones too) and a few products."""
    names = ["Intercept", "alliance", "alliance_pm", "alliance_pmc", "alliance_cwc"]
    if d.randomisation != "none":
        names += ["arm", "alliance:arm"]
    for m in d.moderators:
        names += [m, f"{m}_c", f"alliance_cwc:{m}_c", f"alliance:{m}"]
    if d.family != "gaussian":
        names += list(d.count_columns)
    return tuple(names)


@pytest.mark.parametrize("sims", [True, False])
@pytest.mark.parametrize("key", list(DESIGNS))
def test_every_column_and_response_bit_for_bit_in_small_blocks(key, sims, monkeypatch):
    # blocks of 1-2 replicates (an uneven last block); every column a design has in X;
    # a count column as the response for binomial designs; reference: simulate_arrays
    from alliance_models.planning import simulate as sim_mod

    d = DESIGNS[key]
    seeds = np.random.SeedSequence(31).spawn(5)
    n = simulate_arrays(d, seeds[0]).n_rows
    monkeypatch.setattr(sim_mod, "_BLOCK_ROWS", 2 * n)
    names = _all_names(d)
    responses = ["adherence", *(d.count_columns if d.family != "gaussian" else ())]
    for response in responses:
        X, Y, outer, inner, mask, reps = batch_arrays(d, response, names, seeds, sims=sims)
        assert len(reps) == (5 if sims else 0)
        for b, ss in enumerate(seeds):
            sa = simulate_arrays(d, ss)
            np.testing.assert_array_equal(X[b], design_matrix(sa.columns, names))
            np.testing.assert_array_equal(Y[b], sa.columns[response].astype(float))
            np.testing.assert_array_equal(mask[b], sa.observed)
            np.testing.assert_array_equal(outer, sa.therapist)
            np.testing.assert_array_equal(inner, sa.patient)
            if sims:
                got = reps[b]
                assert set(got.columns) == set(sa.columns)
                for c in sa.columns:
                    assert got.columns[c].dtype == sa.columns[c].dtype, c
                    np.testing.assert_array_equal(got.columns[c], sa.columns[c], err_msg=c)
                np.testing.assert_array_equal(got.eta, sa.eta)
                np.testing.assert_array_equal(got.observed, sa.observed)


def test_without_replicates_outputs_are_writable_and_own_their_data():
    d = DESIGNS["default"]
    seeds = np.random.SeedSequence(3).spawn(4)
    X, Y, outer, inner, mask, _ = batch_arrays(d, "adherence", ("Intercept", "alliance"),
                                               seeds, sims=False)
    for a in (X, Y, outer, inner, mask):
        assert a.flags.writeable and a.flags.owndata
    assert not np.shares_memory(X, Y) and not np.shares_memory(outer, inner)


def test_padded_without_replicates():
    names = ("Intercept", "alliance", "autonomy", "alliance:autonomy")
    seeds = np.random.SeedSequence(8).spawn(3)
    full = batch_arrays(RANDOM_STRUCTURE, "adherence", names, seeds, padded=True)
    lean = batch_arrays(RANDOM_STRUCTURE, "adherence", names, seeds, padded=True,
                        sims=False)
    assert lean[5] == [] and len(full[5]) == 3
    for a, b in zip(full[:5], lean[:5], strict=True):
        np.testing.assert_array_equal(a, b)




def test_a_replicate_draws_from_one_numpy_generator_on_its_seed():
    # the alliance of a replicate from first principles: everything comes from
    # Generator(PCG64(the replicate's seed)); without arms its first draws are the
    # therapist, patient and session parts of alliance, consecutive standard normals (no
    # skew), scaled by the components
    d = am.Design(therapists=4, patients_per_therapist=3, sessions=2, alliance_skew=0.0,
                  moderators={}, effects={"alliance": 0.3})
    seeds = spawn(17, 3)
    _, _, _, _, _, sims = batch_arrays(d, "adherence", ("Intercept",), seeds)
    c_t, c_p, c_s = d.alliance_components
    for ss, sa in zip(seeds, sims, strict=True):
        rng = np.random.default_rng(np.random.SeedSequence(ss.entropy,
                                                           spawn_key=ss.spawn_key))
        a_t, a_p, a_s = rng.standard_normal(4), rng.standard_normal(12), rng.standard_normal(24)
        want = (np.sqrt(c_t) * a_t[sa.therapist] + np.sqrt(c_p) * a_p[sa.patient]
                + np.sqrt(c_s) * a_s)
        np.testing.assert_allclose(sa.columns["alliance"], want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("key", list(DESIGNS))
def test_batch_sums_are_the_sums_of_batch_arrays(key):
    # the batched engine's sums formed from the block's columns (patient-level factors
    # times session sums) equal those of the stacked X and Y over the observed rows, to
    # rounding
    d = DESIGNS[key]
    names = _names(d)
    if "age" in d.moderators:
        names += ("age_c", "age:autonomy" if "autonomy" in d.moderators else "age")
    response = "completed" if d.family == "binomial" else "adherence"
    seeds = spawn(41, 7)
    sums = batch_sums(d, response, names, seeds)
    X, Y, ther, pat, mask, _ = batch_arrays(d, response, names, seeds, sims=False)
    w = mask.astype(float)
    Xm, Ym = X * w[..., None], Y * w
    P = int(pat.max()) + 1
    want = {
        "G": np.swapaxes(Xm, 1, 2) @ Xm,
        "xty": (np.swapaxes(Xm, 1, 2) @ Ym[..., None])[..., 0],
        "yty": (Ym**2).sum(axis=1),
        "sx": np.stack([np.bincount(pat, Xm[b, :, j], P) for b in range(7)
                        for j in range(len(names))]).reshape(7, len(names), P).swapaxes(1, 2),
        "sy": np.stack([np.bincount(pat, Ym[b], P) for b in range(7)]),
        "nk": np.stack([np.bincount(pat, w[b], P) for b in range(7)]),
    }
    for c, v in want.items():
        scale = np.abs(v).max() if c in ("G", "xty", "yty") else np.abs(v).max() + 1.0
        np.testing.assert_allclose(sums[c], v, rtol=0, atol=1e-12 * scale, err_msg=c)
    np.testing.assert_array_equal(sums["therapist"], ther)
    np.testing.assert_array_equal(sums["patient"], pat)
    np.testing.assert_array_equal(sums["pat_ther"], ther[np.r_[0, np.flatnonzero(
        np.diff(pat)) + 1]])


@pytest.mark.parametrize("key", ["default", "r1", "mixed-order", "patient-rand-unequal"])
def test_batch_sums_of_a_replicate_do_not_depend_on_its_batch_or_block(key, monkeypatch):
    # a replicate's sums are formed from its own rows only: the same bits whether it is
    # simulated alone, in blocks of two or in one block with the others
    from alliance_models.planning import simulate as sim_mod

    d = DESIGNS[key]
    names = _names(d) + (("age_c",) if "age" in d.moderators else ())
    seeds = spawn(43, 5)
    whole = batch_sums(d, "adherence", names, seeds)
    n = simulate_arrays(d, seeds[0]).n_rows
    monkeypatch.setattr(sim_mod, "_BLOCK_ROWS", 2 * n)
    small = batch_sums(d, "adherence", names, seeds)
    for b in range(5):
        alone = batch_sums(d, "adherence", names, seeds[b:b + 1])
        for c in ("G", "xty", "yty", "sx", "sy", "nk"):
            np.testing.assert_array_equal(whole[c][b], alone[c][0], err_msg=c)
            np.testing.assert_array_equal(whole[c][b], small[c][b], err_msg=c)


def test_batch_sums_needs_a_fixed_layout_and_plain_columns():
    d = am.Design(therapists=4, patients_per_therapist=("poisson", 3), sessions=2)
    with pytest.raises(am.errors.ModelSpecError, match="fixed layout"):
        batch_sums(d, "adherence", ("Intercept",), spawn(1, 2))
    with pytest.raises(am.errors.ModelSpecError, match="plain-product"):
        batch_sums(DESIGNS["default"], "adherence", ("Intercept", "I(alliance ** 2)"),
                   spawn(1, 2))
