"""The package's one progress helper (tqdm on stderr)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["progress"]


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
