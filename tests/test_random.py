import numpy as np
import pytest

from alliance_models import errors
from alliance_models._progress import progress
from alliance_models._random import as_generator, seed_sequence, spawn


def test_spawn_seeds_prefix_stable():
    a = spawn(42, 3)
    b = spawn(42, 10)
    for x, y in zip(a, b[:3], strict=True):
        assert np.array_equal(x.generate_state(4), y.generate_state(4))
    # different children differ
    assert not np.array_equal(a[0].generate_state(4), a[1].generate_state(4))


def test_spawn_seeds_repeatable_from_seedsequence():
    ss = np.random.SeedSequence(5)
    first = [s.generate_state(2) for s in spawn(ss, 2)]
    second = [s.generate_state(2) for s in spawn(ss, 2)]
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def test_as_generator_passthrough_and_seed():
    g = np.random.default_rng(3)
    assert as_generator(g) is g
    assert as_generator(3).random() == np.random.default_rng(3).random()


def test_format_rows_limits_to_five():
    assert errors.format_rows([1]) == "row 1"
    assert errors.format_rows(list(range(7))) == "rows 0, 1, 2, 3, 4 (and 2 more)"


def test_error_tree():
    assert issubclass(errors.DataValidationError, ValueError)
    assert issubclass(errors.DataValidationError, errors.AllianceModelsError)
    assert issubclass(errors.SingularFitWarning, errors.AllianceModelsWarning)
    with pytest.raises(errors.AllianceModelsError):
        raise errors.DesignError("x")


def test_progress_disabled_is_identity():
    assert list(progress(iter([1, 2]), enabled=False)) == [1, 2]


def test_seed_block_is_spawn_children_and_pickles_small():
    import pickle

    from alliance_models._random import SeedBlock

    root = np.random.SeedSequence(2024)
    ref = spawn(root, 30)
    blk = SeedBlock(root, [3, 17, 29])
    assert len(blk) == 3
    for got, i in zip(blk, [3, 17, 29], strict=True):
        np.testing.assert_array_equal(got.generate_state(4), ref[i].generate_state(4))
    back = pickle.loads(pickle.dumps(blk))
    np.testing.assert_array_equal(back[2].generate_state(4), ref[29].generate_state(4))
    assert [s.spawn_key for s in blk[1:]] == [ref[17].spawn_key, ref[29].spawn_key]
    # its pickle holds the recipe, not one SeedSequence (with its pool) per child
    big = SeedBlock(root, range(1000))
    assert len(pickle.dumps(big)) < len(pickle.dumps(list(big))) / 10
    root.spawn(1)
    with pytest.raises(ValueError, match="not spawned"):
        SeedBlock(root, [0])


def test_seed_rule():
    # an int or None as numpy takes it; a SeedSequence as a fresh copy (children spawned
    # from it do not matter); a Generator by one draw from it (a stream: two calls differ)
    assert seed_sequence(11).entropy == np.random.SeedSequence(11).entropy
    assert seed_sequence(None).entropy != seed_sequence(None).entropy
    ss = np.random.SeedSequence(4, spawn_key=(2,))
    ss.spawn(3)
    copy = seed_sequence(ss)
    assert (copy.entropy, copy.spawn_key, copy.n_children_spawned) == (4, (2,), 0)
    np.testing.assert_array_equal(copy.spawn(1)[0].generate_state(2),
                                  np.random.SeedSequence(4, spawn_key=(2, 0)).generate_state(2))
    g = np.random.default_rng(8)
    first, second = seed_sequence(g), seed_sequence(g)
    want = np.random.default_rng(8).integers(2**63, size=2)
    assert [first.entropy, second.entropy] == want.tolist()
