"""Where the batches of a power run are computed: here, in joblib workers, or on Dask.

:func:`execute` takes a picklable task (one batch of replicates in, its replicate frame
out) and yields the finished batches in completion order:

* serial: one worker, or a single batch, runs in this process;
* ``"loky"`` (the default) with ``n_jobs`` workers: loky's reusable worker processes
  (joblib's, :func:`joblib.externals.loky.get_reusable_executor`). When they are already
  running (a previous run of the session started them; they stay alive for 5 idle
  minutes), every batch goes to them. When they are not (a cold run), the first batches
  run in this process and are timed: if the rest would take this process less than
  :data:`WORKER_START_SECONDS`, it runs here too (starting processes that import numpy,
  SciPy and this package takes seconds on a busy machine, longer than a short run);
  otherwise the workers are started and this process keeps computing batches while they
  start, until the first of them returns a result (a batch the workers are still holding
  when nothing else is left is computed here too, and whichever copy finishes first is
  used: the copies are equal, though a fitting function with side effects then runs
  twice for that batch). How this process computes a cold run's batches depends on the
  task: a task marked thread-safe (``threads=True``: the package's own batched engines,
  pure numpy, which releases the GIL inside its vectorised calls) runs in a pool of
  ``n_jobs`` threads (at most one per core), so that a short first run of a session
  uses every core at once; any other task (a fitting function of the user's, one
  data-frame fit per replicate) runs one batch at a time in the calling thread. Fork is
  not used: with numpy's BLAS threads running, Python 3.12 warns that forking may
  deadlock.
  A surrounding :func:`joblib.parallel_config` that chooses another joblib backend (such
  as ``"threading"``) gets every batch through :class:`joblib.Parallel`;
* ``"dask"`` or a ``distributed.Client``: one task per batch on the cluster.

BLAS and OpenMP are pinned to one thread for the whole run (:func:`limit_blas`; the
limit is process-wide, so the threads share it and do not set it themselves).
Replicate ``i`` always uses seed ``i`` and a batch's results do not depend on where it
ran, so the executor changes speed only, never results.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
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
#: the active pin of this process: [depth of the :func:`limit_blas` blocks open, the
#: threadpoolctl limiter of the outermost one, the thread that entered it]; guarded by
#: _BLAS_LOCK
_BLAS_PIN: list[Any] = [0, None, None]
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def limit_blas() -> Iterator[None]:
    """Pin BLAS/OpenMP to one thread (threadpoolctl when available) inside the block.

    The limit of a process-wide BLAS thread pool (OpenBLAS with pthreads, numpy's and
    SciPy's wheels) is set once: by the outermost block of the process, restored when the
    last block still open ends. Blocks entered while it holds (each batch of a run, in
    this thread or in the run's threads) leave it alone, so no thread resets BLAS while
    another is inside a BLAS call. Libraries whose limit is per thread (OpenMP, OpenBLAS
    on the OpenMP layer) are also limited in each other thread that enters a block.

    Examples
    --------
    >>> with limit_blas():
    ...     pass
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's stack
        yield
        return
    me = threading.get_ident()
    with _BLAS_LOCK:
        if _BLAS_PIN[0] == 0:
            n_modules = len(sys.modules)
            if not _BLAS_CONTROLLER or _BLAS_CONTROLLER[0] != n_modules:
                _BLAS_CONTROLLER[:] = [n_modules, ThreadpoolController()]
            _BLAS_PIN[1:] = [_BLAS_CONTROLLER[1].limit(limits=1).__enter__(), me]
        _BLAS_PIN[0] += 1
        # another thread's pin: this thread's own limits where they are per thread
        local = (_BLAS_CONTROLLER[1].select(user_api="openmp", threading_layer="openmp")
                 if _BLAS_PIN[2] != me else None)
    try:
        if local is not None and local.lib_controllers:
            with local.limit(limits=1):
                yield
        else:
            yield
    finally:
        with _BLAS_LOCK:
            _BLAS_PIN[0] -= 1
            if _BLAS_PIN[0] == 0:
                limiter, owner = _BLAS_PIN[1], _BLAS_PIN[2]
                _BLAS_PIN[1:] = [None, None]
                if owner == me:
                    limiter.__exit__(None, None, None)
                else:  # the pin outlived its thread's block: restore from here
                    from threadpoolctl import OpenBLASController

                    OpenBLASController.clear_controlling_thread(force=True)
                    limiter.restore_original_limits()


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


def execute(task: Task, batches: list[Batch], n_jobs: int, backend: Any, *,
            threads: bool = False) -> Iterator[pd.DataFrame]:
    """Yield the finished batches (in completion order) from the chosen backend.

    ``threads=True`` marks the task as safe to run in several threads of this process at
    once (it mutates no shared state and shows no progress of its own): a cold run of
    the default backend then computes its batches in a thread pool (see the module
    docstring).

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
        elif threads:
            yield from _threaded(task, batches, workers)
        else:
            yield from _loky(task, batches, workers)


def _default_joblib_backend() -> bool:
    """Whether joblib would use its default process backend (loky) here."""
    if "joblib.parallel" not in sys.modules:
        # no parallel_config can be active before joblib.parallel is imported (and the
        # import takes tens of milliseconds, a tenth of a short first run)
        return True
    from joblib.parallel import LokyBackend, get_active_backend

    return isinstance(get_active_backend()[0], LokyBackend)


def _running_executor(workers: int) -> Any | None:
    """Return loky's reusable executor if it has live worker processes, else None.

    Reads loky's own module state (the executor joblib also uses) without creating
    anything; if that state is not where this loky version keeps it, None. Before loky's
    executor module is imported (by this package or by joblib) no workers can run.
    """
    if "joblib.externals.loky.reusable_executor" not in sys.modules:
        return None
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


def _threaded(task: Task, batches: list[Batch], workers: int) -> Iterator[pd.DataFrame]:
    """Run a thread-safe task's batches in threads while no loky workers are running.

    Warm workers get every batch (:func:`_loky`). Otherwise a pool of ``workers``
    threads (at most one per core) takes the batches in order; when the first of them
    finishes, the rest is timed from it: if this process would need longer than
    :data:`WORKER_START_SECONDS`, loky's workers are started and take batches from the
    back while the threads go on from the front, until a worker returns one; then the
    threads stop taking batches. Batches the workers still hold when nothing else is
    left are computed by idle threads too, the first copy wins. The pool is shut down
    (queued batches cancelled, running ones awaited) before this returns or raises, so
    no thread is left computing when the run ends, even after Ctrl-C.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    if _running_executor(workers) is not None:
        yield from _loky(task, batches, workers)
        return
    n_threads = max(1, min(workers, os.cpu_count() or 1))
    todo = deque(range(len(batches)))
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="alliance_models")
    here: dict[Future[pd.DataFrame], int] = {}  # batches in this process's threads
    there: dict[Any, int] = {}  # batches in loky's workers
    finished: set[int] = set()
    ex = None  # loky's executor, once started
    up = False  # a worker has returned a batch
    t0 = time.perf_counter()
    timed = False
    try:
        while len(finished) < len(batches):
            if not up:
                while todo and len(here) < n_threads:  # the threads take from the front
                    i = todo.popleft()
                    here[pool.submit(task, *batches[i])] = i
                if ex is not None and not todo:  # idle threads copy the workers' last
                    busy = set(here.values())
                    for i in [i for i in reversed(there.values()) if i not in busy][
                            :n_threads - len(here)]:
                        here[pool.submit(task, *batches[i])] = i
            if ex is not None:
                while todo and len(there) < workers:  # the workers take from the back
                    i = todo.pop()
                    there[ex.submit(task, *batches[i])] = i
            done, _ = wait([*here, *there], return_when=FIRST_COMPLETED)
            for f in done:
                if f in here:
                    i = here.pop(f)
                elif f in there:
                    i = there.pop(f)
                    up = True
                else:  # a copy of a batch finished a moment ago
                    continue
                res = f.result()
                if i in finished:
                    continue
                finished.add(i)
                for other in [g for g, j in (*here.items(), *there.items()) if j == i]:
                    other.cancel()  # the other copy (if it runs, it finishes unread)
                    here.pop(other, None)
                    there.pop(other, None)
                yield res
            if not timed and ex is None:
                timed = True
                rest = (time.perf_counter() - t0) * len(todo) / n_threads
                if rest >= WORKER_START_SECONDS:
                    ex = _executor(workers)
    finally:
        for f in there:
            f.cancel()  # queued batches; running ones finish in their worker
        pool.shutdown(wait=True, cancel_futures=True)


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
