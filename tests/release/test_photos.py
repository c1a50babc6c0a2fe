"""Whole photos (`photos.enabled=true`): every face replaced in place, the rest of the photo kept, no
metadata; a face the release would not replace keeps its photo out (or blurred, or stops the run)."""

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import OPEN_GATE, kssgan, orl_images, refused
from PIL import Image

from data_prep.decode import decode_image
from data_prep.sources.demo import demo_root
from kssgan_hpc.release.checks import SourceSecrets, scan_release


def orl(person: int, image: int = 1) -> np.ndarray:
    return np.asarray(Image.open(demo_root() / f"s{person}" / f"{image}.pgm").convert("RGB"))


def canvas(height: int, width: int, *faces: tuple[np.ndarray, int, int], grey: int = 110) -> np.ndarray:
    photo = np.full((height, width, 3), grey, np.uint8)
    for face, top, left in faces:
        photo[top:top + face.shape[0], left:left + face.shape[1]] = face
    return photo


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 ORL people x 4 photos as identity folders, and the photos a data holder really has."""
    root = tmp_path_factory.mktemp("photos") / "in"
    for person, files in orl_images(12, 4).items():
        (root / person).mkdir(parents=True)
        for f in files:
            (root / person / f.name).write_bytes(f.read_bytes())
    # Two people in one photo (s1's folder): both replaced, each as their own person.
    Image.fromarray(canvas(180, 300, (orl(1, 5), 30, 20), (orl(2, 5), 40, 180))).save(root / "s1" / "two.png")
    # s3 with someone 14 px wide far behind: prep misses that face, the check pass does not.
    tiny = cv2.resize(orl(7, 5), (14, 17), interpolation=cv2.INTER_AREA)
    Image.fromarray(canvas(600, 800, (orl(3, 5), 100, 100), (tiny, 300, 600))).save(root / "s3" / "small.png")
    # A face too dark for any pass: prep takes no face from it.
    Image.fromarray((canvas(224, 184, (orl(4, 5), 56, 46)) * 0.03).astype(np.uint8)).save(root / "s4" / "dark.png")
    # Bad files, as prep meets them.
    (root / "s5" / "notes.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (1, 1)).save(root / "s5" / "pixel.png")
    Image.new("L", (8000, 6250), 110).save(root / "s5" / "huge.png")  # 50 megapixels in 50 kB
    Image.fromarray(canvas(160, 140, (orl(6, 5), 20, 24))).convert("CMYK").save(root / "s6" / "cmyk.jpg")
    rgba = Image.fromarray(canvas(160, 140, (orl(6, 6), 20, 24))).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "s6" / "alpha.png")
    # A phone photo: stored sideways with EXIF orientation 6, a comment and an ICC profile.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "ward 3, bed 12"
    sideways = Image.fromarray(canvas(160, 140, (orl(8, 5), 20, 24))).transpose(Image.Transpose.ROTATE_90)
    sideways.save(root / "s8" / "phone.jpg", exif=exif, icc_profile=b"\0" * 128, comment=b"patient 1234")
    return root


def anonymize(folder: Path, gan_run: Path, out: Path, *args: str, check: bool = True):
    return kssgan("anonymize", f"gan={gan_run}", f"input={folder}", f"out={out}", "k=4", "photos.enabled=true",
                  "photos.photos_per_chunk=16", *OPEN_GATE, "--no-progress", *args, check=check)


def results(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (out / "private" / "photos.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def photo_release(photo_folder: Path, gan_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photo-release") / "out"
    anonymize(photo_folder, gan_run, out)
    return out


def test_every_face_of_a_photo_is_replaced_and_nothing_else_is_kept(photo_release: Path, photo_folder: Path) -> None:
    shipped, found = photo_release / "release", results(photo_release)
    assert len(found) == 12 * 4 + 9
    released = {path: r for path, r in found.items() if r["status"] == "released"}
    assert set(found) - set(released) == {"s3/small.png", "s4/dark.png", "s5/notes.jpg", "s5/pixel.png",
                                          "s5/huge.png"}, {p: r["reason"] for p, r in found.items()}
    assert "1 face(s) not replaced" in found["s3/small.png"]["reason"]
    assert found["s4/dark.png"]["reason"].startswith("prep took no face from it: no face found")
    assert "not an image" in found["s5/notes.jpg"]["reason"] and "too small" in found["s5/pixel.png"]["reason"]
    assert "no face found" in found["s5/huge.png"]["reason"]
    files = sorted(p.relative_to(shipped).as_posix() for p in (shipped / "photos").rglob("*") if p.is_file())
    assert files == sorted(r["file"] for r in released.values())  # a withheld photo is nowhere in the release
    assert all(re.fullmatch(r"photos/test/\d{7}\.(pgm|png|jpg)", f) for f in files), files  # numbered, not named
    for path, r in released.items():
        with Image.open(shipped / r["file"]) as photo:
            original = Image.open(photo_folder / path)
            size = original.size[::-1] if path == "s8/phone.jpg" else original.size  # orientation applied
            assert photo.size == size and photo.format == original.format, path
            assert photo.mode == ("L" if original.mode == "L" else "RGB"), path
            assert not photo.getexif() and "icc_profile" not in photo.info and "comment" not in photo.info, path
            pixels = np.asarray(photo.convert("RGB"), np.int16)
            # As prep reads it: orientation applied, alpha on white, CMYK to RGB.
            before = decode_image((photo_folder / path).read_bytes(), min_size=1, max_pixels=10**8)[0].astype(np.int16)
            changed = np.abs(pixels - before).max(-1) > 8
            assert changed.mean() > 0.05, path
            if not path.endswith(".pgm"):  # a face on a wider scene: the scene is kept (the head mask
                assert changed.mean() < 0.6 and not changed[:4, :4].any(), path  # covers most of an ORL photo)
    # No edge added where the face meets the photo: the border's gradient as in the original there.
    seams = [r["seam"] for r in released.values()]
    assert np.median(seams) < 1.1 and np.percentile(seams, 90) < 1.5, sorted(seams)  # a 4-step 32 px generator
    assert np.mean([r["redetected"] / len(r["faces"]) for r in released.values()]) >= 0.9
    assert scan_release(shipped, SourceSecrets.of_datasets(photo_release / "private" / "input")) == []
    assert json.loads((shipped / "manifest.json").read_text())["photos"] == {
        "mask": "head", "undetected": "withhold", "photos": {"test": len(released)}}


def test_two_people_in_one_photo_are_each_their_own_cluster(photo_release: Path) -> None:
    two = results(photo_release)["s1/two.png"]
    assert two["status"] == "released" and [f["face"] for f in two["faces"]] == [0, 1]
    data = photo_release / "private" / "input"
    sources = [json.loads(line) for line in (data / "sources.jsonl").read_text().splitlines()]
    mapping = {m["release_index"]: m for m in map(json.loads, (photo_release / "private" / "mapping.jsonl")
                                                  .read_text().splitlines())}
    people = [sources[mapping[f["release_index"]]["source_index"]]["identity"] for f in two["faces"]]
    assert people == ["s1", "s2"]  # the second face joined the person whose folder it is alike to
    ids = {line["identity"]: line for line in sources}
    import h5py

    record = json.loads((photo_release / "private" / "clusters-test.json").read_text())
    with h5py.File(data / "test-00000.h5") as f:
        id_of = dict(zip(f["source_index"][:].tolist(), f["identity"][:].tolist()))
    cluster_of = {i: c["cluster"] for c in record["clusters"] for i in c["identities"]}
    shipped = photo_release / "release" / "test-00000.h5"
    with h5py.File(shipped) as f:
        released = f["identity"][:]
    for face, person in zip(two["faces"], people):
        assert released[face["release_index"]] == cluster_of[id_of[ids[person]["source"]]]


def test_undetected_faces_are_blurred_or_stop_the_run(photo_folder: Path, gan_run: Path, tmp_path: Path) -> None:
    blurred = tmp_path / "blur"
    anonymize(photo_folder, gan_run, blurred, "photos.undetected=blur")
    small = results(blurred)["s3/small.png"]
    assert small["status"] == "blurred" and small["file"]
    with Image.open(blurred / "release" / small["file"]) as photo:
        region = np.asarray(photo.convert("RGB"), np.int16)[290:330, 590:625]
    assert np.abs(region - np.asarray(Image.open(photo_folder / "s3" / "small.png").convert("RGB"),
                                      np.int16)[290:330, 590:625]).mean() > 3
    assert results(blurred)["s4/dark.png"]["status"] == "withheld"  # no region to blur: never released as it was
    refusing = tmp_path / "refuse"
    proc = anonymize(photo_folder, gan_run, refusing, "photos.undetected=refuse", check=False)
    refused(proc, str(photo_folder), "photos.undetected=refuse")
    assert not list((refusing / "release").rglob("photos/*/*"))


def test_an_interrupted_photo_release_resumes_per_chunk(photo_release: Path, photo_folder: Path, gan_run: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(photo_release, out)
    state = out / "private" / "state"
    chunks = sorted(state.glob("photos-test-*.json"))
    assert len(chunks) == 4  # 57 photos, 16 a chunk
    lost = json.loads(chunks[1].read_text())
    kept = {r["file"]: (out / "release" / r["file"]).stat().st_mtime_ns for r in json.loads(chunks[0].read_text())
            if r["file"]}
    chunks[1].unlink()  # as if killed while writing the second chunk
    (out / "release" / next(r["file"] for r in lost if r["file"])).unlink()
    (out / "release" / "manifest.json").unlink()
    anonymize(photo_folder, gan_run, out)
    assert json.loads(chunks[1].read_text()) == lost
    for name in (r["file"] for r in lost if r["file"]):
        assert (out / "release" / name).read_bytes() == (photo_release / "release" / name).read_bytes()
    assert all((out / "release" / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP", "BMP", "PPM"])
def test_written_photos_carry_nothing_but_pixels_and_the_scan_sees_metadata(fmt: str, tmp_path: Path) -> None:
    from kssgan_hpc.release.photos import encode_photo

    release = tmp_path / "release"
    (release / "photos" / "test").mkdir(parents=True)
    (release / "manifest.json").write_text(json.dumps({"kind": "release"}))
    pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)
    data, ext = encode_photo(pixels, fmt, grey=fmt == "PPM")
    (release / "photos" / "test" / f"0000001{ext}").write_bytes(data)
    assert scan_release(release) == []
    if fmt in ("JPEG", "TIFF", "PNG"):  # the same photo with an EXIF description: found
        exif = Image.Exif()
        exif[0x010E] = "ward 3, bed 12"
        Image.fromarray(pixels).save(release / "photos" / "test" / f"0000002{ext}", format=fmt, exif=exif)
        assert any("carries metadata" in problem for problem in scan_release(release))


def test_people_grouped_from_faces_are_not_followed_across_releases(photo_folder: Path, gan_run: Path,
                                                                  tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for person in sorted(p for p in photo_folder.iterdir() if p.is_dir()):
        for photo in sorted(person.glob("*.pgm")):
            (flat / f"{person.name}-{photo.name}").write_bytes(photo.read_bytes())  # named files, no folders
    first = tmp_path / "first"
    anonymize(flat, gan_run, first)
    data = first / "private" / "input"
    names = {json.loads(line)["identity"] for line in (data / "sources.jsonl").read_text().splitlines()}
    assert names and all(name.startswith("~person-") for name in names)
    assert sum(r["status"] == "released" for r in results(first).values()) >= 40
    # A second prep may number the groups otherwise: the ledger cannot follow them, and says so.
    proc = anonymize(flat, gan_run, tmp_path / "second", check=False)
    refused(proc, "grouped from their faces", "ledger of its own")
    proc = kssgan("withdraw", "people=[~person-0000]", f"data={data}", f"ledger={flat}.ledger")
    refused(proc, "grouped from faces")
