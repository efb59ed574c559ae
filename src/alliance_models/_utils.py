"""Small shared helpers: random generators, seeds and the one progress helper."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

RNGLike = np.random.Generator | np.random.SeedSequence | int | None


def as_generator(rng: RNGLike) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` from a seed, SeedSequence or Generator.

    Examples
    --------
    >>> g = as_generator(1)
    >>> float(g.random()) == float(as_generator(1).random())
    True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def spawn_seeds(seed: RNGLike, n: int) -> list[np.random.SeedSequence]:
    """Return ``n`` independent child seeds of ``seed`` via ``SeedSequence.spawn``.

    The i-th child depends only on ``seed`` and ``i``, so results do not depend on
    how replicates are split over workers.

    Examples
    --------
    >>> a = spawn_seeds(7, 3)
    >>> b = spawn_seeds(7, 5)
    >>> a[2].entropy == b[2].entropy and a[2].spawn_key == b[2].spawn_key
    True
    """
    if isinstance(seed, np.random.Generator):
        ss = seed.bit_generator.seed_seq
        if not isinstance(ss, np.random.SeedSequence):  # pragma: no cover - exotic generators
            ss = np.random.SeedSequence(int(seed.integers(2**63)))
    elif isinstance(seed, np.random.SeedSequence):
        ss = seed
    else:
        ss = np.random.SeedSequence(seed)
    # spawn from a fresh copy so repeated calls give the same children
    base = np.random.SeedSequence(ss.entropy, spawn_key=ss.spawn_key, pool_size=ss.pool_size)
    return base.spawn(n)


class SeedBlock(Sequence[np.random.SeedSequence]):
    """Children ``indices`` of a root SeedSequence, built on access (as ``root.spawn``).

    Item ``j`` equals ``spawn_seeds(root, n)[indices[j]]``. A block pickles as its recipe
    (entropy, spawn key, pool size and the indices), not as SeedSequence objects with
    their pools, so sending a batch's seeds to a worker process costs next to nothing.

    Examples
    --------
    >>> blk = SeedBlock(np.random.SeedSequence(7), [2, 5])
    >>> ref = spawn_seeds(7, 6)
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

    def __reduce__(self) -> tuple[object, ...]:
        root = np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key,
                                      pool_size=self.pool_size)
        return (SeedBlock, (root, self.indices))


def progress[T](
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Wrap an iterable in the package's progress bar (tqdm on stderr) when enabled.

    Examples
    --------
    >>> list(progress(range(3), enabled=False))
    [0, 1, 2]
    """
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, total=total, desc=desc, leave=False)
