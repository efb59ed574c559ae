"""Debian's headless Chromium, started the one way the browser tests use it.

This machine's network is closed: without the background-networking flags Chromium's
connections are refused many at a time. Each run gets a fresh profile directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_chromium(url: str, profile: Path, *extra: str,
                 timeout: float = 120) -> subprocess.CompletedProcess:
    """Open ``url`` headless with a fresh ``profile``; ``extra`` flags go before the URL."""
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
