"""The prep job array + merge templates, submitted with sbatch to the real local Slurm cluster.

`.ci/run` starts the cluster (scripts/slurm_cluster.sh start); elsewhere these tests skip with the reason.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import kssgan

REPO = Path(__file__).parents[2]


def cluster_up() -> str | None:
    """None when a Slurm controller answers, else why not."""
    if shutil.which("sbatch") is None:
        return "no Slurm client installed (bash scripts/slurm_cluster.sh start, as root)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        return f"Slurm controller not up: {ping.stdout.strip() or ping.stderr.strip()}"
    return None


def nodes_up() -> int:
    """How many nodes the cluster has up (idle, mixed or allocated)."""
    if cluster_up() is not None:
        return 0
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30).stdout
    return len({line.split()[0] for line in out.splitlines() if line.split()[-1].rstrip("*") in
                ("idle", "mixed", "allocated", "completing")})


def release_held(job: str) -> bool:
    """Slurm holds a requeued job for 121 s (BeginTime); start it now. True when it was held."""
    reason = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True,
                            timeout=30).stdout.split()
    if reason[:2] == ["PENDING", "BeginTime"]:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30, check=True)
        return True
    return False


def wait_out_of_queue(jobs: list[str], timeout: float) -> int:
    """Wait until the jobs left the queue, starting each requeued job that Slurm holds at once (bounded:
    fails after `timeout` s). Returns how many holds were released."""
    held, deadline = 0, time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True, text=True,
                         timeout=30).stdout.strip():
        assert time.monotonic() < deadline, f"jobs {jobs} still queued after {timeout} s"
        held += sum(release_held(job) for job in jobs)
        time.sleep(1)
    return held


def job_processes(job: str, node: str | None = None) -> list[int]:
    """Python processes of Slurm job `job` (on `node`): ranks, torchrun agents, submitit tasks."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
            command = (proc / "cmdline").read_text().split("\0")
        except (OSError, ValueError):  # gone meanwhile, or not text
            continue
        if environ.get("SLURM_JOB_ID") != job or "python" not in Path(command[0]).name:
            continue
        if node is None or environ.get("SLURMD_NODENAME") == node:
            found.append(int(proc.name))
    return found


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))]


def wait_for_jobs(job_ids: list[str], records: int, timeout: float = 300) -> dict[str, str]:
    """Poll squeue and sacct until the jobs left the queue and sacct holds `records` final records
    (array tasks count one each; slurmdbd may lag the controller); bounded."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30).stdout
        states = dict(line.split("|")[:2] for line in out.splitlines() if line)
        states = {k: v.split()[0] for k, v in states.items()}
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True, text=True,
                                timeout=30).stdout.strip()
        if not queued and len(states) == records and all(v in final for v in states.values()):
            return states
        time.sleep(0.5)
    subprocess.run(["scancel", *job_ids], timeout=30)
    raise TimeoutError(f"jobs {job_ids} not finished after {timeout} s: {states}")


def test_prep_array_and_merge_equal_single_process(tmp_path: Path) -> None:
    args = "--source demo --resolution 32 images_per_shard=40"
    reference = tmp_path / "reference"
    kssgan("prep", *args.split(), "--out", str(reference), "--no-progress", check=True)
    out = tmp_path / "array"
    env = {**os.environ, "PREP_ARGS": f"{args} --out {out}", "PARTS": "3", "VENV": sys.prefix}
    submit = ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={tmp_path}/slurm-%x-%A_%a.out"]
    array = subprocess.run([*submit, "--array=0-2", "slurm/prep_array.sbatch"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    merge = subprocess.run([*submit, f"--dependency=afterok:{array}", "slurm/prep_merge.sbatch"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    states = wait_for_jobs([array, merge], records=4)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}"
    assert len([k for k in states if k.startswith(f"{array}_")]) == 3, states
    if nodes_up() >= 2:  # the partition places jobs on the least loaded node (LLN): the parts spread
        listed = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", array], capture_output=True,
                                text=True, timeout=30).stdout.split()
        assert {"n1", "n2"} <= set(listed), listed
    assert json.loads((out / "manifest.json").read_text()) == json.loads((reference / "manifest.json").read_text())
