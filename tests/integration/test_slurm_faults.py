"""A node dies mid-run on the real 2-node cluster: every training process on one node is SIGKILLed
between two checkpoints, and the run must come back by itself from its last complete checkpoint with
nothing lost or repeated.

Three jobs of the same run run side by side: the reference (slurm/train.sbatch, never touched);
`kssgan submit` (submitit, one task per rank) losing node n2, where a surviving rank requeues the job;
and slurm/train.sbatch (one torchrun per node) losing node n1, the node of its batch script, where
the script runs the failed step again. Each faulted run must end COMPLETED with the reference's
steps, losses and weights, and no process of any of them may be left on either node.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_slurm_prep import REPO, cluster_up, job_processes, nodes_up, wait_for_jobs, wait_out_of_queue

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up())),
              pytest.mark.skipif(nodes_up() < 2, reason="needs a 2-node cluster (scripts/slurm_cluster.sh start 2)")]

STEPS, CHECKPOINT_EVERY, HOLD_AT = 200, 50, 130
"""The faulted runs hold at step HOLD_AT (after logging steps 110-130, past the checkpoint at 100)
until their node is killed, so the resumed run must drop and redo exactly steps 101-130."""
RUN = ["identities_per_batch=4", "images_per_identity=2", "eval_every=100000", f"checkpoint_every={CHECKPOINT_EVERY}",
       "log_every=10", "model.siamese_width=8", "model.max_width=32", "workers=0", "keep_checkpoints=10",
       "engine.backend=accelerate", "engine.precision=fp32", f"steps={STEPS}"]
TIMING = ("speed/", "memory/")
"""Metrics that measure the machine, not the run: left out of the comparison."""


def wait_for_line(path: Path, pattern: str, job: str, timeout: float = 600) -> None:
    """Wait for a line of the run's log (bounded; fails early if the job left the queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and re.search(pattern, path.read_text()):
            return
        if not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30).stdout.strip():
            raise AssertionError(f"job {job} ended before {pattern!r} appeared in {path}")
        time.sleep(0.5)
    raise TimeoutError(f"{pattern!r} not in {path} after {timeout} s")


def sbatch(tmp_path: Path, name: str, train_args: str, env: dict[str, str]) -> str:
    env = {**os.environ, **env, "STAGE": "siamese", "VENV": sys.prefix, "PROCS_PER_NODE": "1", "TRAIN_ARGS": train_args}
    return subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", "--nodes=2", "--ntasks-per-node=1",
                           "--cpus-per-task=1", "--time=15", f"--output={tmp_path}/{name}-%j.out", "slurm/train.sbatch"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip().split(";")[0]


def metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_node_dies_and_the_run_comes_back_with_nothing_lost_or_repeated(demo_data: Path, tmp_path: Path) -> None:
    data = f"data={demo_data}"
    reference, submitted, templated = tmp_path / "reference", tmp_path / "submit", tmp_path / "sbatch"
    jobs = {"reference": sbatch(tmp_path, "reference", " ".join([data, f"out={reference}", *RUN]), {})}
    hold = {"KSSGAN_TEST_HOLD_AT_STEP": str(HOLD_AT)}
    jobs["sbatch"] = sbatch(tmp_path, "sbatch", " ".join([data, f"out={templated}", *RUN]), hold)
    proc = subprocess.run([sys.executable, "-m", "kssgan_hpc.cli.main", "submit", "train", "siamese",
                           "--folder", str(tmp_path / "submitit"), "--nodes", "2", "--tasks-per-node", "1",
                           "--cpus-per-task", "1", "--time-min", "15", "--max-restarts", "2", data,
                           f"out={submitted}", *RUN], env={**os.environ, **hold}, capture_output=True, text=True,
                          timeout=120, check=True)
    jobs["submit"] = re.search(r"as job (\d+)", proc.stdout).group(1)

    # Each faulted run holds at step HOLD_AT; then one node's training processes die at once.
    for name, out, node in (("submit", submitted, "n2"), ("sbatch", templated, "n1")):
        wait_for_line(out / "siamese.log", f"holding at step {HOLD_AT}", jobs[name])
        victims = job_processes(jobs[name], node)
        assert victims, f"{name}: no training process of job {jobs[name]} on {node}"
        for pid in victims:
            os.kill(pid, 9)

    # A requeued job waits 2 minutes (BeginTime) before it may start: start it now.
    wait_out_of_queue(list(jobs.values()), timeout=900)
    states = wait_for_jobs(list(jobs.values()), records=3, timeout=120)
    logs = {name: "\n".join(p.read_text() for p in tmp_path.glob(f"{name}-*.out")) for name in ("reference", "sbatch")}
    assert set(states.values()) == {"COMPLETED"}, (states, logs["sbatch"][-3000:])

    # What the user sees: why each job restarted, and from where.
    resumed_from = f"step-{HOLD_AT // CHECKPOINT_EVERY * CHECKPOINT_EVERY:08d}"
    records = [json.loads(p.read_text()) for p in (tmp_path / "submitit").glob("*/restarts/*.json")]
    assert len(records) == 1 and records[0]["resumes_from"] == resumed_from, records
    assert "on n1" in records[0]["failed"] and "Connection" in records[0]["error"], records
    assert "restart 1 of 2 from the last complete checkpoint" in logs["sbatch"], logs["sbatch"][-3000:]
    for out in (submitted, templated):
        log = (out / "siamese.log").read_text()
        assert re.findall(r"resumed from \S+/(step-\d+)", log) == [resumed_from], log[-3000:]
        assert f"dropped {(HOLD_AT % CHECKPOINT_EVERY) // 10} line(s) logged after step" in log, log[-3000:]

    # Nothing lost or repeated: the same steps, losses and weights as the run that never failed.
    expected = metrics(reference)
    logged = [m["step"] for m in expected if "loss/contrastive" in m]
    assert logged == list(range(10, STEPS + 1, 10))
    reference_events = EventAccumulator(str(reference / "tensorboard"))
    reference_events.Reload()
    final = f"checkpoints/step-{STEPS:08d}/siamese.safetensors"
    for out in (submitted, templated):
        assert metrics(out) == expected, out.name
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        for tag in ("loss/contrastive", "grad_norm"):
            seen = [(e.step, e.value) for e in events.Scalars(tag)]
            assert seen == [(e.step, e.value) for e in reference_events.Scalars(tag)], (out.name, tag)
        weights, reference_weights = load_file(out / final), load_file(reference / final)
        assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights), out.name

    # No process of any job is left on either node.
    assert not [pid for job in jobs.values() for pid in job_processes(job)]


@pytest.mark.parametrize("template", ["train.sbatch", "train_tasks.sbatch"])
def test_a_segfault_ends_the_job_and_a_failure_is_rerun(template: str, tmp_path: Path) -> None:
    """A step that segfaults (rc 139: HDF5 once did on a full disk) would crash the same way again: the
    template ends the job. A step that failed otherwise (exit 1) runs again, MAX_RESTARTS times. The
    training command is a stand-in that records each start and then fails."""
    jobs = {}
    for how in ("segfault", "exit 1"):
        venv = tmp_path / how.replace(" ", "-")
        (venv / "bin").mkdir(parents=True)
        fail = "kill -SEGV $$" if how == "segfault" else "exit 1"
        for command in ("kssgan", "torchrun"):
            script = venv / "bin" / command
            script.write_text(f"#!/usr/bin/env bash\necho start >> {venv}/starts\n{fail}\n")
            script.chmod(0o755)
        env = {**os.environ, "STAGE": "siamese", "VENV": str(venv), "TRAIN_ARGS": "data=x", "MAX_RESTARTS": "2"}
        jobs[how] = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", "--nodes=1", "--ntasks-per-node=1",
                                    "--cpus-per-task=1", "--time=15", f"--output={venv}/job.out", f"slurm/{template}"],
                                   env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                                   check=True).stdout.strip().split(";")[0]
    wait_out_of_queue(list(jobs.values()), timeout=300)
    segfault, failed = tmp_path / "segfault", tmp_path / "exit-1"
    assert (segfault / "starts").read_text().count("start") == 1, (segfault / "job.out").read_text()
    assert "crashed (exit 139, a segmentation fault); not restarting" in (segfault / "job.out").read_text()
    assert (failed / "starts").read_text().count("start") == 3, (failed / "job.out").read_text()
    assert "no restart left (MAX_RESTARTS=2)" in (failed / "job.out").read_text()
