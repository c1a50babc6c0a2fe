"""slurm/train.sbatch on the real cluster: srun + torchrun c10d rendezvous, 2 ranks, a short Siamese run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_slurm_prep import REPO, cluster_up, wait_for_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up()))]


def test_train_template_runs_two_ranks(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "siamese"
    train_args = (f"data={demo_data} out={out} steps=2 identities_per_batch=4 images_per_identity=2 eval_every=100 workers=0 model.resolution=32 "
                  "model.siamese_width=8 model.max_width=32")
    env = {**os.environ, "STAGE": "siamese", "TRAIN_ARGS": train_args, "PROCS_PER_NODE": "2",
           "VENV": sys.prefix, "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", "--cpus-per-task=2", "--time=10",
                          f"--output={tmp_path}/train-%j.out", "slurm/train.sbatch"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    states = wait_for_jobs([job], records=1, timeout=240)
    log = (tmp_path / f"train-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"


def test_one_task_per_rank_template(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "siamese"
    train_args = (f"data={demo_data} out={out} steps=2 identities_per_batch=4 images_per_identity=2 eval_every=100 workers=0 model.resolution=32 "
                  "model.siamese_width=8 model.max_width=32")
    env = {**os.environ, "STAGE": "siamese", "TRAIN_ARGS": train_args, "VENV": sys.prefix}
    job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", "--ntasks-per-node=2", "--cpus-per-task=1",
                          "--time=10", f"--output={tmp_path}/tasks-%j.out", "slurm/train_tasks.sbatch"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    states = wait_for_jobs([job], records=1, timeout=240)
    log = (tmp_path / f"tasks-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
