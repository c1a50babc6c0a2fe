"""The shard format: writer round trip, atomicity, and errors that name the file."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import kssgan
from kssgan_hpc.data.inspection import inspect_dataset
from kssgan_hpc.data.shards import FORMAT_VERSION, ShardError, ShardWriter, load_manifest, open_shard


def test_writer_round_trip_and_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 16, 16, 3), np.uint8)
    path = tmp_path / "train-00000.h5"
    with ShardWriter(path, split="train", index=0, resolution=16, channels=3, num_attributes=2, expected=2) as w:
        for i, image in enumerate(images):  # more than `expected`: the dataset grows
            w.add(image, identity=i % 2, expression=i, source_index=10 + i, source_sha256=b"ab" * 32,
                  attributes=np.array([1, 0]))
        info = w.close()
    assert info.images == 5 and path.is_file() and not (tmp_path / ".train-00000.h5.tmp").exists()
    with open_shard(path) as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["resolution"] == 16
        assert f["images"].chunks == (1, 16, 16, 3) and f["images"].compression is None
        np.testing.assert_array_equal(f["images"][:], images)
        assert f["identity"][:].tolist() == [0, 1, 0, 1, 0]
        assert f["pose"][:].tolist() == [-1] * 5  # unknown labels get their fill value
        assert np.isnan(f["landmarks"][:]).all() and f["attributes"].shape == (5, 2)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "val-00000.h5"
    with pytest.raises(ValueError, match="does not match"):
        with ShardWriter(path, split="val", index=0, resolution=16, channels=3) as w:
            w.add(np.zeros((16, 16, 3), np.uint8), identity=0, source_index=0)
            w.add(np.zeros((8, 8, 3), np.uint8), identity=0, source_index=1)
    assert list(tmp_path.iterdir()) == []


def test_open_shard_errors_name_the_file(tmp_path: Path) -> None:
    truncated = tmp_path / "train-00001.h5"
    with ShardWriter(truncated, split="train", index=1, resolution=16, channels=1) as w:
        w.add(np.zeros((16, 16, 1), np.uint8), identity=0, source_index=0)
        w.close()
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ShardError, match="train-00001.h5: not a readable HDF5"):
        open_shard(truncated)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["images"] = np.zeros(1)
    with pytest.raises(ShardError, match="foreign.h5: shard format_version"):
        open_shard(foreign)
    with pytest.raises(ShardError, match="no manifest"):
        load_manifest(tmp_path)


def test_inspect_reports_altered_shard_by_name(demo_data: Path, tmp_path: Path) -> None:
    ok = kssgan("inspect", str(demo_data), "--sheet", str(tmp_path / "sheet.png"), check=True)
    assert "all checksums match" in ok.stdout and (tmp_path / "sheet.png").stat().st_size > 1000
    assert "train     320 images      32 people" in ok.stdout
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in demo_data.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    victim = json.loads((copy / "manifest.json").read_text())["shards"][1]["name"]
    data = bytearray((copy / victim).read_bytes())
    data[-100] ^= 1
    (copy / victim).write_bytes(bytes(data))
    report = inspect_dataset(copy)
    assert [p.split(":")[0] for p in report.problems] == [victim]
    bad = kssgan("inspect", str(copy), "--no-sheet")
    assert bad.returncode == 1 and victim in bad.stderr and "checksum mismatch" in bad.stderr
    (copy / victim).write_bytes(bytes(data[: len(data) // 3]))
    assert "(truncated or replaced)" in inspect_dataset(copy).problems[0]
