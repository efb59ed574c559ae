"""The Dask backend gives the same replicates as the local run (real LocalCluster)."""

import warnings

import pandas as pd
import pytest

import alliance_models as am

distributed = pytest.importorskip("distributed")

DESIGN = am.Design(therapists=30, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                   icc_patient=0.0, moderators={}, effects={"alliance": 0.3})
KW = {"test": "alliance", "n_sims": 24, "seed": 17, "batch_size": 5, "method": "ols",
      "fit_kwargs": {"hc": None}, "progress": False}


@pytest.fixture(scope="module")
def client():
    # processes=True as on a real cluster; pytest imports this module (no __main__ issue
    # with the Nanny). Start-up/teardown chatter is not what these tests check.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None)
        cl = distributed.Client(cluster)
    try:
        yield cl
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cl.close()
            cluster.close()


def test_dask_client_equals_local_run(client):
    local = am.power(DESIGN, "adherence ~ alliance", n_jobs=1, **KW)
    with distributed.get_task_stream(client) as stream:
        remote = am.power(DESIGN, "adherence ~ alliance", backend=client, **KW)
    assert remote.n_completed == 24
    pd.testing.assert_frame_equal(local.replicates, remote.replicates)
    assert remote.power == local.power and remote.ci == local.ci
    # the work really ran on the cluster's two worker processes: 24 replicates in
    # batches of 5 are 5 tasks, each executed by one of the cluster's workers
    workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    tasks = [t for t in stream.data if str(t["key"]).startswith("run_batch")]
    assert len(tasks) == 5 and {t["worker"] for t in tasks} <= workers


def test_backend_string_uses_the_current_client(client):
    local = am.power(DESIGN, "adherence ~ alliance", n_jobs=1, **KW)
    res = am.power(DESIGN, "adherence ~ alliance", backend="dask", **KW)
    pd.testing.assert_frame_equal(local.replicates, res.replicates)


def test_dask_run_writes_checkpoint(client, tmp_path):
    ck = tmp_path / "dask.parquet"
    res = am.power(DESIGN, "adherence ~ alliance", backend=client, checkpoint=ck, **KW)
    saved = pd.read_parquet(ck).sort_values("rep").reset_index(drop=True)
    pd.testing.assert_series_equal(saved["estimate"], res.replicates["estimate"])


def test_dask_fast_engine_equals_local(client, monkeypatch):
    # bit for bit: the serial run, the thread route of a cold local run, and the cluster
    from alliance_models.planning import executors

    d = am.Design(therapists=10, patients_per_therapist=4, sessions=3, dropout=0.2,
                  effects={"alliance": 0.3, "alliance:autonomy": 0.1})
    kw = {"test": "alliance:autonomy", "n_sims": 30, "seed": 3, "batch_size": 10,
          "progress": False}
    formula = "adherence ~ alliance * autonomy + (1 | therapist/patient)"
    local = am.power(d, formula, n_jobs=1, **kw)
    remote = am.power(d, formula, backend=client, **kw)
    assert local.method == remote.method == "fast"
    pd.testing.assert_frame_equal(local.replicates, remote.replicates, check_exact=True)
    monkeypatch.setattr(executors, "_running_executor", lambda workers: None)
    monkeypatch.setattr(executors, "WORKER_START_SECONDS", float("inf"))
    threaded = am.power(d, formula, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(threaded.replicates, remote.replicates, check_exact=True)


def test_dask_interrupted_run_returns_partial_result(client, monkeypatch):
    from alliance_models.planning import run

    real = run._with_progress

    def ctrl_c_after_first(stream, *args, **kwargs):
        batches = real(stream, *args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt  # as Ctrl-C while the second batch is awaited

    monkeypatch.setattr(run, "_with_progress", ctrl_c_after_first)
    with pytest.warns(am.AllianceModelsWarning, match="interrupted after 5 of 24 replicates"):
        res = am.power(DESIGN, "adherence ~ alliance", backend=client, **KW)
    assert res.interrupted and res.n_completed == 5
    monkeypatch.setattr(run, "_with_progress", real)
    # the cluster is still usable afterwards
    again = am.power(DESIGN, "adherence ~ alliance", backend=client, **KW)
    assert again.n_completed == 24


@pytest.mark.slow
def test_backend_dask_without_a_client_starts_and_closes_its_own_cluster(tmp_path):
    # a script as a user writes it: no client, backend="dask", under a __main__ guard
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "reps.csv"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import warnings

        import alliance_models as am
        from distributed import get_client

        if __name__ == "__main__":
            d = am.Design(therapists=30, patients_per_therapist=1, sessions=1,
                          icc_therapist=0.0, icc_patient=0.0, moderators={{}},
                          effects={{"alliance": 0.3}})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dashboard-port notes on a shared machine
                res = am.power(d, "adherence ~ alliance", test="alliance", n_sims=24,
                               seed=17, batch_size=5, method="ols", fit_kwargs={{"hc": None}},
                               progress=False, backend="dask")
            res.replicates.to_csv({str(out)!r}, index=False)
            try:
                get_client()
                print("client still open")
            except ValueError:
                print("closed")
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["closed"]
    local = am.power(DESIGN, "adherence ~ alliance", n_jobs=1, **KW).replicates
    remote = pd.read_csv(out)
    pd.testing.assert_series_equal(remote["estimate"], local["estimate"], check_exact=False,
                                   rtol=1e-12)
    assert remote["reject"].tolist() == local["reject"].tolist()
