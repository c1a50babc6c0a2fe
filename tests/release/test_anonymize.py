"""`kssgan anonymize`: the release's guarantee, what it must not carry, resume, ranks, folder input."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import OPEN_GATE, kssgan, read_shards, sources, torchrun
from PIL import Image

from kssgan_hpc.data.dataset import FaceShards
from kssgan_hpc.data.shards import TRACEABLE_FIELDS
from kssgan_hpc.folders import MARKER
from kssgan_hpc.release.checks import SourceSecrets, check_release_clusters, scan_release


PHOTOS = ["photos.enabled=true", "photos.photos_per_chunk=64"]
"""The release writes its photos too (360 of them: 6 chunks, so two ranks share them)."""


def source_names(data: Path) -> SourceSecrets:
    return SourceSecrets.of_datasets(data)


@pytest.fixture(scope="module")
def release(demo_data: Path, gan_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release") / "out"
    kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={out}", "splits=[train,test]", "k=4",
           "png=true", "images_per_shard=100", *PHOTOS, f"ledger={out.parent / 'ledger'}", *OPEN_GATE, "--no-progress",
           check=True)
    return out


def test_release_is_k_anonymous_and_carries_nothing_traceable(release: Path, demo_data: Path) -> None:
    shipped = release / "release"
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["kind"] == "release" and manifest["k"] == 4
    gate = json.loads((release / "private" / "gate.json").read_text())
    assert manifest["deidentification"] == gate["shipped"] == ("kssgan" if gate["generator"]["passed"]
                                                               else "ksame_aligned")
    # 32 training people in clusters of k + withdrawal_slack = 5 (or more); the 4 test people make one of 4.
    assert manifest["splits"] == {"train": {"images": 320, "identities": 6}, "test": {"images": 40, "identities": 1}}
    assert scan_release(shipped, source_names(demo_data)) == []
    for shard in shipped.glob("*.h5"):
        with h5py.File(shard, "r") as f:
            assert not set(f) & set(TRACEABLE_FIELDS) and f.attrs["kind"] == "release"
    assert len(list((shipped / "png").rglob("*.png"))) == 360
    assert not (shipped / "sources.jsonl").exists()
    # Every released identity is a cluster of >= 4 source identities (from the private records).
    assert check_release_clusters(release / "private") == {"clusters": 7, "min_size": 4, "max_size": 7,
                                                           "records": 2}
    records = json.loads((release / "private" / "clusters-train.json").read_text())
    cluster_of = {i: c["cluster"] for c in records["clusters"] for i in c["identities"]}
    original = FaceShards(demo_data, "train")
    released = FaceShards(shipped, "train")
    assert sorted(np.unique(released.labels["identity"])) == sorted(set(cluster_of.values()))
    # The release's order is not the source order: its identity sequence is a permutation of it.
    expected = np.array([cluster_of[int(i)] for i in original.labels["identity"]])
    assert sorted(released.labels["identity"]) == sorted(expected)
    assert not np.array_equal(released.labels["identity"], expected)


@pytest.mark.parametrize("plant, fragment", [
    ("shard", "traceable fields"), ("png", "carries metadata"), ("file", "does not belong in a release"),
    ("manifest", "keys that do not belong"), ("name", "names a source"),
    ("short name", "names a source ('s12')"), ("raw digest", "holds a source digest or landmarks"),
    ("pixels", "holds a source's digest in its bytes"), ("landmarks", "holds a source digest or landmarks"),
])
def test_scan_finds_every_forbidden_thing(release: Path, demo_data: Path, tmp_path: Path, plant: str,
                                          fragment: str) -> None:
    shipped = tmp_path / "release"
    shutil.copytree(release / "release", shipped)
    manifest = json.loads((shipped / "manifest.json").read_text())
    if plant == "shard":
        shutil.copy(demo_data / "train-00000.h5", shipped / "train-00009.h5")
    elif plant == "png":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Source", "s1/1.pgm")
        Image.new("RGB", (8, 8)).save(shipped / "png" / "train" / "x.png", pnginfo=info)
    elif plant == "file":
        shutil.copy(demo_data / "sources.jsonl", shipped / "sources.jsonl")
    elif plant == "manifest":
        manifest["skipped"] = []
    elif plant in ("short name", "raw digest", "pixels", "landmarks"):
        digest = bytes.fromhex(sources(demo_data)[7]["sha256"])
        with h5py.File(demo_data / "train-00000.h5", "r") as f:
            landmarks = f["landmarks"][3]
        with h5py.File(shipped / "train-00000.h5", "r+") as f:
            if plant == "short name":
                f["images"].attrs["note"] = "from s12"  # a dataset-level attribute, a 3-letter identity
            elif plant == "raw digest":
                f["identity"].attrs["tag"] = np.frombuffer(digest, np.uint8)
            elif plant == "pixels":
                image = f["images"][5]
                image.reshape(-1)[100:132] = np.frombuffer(digest, np.uint8)
                f["images"][5] = image
            else:
                f.attrs["geometry"] = landmarks
    else:
        manifest["created_by"] = sources(demo_data)[3]["path"]
    (shipped / "manifest.json").write_text(json.dumps(manifest))
    problems = scan_release(shipped, source_names(demo_data))
    assert any(fragment in p for p in problems), problems


def test_broken_cluster_record_fails_the_check(release: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"
    shutil.copytree(release / "private", private)
    record = json.loads((private / "clusters-train.json").read_text())
    while len(record["clusters"][0]["identities"]) > 3:  # cluster 0 now holds 3 people
        record["clusters"][1]["identities"].append(record["clusters"][0]["identities"].pop())
    (private / "clusters-train.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"clusters-train.json: breaks 4-anonymity: 1 cluster\(s\) smaller"):
        check_release_clusters(private)


def test_interrupted_release_resumes_and_other_settings_are_refused(release: Path, demo_data: Path,
                                                                   gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(release, out)
    digests = {r["name"]: r["sha256"] for r in json.loads((out / "release" / "manifest.json").read_text())["shards"]}
    kept = out / "release" / "train-00000.h5"
    kept_mtime = kept.stat().st_mtime_ns
    (out / "release" / "train-00002.h5").unlink()  # as if killed before this shard was written
    (out / "release" / "manifest.json").unlink()
    args = [f"gan={gan_run}", f"data={demo_data}", f"out={out}", "splits=[train,test]", "k=4", "png=true", *PHOTOS,
            "images_per_shard=100", f"ledger={release.parent / 'ledger'}", *OPEN_GATE, "--no-progress"]
    kssgan("anonymize", *args, check=True)
    again = {r["name"]: r["sha256"] for r in json.loads((out / "release" / "manifest.json").read_text())["shards"]}
    assert again == digests and kept.stat().st_mtime_ns == kept_mtime
    refused = kssgan("anonymize", *[a if a != "k=4" else "k=5" for a in args])
    assert refused.returncode == 2 and "made with other settings (k)" in refused.stderr


def test_two_ranks_write_the_same_release(release: Path, demo_data: Path, gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "private").mkdir(parents=True)
    for name in ("settings.json", "gate.json"):  # the same release (its secret seed), written by 2 ranks
        shutil.copy(release / "private" / name, out / "private" / name)
    shutil.copy(release / MARKER, out / MARKER)  # and so a release folder
    torchrun("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={out}", "splits=[train,test]", "k=4",
             "png=true", "images_per_shard=100", *PHOTOS, f"ledger={release.parent / 'ledger'}", *OPEN_GATE,
             "--no-progress", tmp=tmp_path)
    one = json.loads((release / "release" / "manifest.json").read_text())
    two = json.loads((out / "release" / "manifest.json").read_text())
    assert two["shards"] == one["shards"]  # same names, counts and sha256
    assert (out / "private" / "mapping.jsonl").read_text() == (release / "private" / "mapping.jsonl").read_text()
    # The photos too: the ranks share the chunks, and every photo comes out as one process writes it.
    assert (out / "private" / "photos.jsonl").read_text() == (release / "private" / "photos.jsonl").read_text()
    assert two["photos"] == one["photos"] and sum(one["photos"]["photos"].values()) >= 300


def released_identities(release: Path, split: str) -> np.ndarray:
    return FaceShards(release / "release", split).labels["identity"]


def test_the_order_is_secret_per_release_and_the_mapping_is_complete(release: Path, demo_data: Path,
                                                                      gan_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", f"out={other}", "splits=[train,test]", "k=4",
           "images_per_shard=100", f"ledger={release.parent / 'ledger'}", *OPEN_GATE, "--no-progress", check=True)
    settings = [json.loads((r / "private" / "settings.json").read_text()) for r in (release, other)]
    assert settings[0]["secret_seed"] != settings[1]["secret_seed"]  # drawn per release, never from config
    assert not np.array_equal(released_identities(release, "train"), released_identities(other, "train"))
    assert "secret_seed" not in (release / "release" / "manifest.json").read_text()
    # mapping.jsonl: every released image once, pointing at the prepped source it was made from.
    mapping = [json.loads(line) for line in (release / "private" / "mapping.jsonl").read_text().splitlines()]
    prepped = read_shards(demo_data)
    for split in ("train", "test"):
        rows = sorted((m for m in mapping if m["split"] == split), key=lambda m: m["release_index"])
        assert [m["release_index"] for m in rows] == list(range(len(prepped[split]["identity"])))
        assert sorted(m["source_index"] for m in rows) == sorted(prepped[split]["source_index"].tolist())
        record = json.loads((release / "private" / f"clusters-{split}.json").read_text())
        cluster_of = {i: c["cluster"] for c in record["clusters"] for i in c["identities"]}
        identity_of = dict(zip(prepped[split]["source_index"].tolist(), prepped[split]["identity"].tolist()))
        released = released_identities(release, split)
        assert all(released[m["release_index"]] == cluster_of[identity_of[m["source_index"]]] for m in rows)
        # Each face shows the cues of an image of its own cluster, each image's cues shown once.
        assert all(cluster_of[identity_of[m["cue_source_index"]]] == cluster_of[identity_of[m["source_index"]]]
                   for m in rows)
        assert sorted(m["cue_source_index"] for m in rows) == sorted(m["source_index"] for m in rows)
        assert sum(m["cue_source_index"] != m["source_index"] for m in rows) > len(rows) / 2
        if split == "train":  # PNG names are release indices
            assert {int(p.stem) for p in (release / "release" / "png" / split).glob("*.png")} == set(range(len(rows)))


def test_the_public_manifest_says_how_the_release_was_tested(release: Path) -> None:
    gate = json.loads((release / "release" / "manifest.json").read_text())["gate"]
    assert gate["splits"] == ["test", "train"]  # the held-out people, and every released split's
    assert gate["decision"] == json.loads((release / "private" / "gate.json").read_text())["shipped"]
    # The tests' open gate is weaker than the default, and the manifest says so.
    assert sorted(gate["weaker_than_default"]) == ["gate.min_faces_detected=0.0", "gate.rule=point",
                                                   "gate.tolerance=0.9"]
    assert gate["settings"]["allow_weaker"] is True
    for split in ("train", "test"):
        attackers = gate["generator"]["splits"][split]["attackers"]
        assert set(attackers) == set(gate["settings"]["attackers"])
        assert all(set(a) == {"rank1", "probes", "p_value", "p_within_bound"} for a in attackers.values())


def test_a_weaker_gate_needs_allow_weaker(demo_data: Path, gan_run: Path, tmp_path: Path) -> None:
    weak = ["gate.tolerance=0.95", "gate.attackers=[lowpass8]", "gate.probes_per_identity=1",
            "gate.min_faces_detected=0"]
    for settings in (weak, ["gate_split=train"]):
        refused = kssgan("anonymize", f"gan={gan_run}", f"data={demo_data}", "splits=[train]", *settings,
                         f"out={tmp_path / 'weak'}", "--no-progress")
        assert refused.returncode == 2 and "gate.allow_weaker=true" in refused.stderr, refused.stderr
        assert all(s.split("=")[0] in refused.stderr for s in settings), refused.stderr
        assert not (tmp_path / "weak").exists()


def test_a_folder_goes_through_prep(orl_folder: Path, gan_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = kssgan("anonymize", f"gan={gan_run}", f"input={orl_folder}", f"out={out}", "k=3", *OPEN_GATE,
                  "--no-progress")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "release" / "manifest.json").read_text())
    assert manifest["splits"] == {"test": {"images": 60, "identities": 3}}  # 12 people, k + slack = 4 each
    assert (out / "private" / "input" / "manifest.json").is_file()
    assert scan_release(out / "release", source_names(out / "private" / "input")) == []


def test_a_resume_with_other_weights_is_refused(demo_data: Path, gan_run: Path, siamese_run: Path,
                                               tmp_path: Path) -> None:
    gan, siamese = tmp_path / "gan", tmp_path / "siamese"
    shutil.copytree(gan_run, gan)
    shutil.copytree(siamese_run, siamese)
    for config in gan.glob("checkpoints/*/config.yaml"):  # the copied GAN names the copied Siamese
        config.write_text(config.read_text().replace(str(siamese_run), str(siamese)))
    args = [f"gan={gan}", f"data={demo_data}", f"out={tmp_path / 'out'}", "splits=[test]", "k=4",
            f"ledger={tmp_path / 'ledger'}", *OPEN_GATE, "--no-progress"]
    kssgan("anonymize", *args, check=True)
    from safetensors.torch import load_file, save_file

    from kssgan_hpc.artefacts import generator_weights

    weights, _ = generator_weights(gan)  # new weights under the same path, as a retrain would leave
    original = weights.read_bytes()
    state = load_file(weights)
    state["to_image.bias"] = state["to_image.bias"] + 0.01
    save_file(state, weights)
    refused = kssgan("anonymize", *args)
    assert refused.returncode == 2 and "made with other settings (generator)" in refused.stderr
    weights.write_bytes(original)
    siamese_file = sorted(siamese.glob("checkpoints/step-*/siamese.safetensors"))[-1]
    state = load_file(siamese_file)
    name = sorted(state)[0]
    state[name] = state[name] * 1.001
    save_file(state, siamese_file)
    refused = kssgan("anonymize", *args)
    assert refused.returncode == 2 and "made with other settings (siamese)" in refused.stderr


def test_cluster_records_edited_to_k_1_fail_against_the_promised_k(release: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"
    shutil.copytree(release / "private", private)
    record = json.loads((private / "clusters-train.json").read_text())
    record["k"] = 1
    record["clusters"] = [{"cluster": n, "identities": [i]}
                          for n, i in enumerate(i for c in record["clusters"] for i in c["identities"])]
    (private / "clusters-train.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="clusters-train.json: k=1 is invalid"):
        check_release_clusters(private)  # the file's own claim is no excuse
    with pytest.raises(ValueError, match=r"breaks 4-anonymity: \d+ cluster\(s\) smaller than k=4"):
        check_release_clusters(private, k=4)  # what evaluate checks: the k the release's manifest promises
