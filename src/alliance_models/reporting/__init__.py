"""Reports of a whole analysis: :func:`~alliance_models.reporting.html.report` writes one HTML page."""

from __future__ import annotations

from .html import report

__all__ = ["report"]
