"""The thread route of a cold run: the package's batched engines in threads of this process.

A run that finds no loky workers running computes the batches of the batched REML and
Laplace engines in a pool of threads (planning/executors.py). These tests check that the
route is taken only for those engines, that it gives the same records bit for bit as the
serial run, loky's workers and the two mixed (threads while the workers start), that
BLAS stays pinned to one thread in every thread and is restored afterwards, that the
warning filters are left as they were, and that Ctrl-C, progress and checkpoints behave
as in the serial route.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import alliance_models as am
from alliance_models.planning import executors
from alliance_models.planning import run as engine

DESIGN = am.Design(therapists=8, patients_per_therapist=4, sessions=3, dropout=0.2,
                   effects={"alliance": 0.3, "alliance:autonomy": 0.2})
FORMULA = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
KW = {"test": "alliance:autonomy", "n_sims": 60, "seed": 12, "batch_size": 10,
      "progress": False}
SLOPE = am.Design(therapists=10, patients_per_therapist=4, sessions=4,
                  alliance_slope_sd=0.2, effects={"alliance": 0.3})
SLOPE_FORMULA = ("adherence ~ alliance + (1 + alliance | therapist) "
                 "+ (1 | therapist:patient)")
BINOMIAL = am.Design(therapists=10, patients_per_therapist=4, sessions=3,
                     family="binomial", counts="attendance", trials=8,
                     effects={"alliance": 0.3})
BINOMIAL_FORMULA = "attended ~ alliance + (1 | therapist/patient)"

POOL = "alliance_models"  # the name prefix of the route's threads
RUNNING = executors._running_executor  # the real check (the fixture replaces it)


def _blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def _pool_threads():
    return [t for t in threading.enumerate() if t.name.startswith(POOL)]


@pytest.fixture
def cold(monkeypatch):
    """No loky workers running (as at the start of a session), whatever ran before."""
    monkeypatch.setattr(executors, "_running_executor", lambda workers: None)
    return monkeypatch


@pytest.fixture
def where(monkeypatch):
    """Record (thread name, pid, BLAS threads) of every batch run in this process."""
    seen: list[tuple[str, int, frozenset]] = []
    real = engine.run_batch

    def spy(job, reps, seeds):
        out = real(job, reps, seeds)
        seen.append((threading.current_thread().name, os.getpid(),
                     frozenset(_blas_threads())))
        return out

    monkeypatch.setattr(engine, "run_batch", spy)
    return seen


@pytest.mark.parametrize("design, formula, test", [
    (DESIGN, FORMULA, "alliance:autonomy"),
    (BINOMIAL, BINOMIAL_FORMULA, "alliance"),
], ids=["intercepts", "binomial"])
def test_cold_run_computes_batched_engines_in_threads_bit_for_bit(cold, where, design,
                                                                  formula, test):
    kw = {**KW, "test": test}
    serial = am.power(design, formula, n_jobs=1, **kw)
    assert serial.method == "fast"
    assert {name for name, _, _ in where} == {"MainThread"}
    where.clear()
    before = _blas_threads()
    filters = list(warnings.filters)
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))  # threads only
    threaded = am.power(design, formula, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(serial.replicates, threaded.replicates, check_exact=True)
    assert threaded.power == serial.power
    names = [name for name, _, _ in where]
    assert len(names) == 6 and all(n.startswith(POOL) for n in names)
    assert len(set(names)) == 2  # both threads worked (6 batches for 2 threads)
    assert {pid for _, pid, _ in where} == {os.getpid()}
    assert all(b == {1} for _, _, b in where)  # BLAS pinned inside every thread
    assert _blas_threads() == before  # and restored after the run
    assert warnings.filters == filters
    assert not _pool_threads()  # the pool is shut down with the run


def test_threads_then_loky_workers_and_warm_workers_give_the_same_records(cold, where):
    serial = am.power(DESIGN, FORMULA, n_jobs=1, **KW)
    # told that the rest is long, the run starts loky's workers after its first threaded
    # batch; the threads compute until a worker returns a batch: the same records
    cold.setattr(executors, "WORKER_START_SECONDS", 0.0)
    mixed = am.power(DESIGN, FORMULA, n_jobs=2, **KW)
    pd.testing.assert_frame_equal(serial.replicates, mixed.replicates, check_exact=True)
    assert any(name.startswith(POOL) for name, _, _ in where)
    cold.setattr(executors, "_running_executor", RUNNING)
    # with the workers running, every batch goes to them (not to threads)
    assert executors._running_executor(2) is not None
    where.clear()
    warm = am.power(DESIGN, FORMULA, n_jobs=2, **KW)
    pd.testing.assert_frame_equal(serial.replicates, warm.replicates, check_exact=True)
    assert where == []  # the spy runs (and records) in the worker processes only


def test_random_slope_engine_stays_on_the_calling_thread(cold, where):
    # measured without gain in 2 threads: its cold run keeps to one thread
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    serial = am.power(SLOPE, SLOPE_FORMULA, n_jobs=1, **{**KW, "test": "alliance"})
    pooled = am.power(SLOPE, SLOPE_FORMULA, n_jobs=2, **{**KW, "test": "alliance"})
    assert pooled.method == "fast"
    pd.testing.assert_frame_equal(serial.replicates, pooled.replicates, check_exact=True)
    assert {name for name, _, _ in where} == {"MainThread"}


def counting_ols(formula, data, **kwargs):
    """A user's fitting function: not known to be thread-safe."""
    return am.fit_ols(formula, data, hc=None)


@pytest.mark.parametrize("method, fit_kwargs", [
    (counting_ols, {}), ("mixed", {}), ("ols", {"hc": None})])
def test_other_fits_stay_on_the_calling_thread(cold, where, method, fit_kwargs):
    d = am.Design(therapists=6, patients_per_therapist=3, sessions=2,
                  effects={"alliance": 0.3})
    f = "adherence ~ alliance + (1 | therapist)" if method == "mixed" else (
        "adherence ~ alliance")
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    res = am.power(d, f, test="alliance", n_sims=6, batch_size=2, seed=1, method=method,
                   n_jobs=2, progress=False, fit_kwargs=fit_kwargs)
    assert res.n_completed == 6
    assert [name for name, _, _ in where] == ["MainThread"] * 3


def test_replicate_fallback_in_threads_keeps_warning_filters(cold, where):
    # the stacked call fails and the formulaic per-replicate fallback (which silences
    # warnings with catch_warnings) runs in both threads at once: the same records as
    # the serial stacked run, and the process's warning filters as they were
    serial = am.power(DESIGN, FORMULA, n_jobs=1, **KW).replicates
    where.clear()

    def no_stack(*args, **kwargs):
        raise am.errors.ModelSpecError("no stacking in this test")

    cold.setattr(engine, "_stacked_cap", lambda *args: 10)  # decided before the fallback
    cold.setattr(engine, "batch_sums", no_stack)
    cold.setattr(engine, "design_matrix", lambda *args, **kwargs: None)
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    filters = list(warnings.filters)
    threaded = am.power(DESIGN, FORMULA, n_jobs=2, **{**KW, "batch_size": 5})
    assert warnings.filters == filters
    assert all(name.startswith(POOL) for name, _, _ in where) and len(where) == 12
    pd.testing.assert_frame_equal(serial, threaded.replicates, check_exact=False, rtol=1e-8)


def test_ctrl_c_in_thread_route_returns_partial_result_and_resumes(cold, tmp_path):
    ck = tmp_path / "run.parquet"
    full = am.power(DESIGN, FORMULA, n_jobs=1, **KW)
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    real = engine._with_progress

    def ctrl_c_after_second(stream, *args, **kwargs):
        batches = real(stream, *args, **kwargs)
        yield next(batches)
        yield next(batches)
        raise KeyboardInterrupt  # as Ctrl-C while the third batch is awaited

    cold.setattr(engine, "_with_progress", ctrl_c_after_second)
    with pytest.warns(am.AllianceModelsWarning,
                      match=r"interrupted after 20 of 60 replicates.*rerun to resume"):
        part = am.power(DESIGN, FORMULA, n_jobs=2, checkpoint=ck, **KW)
    assert part.interrupted and part.n_completed == 20
    assert not _pool_threads()  # no thread left computing
    saved = pd.read_parquet(ck).sort_values("rep").reset_index(drop=True)
    pd.testing.assert_frame_equal(saved.drop(columns="fingerprint"), part.replicates,
                                  check_exact=True, check_dtype=False)
    cold.setattr(engine, "_with_progress", real)
    resumed = am.power(DESIGN, FORMULA, n_jobs=2, checkpoint=ck, **KW)
    assert not resumed.interrupted
    pd.testing.assert_frame_equal(resumed.replicates, full.replicates, check_exact=True)


def test_progress_bar_in_thread_route(cold, where, capsys):
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    am.power(DESIGN, FORMULA, n_jobs=2, **{**KW, "progress": True})
    assert "power alliance:autonomy" in capsys.readouterr().err
    assert all(name.startswith(POOL) for name, _, _ in where)


def test_an_error_in_a_thread_reaches_the_caller_and_stops_the_pool(cold, monkeypatch):
    real = engine.run_batch

    def broken(job, reps, seeds):
        if reps[0] == 20:
            raise RuntimeError("a bug in this batch")
        return real(job, reps, seeds)

    monkeypatch.setattr(engine, "run_batch", broken)
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    with pytest.raises(RuntimeError, match="a bug in this batch"):
        am.power(DESIGN, FORMULA, n_jobs=2, **KW)
    assert not _pool_threads()


def _square_batch(reps, seeds):
    time.sleep(0.01)
    return pd.DataFrame({"rep": np.asarray(reps, dtype=np.int64),
                         "value": np.asarray(reps, dtype=float) ** 2})


def test_threaded_scheduler_yields_every_batch_once(cold):
    batches = [(list(range(i, i + 3)), [None] * 3) for i in range(0, 30, 3)]
    cold.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    got = list(executors.execute(_square_batch, batches, 2, "loky", threads=True))
    reps = sorted(r for part in got for r in part["rep"])
    assert len(got) == 10 and reps == list(range(30))
    # a single worker, or a task not marked thread-safe: the calling thread
    names: list[str] = []

    def named(reps, seeds):
        names.append(threading.current_thread().name)
        return _square_batch(reps, seeds)

    list(executors.execute(named, batches, 1, "loky", threads=True))
    list(executors.execute(named, batches, 2, "loky", threads=False))
    assert set(names) == {threading.current_thread().name}


def test_limit_blas_nested_and_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    before = _blas_threads()
    with executors.limit_blas():
        with executors.limit_blas():  # nested: still pinned, nothing restored early
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
        with ThreadPoolExecutor(2) as pool:  # other threads' blocks leave the pin alone
            inside = list(pool.map(lambda _: _in_block(), range(4)))
        assert inside == [{1}] * 4 and _blas_threads() == {1}
    assert _blas_threads() == before


def _in_block():
    with executors.limit_blas():
        return _blas_threads()


CHILD = textwrap.dedent("""
    import sys
    import threading

    import alliance_models as am
    from alliance_models.planning import executors
    from alliance_models.planning import run as engine

    CK, LOG, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
    executors.WORKER_START_SECONDS = float("inf")  # the thread route only
    real = engine.run_batch


    def logged(job, reps, seeds):
        out = real(job, reps, seeds)
        with open(LOG, "a") as fh:
            fh.write(threading.current_thread().name + "\\n")
        return out


    engine.run_batch = logged
    if __name__ == "__main__":
        d = am.Design(therapists=30, patients_per_therapist=8, sessions=6,
                      effects={"alliance": 0.3, "alliance:autonomy": 0.1})
        res = am.power(d, "adherence ~ alliance * autonomy + (1 | therapist/patient)",
                       test="alliance:autonomy", n_sims=20000, seed=5, batch_size=50,
                       n_jobs=2, checkpoint=CK, progress=False)
        res.replicates.to_parquet(OUT)
        print("RESULT", res.interrupted, res.n_completed,
              len([t for t in threading.enumerate() if t.name.startswith("alliance")]),
              flush=True)
""")


def _rows(path):
    try:
        return len(pd.read_parquet(path))
    except Exception:  # noqa: BLE001 - not written yet, or mid-write
        return 0


def test_sigint_during_thread_route_returns_partial_result(tmp_path):
    # a real Ctrl-C (SIGINT to the process) while the threads compute: the child returns
    # the partial result it saved, with no thread left running
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ck, log, out = tmp_path / "run.parquet", tmp_path / "threads.log", tmp_path / "out.pq"
    proc = subprocess.Popen([sys.executable, str(script), str(ck), str(log), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _rows(ck) < 100 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    tag, interrupted, k, alive = stdout.split()
    assert (tag, interrupted, alive) == ("RESULT", "True", "0")
    assert 100 <= int(k) < 20000 and "interrupted after" in stderr
    saved = pd.read_parquet(ck)
    assert sorted(pd.read_parquet(out)["rep"]) == sorted(saved["rep"])
    names = set(log.read_text().split())
    assert names and all(n.startswith(POOL) for n in names)


def test_cold_thread_route_does_not_import_joblib():
    # a short first run of a session in threads: no parallel_config can be active and no
    # loky worker can run before joblib is imported, so the route does not import it
    # (tens of milliseconds); a fresh process, where nothing imported joblib before
    code = textwrap.dedent(f"""
        import sys, threading
        import alliance_models as am
        d = am.Design(therapists=8, patients_per_therapist=4, sessions=3,
                      effects={{"alliance": 0.3}})
        seen = []
        orig = threading.Thread.start
        def start(self):
            seen.append(self.name)
            return orig(self)
        threading.Thread.start = start
        am.power(d, "adherence ~ alliance + (1 | therapist/patient)", test="alliance",
                 n_sims=400, seed=1, n_jobs=2, progress=False)
        print(any(n.startswith({POOL!r}) for n in seen),
              "joblib.parallel" in sys.modules,
              "joblib.externals.loky.reusable_executor" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr
