"""Every class of bad input is skipped or converted, listed with its reason, and never stops the run."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.decode import SkipImage, decode_image
from data_prep.prep import PrepError, run_prep
from helpers import kssgan, orl_images, prep_config, read_shards, sources


def face(person: int = 0, index: int = 0) -> Image.Image:
    return Image.open(list(orl_images(person + 1, index + 1).values())[person][index])


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def messy_folder(orl_folder: Path) -> Path:
    """The 12-person ORL folder plus one file of every bad kind, spread over the people."""
    good = face(0, 0)
    bad = orl_folder / "s1"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not an image")
    (bad / "truncated.jpg").write_bytes(jpeg_bytes(good.convert("RGB"))[:700])
    good.resize((20, 24)).save(bad / "tiny.png")
    Image.new("1", (3000, 3000)).save(bad / "bomb.png")  # 9 MP > max_pixels below
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), np.uint8)).save(bad / "noise.png")
    shutil.copy(orl_folder / "s1" / "1.pgm", orl_folder / "s1" / "copy-of-1.pgm")
    (bad / "readme.txt").write_text("ignore me")
    (orl_folder / "loose.jpg").write_bytes(jpeg_bytes(good.convert("RGB")))
    # Convertible modes, each on a different person's real face.
    conv = orl_folder / "s2"
    face(1, 5).convert("CMYK").save(conv / "cmyk.jpg", quality=95)
    Image.fromarray((np.asarray(face(1, 6), np.uint16) * 257)).save(conv / "sixteen.png")
    face(1, 7).convert("RGB").convert("P", palette=Image.ADAPTIVE).save(conv / "palette.png")
    rgba = face(1, 8).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(conv / "alpha.png")
    # EXIF orientation 6 means "rotate 90° clockwise to display": store the face rotated the other way.
    exif = Image.Exif()
    exif[0x0112] = 6
    (conv / "rotated.jpg").write_bytes(jpeg_bytes(face(1, 9).convert("RGB").rotate(90, expand=True), exif=exif))
    return orl_folder


def test_bad_inputs_skipped_or_converted(messy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = kssgan("prep", "--source", "folder", "--input", str(messy_folder), "--out", str(out),
                  "--resolution", "32", "--no-progress", "max_pixels=4000000")
    assert proc.returncode == 0, proc.stderr
    src = {s["path"]: s["source"] for s in sources(out)}
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    expect = {
        "s1/empty.jpg": "empty file",
        "s1/notes.jpg": "not an image",
        "s1/truncated.jpg": "truncated",
        "s1/tiny.png": "too small",
        "s1/bomb.png": "decompression bomb",
        "s1/noise.png": "no face found",
        "s1/copy-of-1.pgm": "duplicate content of source",
        "s1/readme.txt": "unsupported file type",
        "loose.jpg": "not inside an identity folder",
    }
    for path, fragment in expect.items():
        assert fragment in reasons[src[path]], (path, reasons.get(src[path]))
    assert len(reasons) == len(expect)
    converted = {src_index: what for what, indices in manifest["converted"].items() for src_index in indices}
    for path, fragment in {"s2/cmyk.jpg": "CMYK", "s2/sixteen.png": "16-bit", "s2/palette.png": "palette",
                           "s2/alpha.png": "alpha", "s2/rotated.jpg": "EXIF orientation 6"}.items():
        assert any(fragment in w for i, w in converted.items() if i == src[path]), path
    kept = np.concatenate([labels["source_index"] for labels in read_shards(out).values()])
    assert manifest["images"] == 60 + 5 == len(kept)
    assert src["s2/rotated.jpg"] in kept.tolist()


def test_exif_rotation_restores_the_upright_face() -> None:
    upright = face(3, 2).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = jpeg_bytes(upright.rotate(90, expand=True), exif=exif)
    decoded, conversions = decode_image(rotated, min_size=16, max_pixels=10**8)
    reference, _ = decode_image(jpeg_bytes(upright), min_size=16, max_pixels=10**8)
    assert decoded.shape == reference.shape and conversions == ["EXIF orientation 6 applied"]
    assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 3


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    grey = np.asarray(face(0, 0), np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey * 257).save(buffer, "PNG")
    decoded, conversions = decode_image(buffer.getvalue(), min_size=16, max_pixels=10**8)
    assert "16-bit" in conversions[0]
    assert np.abs(decoded[:, :, 0].astype(int) - grey).max() <= 1


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(SkipImage, match="empty"):
        decode_image(b"", min_size=1, max_pixels=10)
    with pytest.raises(SkipImage, match="not an image"):
        decode_image(b"GIF89a but not really", min_size=1, max_pixels=10**6)


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "faces" / "someone"
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"")
    (root / "b.jpg").write_text("nope")
    with pytest.raises(PrepError, match="no usable image among 2 inputs"):
        run_prep(prep_config("folder", tmp_path / "out", tmp_path / "faces"), progress=False)
    proc = kssgan("prep", "--source", "folder", "--input", str(tmp_path / "faces"), "--out", str(tmp_path / "o2"),
                  "--no-progress")
    assert proc.returncode == 2 and "no usable image" in proc.stderr


def test_unwritable_output_is_an_error(orl_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = kssgan("prep", "--source", "folder", "--input", str(orl_folder), "--out", str(blocker / "out"),
                  "--no-progress")
    assert proc.returncode == 2
    assert "cannot create the output folder" in proc.stderr and str(blocker / "out") in proc.stderr


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    proc = kssgan("prep", "--source", "folder", "--out", str(tmp_path / "o"), "--no-progress")
    assert proc.returncode == 2 and "needs an input folder" in proc.stderr
    proc = kssgan("prep", "--source", "rafd", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "nowhere" in proc.stderr
