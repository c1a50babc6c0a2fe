"""A 2-task Slurm job whose tasks form one gloo process group through kssgan_hpc.launch."""

import subprocess
import sys
from pathlib import Path

import pytest

from test_slurm_prep import cluster_up, wait_for_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))]

TASK = """
import torch, torch.distributed as dist
from kssgan_hpc.distributed import apply_distributed_env
env = apply_distributed_env()
dist.init_process_group(env.backend(cuda=False), rank=env.rank, world_size=env.world_size)
value = torch.tensor([float(env.rank + 1)])
dist.all_reduce(value)
print(f"rank {env.rank}/{env.world_size} source {env.source} "
      f"master {env.master_addr}:{env.master_port} sum {value.item()}")
dist.destroy_process_group()
"""


def test_two_tasks_form_one_gloo_group(tmp_path: Path) -> None:
    script = tmp_path / "task.py"
    script.write_text(TASK)
    out = tmp_path / "job-%j.out"
    job = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", f"--output={out}",
         f"--wrap=OMP_NUM_THREADS=1 srun {sys.executable} {script}"],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    states = wait_for_jobs([job], records=1, timeout=180)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log
    lines = sorted(line for line in log.splitlines() if line.startswith("rank "))
    assert len(lines) == 2 and all("source slurm" in line and "sum 3.0" in line for line in lines), log
    assert lines[0].startswith("rank 0/2") and lines[1].startswith("rank 1/2")
