"""Small shared helpers: random generators, seeds and the one progress helper."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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
