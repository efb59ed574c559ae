"""Checkpoint files of power runs: finished replicates saved batch by batch, and resumed.

A checkpoint is a ``.parquet`` or ``.csv`` file of replicate rows, each with the
fingerprint of its run (design, formula, test, method, settings and the whole root
seed), so that a rerun of the same run resumes from it and a different run refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DesignError
from .results import BOOL_COLUMNS, REPLICATE_COLUMNS

__all__ = ["fingerprint", "read", "write"]


def fingerprint(run: Mapping[str, Any], root: np.random.SeedSequence) -> str:
    """Return a short hash of a run's description and its whole root seed.

    Examples
    --------
    >>> a = fingerprint({"formula": "y ~ x"}, np.random.SeedSequence(1))
    >>> a == fingerprint({"formula": "y ~ x"}, np.random.SeedSequence(1)), len(a)
    (True, 16)
    >>> a == fingerprint({"formula": "y ~ x"}, np.random.SeedSequence(2))
    False
    """
    # the whole root seed: entropy (an int or a sequence of ints) and spawn key
    payload = {**run, "seed": [repr(root.entropy), list(root.spawn_key)]}
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read(path: Path, fp: str, columns: Sequence[str] = REPLICATE_COLUMNS) -> pd.DataFrame:
    """Return the replicates saved in ``path`` (none if it does not exist).

    ``columns`` are the record columns of the run (a run of several tests adds
    ``test``, one row per replicate and test).

    Raises
    ------
    DesignError
        The file belongs to a run with another fingerprint.
    """
    if not path.exists():
        return pd.DataFrame(columns=[*columns, "fingerprint"])
    text = ("error", "fingerprint", "test")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
        path, dtype={c: str for c in text if c in (*columns, "fingerprint")},
        keep_default_na=False,
        na_values={c: [""] for c in columns if c not in (*text, "rep")})
    if len(df) and set(df["fingerprint"].astype(str)) != {fp}:
        raise DesignError(
            f"checkpoint {str(path)!r} belongs to a different run (design, formula, test, "
            "method, alpha or seed differ); use another checkpoint path or delete the file "
            "to start afresh"
        )
    df["error"] = df["error"].fillna("").astype(str)
    if "test" in columns:
        df["test"] = df["test"].astype(str)
    for c in BOOL_COLUMNS:
        df[c] = df[c].astype(bool)
    return df


def write(path: Path, df: pd.DataFrame) -> None:
    """Write ``df`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, path)
