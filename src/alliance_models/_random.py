"""The package's one seeding rule: a seed becomes a :class:`numpy.random.SeedSequence`.

Every random function takes ``seed: int | SeedSequence | Generator | None`` and turns it
into a SeedSequence with :func:`seed_sequence`:

* an int, a sequence of ints or None (fresh OS entropy): ``SeedSequence(seed)``;
* a SeedSequence: a fresh copy (same entropy, spawn key and pool size, no children
  spawned yet), so the same SeedSequence gives the same results every time;
* a Generator: ``SeedSequence(rng.integers(2**63))``, one draw from it, so a Generator
  is a stream: passing it twice gives two different results, as numpy's own functions do.

Independent parts of a computation (replicates of a power run, components of a simulated
data set, the chains of a sampler) use the children of that SeedSequence
(:meth:`~numpy.random.SeedSequence.spawn`): child ``i`` depends only on the seed and
``i``, so results do not depend on how the parts are split over workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, overload

import numpy as np

RNGLike = np.random.Generator | np.random.SeedSequence | int | None

__all__ = ["RNGLike", "SeedBlock", "as_generator", "child", "seed_sequence", "spawn"]


def seed_sequence(seed: RNGLike | Sequence[int]) -> np.random.SeedSequence:
    """Return the SeedSequence that ``seed`` stands for (the package's seeding rule).

    Examples
    --------
    >>> seed_sequence(7).entropy
    7
    >>> ss = np.random.SeedSequence(3)
    >>> _ = ss.spawn(2)
    >>> seed_sequence(ss).n_children_spawned  # a fresh copy
    0
    """
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2**63)))
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key,
                                      pool_size=seed.pool_size)
    return np.random.SeedSequence(seed)


def child(seed: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    """Return child ``i`` of ``seed``, equal to ``seed_sequence(seed).spawn(i + 1)[i]``.

    Built directly, without spawning the ``i`` children before it.

    Examples
    --------
    >>> root = np.random.SeedSequence(5)
    >>> child(root, 3).spawn_key == root.spawn(4)[3].spawn_key
    True
    """
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i),
                                  pool_size=seed.pool_size)


def spawn(seed: RNGLike, n: int) -> list[np.random.SeedSequence]:
    """Return ``n`` independent child seeds of ``seed`` (``seed_sequence(seed).spawn(n)``).

    The i-th child depends only on ``seed`` and ``i``, so results do not depend on
    how replicates are split over workers.

    Examples
    --------
    >>> a = spawn(7, 3)
    >>> b = spawn(7, 5)
    >>> a[2].entropy == b[2].entropy and a[2].spawn_key == b[2].spawn_key
    True
    """
    return seed_sequence(seed).spawn(n)


def as_generator(seed: RNGLike) -> np.random.Generator:
    """Return a Generator: ``seed`` itself if it is one, else one seeded by the rule.

    Examples
    --------
    >>> g = as_generator(1)
    >>> float(g.random()) == float(as_generator(1).random())
    True
    """
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed_sequence(seed))


class SeedBlock(Sequence[np.random.SeedSequence]):
    """Children ``indices`` of a root SeedSequence, built on access (as ``root.spawn``).

    Item ``j`` equals ``spawn(root, n)[indices[j]]``. A block pickles as its recipe
    (entropy, spawn key, pool size and the indices), not as SeedSequence objects with
    their pools, so sending a batch's seeds to a worker process costs next to nothing.

    Examples
    --------
    >>> blk = SeedBlock(np.random.SeedSequence(7), [2, 5])
    >>> ref = spawn(7, 6)
    >>> blk[1].spawn_key == ref[5].spawn_key and blk[1].entropy == ref[5].entropy
    True
    """

    __slots__ = ("entropy", "indices", "pool_size", "spawn_key")

    def __init__(self, root: np.random.SeedSequence, indices: Iterable[int]) -> None:
        if root.n_children_spawned:
            raise ValueError("SeedBlock takes a root that has not spawned children yet")
        self.entropy = root.entropy
        self.spawn_key = tuple(root.spawn_key)
        self.pool_size = root.pool_size
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, j: int) -> np.random.SeedSequence: ...

    @overload
    def __getitem__(self, j: slice) -> SeedBlock: ...

    def __getitem__(self, j: int | slice) -> np.random.SeedSequence | SeedBlock:
        if isinstance(j, slice):
            out = SeedBlock.__new__(SeedBlock)
            out.entropy, out.spawn_key, out.pool_size = (self.entropy, self.spawn_key,
                                                         self.pool_size)
            out.indices = self.indices[j]
            return out
        return np.random.SeedSequence(self.entropy, spawn_key=(*self.spawn_key,
                                                               self.indices[j]),
                                      pool_size=self.pool_size)

    def recipes(self) -> list[tuple[Any, tuple[int, ...], int]]:
        """``(entropy, spawn_key, pool_size)`` of each seed, without building them.

        ``SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size)`` is item ``j``;
        its own children are reached the same way, with one more spawn-key entry.

        Examples
        --------
        >>> SeedBlock(np.random.SeedSequence(7), [2, 5]).recipes()
        [(7, (2,), 4), (7, (5,), 4)]
        """
        return [(self.entropy, (*self.spawn_key, i), self.pool_size) for i in self.indices]

    def __reduce__(self) -> tuple[object, ...]:
        root = np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key,
                                      pool_size=self.pool_size)
        return (SeedBlock, (root, self.indices))
