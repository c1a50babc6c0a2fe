"""`kssgan submit train` without a scheduler: resources resolved and checked, and a 2-task job on
submitit's local executor whose tasks form one process group through kssgan_hpc.launch."""

import json
from pathlib import Path

from helpers import TINY, kssgan


def test_dry_run_resolves_resources_from_config_then_flags(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("slurm: {nodes: 4, partition: gpu, time_min: 600}\nsiamese: {steps: 7}\n")
    proc = kssgan("submit", "train", "siamese", "--config", str(scenario), "--nodes", "2", "--qos", "high",
                  "--dry-run", check=True)
    assert "steps: 7" in proc.stdout
    for line in ("nodes: 2", "partition: gpu", "time_min: 600", "qos: high"):
        assert f"  {line}\n" in proc.stdout, proc.stdout


def test_bad_resources_and_resume_never_are_refused(tmp_path: Path) -> None:
    cases = [(["--nodes", "0"], "slurm.nodes=0 is invalid"),
             (["--time-min", "1", "--signal-delay-s", "90"], "signal_delay_s=90 must be shorter"),
             (["--executor", "local", "--nodes", "2"], "needs executor=slurm"),
             (["resume=never"], "resume=never would restart a requeued job")]
    for extra, fragment in cases:
        proc = kssgan("submit", "train", "gan", *extra)
        assert proc.returncode == 2 and fragment in proc.stderr, (extra, proc.stderr)


def test_local_two_task_job_trains_on_two_ranks(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = kssgan("submit", "train", "siamese", "--executor", "local", "--tasks-per-node", "2", "--cpus-per-task",
                  "1", "--folder", str(tmp_path / "submitit"), "--wait", f"data={demo_data}", f"out={out}",
                  "steps=2", "identities_per_batch=4", "images_per_identity=2", "eval_every=100", *TINY, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished" in proc.stdout and json.loads((out / "run.json").read_text())["world_size"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
