"""``python -m alliance_models.cli``: the ``alliance-models`` command."""

import sys

from .main import main

sys.exit(main())
