"""Prep survives SIGKILL, reruns skip finished shards, array parts + merge equal one process."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.prep import PrepError, run_prep
from helpers import kssgan, prep_config, read_shards

ARGS = ["--source", "demo", "--resolution", "128", "--no-progress", "images_per_shard=25"]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "data"
    kssgan("prep", *ARGS, "--out", str(out), check=True)
    return out


def wait_for(condition, what: str, timeout: float = 300) -> None:
    """Wait for an event (a file appearing); the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_mid_run_then_rerun(reference: Path, tmp_path: Path) -> None:
    out, gate = tmp_path / "data", tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-m", "kssgan_hpc.cli.main", "prep", *ARGS, "--out", str(out)]
    # Held (test hook) with a shard half-written, after 3 shards are complete.
    env = {**os.environ, "KSSGAN_TEST_PREP_GATE": str(gate), "KSSGAN_TEST_PREP_HOLD_AFTER": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for(lambda: list(gate.glob("held-*")), "prep to reach a half-written shard")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    assert list(out.glob(".*.h5.tmp-*")), "no half-written shard at kill time"
    complete_before = {p.name for p in (out / ".prep").glob("*.h5.json")}

    rerun = kssgan("prep", *ARGS, "--out", str(out), check=True)
    assert f"{len(complete_before)} already complete" in rerun.stdout
    assert not list(out.glob(".*.tmp*")), "half-written temp files must be removed"
    assert manifest(out) == manifest(reference)  # identical checksums: byte-identical shards
    kept = np.concatenate([labels["source_index"] for labels in read_shards(out).values()])
    assert len(kept) == len(set(kept.tolist())) == 400  # no duplicate, no lost image


def test_sigkill_of_the_main_process_while_its_workers_live_on(reference: Path, tmp_path: Path) -> None:
    """The workers of a killed `prep --workers 2` finish their shards while a rerun writes the same
    ones: the rerun and the next one succeed and every recorded shard is whole (issue 10, item 1)."""
    out, gate = tmp_path / "data", tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-m", "kssgan_hpc.cli.main", "prep", *ARGS, "--workers", "2", "--out", str(out)]
    env = {**os.environ, "KSSGAN_TEST_PREP_GATE": str(gate)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for(lambda: len(list(gate.glob("held-*"))) == 2, "both workers to hold a half-written shard")
    orphans = [int(p.name.removeprefix("held-")) for p in gate.glob("held-*")]
    try:
        os.kill(proc.pid, signal.SIGKILL)  # only the main process: its pool workers live on
        proc.wait(timeout=30)
        rerun = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        (gate / "go").touch()  # the orphans finish the shards the rerun is writing too
        stdout, stderr = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, stdout + stderr
        again = kssgan("prep", *ARGS, "--workers", "2", "--out", str(out), check=True)
        total = len(manifest(reference)["shards"])
        assert f"0 written, {total} already complete" in again.stdout
        assert kssgan("inspect", str(out), "--no-sheet").returncode == 0
        assert manifest(out) == manifest(reference)
    finally:
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_record_of_a_broken_shard_is_not_trusted(reference: Path, tmp_path: Path) -> None:
    """A sidecar whose checksum matches a 96-byte shard (what the race once left) is packed again."""
    out = tmp_path / "data"
    cfg = prep_config("demo", out, resolution=128, images_per_shard=25)
    run_prep(cfg, progress=False)
    shard, sidecar = out / "train-00000.h5", out / ".prep" / "train-00000.h5.json"
    shard.write_bytes(shard.read_bytes()[:96])
    record = json.loads(sidecar.read_text())
    record.update(sha256=hashlib.sha256(shard.read_bytes()).hexdigest(), bytes=96)
    sidecar.write_text(json.dumps(record))
    healed = run_prep(cfg, progress=False)
    assert healed.shards_written == 1
    assert manifest(out) == manifest(reference)


def test_rerun_skips_complete_shards_and_redoes_altered(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    cfg = prep_config("demo", out, resolution=128, images_per_shard=25)
    first = run_prep(cfg, progress=False)
    assert first.shards_written == first.shards_total == len(manifest(reference)["shards"])
    again = run_prep(cfg, progress=False)
    assert again.shards_written == 0 and again.shards_reused == first.shards_total
    shard = out / "train-00002.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    healed = run_prep(cfg, progress=False)
    assert healed.shards_written == 1
    assert manifest(out) == manifest(reference)


def test_other_settings_in_same_out_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "data"
    run_prep(prep_config("demo", out, images_per_shard=200), progress=False)
    with pytest.raises(PrepError, match=r"other settings \(resolution: 32 -> 64\)"):
        run_prep(prep_config("demo", out, images_per_shard=200, resolution=64), progress=False)
    # workers only changes speed: allowed.
    assert run_prep(prep_config("demo", out, images_per_shard=200, workers=2), progress=False).shards_written == 0


def test_parts_then_merge_equal_single_process(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    early = kssgan("prep", *ARGS, "--out", str(out), "--merge")
    assert early.returncode == 1 and "not complete" in early.stderr
    for part in range(3):
        proc = kssgan("prep", *ARGS, "--out", str(out), "--part", str(part), "--parts", "3", check=True)
        assert "--merge" in proc.stdout
        assert not (out / "manifest.json").exists()
    kssgan("prep", *ARGS, "--out", str(out), "--merge", check=True)
    assert manifest(out) == manifest(reference)
    assert (out / "sources.jsonl").read_text() == (reference / "sources.jsonl").read_text()
