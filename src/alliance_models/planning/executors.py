"""Where the batches of a power run are computed: here, in joblib workers, or on Dask.

:func:`execute` takes a picklable task (one batch of replicates in, its replicate frame
out) and yields the finished batches in completion order:

* serial: one worker, or a single batch, runs in this process;
* ``"loky"`` (the default): :class:`joblib.Parallel` with ``n_jobs`` workers. That is
  loky's reusable worker processes unless a surrounding :func:`joblib.parallel_config`
  chooses another joblib backend; started workers stay alive for joblib's idle timeout
  (a few minutes), so later runs of the session use them at once;
* ``"dask"`` or a ``distributed.Client``: one task per batch on the cluster.

Replicate ``i`` always uses seed ``i`` and a batch's results do not depend on where it
ran, so the executor changes speed only, never results.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ModelSpecError

__all__ = ["Batch", "execute", "limit_blas", "n_workers"]

#: one batch: the replicate numbers and their seeds
Batch = tuple[list[int], Sequence[np.random.SeedSequence]]
#: what runs a batch (picklable for worker processes and Dask)
Task = Callable[[list[int], Sequence[np.random.SeedSequence]], pd.DataFrame]

#: this process's threadpoolctl controller and the number of imported modules when it
#: was made (scanning the loaded libraries takes milliseconds; a new import may load a
#: new BLAS/OpenMP library, so the scan is repeated when more modules are imported)
_BLAS_CONTROLLER: list[Any] = []


def limit_blas() -> contextlib.AbstractContextManager[Any]:
    """Pin BLAS/OpenMP to one thread (threadpoolctl when available)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack
        return contextlib.nullcontext()
    n_modules = len(sys.modules)
    if not _BLAS_CONTROLLER or _BLAS_CONTROLLER[0] != n_modules:
        _BLAS_CONTROLLER[:] = [n_modules, ThreadpoolController()]
    return _BLAS_CONTROLLER[1].limit(limits=1)


def n_workers(n_jobs: int) -> int:
    """Workers for ``n_jobs`` in joblib's convention (-1 every core, -2 all but one ...).

    Examples
    --------
    >>> n_workers(3)
    3
    >>> n_workers(-1) == (os.cpu_count() or 1)
    True
    """
    return max(1, (os.cpu_count() or 1) + 1 + n_jobs) if n_jobs < 0 else n_jobs


def execute(task: Task, batches: list[Batch], n_jobs: int, backend: Any) -> Iterator[pd.DataFrame]:
    """Yield the finished batches (in completion order) from the chosen backend.

    Raises
    ------
    ModelSpecError
        An unknown backend.
    """
    is_dask = backend == "dask" if isinstance(backend, str) else backend is not None
    if is_dask:
        yield from _dask(task, batches, backend)
        return
    if backend not in ("loky", None):
        raise ModelSpecError(
            f"backend {backend!r} is unknown; allowed: 'loky', 'dask' or a distributed.Client"
        )
    workers = n_workers(n_jobs)
    # BLAS pinned here too: with joblib's threading backend the per-batch limits of the
    # threads then only restore this one (the limit is process-wide)
    with limit_blas():
        if workers == 1 or len(batches) <= 1:
            for reps, seeds in batches:
                yield task(reps, seeds)
        else:
            yield from _joblib(task, batches, workers)


def _joblib(task: Task, batches: list[Batch], workers: int) -> Iterator[pd.DataFrame]:
    """Run batches with :class:`joblib.Parallel` (loky's reusable workers by default)."""
    from joblib import Parallel, delayed

    gen = Parallel(n_jobs=workers, return_as="generator_unordered")(
        delayed(task)(reps, seeds) for reps, seeds in batches)
    try:
        yield from gen
    finally:
        stop = getattr(gen, "close", None)
        if stop is not None:
            with warnings.catch_warnings():
                # after Ctrl-C joblib notes that it cancelled the queued batches; the
                # interruption warning of power() already says so
                warnings.filterwarnings("ignore", message=r".*tasks which were still "
                                        r"being processed", category=UserWarning)
                stop()


def _dask_client(backend: Any) -> tuple[Any, Callable[[], None]]:
    """Return (client, close) for ``backend="dask"`` or an existing Client."""
    from distributed import Client, get_client

    if isinstance(backend, Client):
        return backend, lambda: None
    try:
        return get_client(), lambda: None
    except ValueError:
        from distributed import LocalCluster

        cluster = LocalCluster(threads_per_worker=1, processes=True)
        client = Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        return client, close


def _dask(task: Task, batches: list[Batch], backend: Any) -> Iterator[pd.DataFrame]:
    """Submit one task per batch to a Dask cluster; yield them as they finish."""
    from distributed import as_completed

    client, close = _dask_client(backend)
    futures = [client.submit(task, reps, seeds, pure=False) for reps, seeds in batches]
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        for fut in futures:
            fut.cancel()
        close()
