"""align.faces=all: every face of a photo is a record, and faces are grouped into people (data_prep/faces.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import orl_images, prep_config, sources
from PIL import Image

from data_prep.faces import group_people
from data_prep.prep import run_prep
from kssgan_hpc.config import ConfigError, PrepConfig, load_config


def test_unlabelled_photos_become_people_and_no_one_is_split(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    owner = {}
    for person, files in orl_images(8, 4).items():
        for f in files:
            name = f"{len(owner):03d}.pgm"  # no names: who is who comes from the faces
            (folder / name).write_bytes(f.read_bytes())
            owner[name] = person
    pair = np.full((150, 260, 3), 110, np.uint8)
    for left, person in ((20, "s1"), (150, "s2")):
        pair[20:132, left:left + 92] = np.asarray(Image.open(orl_images(8, 5)[person][4]).convert("RGB"))
    Image.fromarray(pair).save(folder / "pair.png")
    out = tmp_path / "data"
    run_prep(prep_config("photos", out, input=folder, **{"align.faces": "all", "split.train": 1.0, "split.val": 0.0,
                                                        "split.test": 0.0}), progress=False)
    lines = sources(out)
    assert len(lines) == 32 + 2 and [line["face"] for line in lines if line["path"] == "pair.png"] == [0, 1]
    group_of = {}
    for line in lines:
        person = owner.get(line["path"])
        if person is not None:
            group_of.setdefault(person, set()).add(line["identity"])
    assert all(len(groups) == 1 for groups in group_of.values()), group_of  # nobody split in two
    assert len({g for groups in group_of.values() for g in groups}) >= 6  # and not everyone merged
    pair_people = [line["identity"] for line in lines if line["path"] == "pair.png"]
    assert pair_people == [*group_of["s1"], *group_of["s2"]]  # each face of the pair is its own person
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 34 and manifest["config"]["align"]["faces"] == "all"


def test_group_people_merges_rather_than_splits() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 128)))
    noisy = lambda v: (v + 0.2 * rng.normal(size=128) / np.sqrt(128)) / np.linalg.norm(v)  # noqa: E731
    embeddings = np.stack([noisy(a), noisy(a), noisy(b), noisy(a), noisy(c), noisy(c)])
    identities = ["A", "A2", "B", "B", "", ""]
    primary = np.array([True, True, True, False, False, False])
    # Two folders stay two people however alike; a face in B's photo that is A joins A; two alike
    # unnamed faces are one putative person.
    assert group_people(identities, embeddings, primary, 0.3) == ["A", "A2", "B", "A", "~person-0000", "~person-0000"]


@pytest.mark.parametrize("overrides, fragment", [
    (["source=photos"], "set align.faces=all"),
    (["align.faces=all", "align.method=landmarks"], "finds every face with the detector"),
    (["align.faces=all", "align.method=detector"], "leave it auto"),
    (["align.same_person=2"], "align.same_person=2"),
])
def test_face_settings_are_checked(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(PrepConfig, overrides=overrides)
