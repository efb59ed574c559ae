"""A real Ctrl-C: SIGINT to a running power run, partial result, checkpoint and resume.

A child process runs ``am.power`` with a checkpoint and a deliberately slow fitting
function that logs every fit to a file. When the checkpoint holds some replicates the
test sends SIGINT (to the whole process group for the worker-pool case, as a terminal
does). The child must return the partial result (interrupted, its replicates equal to
those saved) and exit normally; a rerun must fit exactly the missing replicates and give
the same replicates as an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

import alliance_models as am
from alliance_models.planning.results import wilson_interval

N_SIMS = 60
DESIGN = am.Design(therapists=60, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                   icc_patient=0.0, moderators={}, effects={"alliance": 0.3})

CHILD = textwrap.dedent(f"""
    import os
    import sys
    import time

    import alliance_models as am

    CK, LOG, N_JOBS, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


    def slow_ols(formula, data, **kwargs):
        time.sleep(0.05)
        with open(LOG, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        return am.fit_ols(formula, data, hc=None)


    if __name__ == "__main__":
        if N_JOBS > 1:  # workers already running, as after an earlier run of the session
            from joblib import Parallel, delayed

            Parallel(n_jobs=N_JOBS)(delayed(abs)(-i) for i in range(N_JOBS))
        d = am.Design(therapists=60, patients_per_therapist=1, sessions=1, icc_therapist=0.0,
                      icc_patient=0.0, moderators={{}}, effects={{"alliance": 0.3}})
        res = am.power(d, "adherence ~ alliance", test="alliance", n_sims={N_SIMS}, seed=5,
                       batch_size=4, method=slow_ols, n_jobs=N_JOBS, checkpoint=CK,
                       progress=False)
        res.replicates.to_csv(OUT, index=False)
        print("RESULT", res.interrupted, res.n_completed, res.ci[0], res.ci[1], flush=True)
""")


def _rows(path):
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.parametrize(
    "n_jobs",
    [1, pytest.param(2, marks=pytest.mark.slow)],  # 2: loky workers get the SIGINT too
)
def test_sigint_returns_partial_result_and_rerun_resumes(tmp_path, n_jobs):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ck, log, out = tmp_path / "run.csv", tmp_path / "fits.log", tmp_path / "reps.csv"
    args = [sys.executable, str(script), str(ck), str(log), str(n_jobs), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while _rows(ck) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    if n_jobs == 1:
        os.kill(proc.pid, signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    tag, interrupted, k, lo, hi = stdout.split()
    k = int(k)
    saved = pd.read_csv(ck)
    assert tag == "RESULT" and interrupted == "True"
    assert 8 <= k < N_SIMS and k == len(saved)  # the partial result is what was saved
    assert f"interrupted after {k} of {N_SIMS} replicates" in stderr
    assert "tasks which were still being processed" not in stderr  # no joblib noise
    partial = pd.read_csv(out)
    assert sorted(partial["rep"]) == sorted(saved["rep"])
    # the honest CI: Wilson over the k completed replicates
    want = wilson_interval(int(partial["reject"].sum()), k)
    assert (float(lo), float(hi)) == pytest.approx(want, abs=1e-12)
    fits_before = len(log.read_text().split())
    if n_jobs > 1:  # the replicates really ran in worker processes
        assert set(log.read_text().split()) - {str(proc.pid)}

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split()[:3] == ["RESULT", "False", str(N_SIMS)]
    assert len(log.read_text().split()) - fits_before == N_SIMS - k  # nothing repeated
    resumed = pd.read_csv(out)
    full = am.power(DESIGN, "adherence ~ alliance", test="alliance", n_sims=N_SIMS, seed=5,
                    method="ols", fit_kwargs={"hc": None}, n_jobs=1, progress=False)
    ref = full.replicates.assign(error=full.replicates["error"].replace("", float("nan")))
    pd.testing.assert_frame_equal(resumed, ref, check_exact=False, rtol=1e-12,
                                  check_dtype=False)
