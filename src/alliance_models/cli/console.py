"""Where the ``alliance-models`` commands write: results to stdout, the rest to stderr.

:class:`Console` is shared by the commands (:mod:`alliance_models.cli.main`) and the demo
pipeline (:mod:`alliance_models.cli.demo`); :func:`compact_warnings` shows warnings as
one line each.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["PROG", "Console", "compact_warnings", "one_line"]

PROG = "alliance-models"


class Console:
    """Where the command writes: results to ``out``, progress and warnings to ``err``.

    Parameters
    ----------
    out, err : text streams
        Default to ``sys.stdout`` and ``sys.stderr`` at call time.
    quiet : bool
        Suppress progress messages.
    """

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, quiet: bool = False
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.quiet = quiet
        self._t0 = time.perf_counter()

    def print(self, text: object = "") -> None:
        """Write a result line (stdout)."""
        print(text, file=self.out, flush=True)

    def heading(self, text: str) -> None:
        """Write an underlined heading to stdout."""
        self.print()
        self.print(text)
        self.print("=" * len(text))

    @property
    def live(self) -> bool:
        """Whether third-party live progress bars may be drawn.

        Only when progress is wanted and both streams are terminals: PyMC draws its
        sampling bar on stdout, which must stay clean when results are redirected.
        """

        def tty(stream: TextIO) -> bool:
            isatty = getattr(stream, "isatty", None)
            return bool(isatty and isatty())

        return not self.quiet and tty(self.out) and tty(self.err)

    def step(self, text: str) -> None:
        """Write a progress line with the elapsed time (stderr)."""
        if not self.quiet:
            elapsed = time.perf_counter() - self._t0
            print(f"[{elapsed:6.1f}s] {text}", file=self.err, flush=True)

    @contextlib.contextmanager
    def timed(self, text: str) -> Iterator[None]:
        """Announce a long step and report how long it took."""
        self.step(f"{text} ...")
        t = time.perf_counter()
        yield
        self.step(f"{text}: done in {time.perf_counter() - t:.1f}s")


def one_line(text: str) -> str:
    """Return ``text`` on one line (its non-blank lines joined by spaces).

    Examples
    --------
    >>> one_line(" a  " + chr(10) + "  b " + chr(10))
    'a b'
    """
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextlib.contextmanager
def compact_warnings(console: Console, debug: bool) -> Iterator[None]:
    """Show warnings as single ``alliance-models: warning: ...`` lines (unless debugging)."""
    if debug:
        yield
        return
    original = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(
            f"{PROG}: warning: {category.__name__}: {one_line(str(message))}",
            file=console.err,
            flush=True,
        )

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
