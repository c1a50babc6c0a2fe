"""Sweeps on the real cluster: every trial a Slurm job. The driver as an sbatch job with one trial
scancelled; the driver SIGKILLed mid-sweep and resumed without rerunning a finished trial."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_slurm_prep import REPO, cluster_up, wait_for_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))]

TRIAL = {"executor": "slurm", "cpus_per_task": 1, "time_min": 10}
BUDGET = ["steps=80", "log_every=10", "image_every=1000", "checkpoint_every=40"]  # ~15 s a trial here


def trials(out: Path) -> list[dict]:
    path = out / "trials.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [line for line in lines if "optimizer_state" not in line]  # the last line names the optimizer state


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"not reached in {timeout} s: {what}")


def sacct_jobs(name: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "--name", name, "-S", "now-1hour"],
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()


def test_driver_job_with_a_cancelled_trial(sweep_file, tmp_path: Path) -> None:
    path = sweep_file(name=f"cancel{os.getpid()}", budget=8, num_workers=4, trial=TRIAL, trial_overrides=BUDGET,
                      poll_s=1.0)
    out = tmp_path / "sweep"
    env = {**os.environ, "SWEEP_CONFIG": str(path), "VENV": sys.prefix}
    driver = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", f"--output={tmp_path}/driver-%j.out",
                             "slurm/sweep_driver.sbatch"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=True).stdout.strip().split(";")[0]
    wait_until(lambda: sum(t["status"] == "running" and t["job_id"] is not None for t in trials(out)) == 4, 120,
               "4 trials in flight")
    # The newest trial in flight, once its training has started: it has the longest still to run.
    victim = max((t for t in trials(out) if t["status"] == "running"), key=lambda t: t["submitted"])
    wait_until(lambda: (out / "trials" / f"trial-{victim['trial']:04d}" / "gan.log").is_file(), 60,
               f"trial {victim['trial']} training")
    subprocess.run(["scancel", victim["job_id"]], timeout=30, check=True)
    states = wait_for_jobs([driver], records=1, timeout=400)
    log = (tmp_path / f"driver-{driver}.out").read_text()
    assert states == {driver: "COMPLETED"}, log[-3000:]
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "results.csv").open())}
    assert len(rows) == 8, rows
    assert rows[victim["trial"]]["status"] == "failed" and "CANCELLED" in rows[victim["trial"]]["error"]
    assert [r["status"] for t, r in rows.items() if t != victim["trial"]] == ["completed"] * 7
    assert "best config:" in log and (out / "best_config.yaml").is_file()
    # Each trial was its own Slurm job, and no more than the budget were submitted.
    assert sorted(r["job_id"] for r in rows.values()) == sorted(
        j for j in sacct_jobs(",".join(f"cancel{os.getpid()}-t{i:03d}" for i in range(8))))


def test_driver_killed_and_resumed_reruns_no_finished_trial(sweep_file, tmp_path: Path) -> None:
    name = f"resume{os.getpid()}"
    path = sweep_file(name=name, budget=8, num_workers=4, trial=TRIAL, trial_overrides=BUDGET, poll_s=1.0)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "kssgan_hpc.cli.main", "sweep", "--config", str(path)]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: sum(t["status"] == "completed" for t in trials(out)) >= 2
                   and any(t["status"] == "running" for t in trials(out)), 240, "2 trials done, others in flight")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    before = {t["trial"]: t for t in trials(out)}
    done_before = {i: t["job_id"] for i, t in before.items() if t["status"] == "completed"}
    in_flight = {i: t["job_id"] for i, t in before.items() if t["status"] == "running"}
    assert done_before and in_flight
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = {t["trial"]: t for t in trials(out)}
    assert sorted(after) == list(range(8)) and all(t["status"] == "completed" for t in after.values())
    # Finished trials kept their jobs and results; trials in flight were re-attached, not resubmitted.
    assert all(after[i]["job_id"] == job and after[i]["objective"] == before[i]["objective"]
               for i, job in done_before.items())
    assert all(after[i]["job_id"] == job for i, job in in_flight.items())
    assert all(t["submissions"] == 1 for t in after.values())
    submitted = sacct_jobs(",".join(f"{name}-t{i:03d}" for i in range(8)))
    assert sorted(submitted) == sorted(t["job_id"] for t in after.values())  # 8 jobs, none twice
    # No trial's run started over: its logged steps never go back.
    for trial in after.values():
        steps = [json.loads(line)["step"] for line in
                 (out / "trials" / f"trial-{trial['trial']:04d}" / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps), (trial["trial"], steps)


def test_a_job_submitted_but_not_recorded_is_found_by_its_name(tmp_path: Path) -> None:
    """The driver killed between sbatch and writing the job id: --resume finds the job by its
    unique name (submitted after the trial was asked) instead of submitting it twice."""
    from kssgan_hpc.config import load_config
    from kssgan_hpc.config.launch import JobConfig
    from kssgan_hpc.launch.submit import find_submitted

    name, asked = f"found{os.getpid()}-t003", time.time() - 1
    job = subprocess.run(["sbatch", "--parsable", "--job-name", name, f"--output={tmp_path}/%j.out", "--wrap",
                          "sleep 60"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    try:
        slurm = load_config(JobConfig, overrides=["executor=slurm"])
        assert find_submitted(slurm, name, asked) == job
        assert find_submitted(slurm, name + "x", asked) is None
        assert find_submitted(load_config(JobConfig, overrides=["executor=local"]), name, asked) is None
    finally:
        subprocess.run(["scancel", job], timeout=30)
