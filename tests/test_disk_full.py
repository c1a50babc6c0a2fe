"""A full disk ends a stage in one line naming the folder, keeps what was finished, and a rerun once
there is space finishes as an uninterrupted run would. On a small tmpfs (root, as CI runs)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import TINY, kssgan, metrics, refused

PREP = ["--source", "demo", "--resolution", "64", "--no-progress", "images_per_shard=100", "workers=1"]


def shards(data: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in json.loads((data / "manifest.json").read_text())["shards"]}


def test_prep_on_a_full_disk_fails_in_one_line_and_resumes(tmp_path: Path, tmpfs) -> None:
    reference = tmp_path / "reference"
    kssgan("prep", *PREP, "--out", str(reference), check=True)
    # Room for one 64 px shard of 100 faces (1.2 MB) but not two: HDF5 once crashed the process here
    # (rc 139, after the error line) when the disk filled under it.
    disk = tmpfs("disk", size="3m")
    out = disk / "data"
    proc = kssgan("prep", *PREP, "--out", str(out))
    refused(proc, str(out), "MiB free", "free space and run again", code=1)
    assert not list(out.rglob("*.tmp-*")), list(out.rglob("*.tmp-*"))  # no half-written shard left
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    kssgan("prep", *PREP, "--out", str(out), check=True)
    assert shards(out) == shards(reference)


def test_training_on_a_full_disk_fails_in_one_line_and_reruns(demo_data: Path, tmp_path: Path, tmpfs) -> None:
    args = [f"data={demo_data}", "steps=4", "checkpoint_every=2", "log_every=1", "eval_every=100",
            "identities_per_batch=4", "images_per_identity=2", *TINY]
    reference = tmp_path / "reference"
    kssgan("train", "siamese", *args, f"out={reference}", check=True)
    # Room for the run's records but not its first checkpoint: once two chained tracebacks ending in
    # torch's "unexpected pos" (or a SafetensorError), naming no file.
    disk = tmpfs("disk", size="200k")
    run = disk / "run"
    proc = kssgan("train", "siamese", *args, f"out={run}")
    refused(proc, str(run / "checkpoints" / "step-00000002"), "could not be written", "No space left on device",
            "free space and run again", code=1)
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], list(run.rglob("*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    kssgan("train", "siamese", *args, f"out={run}", check=True)
    def losses(folder: Path) -> list[tuple]:  # every step once, as the uninterrupted run logged it
        return [sorted((k, v) for k, v in m.items() if k == "step" or k.startswith(("loss", "distance", "eval")))
                for m in metrics(folder)]

    assert losses(run) == losses(reference)


def test_an_atomic_write_on_a_full_disk_names_its_file_and_keeps_the_old_one(tmpfs) -> None:
    # Every record, state file and image (the report's contact sheet included) is written through
    # files.atomic_output: a full disk must leave the previous version whole and say which file failed.
    from PIL import Image

    from kssgan_hpc.files import atomic_output, atomic_write_json

    disk = tmpfs("disk", size="64k")
    report, sheet = disk / "report.json", disk / "contact_sheet.png"
    atomic_write_json(report, {"old": True})
    Image.new("RGB", (8, 8), "white").save(sheet)
    old_sheet = sheet.read_bytes()
    noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))  # ~200 kB as PNG: does not fit
    with pytest.raises(OSError) as err:
        with atomic_output(sheet) as tmp:
            noise.save(tmp)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(sheet)
    with pytest.raises(OSError) as err:
        atomic_write_json(report, {"new": "x" * 100_000})
    assert err.value.filename == str(report)
    assert json.loads(report.read_text()) == {"old": True} and sheet.read_bytes() == old_sheet
    assert sorted(p.name for p in disk.iterdir()) == ["contact_sheet.png", "report.json"]  # no temp left
