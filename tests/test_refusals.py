"""What the system refuses (issue 10): damaged or foreign inputs, outputs of another kind, unsafe state.

Each refusal is met through the real `kssgan` command and must be one line naming the file and the
problem (exit 2 for bad input), never a traceback, and must leave what was on disk as it was.
"""

import json
import os
import shutil
from pathlib import Path

import h5py
import pytest
from helpers import TINY, kssgan, refused

from kssgan_hpc.data.shards import ShardError, load_manifest, verify_dataset


@pytest.fixture
def data_copy(demo_data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(demo_data, copy)
    return copy


def edit_manifest(data: Path, edit) -> None:
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    result = edit(manifest)
    path.write_text(json.dumps(manifest if result is None else result))


# ----------------------------------------------------------------------------- 3: verified reads

def flip_image_bytes(shard: Path) -> None:
    """3 bytes of pixels changed in place: same size, valid HDF5, different content."""
    with h5py.File(shard, "r") as f:
        offset = f["images"].id.get_chunk_info(0).byte_offset  # one image per chunk
    data = bytearray(shard.read_bytes())
    for i in (0, 500, 1000):
        data[offset + i] ^= 0x55
    shard.write_bytes(bytes(data))


def test_a_shard_with_flipped_bytes_is_refused_by_every_stage(data_copy: Path, siamese_run: Path, clusters: Path,
                                                              gan_run: Path, tmp_path: Path) -> None:
    flip_image_bytes(data_copy / "train-00000.h5")
    common = [f"data={data_copy}"]
    for args in (["train", "siamese", f"out={tmp_path / 's'}", "steps=2", *TINY],
                 ["train", "gan", f"out={tmp_path / 'g'}", f"siamese={siamese_run}", f"clusters={clusters}",
                  "steps=2", *TINY],
                 ["cluster", f"siamese={siamese_run}", f"out={tmp_path / 'c.json'}"],
                 ["anonymize", f"gan={gan_run}", f"out={tmp_path / 'r'}", "splits=[train]"]):
        proc = kssgan(*args, *common)
        refused(proc, "train-00000.h5", "checksum mismatch")
        assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()
    # quick skips the hash (for 600 GB datasets) but still reads every shard's size and structure.
    assert verify_dataset(data_copy, "quick")["shards"]
    shard = data_copy / "val-00000.h5"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match="val-00000.h5: .* bytes, the manifest says"):
        verify_dataset(data_copy, "quick")


def test_a_rerun_hashes_only_the_shards_that_changed(data_copy: Path, tmp_path: Path) -> None:
    """A requeued run does not hash an unchanged dataset again (600 GB: 10+ minutes per requeue), and
    a shard altered since, even with its mtime put back, is hashed and refused."""
    args = ["train", "siamese", f"data={data_copy}", f"out={tmp_path / 's'}", *TINY]
    shards = len(load_manifest(data_copy)["shards"])
    first = kssgan(*args, "steps=2", check=True)
    assert f"{shards} shard(s) hashed, 0 unchanged" in first.stderr, first.stderr[-2000:]
    again = kssgan(*args, "steps=4", check=True)
    assert f"0 shard(s) hashed, {shards} unchanged" in again.stderr, again.stderr[-2000:]
    shard = data_copy / "train-00000.h5"
    mtime = shard.stat().st_mtime_ns
    flip_image_bytes(shard)
    os.utime(shard, ns=(mtime, mtime))  # the ctime still changed: that shows
    refused(kssgan(*args, "steps=6"), "train-00000.h5", "checksum mismatch")


def test_a_manifest_cannot_point_outside_its_folder(data_copy: Path) -> None:
    edit_manifest(data_copy, lambda m: m["shards"][0].update(name="../elsewhere/train-00000.h5"))
    with pytest.raises(ShardError, match="is not a file name inside the dataset folder"):
        load_manifest(data_copy)


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: [m], "manifest is a JSON list, expected an object"),
    (lambda m: m["shards"][0].update(split="holdout"), "split 'holdout' is not one of"),
    (lambda m: m["shards"][0].__delitem__("sha256"), "shards[0] lacks 'sha256'"),
    (lambda m: m.update(shards="abc"), "manifest 'shards' is 'abc', expected a list"),
])
def test_a_damaged_manifest_is_one_line(data_copy: Path, edit, fragment: str) -> None:
    edit_manifest(data_copy, edit)
    refused(kssgan("inspect", str(data_copy), "--no-sheet"), "manifest.json", fragment)


def test_truncated_manifest_and_shard_under_the_stages(data_copy: Path, siamese_run: Path, tmp_path: Path) -> None:
    manifest = data_copy / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    refused(kssgan("cluster", f"data={data_copy}", f"siamese={siamese_run}", f"out={tmp_path / 'c.json'}"),
            "manifest.json", "not valid JSON")
    manifest.write_text(text)
    shard = data_copy / "train-00001.h5"
    shard.write_bytes(shard.read_bytes()[:4096])
    refused(kssgan("train", "siamese", f"data={data_copy}", f"out={tmp_path / 's'}", *TINY),
            "train-00001.h5", "truncated")


def test_inspect_finds_an_edited_resolution(data_copy: Path) -> None:
    edit_manifest(data_copy, lambda m: m.update(resolution=m["resolution"] * 2))
    proc = kssgan("inspect", str(data_copy), "--no-sheet")
    assert proc.returncode == 1 and "the manifest says" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- 2: outputs of another kind

def test_commands_refuse_folders_of_another_kind(demo_data: Path, data_copy: Path, siamese_run: Path,
                                                 gan_run: Path, tmp_path: Path) -> None:
    before = (data_copy / "manifest.json").read_bytes()
    refused(kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={data_copy / 'manifest.json'}"),
            "inside a data folder")
    assert (data_copy / "manifest.json").read_bytes() == before
    refused(kssgan("prep", "--source", "demo", "--out", str(siamese_run), "--no-progress"),
            str(siamese_run), "is a siamese folder")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    refused(kssgan("prep", "--source", "demo", "--out", str(stranger), "--no-progress"),
            "not empty and not made by kssgan")
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]
    refused(kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={data_copy}"), "is a data folder")


def test_a_failing_train_leaves_the_run_folder_as_it_was(gan_run: Path) -> None:
    records = {name: (gan_run / name).read_bytes() for name in ("resolved_config.yaml", "run.json")}
    refused(kssgan("train", "gan", "data=/nonexistent", f"out={gan_run}", *TINY), "/nonexistent", "no manifest")
    assert {name: (gan_run / name).read_bytes() for name in records} == records


# ----------------------------------------------------------------------------- 9: one line, not a traceback

def test_cluster_files_and_checkpoints_that_are_wrong(demo_data: Path, siamese_run: Path, clusters: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "gan"
    small = tmp_path / "small" / "clusters.json"
    small.parent.mkdir()
    record = json.loads(clusters.read_text())
    record["clusters"][0]["identities"] = record["clusters"][0]["identities"][:2]
    small.write_text(json.dumps(record))
    shutil.copy(clusters.with_name("clusters-faces.safetensors"), small.with_name("clusters-faces.safetensors"))
    refused(kssgan("train", "gan", f"data={demo_data}", f"siamese={siamese_run}", f"clusters={small}",
                   f"out={out}", *TINY), str(small), "breaks k-anonymity")
    assert not out.exists()
    directory = tmp_path / "a-folder"
    directory.mkdir()
    refused(kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={directory}"),
            str(directory), "is a folder")
    assert list(directory.iterdir()) == []
    broken = tmp_path / "siamese"
    shutil.copytree(siamese_run, broken)
    for weights in broken.glob("checkpoints/step-*/siamese.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    refused(kssgan("cluster", f"data={demo_data}", f"siamese={broken}", f"out={tmp_path / 'c.json'}"),
            "siamese.safetensors", "not a readable safetensors file")
    shutil.rmtree(broken)
    shutil.copytree(siamese_run, broken)
    for trainer in broken.glob("checkpoints/step-*/trainer-rank00000.pt"):
        trainer.write_bytes(b"not a torch file")
    refused(kssgan("train", "siamese", f"data={demo_data}", f"out={broken}", "steps=100",
                   "identities_per_batch=4", "images_per_identity=2", *TINY),
            "trainer-rank00000.pt", "not a readable state file")


def test_cluster_files_from_two_runs_are_refused_together(demo_data: Path, siamese_run: Path, clusters: Path,
                                                         tmp_path: Path) -> None:
    # What `kssgan cluster k=2` killed between its two renames leaves over a finished k=4 output: the
    # k=4 record beside the k=2 faces. Training once accepted the pair and ran on 2-person templates.
    two = tmp_path / "two" / "clusters.json"
    kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={two}", "k=2", check=True)
    mixed = tmp_path / "mixed" / "clusters.json"
    mixed.parent.mkdir()
    shutil.copy(clusters, mixed)
    shutil.copy(two.with_name("clusters-faces.safetensors"), mixed.with_name("clusters-faces.safetensors"))
    out = tmp_path / "gan"
    refused(kssgan("train", "gan", f"data={demo_data}", f"siamese={siamese_run}", f"clusters={mixed}",
                   f"out={out}", *TINY), "clusters-faces.safetensors", "sha256 differs")
    assert not out.exists()


def test_a_generator_whose_training_data_is_gone_is_refused_before_a_release(gan_run: Path, demo_data: Path,
                                                                             tmp_path: Path) -> None:
    # The gate's third-party check matches every output against G's training people: without them
    # it cannot be run, so nothing is released (and the release folder is not even made).
    moved = tmp_path / "gan"
    shutil.copytree(gan_run, moved)
    for config in moved.glob("checkpoints/step-*/config.yaml"):
        config.write_text(config.read_text().replace(str(demo_data), str(tmp_path / "gone")))
    refused(kssgan("anonymize", f"gan={moved}", f"data={demo_data}", f"out={tmp_path / 'r'}", "splits=[train]"),
            str(tmp_path / "gone"), "third-party check")
    assert not (tmp_path / "r").exists()


def test_bad_arguments_are_one_line(gan_run: Path, demo_data: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk" / "person"
    junk.mkdir(parents=True)
    for i in range(3):
        (junk / f"{i}.jpg").write_text("not an image")
    refused(kssgan("anonymize", f"gan={gan_run}", f"input={junk.parent}", f"out={tmp_path / 'r'}"),
            "no usable image")
    refused(kssgan("anonymize", f"gan={gan_run}", "device=tpu"), "device='tpu' is invalid")
    proc = kssgan("pipeline", "--config", "configs/demo.yaml", "--ranks", "0")
    assert proc.returncode == 2 and "--ranks" in proc.stderr and "Traceback" not in proc.stderr
    refused(kssgan("evaluate", f"gan={gan_run}", f"data={demo_data}", "release=null", "ks=[33]",
                   f"out={tmp_path / 'report'}"), "needs at least that many")
    assert not (tmp_path / "report").exists()


def test_k_larger_than_a_split_is_one_line_before_any_record(gan_run: Path, demo_data: Path, siamese_run: Path,
                                                             tmp_path: Path) -> None:
    # Once a ValueError traceback from deep in the clustering, for both commands.
    refused(kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", "k=50",
                   f"out={tmp_path / 'c' / 'clusters.json'}"), str(demo_data), "split 'train'", "k=50 needs at least 50")
    assert not (tmp_path / "c" / "clusters.json").exists()
    # The demo's val split holds 6 people: k=8 cannot be promised to them.
    out, ledger = tmp_path / "release", tmp_path / "ledger"
    refused(kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={out}", f"ledger={ledger}", "k=8",
                   "splits=[train,val]"), str(demo_data), "split 'val'", "k=8 needs at least 8")
    written = sorted(p.name for p in out.rglob("*") if p.is_file() and ".kssgan-writer" not in p.name)
    assert written == [".kssgan-folder.json"], written  # no settings, gate record or cluster file
    assert not (ledger / "ledger.json").exists()


def test_a_read_only_output_is_one_line_before_any_work(demo_data: Path, siamese_run: Path, tmpfs) -> None:
    # Once a SafetensorError traceback (EROFS) after the clustering had run.
    read_only = tmpfs("ro", read_only=True)
    refused(kssgan("cluster", f"data={demo_data}", f"siamese={siamese_run}", f"out={read_only / 'clusters.json'}"),
            str(read_only), "cannot write here")
    refused(kssgan("train", "siamese", f"data={demo_data}", f"out={read_only / 'run'}", "steps=2"),
            str(read_only / "run"), "Read-only file system")
    refused(kssgan("prep", "--source", "demo", "--out", str(read_only / "data")), str(read_only / "data"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = kssgan("--debug", "inspect", str(tmp_path))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "no manifest" in proc.stderr
