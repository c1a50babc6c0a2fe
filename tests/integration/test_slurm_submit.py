"""`kssgan submit train gan` on the real cluster: a job of 2 ranks (on 2 nodes where the cluster has
them) hits its time limit, checkpoints on Slurm's USR2, requeues itself, resumes from the checkpoint
and finishes the full step count."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import TINY, kssgan
from test_slurm_prep import cluster_up, nodes_up, wait_for_jobs, wait_out_of_queue

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))]

STEPS = 300
HOLD_AT = 100
"""The first run waits at step HOLD_AT for Slurm's USR2 (45-60 s into its 2-minute limit), so at
least one requeue happens on a machine of any speed; on a slow one USR2 may come earlier, which is
as good."""


def submit(tmp_path: Path, out: Path, demo_data: Path, siamese_run: Path, clusters: Path) -> subprocess.CompletedProcess:
    layout = ["--nodes", "2", "--tasks-per-node", "1"] if nodes_up() >= 2 else ["--tasks-per-node", "2"]
    return kssgan("submit", "train", "gan", "--folder", str(tmp_path / "submitit"), "--time-min", "2",
                  "--signal-delay-s", "60", *layout, "--cpus-per-task", "1", "--max-requeues", "6",
                  f"data={demo_data}", f"siamese={siamese_run}", f"clusters={clusters}", f"out={out}",
                  f"steps={STEPS}", "batch_size=4", "image_every=100000", "select_split=null",
                  "checkpoint_every=100000", "log_every=50", *TINY, check=True)


def test_time_limit_requeue_resumes_to_full_step_count(demo_data: Path, siamese_run: Path, clusters: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("KSSGAN_TEST_HOLD_AT_STEP", str(HOLD_AT))  # sbatch exports it to the job
    proc = submit(tmp_path, out, demo_data, siamese_run, clusters)
    job = re.search(r"as job (\d+)", proc.stdout).group(1)
    assert str(out / "tensorboard") in proc.stdout and f"{job}_0_log.out" in proc.stdout
    held = wait_out_of_queue([job], timeout=420)
    states = wait_for_jobs([job], records=1, timeout=60)
    log = (out / "gan.log").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert held >= 1 and "requeueing through submitit" in log, log[-3000:]
    resumed = [int(s) for s in re.findall(r"resumed from .*step-0*(\d+)", log)]
    assert resumed and all(0 < s < STEPS for s in resumed), log[-3000:]
    # Every requeue stopped at a checkpoint and the next run went on from exactly there.
    stops = [int(s) for s in re.findall(r"stopped by signal at step (\d+)", log)]
    assert stops == resumed, (stops, resumed)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{STEPS:08d}"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == STEPS
    if nodes_up() >= 2:
        assert json.loads((out / "run.json").read_text())["world_size"] == 2
        nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", job], capture_output=True,
                               text=True, timeout=30).stdout.split()
        assert nodes and set(nodes) == {"n[1-2]"}, nodes
