"""Real 2-rank runs over gloo: both engines, both CPU precisions, resume, kill, NaN, TensorBoard."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import OPEN_GATE, TINY, free_port, kill_tree, kssgan, metrics, torchrun, torchrun_cmd, torchrun_env
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kssgan_hpc.artefacts import generator_weights, load_siamese
from kssgan_hpc.checkpoints import SELECTED, append_selection
from kssgan_hpc.config import load_config
from kssgan_hpc.config.train import GanConfig, ModelConfig
from kssgan_hpc.train.selection import CheckpointSelector
from kssgan_hpc.ksame.records import load_clusters

REPO = Path(__file__).parents[2]


def weights(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    path = run / "checkpoints" / f"step-{step:08d}"
    return {p.stem: load_file(p) for p in path.glob("*.safetensors")}


def assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs"


def test_siamese_learns_and_reports_verification(siamese_run: Path) -> None:
    rows = metrics(siamese_run)
    losses = [r["loss/contrastive"] for r in rows if "loss/contrastive" in r]
    val = [r for r in rows if "val/eer" in r]
    assert len(val) == 2 and 0.0 <= val[-1]["val/eer"] <= 0.5 and val[-1]["val/accuracy"] > 0.5
    assert [r["replicas/siamese"] for r in rows if "replicas/siamese" in r] == [1.0]
    assert all(value == value for value in losses)  # no NaN


def test_clusters_hold_k_identities(clusters: Path) -> None:
    data = load_clusters(clusters)
    assert data["k"] == 4 and data["identities"] == 32
    assert all(len(c["identities"]) >= 4 for c in data["clusters"])
    faces = load_file(clusters.parent / data["cluster_faces"])
    assert faces["pixel"].shape == faces["aligned"].shape == (len(data["clusters"]), 3, 32, 32)
    assert faces["frame"].shape == (5, 2)
    broken = json.loads(clusters.read_text())
    broken["clusters"][0]["identities"] = broken["clusters"][0]["identities"][:2]
    bad = clusters.parent / "broken.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="breaks k-anonymity"):
        load_clusters(bad)


@pytest.mark.parametrize("engine", [
    ["engine.backend=accelerate", "engine.precision=fp32"],
    ["engine.backend=accelerate", "engine.precision=bf16"],
    ["engine.backend=deepspeed", "engine.precision=fp32", "engine.zero_stage=0"],
    ["engine.backend=deepspeed", "engine.precision=bf16", "engine.zero_stage=0"],
    ["engine.backend=deepspeed", "engine.precision=fp32", "engine.zero_stage=2",
     f"engine.deepspeed_config={REPO / 'configs/deepspeed/zero2-overlap.json'}"],
    ["engine.backend=deepspeed", "engine.precision=bf16", "engine.zero_stage=2"],
], ids=["acc-fp32", "acc-bf16", "ds-z0-fp32", "ds-z0-bf16", "ds-z2-fp32", "ds-z2-bf16"])
def test_gan_two_ranks_stay_identical(gan_args: list[str], engine: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    torchrun(*gan_args, f"out={out}", "steps=4", "checkpoint_every=2", *engine, tmp=tmp_path)
    rows = metrics(out)
    assert [r["replicas/g"] for r in rows if "replicas/g" in r] == [1.0, 1.0]
    assert [r["replicas/d"] for r in rows if "replicas/d" in r] == [1.0, 1.0]
    last = [r for r in rows if "loss/g_total" in r][-1]
    assert last["step"] == 4 and last["skipped/g"] == 0.0 and last["skipped/d"] == 0.0
    assert all(torch.isfinite(t).all() for w in weights(out, 4).values() for t in w.values())
    before = weights(out, 2)["g"]
    assert any(not torch.equal(before[k], weights(out, 4)["g"][k]) for k in before)  # it trained


def test_every_checkpoint_is_attacked_and_the_passing_one_ships(gan_run: Path) -> None:
    records = [json.loads(line) for line in (gan_run / SELECTED / "selection.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4]  # the run's one checkpoint, measured on held-out people
    assert set(records[0]["worst"]) == {"attacker", "rank1", "p_value"} and 0 <= records[0]["faces_detected"] <= 1
    shipped, _ = generator_weights(gan_run)
    if records[0]["passed"]:
        assert shipped == gan_run / SELECTED / "ema_g.safetensors"
        assert json.loads((gan_run / SELECTED / "selected.json").read_text())["step"] == 4
    else:  # nothing passed: the newest checkpoint, which anonymize's own gate will refuse
        assert shipped.parent.name == "step-00000004" and records[0]["reasons"]


class ScalarLog:
    """What the selector writes to a run besides its files: TensorBoard scalars, kept here to read back."""

    def __init__(self) -> None:
        self.scalars: dict[int, dict[str, float]] = {}

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.scalars[step] = values


class NoisyBase(torch.nn.Module):
    """Planted: its base face drowned in noise (private, but far from real faces)."""

    def __init__(self, resolution: int, amount: float) -> None:
        super().__init__()
        self.cfg = ModelConfig(resolution=resolution)
        self.amount = torch.nn.Parameter(torch.tensor(amount))

    def forward(self, base, landmarks, expression, pose, z):  # noqa: ANN001, ANN201
        noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
        return (base + self.amount * noise).clamp(-1, 1)


def test_selection_ships_the_most_real_passing_checkpoint_not_the_newest(demo_data: Path, siamese_run: Path,
                                                                          clusters: Path, tmp_path: Path) -> None:
    cfg = load_config(GanConfig, overrides=[f"data={demo_data}", f"siamese={siamese_run}", f"clusters={clusters}",
                                            "gate.attackers=[lowpass8]", *OPEN_GATE, *TINY])
    siamese, _ = load_siamese(siamese_run)
    log = ScalarLog()
    CheckpointSelector(cfg, tmp_path, siamese, "cpu").measure(10, NoisyBase(32, 0.05), log)
    CheckpointSelector(cfg, tmp_path, siamese, "cpu").measure(20, NoisyBase(32, 0.9), log)  # resumed: reads step 10
    records = [json.loads(line) for line in (tmp_path / SELECTED / "selection.jsonl").read_text().splitlines()]
    assert [(r["step"], r["passed"], r["selected"]) for r in records] == [(10, True, True), (20, True, False)]
    assert records[1]["kid"] > records[0]["kid"]  # both private; the newer one is noise, less real
    assert json.loads((tmp_path / SELECTED / "selected.json").read_text())["step"] == 10
    assert load_file(tmp_path / SELECTED / "ema_g.safetensors")["amount"].item() == pytest.approx(0.05)
    assert {"realism/kid", "realism/fine", "gate/third_party_excess"} <= set(log.scalars[20])


def test_a_resumed_run_measuring_a_step_again_replaces_its_selection_line(tmp_path: Path) -> None:
    # A run that stopped after measuring step 20 (but before its next checkpoint) measures 20 again on
    # resume: selection.jsonl once held both lines.
    for step, kid in ((10, 0.3), (20, 0.2), (20, 0.25), (30, 0.1)):
        append_selection(tmp_path, {"step": step, "kid": kid})
    path = tmp_path / SELECTED / "selection.jsonl"
    assert [(r["step"], r["kid"]) for r in map(json.loads, path.read_text().splitlines())] == [
        (10, 0.3), (20, 0.25), (30, 0.1)]


def test_resume_equals_uninterrupted(gan_args: list[str], tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # With every random draw of the loop on: z, D's augmentations, the diversity term's second noise.
    args = [*gan_args, "augment_p=0.5", "w_feature_match=1.0", "w_diversity=1.0", "checkpoint_every=100"]
    torchrun(*args, f"out={straight}", "steps=6", tmp=tmp_path)
    torchrun(*args, f"out={resumed}", "steps=3", tmp=tmp_path)
    torchrun(*args, f"out={resumed}", "steps=6", tmp=tmp_path)
    assert "resumed from" in (resumed / "gan.log").read_text()
    assert_equal_weights(weights(straight, 6), weights(resumed, 6))  # G, D and the EMA of G


def test_sigkill_mid_run_then_resume(gan_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    args = [*gan_args, f"out={out}", "steps=12", "checkpoint_every=1", "keep_checkpoints=20"]
    # The run holds at step 6 (test hook) before writing its checkpoint: killed there on any machine.
    proc = subprocess.Popen(torchrun_cmd(*args), env={**torchrun_env(tmp_path), "KSSGAN_TEST_HOLD_AT_STEP": "6"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "holding at step 6" not in (
            (out / "gan.log").read_text() if (out / "gan.log").is_file() else ""):
        time.sleep(0.05)
    kill_tree(proc.pid)  # the whole job at once, ranks included
    proc.wait(timeout=60)
    done = sorted((out / "checkpoints").glob("step-*"))
    assert [d.name for d in done] == [f"step-{s:08d}" for s in range(1, 6)], "killed at the hold, step 6 unsaved"
    assert all((d / "complete").is_file() for d in done)  # only whole checkpoints carry the name
    torchrun(*args, tmp=tmp_path)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    assert not list((out / "checkpoints").glob(".step-*"))
    steps = [r["step"] for r in metrics(out) if "loss/g_total" in r]
    assert steps[-1] == 12


def test_nan_loss_on_one_rank_never_reaches_the_weights(gan_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    torchrun(*gan_args, f"out={out}", "steps=4", "checkpoint_every=2", tmp=tmp_path,
             env={"KSSGAN_INJECT_NAN": "3,1"})
    rows = {r["step"]: r for r in metrics(out) if "loss/g_total" in r}
    assert rows[3]["skipped/g"] == 1.0 and rows[3]["skipped/d"] == 1.0  # skipped on both ranks together
    assert rows[4]["skipped/g"] == 0.0
    assert all(torch.isfinite(t).all() for w in weights(out, 4).values() for t in w.values())
    assert [r["replicas/g"] for r in metrics(out) if "replicas/g" in r] == [1.0, 1.0]


def test_tensorboard_scalars_images_histograms(gan_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    torchrun(*gan_args, f"out={out}", "steps=2", "checkpoint_every=2", tmp=tmp_path)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss/g_adversarial", "loss/d_adversarial", "loss/id_pull", "loss/id_push", "loss/base_l1",
                "loss/r1", "d/real_score", "d/fake_score", "grad_norm/g", "grad_norm/d", "lr/g",
                "speed/images_per_s_rank", "speed/images_per_s_total"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("loss/g_total")] == [1, 2]
    assert events.Tags()["images"] == ["deid/ksame_pixel|ksame_aligned|kssgan"]  # no source faces by default
    image = events.Images("deid/ksame_pixel|ksame_aligned|kssgan")[0]
    assert image.width == 4 * 32 and image.height == 3 * 32  # batch of 4: k-Same-Pixel, base, output rows
    originals = tmp_path / "with-originals"
    torchrun(*gan_args, f"out={originals}", "steps=2", "log_originals=true", tmp=tmp_path)
    tags = EventAccumulator(str(originals / "tensorboard")).Reload().Tags()["images"]
    assert tags == ["deid/source|ksame_pixel|ksame_aligned|kssgan"]


def test_deepspeed_json_cannot_contradict_the_engine_config(gan_args: list[str], tmp_path: Path) -> None:
    proc = kssgan(*gan_args, f"out={tmp_path / 'gan'}", "steps=1", "engine.backend=deepspeed", "engine.zero_stage=0",
                  f"engine.deepspeed_config={REPO / 'configs/deepspeed/zero2-overlap.json'}")
    assert proc.returncode == 2 and "zero2-overlap.json: sets ZeRO stage" in proc.stderr


def test_deepspeed_fp16_without_gpu_is_a_clear_error(gan_args: list[str], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 runs")
    proc = kssgan(*gan_args, f"out={tmp_path / 'gan'}", "steps=1", "engine.backend=deepspeed",
                  "engine.precision=fp16")  # one plain process
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_fp16_trains_with_a_loss_scale(gan_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    torchrun(*gan_args, f"out={out}", "steps=3", "checkpoint_every=3", "engine.precision=fp16", tmp=tmp_path)
    rows = [r for r in metrics(out) if "loss/g_total" in r]
    assert rows[-1]["loss_scale/g"] > 1 and rows[-1]["skipped/g"] == 0.0
    assert [r["replicas/g"] for r in metrics(out) if "replicas/g" in r] == [1.0]
    assert (out / "checkpoints" / "step-00000003" / "grad-scaler.pt").is_file()


def test_fp16_overflow_skips_then_collapse_stops_with_a_checkpoint(gan_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "gan"
    # A loss scale of 1e30 overflows fp16 gradients at once; each overflow skips the update on both
    # ranks and halves the (one, shared) scale, after D's and after G's: 1e30 -> 2.5e29 after step 1,
    # 6.25e28 after step 2, below 2e29: the run stops there.
    proc = torchrun(*gan_args, f"out={out}", "steps=50", "engine.precision=fp16", "engine.initial_loss_scale=1e30",
                    "engine.min_loss_scale=2e29", tmp=tmp_path, check=False)
    assert proc.returncode != 0
    log = (out / "gan.log").read_text()
    assert "gradient overflow, step skipped" in log
    assert "fp16 loss scale of g, d fell below engine.min_loss_scale" in log and "exit code 65" in log
    rows = [r for r in metrics(out) if "loss/g_total" in r]
    assert all(r["skipped/g"] == 1.0 and r["skipped/d"] == 1.0 for r in rows)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{rows[-1]['step']:08d}"
    assert rows[-1]["step"] == 2 and rows[-1]["loss_scale/g"] < 2e29


def test_sigusr1_checkpoints_and_exits_for_requeue(gan_args: list[str], tmp_path: Path) -> None:
    import psutil

    out = tmp_path / "gan"
    args = [*gan_args, f"out={out}", "steps=500", "checkpoint_every=1000"]
    # Held at step 3 (test hook) until the signal: the run cannot finish first on a fast machine.
    proc = subprocess.Popen(torchrun_cmd(*args), env={**torchrun_env(tmp_path), "KSSGAN_TEST_HOLD_AT_STEP": "3"},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file():
            time.sleep(0.05)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "kssgan_hpc.cli.main" in p.cmdline()]
        assert len(ranks) == 2
        ranks[1].send_signal(signal.SIGUSR1)  # one rank is told: every rank stops at the same step
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    log = (out / "gan.log").read_text()
    assert "stopped by signal" in log and "exit code 75" in log and proc.returncode != 0
    saved = (out / "checkpoints" / "latest").read_text().strip()
    step = int(saved.split("-")[1])
    assert 0 < step <= 3
    torchrun(*[a for a in args if not a.startswith("steps=")], f"steps={step + 2}", tmp=tmp_path)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{step + 2:08d}"


def test_accelerate_launch_with_the_shipped_yaml(demo_data: Path, tmp_path: Path) -> None:
    import shutil
    import sys

    out = tmp_path / "siamese"
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher if launcher.exists() else shutil.which("accelerate")), "launch", "--main_process_port",
           str(free_port()), "--config_file", str(REPO / "configs/accelerate/two-process.yaml"),
           "-m", "kssgan_hpc.cli.main", "train", "siamese", f"data={demo_data}", f"out={out}", "steps=2",
           "identities_per_batch=4", "images_per_identity=2", "eval_every=100", "model.resolution=32", "model.siamese_width=8", "model.max_width=32",
           "workers=0"]
    proc = subprocess.run(cmd, env=torchrun_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert [r["replicas/siamese"] for r in metrics(out) if "replicas/siamese" in r] == [1.0]


@pytest.mark.parametrize("engine", [["engine.backend=accelerate"],
                                    ["engine.backend=deepspeed", "engine.zero_stage=2"]], ids=["acc", "ds-z2"])
def test_gradient_accumulation_matches_the_large_batch(gan_args: list[str], engine: list[str], tmp_path: Path) -> None:
    big, accumulated = tmp_path / "big", tmp_path / "accumulated"
    common = [a for a in gan_args if not a.startswith("batch_size=")]
    torchrun(*common, f"out={big}", "steps=2", "batch_size=4", *engine, tmp=tmp_path)
    torchrun(*common, f"out={accumulated}", "steps=2", "batch_size=2", "engine.accumulate=2", *engine, tmp=tmp_path)
    rows_big = {r["step"]: r for r in metrics(big) if "loss/g_total" in r}
    rows_acc = {r["step"]: r for r in metrics(accumulated) if "loss/g_total" in r}
    assert sorted(rows_acc) == [1, 2]
    # The gradients of 2 micro-batches of 2 (per rank) equal those of one batch of 4: same norms, same losses.
    for key in ("grad_norm/g", "grad_norm/d", "loss/g_total", "loss/d_total", "loss/r1"):
        assert rows_acc[1][key] == pytest.approx(rows_big[1][key], rel=1e-4, abs=1e-6), key
    # Adam turns float noise in gradients that are exactly zero in theory (conv biases before an
    # instance norm) into +-lr steps, so weights are compared to a few learning rates.
    a, b = weights(big, 2), weights(accumulated, 2)
    for name in a:
        for key in a[name]:
            assert torch.allclose(a[name][key], b[name][key], atol=1e-3), f"{name}.{key}"


def test_a_clusters_file_edited_to_k_1_is_refused(clusters: Path, tmp_path: Path) -> None:
    tampered = json.loads(clusters.read_text())
    tampered["k"] = 1
    tampered["clusters"] = [{**c, "identities": [i]} for c in tampered["clusters"] for i in c["identities"]]
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match=r"clusters.json: breaks k-anonymity: k=1 is invalid"):
        load_clusters(path)
