"""One writer per output: a second run into a folder (or a cluster file) that another run is writing is
refused in one line; the processes of one run share it by design; a dead holder's lock is gone.

Before the lock, two `kssgan train siamese` into one out both exited 0 (metrics.jsonl with every step
twice, checkpoints overwritten), and two `kssgan prep` with different resolutions left 64 px and 32 px
shards under one manifest. The first writer here is the real claim (`claim_folder` as every command
takes it) held by a small process, so the test waits for an event (its "held" line), never a duration.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import TINY, refused

HOLDER = """
import sys
from pathlib import Path
from kssgan_hpc.folders import claim_file, claim_folder, hold_writer_locks
hold_writer_locks()
target, kind = Path(sys.argv[1]), sys.argv[2]
claim_file(target, kind) if kind == "clusters" else claim_folder(target, kind)
print("held", flush=True)
sys.stdin.read()  # until the test kills it
"""

PREP = ["--source", "demo", "--resolution", "32", "--no-progress", "images_per_shard=100"]


def run_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's identity (pytest may run under one), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_", "KSSGAN_WRITER", "WORLD_SIZE", "RANK"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def hold(target: Path, kind: str, **env: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), kind], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(**env))
    line = holder.stdout.readline()  # blocks until the claim is made (or the holder died)
    assert line.strip() == "held", holder.stderr.read()
    return holder


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kssgan_hpc.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env=run_env(**env))


def stop(holder: subprocess.Popen) -> None:
    holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    holder.wait()


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_not_kept(tmp_path: Path) -> None:
    out = tmp_path / "data"
    holder = hold(out, "data")
    before = sorted(p.name for p in out.iterdir())
    refused(cli("prep", *PREP, "--out", str(out)), str(out), "another kssgan is writing it", f"pid {holder.pid}")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    stop(holder)
    done = cli("prep", *PREP, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").is_file()


def test_a_second_training_or_clustering_is_refused(demo_data: Path, siamese_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "siamese"
    holder = hold(run, "siamese")
    try:
        refused(cli("train", "siamese", f"data={demo_data}", f"out={run}", "steps=2", "identities_per_batch=4",
                    "images_per_identity=2", *TINY), str(run), "another kssgan is writing it")
        assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    finally:
        stop(holder)
    clusters = tmp_path / "c" / "clusters.json"
    holder = hold(clusters, "clusters")
    try:
        refused(cli("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={clusters}"), str(clusters),
                "another kssgan is writing it")
        assert not clusters.exists()
    finally:
        stop(holder)


def test_the_processes_of_one_run_share_the_lock(tmp_path: Path) -> None:
    # The tasks of one Slurm job array (prep parts) write one data folder together; another array may not.
    out = tmp_path / "data"
    holder = hold(out, "data", SLURM_ARRAY_JOB_ID="77")
    try:
        part = cli("prep", *PREP, "--out", str(out), "--part", "1", "--parts", "2", SLURM_ARRAY_JOB_ID="77")
        assert part.returncode == 0, part.stderr
        refused(cli("prep", *PREP, "--out", str(out), "--part", "0", "--parts", "2", SLURM_ARRAY_JOB_ID="78"),
                "another kssgan is writing it")
    finally:
        stop(holder)
    # The ranks of one torch.distributed run (one rendezvous) share it; another run's ranks do not.
    run = tmp_path / "gan"
    ranks = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "r1"}
    first = hold(run, "gan", **ranks)
    second = hold(run, "gan", **ranks)  # returns only once it holds the lock too
    try:
        other = subprocess.run([sys.executable, "-c", HOLDER, str(run), "gan"], capture_output=True, text=True,
                               timeout=120, env=run_env(**{**ranks, "MASTER_PORT": "29998"}))
        assert other.returncode != 0 and "another kssgan is writing it" in other.stderr, other.stderr
    finally:
        stop(first)
        stop(second)
