"""Where the batches of a power run are computed: here, in joblib workers, or on Dask.

:func:`execute` takes a picklable task (one batch of replicates in, its replicate frame
out) and yields the finished batches in completion order:

* serial: one worker, or a single batch, runs in this process;
* ``"loky"`` (the default) with ``n_jobs`` workers: loky's reusable worker processes
  (joblib's, :func:`joblib.externals.loky.get_reusable_executor`). When they are already
  running (a previous run of the session started them; they stay alive for 5 idle
  minutes), every batch goes to them. When they are not, the first batch runs here and is
  timed: if the rest would take this process less than :data:`WORKER_START_SECONDS`,
  it runs here too (starting processes that import numpy, SciPy and this package takes
  seconds on a busy machine, longer than a short run); otherwise the workers are started
  and this process keeps computing batches while they start, until the first of them
  returns a result (a batch the workers are still holding when nothing else is left is
  computed here too, and whichever copy finishes first is used: the copies are equal,
  though a fitting function with side effects then runs twice for that batch).
  A surrounding :func:`joblib.parallel_config` that chooses another joblib backend (such
  as ``"threading"``) gets every batch through :class:`joblib.Parallel`;
* ``"dask"`` or a ``distributed.Client``: one task per batch on the cluster.

Replicate ``i`` always uses seed ``i`` and a batch's results do not depend on where it
ran, so the executor changes speed only, never results.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ModelSpecError

__all__ = ["WORKER_START_SECONDS", "Batch", "execute", "limit_blas", "n_workers"]

#: a run without running worker processes starts them only when, after its first
#: batch, the rest would take this process longer than this (seconds)
WORKER_START_SECONDS = 2.0
#: idle seconds after which loky's workers exit (joblib's default for its loky backend)
_IDLE_TIMEOUT = 300

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
        elif not _default_joblib_backend():
            yield from _joblib(task, batches, workers)
        else:
            yield from _loky(task, batches, workers)


def _default_joblib_backend() -> bool:
    """Whether joblib would use its default process backend (loky) here."""
    from joblib.parallel import LokyBackend, get_active_backend

    return isinstance(get_active_backend()[0], LokyBackend)


def _running_executor(workers: int) -> Any | None:
    """Return loky's reusable executor if it has live worker processes, else None.

    Reads loky's own module state (the executor joblib also uses) without creating
    anything; if that state is not where this loky version keeps it, None.
    """
    from joblib.externals.loky import reusable_executor

    ex = getattr(reusable_executor, "_executor", None)
    procs = getattr(ex, "_processes", None)
    flags = getattr(ex, "_flags", None)
    if ex is None or not procs or getattr(flags, "broken", True):
        return None
    if not any(p.is_alive() for p in list(procs.values())):
        return None
    return _executor(workers)


def _executor(workers: int) -> Any:
    """Return loky's reusable executor with ``workers`` processes (started if needed)."""
    from joblib.externals.loky import get_reusable_executor

    # reuse=True: an executor joblib.Parallel started is used as it is (and the other
    # way round), only resized
    return get_reusable_executor(max_workers=workers, timeout=_IDLE_TIMEOUT, reuse=True)


def _loky(task: Task, batches: list[Batch], workers: int) -> Iterator[pd.DataFrame]:
    """Run batches in loky's workers, here while they start (see the module docstring)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    todo = deque(range(len(batches)))
    ex = _running_executor(workers)
    if ex is None:
        t0 = time.perf_counter()
        yield task(*batches[todo.popleft()])
        rest = (time.perf_counter() - t0) * len(todo)
        if rest < WORKER_START_SECONDS:
            for i in todo:
                yield task(*batches[i])
            return
        ex = _executor(workers)
        up = False  # no worker has returned a batch yet
    else:
        up = True
    futures: dict[Any, int] = {}
    finished: set[int] = set()
    try:
        while todo or futures:
            while todo and len(futures) < workers:  # the workers take from the back
                i = todo.pop()
                futures[ex.submit(task, *batches[i])] = i
            done = [f for f in futures if f.done()]
            if not done and not up:
                # the workers are still starting: compute a batch here, the next one in
                # line or else the one a worker got last (a copy; the first copy wins)
                if todo:
                    i = todo.popleft()
                else:
                    f, i = next(reversed(futures.items()))
                    del futures[f]
                    f.cancel()
                if i not in finished:
                    finished.add(i)
                    yield task(*batches[i])
                continue
            if not done:
                done = list(wait(list(futures), return_when=FIRST_COMPLETED)[0])
            for f in done:
                i = futures.pop(f)
                res = f.result()
                up = True
                if i not in finished:
                    finished.add(i)
                    yield res
    finally:
        for f in futures:
            f.cancel()  # queued batches; running ones finish in their worker


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
