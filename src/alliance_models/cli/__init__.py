"""The ``alliance-models`` command line: commands, console, demo and design files.

:mod:`~alliance_models.cli.main` parses the command line and runs the commands,
:mod:`~alliance_models.cli.console` is where they write, :mod:`~alliance_models.cli.demo`
is the demo pipeline and :mod:`~alliance_models.cli.power_file` the TOML front end of
``alliance-models power``.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
