"""Reports of a whole analysis: :func:`~.html.report` writes it as one HTML page."""

from __future__ import annotations

from .html import report

__all__ = ["report"]
