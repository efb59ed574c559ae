import dataclasses
import math
import pickle

import pytest

import alliance_models as am
from alliance_models.errors import DesignError
from alliance_models.planning.design import DEFAULT_ALLIANCE_EFFECT, canonical_term


def test_defaults_follow_domain_facts():
    d = am.Design()
    assert d.icc_therapist == 0.05  # Johns et al. 2019
    # r = 0.25 as a standardised slope on the residual SD: r / sqrt(1 - r^2)
    assert math.isclose(DEFAULT_ALLIANCE_EFFECT, 0.25 / math.sqrt(1 - 0.0625), abs_tol=5e-4)
    assert dict(d.effects) == {"alliance": DEFAULT_ALLIANCE_EFFECT}
    assert d.age_distribution == (50.0, 14.0, 18.0, 85.0)
    assert d.moderators == {"age": "patient", "autonomy": "patient"}
    assert d.n_therapists == 40 and d.has_fixed_structure


def test_effect_names_are_canonicalised():
    d = am.Design(effects={"autonomy:alliance": 0.1, "age : alliance": 0.05})
    assert dict(d.effects) == {"alliance:autonomy": 0.1, "alliance:age": 0.05}
    assert canonical_term("age:arm") == "arm:age"
    assert canonical_term("autonomy:age:alliance") == "alliance:age:autonomy"


def test_allowed_terms_depend_on_design():
    d = am.Design(randomisation="patient", moderators={"age": "patient"})
    assert d.allowed_terms() == ("alliance", "arm", "age", "alliance:arm", "alliance:age",
                                 "arm:age", "alliance:arm:age")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"icc_therapist": 0.5, "icc_patient": 0.5}, r"icc_therapist \+ icc_patient = 0.5 \+ 0.5"),
        ({"icc_therapist": -0.1}, "icc_therapist must be in"),
        ({"therapists": 0}, "therapists must be a positive integer"),
        ({"therapists": -3}, "therapists must be a positive integer"),
        ({"patients_per_therapist": -1}, "patients_per_therapist must be a positive integer"),
        ({"sessions": 0}, "sessions must be a positive integer"),
        ({"sessions": 2.5}, "sessions must be a positive integer"),
        ({"therapists": 3, "patients_per_therapist": [4, 5]}, "lists 2 caseloads but the design "
                                                               "has 3 therapists"),
        ({"therapists": 3, "patients_per_therapist": [4, 0, 5]}, "0 at position 1"),
        ({"sessions": ("gamma", 8)}, "distribution 'gamma' is unknown; allowed: poisson"),
        ({"sessions": ("negbin", 8)}, r"\('negbin', mean, dispersion\)"),
        ({"sessions": ("negbin", 8, 0)}, "dispersion must be > 0"),
        ({"randomisation": "cluster"}, "randomisation 'cluster' is unknown"),
        ({"therapists": (10, 12)}, "requires randomisation='therapist'"),
        ({"alliance_components": (0.5, 0.5, 0.5)}, "summing to 1"),
        ({"moderators": {"income": "patient"}}, "moderator 'income' is unknown"),
        ({"moderators": {"age": "therapist"}}, "cannot live on level 'therapist'"),
        ({"family": "poisson"}, "family 'poisson' is unknown"),
        ({"baseline_adherence": 1.0}, "baseline_adherence"),
        ({"dropout": 1.2}, r"dropout proportions must be in \[0, 1\)"),
        ({"dropout": (0.1, 0.2)}, "dropout per arm"),
        ({"dropout_timing": 0}, "dropout_timing must be 'uniform'"),
        ({"sessions": 4, "dropout": 0.3, "dropout_timing": 4},
         r"dropout_timing=4 must be below sessions=4.*allowed: 1 to 3 or 'uniform'"),
        ({"sessions": 1, "dropout": 0.2}, "dropout=0.2 needs at least 2 sessions"),
        ({"randomisation": "patient", "patients_per_therapist": 1}, "at least 2 patients"),
        ({"sessions": ("poisson", "x")}, "sessions distribution parameter must be a finite "
                                         "number, got 'x'"),
        ({"alliance_components": ("a", 0.5, 0.5)}, "alliance_components must be a finite "
                                                   "number, got 'a'"),
        ({"dropout": "0.1"}, "dropout must be a finite number, got '0.1'"),
        ({"age_distribution": (50, 14)}, r"age_distribution must be \(mean, sd, low, high\)"),
        ({"age_distribution": (50, math.nan, 18, 85)}, "age_distribution must be a finite"),
        ({"alliance_skew": "left"}, "alliance_skew must be a finite number, got 'left'"),
        ({"baseline_adherence": "x"}, "baseline_adherence must be a finite number, got 'x'"),
        ({"moderators": ["age"]}, r"moderators must be a mapping such as \{'age': 'patient'\}"),
        ({"effects": [("alliance", 0.2)]}, "effects must be a mapping"),
    ],
)
def test_invalid_designs_raise_clear_errors(kwargs, match):
    with pytest.raises(DesignError, match=match):
        am.Design(**kwargs)


def test_unknown_effect_term_lists_allowed_terms():
    with pytest.raises(DesignError, match=r"effect 'alliance:income' names an unknown term; "
                                          r"allowed terms for this design: alliance, age"):
        am.Design(effects={"alliance:income": 0.1})


def test_effect_on_missing_moderator_is_refused():
    with pytest.raises(DesignError, match=r"effect 'alliance:autonomy'.*no moderator 'autonomy'"):
        am.Design(moderators={"age": "patient"}, effects={"alliance:autonomy": 0.1})
    with pytest.raises(DesignError, match="'arm' exists only with randomisation"):
        am.Design(effects={"arm": 0.3})


def test_effect_values_must_be_numbers():
    with pytest.raises(DesignError, match="effect 'alliance' must be a finite number"):
        am.Design(effects={"alliance": float("nan")})
    with pytest.raises(DesignError, match="given twice"):
        am.Design(effects={"alliance:age": 0.1, "age:alliance": 0.2})


def test_design_is_frozen_hashable_and_picklable():
    d = am.Design(randomisation="therapist", therapists=(10, 12), effects={"arm": 0.3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.therapists = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        d.effects["arm"] = 0.5  # type: ignore[index]
    assert pickle.loads(pickle.dumps(d)) == d
    assert hash(d) == hash(am.Design(randomisation="therapist", therapists=(10, 12),
                                     effects={"arm": 0.3}))
    assert d.n_therapists == 22 and d.arm_therapists == (10, 12)


def test_replace_revalidates():
    d = am.Design(therapists=20)
    assert d.replace(therapists=30).therapists == 30
    with pytest.raises(DesignError, match="therapists must be a positive integer"):
        d.replace(therapists=0)
    lst = am.Design(therapists=2, patients_per_therapist=[3, 4])
    with pytest.raises(DesignError, match="per-therapist list"):
        lst.replace(therapists=3)


def test_distribution_specs_and_counts():
    d = am.Design(patients_per_therapist=("poisson", 8), sessions=["negbin", 8, 2],
                  family="binomial", counts="attendance")
    assert d.patients_per_therapist == ("poisson", 8.0)
    assert d.sessions == ("negbin", 8.0, 2.0)
    assert not d.has_fixed_structure
    assert d.n_trials == 1 and d.count_columns == ("attended", "scheduled")
    assert am.Design(family="binomial").n_trials == 7


def test_to_dict_and_describe():
    d = am.Design(effects={"alliance:autonomy": 0.1})
    out = d.to_dict()
    assert out["effects"] == {"alliance:autonomy": 0.1} and out["therapists"] == 40
    assert "alliance:autonomy=0.1" in d.describe()
