"""Sweeps on the real cluster: every trial a Slurm job. The driver as an sbatch job with one trial
scancelled, its one-node trials spread over both nodes; the driver job SIGKILLed mid-sweep while its
two-node trials run, then requeued: it resumes without rerunning or resubmitting any trial."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_slurm_prep import REPO, cluster_up, job_processes, nodes_up, wait_for_jobs, wait_out_of_queue

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


def job_nodes(job: str) -> str:
    return subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", job], capture_output=True, text=True,
                          timeout=30).stdout.split()[-1]


def submit_driver(path: Path, tmp_path: Path) -> str:
    env = {**os.environ, "SWEEP_CONFIG": str(path), "VENV": sys.prefix}
    return subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", f"--output={tmp_path}/driver-%j.out",
                           "slurm/sweep_driver.sbatch"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip().split(";")[0]


def test_driver_job_with_a_cancelled_trial(sweep_file, tmp_path: Path) -> None:
    path = sweep_file(name=f"cancel{os.getpid()}", budget=8, num_workers=4, trial=TRIAL, trial_overrides=BUDGET,
                      poll_s=1.0)
    out = tmp_path / "sweep"
    driver = submit_driver(path, tmp_path)
    wait_until(lambda: sum(t["status"] == "running" and t["job_id"] is not None for t in trials(out)) == 4, 600,
               "4 trials in flight")
    # The newest trial in flight, once its training has started: it has the longest still to run.
    victim = max((t for t in trials(out) if t["status"] == "running"), key=lambda t: t["submitted"])
    wait_until(lambda: (out / "trials" / f"trial-{victim['trial']:04d}" / "gan.log").is_file(), 600,
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
    if nodes_up() >= 2:  # one-node trials spread over both nodes
        assert {job_nodes(r["job_id"]) for r in rows.values()} == {"n1", "n2"}


def test_driver_killed_and_resumed_reruns_no_finished_trial(sweep_file, tmp_path: Path) -> None:
    """The driver is a Slurm job on one node; its trials span two nodes (where the cluster has them)."""
    name, nodes = f"resume{os.getpid()}", min(nodes_up(), 2)
    trial = {**TRIAL, "nodes": nodes, "tasks_per_node": 1}
    path = sweep_file(name=name, budget=8, num_workers=4, trial=trial, trial_overrides=BUDGET, poll_s=1.0)
    out = tmp_path / "sweep"
    driver = submit_driver(path, tmp_path)
    wait_until(lambda: sum(t["status"] == "completed" for t in trials(out)) >= 2
               and any(t["status"] == "running" for t in trials(out)), 300, "2 trials done, others in flight")
    killed = job_processes(driver)
    assert killed, f"no process of driver job {driver}"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert wait_for_jobs([driver], records=1, timeout=120) == {driver: "FAILED"}
    before = {t["trial"]: t for t in trials(out)}
    done_before = {i: t["job_id"] for i, t in before.items() if t["status"] == "completed"}
    in_flight = {i: t["job_id"] for i, t in before.items() if t["status"] == "running"}
    assert done_before and in_flight
    # Resumed as a user would: requeue the driver job (its script always passes --resume).
    subprocess.run(["scontrol", "requeue", driver], timeout=30, check=True)
    wait_out_of_queue([driver], timeout=600)
    log = (tmp_path / f"driver-{driver}.out").read_text()
    assert wait_for_jobs([driver], records=1, timeout=120) == {driver: "COMPLETED"}, log[-3000:]
    after = {t["trial"]: t for t in trials(out)}
    assert sorted(after) == list(range(8)) and all(t["status"] == "completed" for t in after.values())
    # Finished trials kept their jobs and results; trials in flight were re-attached, not resubmitted.
    assert all(after[i]["job_id"] == job and after[i]["objective"] == before[i]["objective"]
               for i, job in done_before.items())
    assert all(after[i]["job_id"] == job for i, job in in_flight.items())
    assert all(t["submissions"] == 1 for t in after.values())
    submitted = sacct_jobs(",".join(f"{name}-t{i:03d}" for i in range(8)))
    assert sorted(submitted) == sorted(t["job_id"] for t in after.values())  # 8 jobs, none twice
    for trial in after.values():
        run = out / "trials" / f"trial-{trial['trial']:04d}"
        # No trial's run started over: its logged steps never go back.
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps), (trial["trial"], steps)
        assert json.loads((run / "run.json").read_text())["world_size"] == nodes
        if nodes == 2:
            assert job_nodes(trial["job_id"]) == "n[1-2]", trial


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


def test_a_job_without_its_pickled_task_is_cancelled_and_its_trial_resubmitted(sweep_file, tmp_path: Path) -> None:
    """The driver killed after sbatch but before submitit moved the pickled task into the job's folder:
    that job can never run it. --resume finds the job by its name, cancels it and submits the trial
    again; the trial completes and is not counted as a failure."""
    from kssgan_hpc.config import load_config
    from kssgan_hpc.config.sweep import SweepConfig
    from kssgan_hpc.sweep.driver import Sweep, Trial
    from kssgan_hpc.sweep.space import plain

    path = sweep_file(name=f"orphan{os.getpid()}", budget=1, num_workers=1, trial=TRIAL, trial_overrides=BUDGET)
    cfg = load_config(SweepConfig, path)
    first = Sweep(cfg)
    first._open(resume=False)
    # What the driver had done when it died: the trial asked and saved; its job submitted by sbatch,
    # with the trial's name, but no pickled task in the job's folder and no job id recorded.
    candidate = first.optimizer.ask()
    trial = Trial(trial=0, params=plain(candidate.value), asked=time.time() - 1)
    first.trials.append(trial)
    first.pending[0] = candidate
    first.save()
    first.tb.close()
    orphan = subprocess.run(["sbatch", "--parsable", "--job-name", first._job_name(trial), "--begin=now+600",
                             f"--output={tmp_path}/%j.out", "--wrap", "sleep 600"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    try:
        best = Sweep(cfg).run(resume=True)
    finally:
        subprocess.run(["scancel", orphan], timeout=30)
    after = trials(Path(cfg.out))
    assert best is not None and after[0]["status"] == "completed" and after[0]["submissions"] == 2, after
    assert after[0]["job_id"] != orphan
    assert wait_for_jobs([orphan], records=1, timeout=120) == {orphan: "CANCELLED"}
