"""Each source layout, built from real ORL faces, through the real prep."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.align import FaceDetector
from data_prep.prep import run_prep
from data_prep.sources.rafd import EXPRESSIONS, GAZES, POSES
from helpers import orl_images, prep_config, read_shards, sources


def test_folder_layout_identity_disjoint_splits(orl_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_prep(prep_config("folder", out, orl_folder, images_per_shard=8), progress=False)
    manifest = result.manifest
    assert manifest["images"] == 60 and manifest["identities"] == 12
    shards = read_shards(out)
    people = {split: set(labels["identity"].tolist()) for split, labels in shards.items()}
    assert set(people) == {"train", "val", "test"}
    assert not (people["train"] & people["val"] or people["train"] & people["test"] or people["val"] & people["test"])
    for split, ids in people.items():
        assert sorted(ids) == manifest["splits"][split]["identities"]
    # Every image is in exactly one shard, and its identity matches the folder it came from.
    src = sources(out)
    all_sources = np.concatenate([s["source_index"] for s in shards.values()])
    assert sorted(all_sources.tolist()) == list(range(60))
    names = {}
    for labels in shards.values():
        for identity, index in zip(labels["identity"], labels["source_index"]):
            names.setdefault(int(identity), set()).add(src[index]["identity"])
    assert all(len(v) == 1 for v in names.values())
    # No source name in the shards or the manifest.
    text = (out / "manifest.json").read_text()
    assert "s1" not in json.loads(text)["splits"] and not any(s["path"] in text for s in src)


def test_rafd_layout_labels(tmp_path: Path) -> None:
    root = tmp_path / "rafd"
    root.mkdir()
    expected = {}
    for n, (person, files) in enumerate(orl_images(6, 4).items()):
        for i, f in enumerate(files):
            expression, pose, gaze = EXPRESSIONS[(n + i) % 8], POSES[i % 5], GAZES[i % 3]
            name = f"Rafd{pose}_{n + 1:02d}_Caucasian_female_{expression}_{gaze}.jpg"
            Image.open(f).convert("RGB").save(root / name, quality=95)
            expected[name] = (expression, pose, gaze)
    (root / "Rafd090_notes.txt").write_text("not a face")
    out = tmp_path / "out"
    manifest = run_prep(prep_config("rafd", out, root), progress=False).manifest
    assert manifest["vocab"]["expression"] == EXPRESSIONS
    assert manifest["images"] == 24 and manifest["identities"] == 6
    assert [s["reason"] for s in manifest["skipped"]] == ["name does not follow the RaFD pattern"]
    src = sources(out)
    for labels in read_shards(out).values():
        for e, p, g, index in zip(labels["expression"], labels["pose"], labels["gaze"], labels["source_index"]):
            assert (EXPRESSIONS[e], POSES[p], GAZES[g]) == expected[src[index]["path"]]


def test_celeba_layout_landmarks_attributes_partition(tmp_path: Path) -> None:
    root = tmp_path / "celeba"
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    detector = FaceDetector()
    ident, marks, attrs, parts = [], [], [], []
    number = 0
    for n, (person, files) in enumerate(orl_images(8, 4).items()):
        for i, f in enumerate(files):
            number += 1
            name = f"{number:06d}.jpg"
            rgb = np.asarray(Image.open(f).convert("RGB"))
            Image.fromarray(rgb).save(images / name, quality=95)
            points = detector.landmarks(rgb).round().astype(int).ravel()
            ident.append(f"{name} {100 + n}")
            marks.append(f"{name} " + " ".join(map(str, points)))
            attrs.append(f"{name} {1 if i % 2 else -1} {-1 if n % 2 else 1} 1")
            # People 0-5 train, 6 val, 7 test; person 5 has one image marked val (majority wins).
            part = 0 if n < 6 else n - 5
            parts.append(f"{name} {1 if (n == 5 and i == 0) else part}")
    (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (root / "list_landmarks_align_celeba.txt").write_text(f"{len(marks)}\n{header}\n" + "\n".join(marks) + "\n")
    (root / "list_attr_celeba.txt").write_text(f"{len(attrs)}\nSmiling Male Young\n" + "\n".join(attrs) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    out = tmp_path / "out"
    manifest = run_prep(prep_config("celeba", out, root), progress=False).manifest
    assert manifest["align"] == "landmarks"  # the dataset's landmarks, no detector
    assert manifest["vocab"]["attributes"] == ["Smiling", "Male", "Young"]
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 24, "val": 4, "test": 4}
    src = sources(out)
    for labels in read_shards(out).values():
        for a, index in zip(labels["attributes"], labels["source_index"]):
            number = int(Path(src[index]["path"]).stem)
            person, i = divmod(number - 1, 4)
            assert a.tolist() == [i % 2, 0 if person % 2 else 1, 1]
