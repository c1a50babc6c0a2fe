"""The training templates on two real Slurm nodes (n1, n2: two slurmd on this host, see
scripts/slurm_cluster.sh): slurm/train.sbatch (one torchrun per node, c10d rendezvous at the first
node's NodeAddr) and slurm/train_tasks.sbatch (one Slurm task per rank), the Siamese and the GAN,
Accelerate and DeepSpeed ZeRO 2 in bf16. Every checkpoint must find the ranks' parameters
bit-identical across the nodes, and TensorBoard must show each node's throughput."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_slurm_prep import REPO, cluster_up, nodes_up, wait_for_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(cluster_up() is not None, reason=str(cluster_up())),
              pytest.mark.skipif(nodes_up() < 2, reason="needs a 2-node cluster (scripts/slurm_cluster.sh start 2)")]

TINY = ("workers=0 model.siamese_width=8 model.generator_width=8 model.discriminator_width=8 model.max_width=32 "
        "log_every=1 checkpoint_every=1")

JOBS = {  # name: (template, stage, engine, extra arguments)
    "torchrun-siamese-accelerate": ("train.sbatch", "siamese", "engine.backend=accelerate engine.precision=fp32",
                                    "identities_per_batch=4 images_per_identity=2 eval_every=100 steps=2"),
    "torchrun-gan-deepspeed": ("train.sbatch", "gan", "engine.backend=deepspeed engine.zero_stage=2 "
                               "engine.precision=bf16", "batch_size=4 steps=2 image_every=100 select_split=null"),
    "tasks-gan-accelerate": ("train_tasks.sbatch", "gan", "engine.backend=accelerate engine.precision=bf16",
                             "batch_size=4 steps=2 image_every=100 select_split=null"),
    "tasks-siamese-deepspeed": ("train_tasks.sbatch", "siamese", "engine.backend=deepspeed engine.zero_stage=2 "
                                "engine.precision=bf16", "identities_per_batch=4 images_per_identity=2 "
                                "eval_every=100 steps=2"),
}


def test_both_templates_train_across_two_nodes(demo_data: Path, siamese_run: Path, clusters: Path,
                                               tmp_path: Path) -> None:
    jobs = {}
    for name, (template, stage, engine, extra) in JOBS.items():
        out = tmp_path / name
        inputs = f"siamese={siamese_run} clusters={clusters}" if stage == "gan" else ""
        env = {**os.environ, "STAGE": stage, "VENV": sys.prefix, "PROCS_PER_NODE": "1",
               "TRAIN_ARGS": f"data={demo_data} out={out} {inputs} {TINY} {engine} {extra}",
               "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
        job = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", "--nodes=2", "--ntasks-per-node=1",
                              "--cpus-per-task=1", "--time=15", f"--output={tmp_path}/{name}-%j.out",
                              f"slurm/{template}"], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip().split(";")[0]
        jobs[name] = (job, out, stage)
    states = wait_for_jobs([job for job, _, _ in jobs.values()], records=len(jobs), timeout=900)
    for name, (job, out, stage) in jobs.items():
        log = (tmp_path / f"{name}-{job}.out").read_text()
        assert states[job] == "COMPLETED", f"{name}: {states[job]}\n{log[-3000:]}"
        nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NodeList", "-j", job], capture_output=True,
                               text=True, timeout=30).stdout.split()
        assert nodes == ["n[1-2]"], (name, nodes)
        assert json.loads((out / "run.json").read_text())["world_size"] == 2
        assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        models = ("siamese",) if stage == "siamese" else ("g", "d")
        checks = [m for m in metrics if f"replicas/{models[0]}" in m]
        assert len(checks) == 2 and all(m[f"replicas/{model}"] == 1.0 for m in checks for model in models), name
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        per_node = [tag for tag in events.Tags()["scalars"] if tag.startswith("speed/images_per_s_node")]
        assert sorted(per_node) == ["speed/images_per_s_node0", "speed/images_per_s_node1"], (name, per_node)
        assert all(event.value > 0 for tag in per_node for event in events.Scalars(tag))
