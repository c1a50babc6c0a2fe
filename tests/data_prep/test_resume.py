"""Prep survives SIGKILL, reruns skip finished shards, array parts + merge equal one process."""

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


def test_sigkill_mid_run_then_rerun(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "kssgan_hpc.cli.main", "prep", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill while a shard is half-written, after some shards are complete.
    while time.monotonic() < deadline:
        done = list((out / ".prep").glob("*.h5.json")) if (out / ".prep").is_dir() else []
        if len(done) >= 3 and list(out.glob(".*.h5.tmp")):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "prep finished before it could be killed"
    assert list(out.glob(".*.h5.tmp")), "no half-written shard at kill time"
    complete_before = {p.name for p in (out / ".prep").glob("*.h5.json")}

    rerun = kssgan("prep", *ARGS, "--out", str(out), check=True)
    assert f"{len(complete_before)} already complete" in rerun.stdout
    assert not list(out.glob(".*.tmp*")), "half-written temp files must be removed"
    assert manifest(out) == manifest(reference)  # identical checksums: byte-identical shards
    kept = np.concatenate([labels["source_index"] for labels in read_shards(out).values()])
    assert len(kept) == len(set(kept.tolist())) == 400  # no duplicate, no lost image


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
