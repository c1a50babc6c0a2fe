"""A full disk ends a stage in one line naming the folder, keeps what was finished, and a rerun once
there is space finishes as an uninterrupted run would. On a small tmpfs (root, as CI runs)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import OPEN_GATE, TINY, kssgan, metrics, refused

from kssgan_hpc.folders import MARKER

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


def test_anonymize_on_a_full_disk_fails_in_one_line_and_reruns(demo_data: Path, gan_run: Path, tmp_path: Path,
                                                              tmpfs) -> None:
    args = [f"gan={gan_run}", f"data={demo_data}", "splits=[train,test]", "k=4", "png=true", "images_per_shard=100",
            *OPEN_GATE, "--no-progress"]
    reference = tmp_path / "reference"
    kssgan("anonymize", *args, f"out={reference}", f"ledger={tmp_path / 'ledger'}", check=True)
    # The same release (its secret seed) into a disk with room for its records and a shard or two: anonymize
    # once printed its error line and then segfaulted inside HDF5 (rc 139).
    disk = tmpfs("disk", size="700k")
    out = disk / "out"
    (out / "private").mkdir(parents=True)
    for name in (MARKER, "private/settings.json"):
        shutil.copy(reference / name, out / name)
    rerun = ["anonymize", *args, f"out={out}", f"ledger={tmp_path / 'ledger'}"]
    proc = kssgan(*rerun)
    refused(proc, str(out / "release"), "free space and run again", code=1)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], list(out.rglob("*"))
    assert not (out / "release" / "manifest.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    kssgan(*rerun, check=True)
    for name in ("manifest.json", *(p.name for p in (reference / "release").glob("*.h5"))):
        assert (out / "release" / name).read_bytes() == (reference / "release" / name).read_bytes(), name
    pngs = sorted(p.relative_to(reference) for p in (reference / "release" / "png").rglob("*.png"))
    assert pngs == sorted(p.relative_to(out) for p in (out / "release" / "png").rglob("*.png"))
    assert all((out / p).read_bytes() == (reference / p).read_bytes() for p in pngs)


def test_the_sweep_state_on_a_full_disk_keeps_the_last_one_and_resumes(sweep_file, tmpfs) -> None:
    # The driver's state (the optimizer pickle and trials.jsonl naming it) is rewritten at every ask and
    # tell: a full disk once left `.optimizer-*.pkl.tmp-*` behind.
    from kssgan_hpc.config import load_config
    from kssgan_hpc.config.sweep import SweepConfig
    from kssgan_hpc.sweep.driver import Sweep, Trial, plain

    disk = tmpfs("disk", size="512k")
    path = sweep_file(out=str(disk / "sweep"), budget=2, num_workers=1)
    sweep = Sweep(load_config(SweepConfig, path))
    sweep._open(resume=False)

    def ask() -> None:
        candidate = sweep.optimizer.ask()
        sweep.trials.append(Trial(trial=len(sweep.trials), params=plain(candidate.value), asked=0.0))
        sweep.pending[len(sweep.trials) - 1] = candidate
        sweep.save()

    ask()
    state = sorted(p.name for p in disk.rglob("*"))
    trials = (disk / "sweep" / "trials.jsonl").read_bytes()
    filler = disk / "filler"
    with pytest.raises(OSError), open(filler, "wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    with pytest.raises(OSError) as err:
        ask()
    assert err.value.errno == errno.ENOSPC and Path(err.value.filename).parent == disk / "sweep" / "state"
    filler.unlink()
    assert sorted(p.name for p in disk.rglob("*")) == state  # no temp file left, the last state whole
    assert (disk / "sweep" / "trials.jsonl").read_bytes() == trials
    resumed = Sweep(load_config(SweepConfig, path))
    resumed._open(resume=True)
    assert [t.params for t in resumed.trials] == [sweep.trials[0].params] and list(resumed.pending) == [0]
