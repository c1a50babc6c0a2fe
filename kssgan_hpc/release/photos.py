"""Whole photos: every face of a source photo replaced in place by its released face, the rest kept.

After `anonymize` has written a release of aligned faces, each photo of the released people is read
again (checked against the sha256 prep recorded) and each of its released faces is warped back
through the inverse of its crop's similarity transform (the quad prep stored) and blended in with a
soft mask: `mask=head` (hair and ears too) or `mask=face` (brows to chin, cheek to cheek), one
ellipse in the crop's frame, the soft edge lying outside the region so that none of the original face
shows through. The pasted face takes the photo's brightness, colour and contrast from a ring around
the edge. The photo is written at its own size and format, orientation applied, with no metadata
(EXIF, ICC, comments).

A face the release does not replace is an unprotected face in a published photo. A second detector
pass (YuNet at another scale and a lower threshold, `photos.check_*`) looks at each photo for faces
outside the replaced regions, and at each output for any face outside them (a face counts as
replaced only when its centre and all five landmarks lie inside a replaced region); `photos.undetected`
decides: withhold the photo (the default), blur that face's region, or refuse the run before any
photo is written. A photo in which prep found no face at all is withheld under every policy but
refuse (no region to blur). Withheld photos are listed, with the reason, in private/photos.jsonl.

Released as out/release/photos/<split>/<number>.<ext>, numbered in an order drawn from the
release's secret seed. Resumable per chunk of photos (a record per chunk in private/state),
multi-process: rank r writes chunks r, r + world, ...
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from data_prep.align import Detection, FaceDetector
from data_prep.decode import SkipImage, decode_image
from data_prep.sources import list_source
from kssgan_hpc.config.release import PhotoConfig
from kssgan_hpc.data.shards import SOURCES_NAME, load_manifest, open_shard, sha256_file, shard_name, split_shards
from kssgan_hpc.distributed import all_reduce
from kssgan_hpc.errors import InputError
from kssgan_hpc.files import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
"""Photo formats written as they came; PGM/PPM keep theirs (by mode), anything else becomes PNG."""
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
CHECK_UPSCALES = (1.5, 3.0)
"""The check pass runs at other scales than prep (1x, 2x of its base): a 14 px face in an 800 x 600 photo
that prep missed is found at 3x."""
REGIONS = {"face": ((0.5, 0.6), (0.30, 0.33)), "head": ((0.5, 0.5), (0.42, 0.44))}
"""Each mask's ellipse in the aligned crop (centre, radii; shares of its side). The FFHQ crop puts the
eyes at about 0.47 and the mouth at 0.74 of its height, the eyes 1/4 of its side apart."""


@dataclass
class PhotoFace:
    """One face of a photo as the release replaces it."""

    release_index: int
    quad: np.ndarray
    """[4, 2] the face's crop corners in the photo's pixels (prep's quad)."""
    split: str = "test"
    """The split of the release that holds the face."""
    face: int = 0
    """Its index in the photo (left to right)."""
    image: np.ndarray | None = None
    """[S, S, C] uint8: the released face."""


@dataclass
class PhotoResult:
    """What became of one photo (a line of private/photos.jsonl)."""

    split: str
    source: int
    """The photo's first line in the data's sources.jsonl."""
    path: str
    status: str
    """released | blurred (released, with faces the release did not replace blurred) | withheld"""
    reason: str | None = None
    number: int | None = None
    file: str | None = None
    sha256: str | None = None
    faces: list[dict[str, int]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    redetected: int = 0
    """Replaced faces the check pass found again in the output (a face, not a hole)."""
    seam: float | None = None
    """Gradient on the mask's border in the output over the original's there: 1, no edge added."""

# ----------------------------------------------------------------------------- geometry

def crop_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """The affine map photo -> aligned crop (the one prep resampled with)."""
    target = np.array([[0, 0], [0, size], [size, 0]], np.float32)
    return cv2.getAffineTransform(np.asarray(quad, np.float32)[[0, 1, 3]], target)


def region_in_crop(size: int, mask: str) -> np.ndarray:
    """uint8 [S, S] 1 inside the replaced region: the mask's ellipse, at the same place in every crop.
    The crop itself follows the face (prep's quad); shaping the region after each source's landmarks
    carried its proportions into the release (the face-only attack read them). A face the ellipse
    leaves uncovered is caught by the check pass on the output."""
    (cx, cy), (rx, ry) = REGIONS[mask]
    region = np.zeros((size, size), np.uint8)
    cv2.ellipse(region, (int(round(cx * size)), int(round(cy * size))),
                (int(round(rx * size)), int(round(ry * size))), 0, 0, 360, 1, -1)
    return region


def face_region(shape: tuple[int, int], quad: np.ndarray, size: int, mask: str,
                feather: float) -> tuple[np.ndarray, np.ndarray]:
    """A face's replaced region in a photo of `shape` (bool [H, W]) and its blend weight (float [H, W]:
    1 inside, falling to 0 across a soft edge of `feather` x the crop's side outside it)."""
    height, width = shape
    region = cv2.warpAffine(region_in_crop(size, mask) * 255, crop_matrix(quad, size), (width, height),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0) >= 128
    # The soft edge lies outside the region: inside it, nothing of the original remains.
    ramp = max(1.0, feather * float(np.hypot(*(np.asarray(quad[3]) - quad[0]))))
    distance = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 5)
    t = np.clip(1.0 - distance / ramp, 0.0, 1.0)
    weight = t * t * (3 - 2 * t)  # smoothstep
    weight[region] = 1.0
    return region, weight


def paste_faces(photo: np.ndarray, faces: list[PhotoFace], mask: str,
                feather: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every face warped back into `photo` ([H, W, 3] uint8) and blended. Returns the output, the
    replaced region (bool [H, W]: weight 1) and the blend weight (float [H, W])."""
    height, width = photo.shape[:2]
    out = photo.astype(np.float32)
    region_all = np.zeros((height, width), bool)
    weight_all = np.zeros((height, width), np.float32)
    for face in faces:
        size = face.image.shape[0]
        region, weight = face_region((height, width), face.quad, size, mask, feather)
        if not region.any():
            continue
        generated = face.image if face.image.shape[-1] == 3 else np.repeat(face.image, 3, axis=-1)
        warped = cv2.warpAffine(generated, crop_matrix(face.quad, size), (width, height),
                                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        # The photo's local brightness and colour, and its contrast, taken from a ring around the soft edge
        # (what the photo shows anyway) in the photo and in the pasted crop alike: matching to the
        # replaced face's own pixels carried its skin tone and lighting into the release (the face-only
        # attack read them).
        ring = _ring(region, weight, face.quad, feather)
        if ring.sum() >= 16:
            # One contrast gain for all channels (per channel, small colour casts were amplified into tints).
            original, made = out[ring], warped[ring]
            gain = np.clip(original.mean(-1).std() / max(made.mean(-1).std(), 1e-3), 0.67, 1.5)
            warped = (warped - made.mean(0)) * gain + original.mean(0)
        out = out * (1 - weight[..., None]) + np.clip(warped, 0, 255) * weight[..., None]
        region_all |= region
        weight_all = np.maximum(weight_all, weight)
    return np.clip(out.round(), 0, 255).astype(np.uint8), region_all, weight_all


def _ring(region: np.ndarray, weight: np.ndarray, quad: np.ndarray, feather: float) -> np.ndarray:
    """Pixels just outside a face's soft edge, as wide again as the edge (at least 2 px)."""
    side = float(np.hypot(*(np.asarray(quad[3]) - quad[0])))
    width = max(2, int(round(max(feather, 0.03) * side)))
    around = cv2.dilate((weight > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                                 (2 * width + 1, 2 * width + 1)))
    return around.astype(bool) & (weight == 0)


def seam_ratio(output: np.ndarray, original: np.ndarray, region: np.ndarray, weight: np.ndarray) -> float | None:
    """Mean gradient magnitude on the mask's border (its soft edge and the region's rim) in the output
    over that in the original photo at the same pixels: 1 when pasting added no edge, a seam raises it."""
    rim = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~region
    border = ((weight > 0.02) & (weight < 0.98)) | rim
    if border.sum() < 4:
        return None

    def gradient(image: np.ndarray) -> np.ndarray:
        grey = image.astype(np.float32).mean(-1)
        return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))[border]

    return float(gradient(output).mean() / max(gradient(original).mean(), 1e-6))


def blur_region(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box (x, y, w, h) enlarged 1.6x about its centre, pixelated to 6 blocks across and blurred.
    Returns the image and the blurred area (bool)."""
    height, width = image.shape[:2]
    centre, half = box[:2] + box[2:] / 2, box[2:] * 0.8
    x0, y0 = np.floor(np.maximum(centre - half, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(centre + half, [width, height])).astype(int)
    area = np.zeros((height, width), bool)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, area
    patch = image[y0:y1, x0:x1]
    blocks = cv2.resize(patch, (6, max(1, round(6 * (y1 - y0) / (x1 - x0)))), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(blocks, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (0, 0), max(1.0, (x1 - x0) / 12))
    area[y0:y1, x0:x1] = True
    return out, area


def outside(detections: list[Detection], covered: np.ndarray) -> list[Detection]:
    """The detections not wholly in `covered` (bool [H, W]): the centre or any of the five landmarks
    outside it (a neighbour's face half inside a head's region is not covered)."""
    height, width = covered.shape
    found = []
    for face in detections:
        points = np.vstack([face.center, face.landmarks])
        inside = (points >= 0).all(1) & (points[:, 0] < width) & (points[:, 1] < height)
        x, y = np.clip(points, 0, [width - 1, height - 1]).astype(int).T
        if not (inside & covered[y, x]).all():
            found.append(face)
    return found


# ----------------------------------------------------------------------------- files

def encode_photo(image: np.ndarray, source_format: str | None, grey: bool) -> tuple[bytes, str]:
    """The photo's bytes in its own format, nothing but pixels: (bytes, extension)."""
    pil = Image.fromarray(image.mean(-1).round().astype(np.uint8) if grey else image, "L" if grey else "RGB")
    if source_format == "PPM":
        fmt, ext = "PPM", ".pgm" if grey else ".ppm"
    elif source_format in FORMATS:
        fmt, ext = source_format, FORMATS[source_format]
    else:
        fmt, ext = "PNG", ".png"
    options = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "TIFF": {"compression": "tiff_deflate"}}
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options.get(fmt, {}))  # a fresh image: no EXIF, ICC or text chunk
    return buffer.getvalue(), ext


def read_photo(path: Path, sha256: str | None, max_pixels: int) -> tuple[np.ndarray, str | None, bool]:
    """A source photo as prep decoded it (orientation applied, RGB), its PIL format and whether it is
    grey; SkipImage when it cannot be read or is not the file prep hashed."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SkipImage(f"unreadable: {err.strerror or err}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise SkipImage("changed since prep (sha256 differs)")
    rgb, _ = decode_image(data, min_size=1, max_pixels=max_pixels)
    with Image.open(io.BytesIO(data)) as image:  # the header only: decode_image accepted it
        return rgb, image.format, image.mode in GREY_MODES


# ----------------------------------------------------------------------------- the pass

@dataclass
class Photo:
    """One source photo of a split and its faces in the release (none: prep found no face in it)."""

    source: int
    """Its first line in the data's sources.jsonl."""
    path: str
    sha256: str | None
    faces: list[PhotoFace]
    skipped: str | None = None
    """Why it cannot be released: prep took no face from it, or a face of it is not in this release."""


def photo_root(manifest: dict[str, Any], folder: str | None) -> Path:
    """The folder of the photos a prepped dataset was made from: `folder` (the input prep read), or the
    bundled demo photos. Every photo is checked against its sha256 before use."""
    source = manifest.get("config", {}).get("source")
    if folder is None and source != "demo":
        raise InputError(f"photos.input is not set: whole photos need the folder prep read the {source} "
                         "photos from (they are checked against the sha256 prep recorded)")
    return list_source("demo" if folder is None else source, folder).root


class PhotoWriter:
    """Writes the photos of a release's splits (see the module's doc)."""

    def __init__(self, cfg: PhotoConfig, data_dir: Path, release: Path, private: Path, secret: int,
                 images_per_shard: int, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> None:
        self.cfg, self.data_dir, self.release, self.private = cfg, Path(data_dir), release, private
        self.secret, self.images_per_shard, self.rank, self.world_size = secret, images_per_shard, rank, world_size
        self.device = device  # of collectives (NCCL reduces on the GPU only)
        manifest = load_manifest(self.data_dir)
        config = manifest.get("config", {})
        self.root = photo_root(manifest, cfg.input)
        self.max_pixels = int(config.get("max_pixels", 89_478_485))
        self.sources = [json.loads(line) for line in (self.data_dir / SOURCES_NAME).read_text().splitlines()
                        if line.strip()]
        self.skipped = {int(s["source"]): s["reason"] for s in manifest.get("skipped", [])}
        self.manifest = manifest
        self.checker = FaceDetector(cfg.check_score, cfg.check_min_side)

    # -- which photos
    def photos(self, splits: list[str]) -> dict[str, list[Photo]]:
        """Per split, its photos in source order: each photo with a released face goes to the split of its
        first face (a photo's faces may be people of several splits); a photo prep took no face from goes
        to its person's split (to the first split when nobody is named). A photo holding a face this
        release does not (a person of another split, or who withdrew) is withheld, listed with the reason."""
        released: dict[int, tuple[str, int]] = {}  # data source line -> (split, release index)
        for path in sorted((self.private / "state").glob("*.h5.mapping.jsonl")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["source_index"] is not None and entry["split"] in splits:
                    released[int(entry["source_index"])] = (entry["split"], int(entry["release_index"]))
        faces: dict[str, list[PhotoFace]] = {}
        split_of_person: dict[str, str] = {}
        for split in splits:
            for shard in split_shards(self.manifest, split):
                with open_shard(self.data_dir / shard["name"]) as f:
                    for source, quad in zip(f["source_index"][:], f["quad"][:]):
                        entry = self.sources[int(source)]
                        split_of_person[entry["identity"]] = split
                        if int(source) in released:
                            face_split, index = released[int(source)]
                            faces.setdefault(entry["path"], []).append(
                                PhotoFace(index, quad, split=face_split, face=entry.get("face") or 0))
        lines_of: dict[str, list[int]] = {}
        for number, entry in enumerate(self.sources):
            lines_of.setdefault(entry["path"], []).append(number)
        by_split: dict[str, list[Photo]] = {split: [] for split in splits}
        for path, lines in lines_of.items():
            first, entry = lines[0], self.sources[lines[0]]
            # Every face prep took from the photo must be one this release replaces.
            missing = [n for n in lines if n not in self.skipped and n not in released]
            if path in faces:
                photo_faces = sorted(faces[path], key=lambda f: f.face)
                photo = Photo(first, path, entry["sha256"], photo_faces)
                if missing:
                    photo.skipped = (f"{len(missing)} of its faces belong to people this release does not hold "
                                     "(another split, or withdrawn)")
                by_split[photo_faces[0].split].append(photo)
            elif not missing and all(n in self.skipped for n in lines) and (
                    entry["identity"] in split_of_person or not entry["identity"]):
                split = split_of_person.get(entry["identity"], splits[0])
                by_split[split].append(Photo(first, path, entry["sha256"], [], self.skipped[first]))
        for photos in by_split.values():
            photos.sort(key=lambda photo: photo.source)
        return by_split

    def _released_faces(self, photos: list[Photo]) -> None:
        """Read each photo's released face images from the release's shards."""
        wanted = sorted(((face.split, face.release_index), face) for photo in photos for face in photo.faces)
        handle, current = None, None
        try:
            for (split, index), face in wanted:
                shard = self.release / shard_name(split, index // self.images_per_shard)
                if shard != current:
                    if handle is not None:
                        handle.close()
                    handle, current = open_shard(shard), shard
                face.image = handle["images"][index % self.images_per_shard]
        finally:
            if handle is not None:
                handle.close()

    # -- one photo
    def _read(self, photo: Photo) -> tuple[np.ndarray, str | None, bool]:
        return read_photo(self.root / photo.path, photo.sha256, self.max_pixels)

    def process(self, split: str, photo: Photo, number: int, folder: Path) -> PhotoResult:
        result = PhotoResult(split=split, source=photo.source, path=photo.path, status="withheld",
                             faces=[{"split": f.split, "release_index": f.release_index, "face": f.face}
                                    for f in photo.faces])
        for stale in folder.glob(f"{number:07d}.*"):  # an earlier attempt's file, whatever becomes of it now
            stale.unlink()
        if photo.skipped is not None:
            result.reason = photo.skipped if photo.faces else f"prep took no face from it: {photo.skipped}"
            return result
        try:
            rgb, source_format, grey = self._read(photo)
        except SkipImage as reason:
            result.reason = str(reason)
            return result
        result.height, result.width = rgb.shape[:2]
        output, region, weight = paste_faces(rgb, photo.faces, self.cfg.mask, self.cfg.feather)
        covered = region.copy()
        # Faces of the photo that the release did not replace:
        missed = outside(self.checker.detect(rgb, CHECK_UPSCALES), region)
        if missed:
            what = f"{len(missed)} face(s) not replaced (best check score {max(m.score for m in missed):.2f})"
            if self.cfg.undetected != "blur":
                result.reason = what
                return result
            for face in missed:
                output, area = blur_region(output, face.box)
                covered |= area
            result.status, result.reason = "blurred", what + ", blurred"
        found = self.checker.detect(output, CHECK_UPSCALES)
        remaining = outside(found, covered)
        if remaining:
            result.status, result.reason = "withheld", (f"{len(remaining)} face(s) found in the output outside the "
                                                       "replaced regions")
            return result
        result.redetected = sum(1 for face in photo.faces if _found_in(face, found, output.shape[:2], self.cfg.mask))
        result.seam = seam_ratio(output, rgb, region, weight)
        data, ext = encode_photo(output, source_format, grey)
        name = f"{number:07d}{ext}"
        atomic_write_bytes(folder / name, data)
        if result.status == "withheld":
            result.status = "released"
        result.number, result.file, result.sha256 = number, f"photos/{split}/{name}", hashlib.sha256(data).hexdigest()
        return result

    def refuse_undetected(self, split: str, photos: list[Photo]) -> None:
        """undetected=refuse: look at every photo of this rank first; a face left out stops the run
        (every rank, before any photo is written)."""
        problems = []
        for photo in photos:
            if photo.skipped is not None:
                if photo.skipped.startswith("no face") or photo.faces:
                    problems.append((photo.path, photo.skipped))
                continue
            try:
                rgb, _, _ = self._read(photo)
            except SkipImage:
                continue  # withheld as unreadable, not a face left out
            size = int(self.manifest["resolution"])
            region = np.zeros(rgb.shape[:2], bool)
            for face in photo.faces:
                region |= face_region(rgb.shape[:2], face.quad, size, self.cfg.mask, self.cfg.feather)[0]
            missed = outside(self.checker.detect(rgb, CHECK_UPSCALES), region)
            if missed:
                problems.append((photo.path, f"{len(missed)} face(s) the release would not replace"))
        count = int(all_reduce({"count": len(problems)}, op="sum", device=self.device)["count"])
        if count:
            path, problem = problems[0] if problems else ("", "faces left out on another rank")
            raise InputError(f"{self.root / path}: {problem}; {count} photo(s) of split '{split}' hold a face the "
                             "release would not replace (photos.undetected=refuse; withhold or blur them instead)")

    # -- a split
    def write(self, splits: list[str]) -> None:
        by_split = self.photos(splits)
        if self.cfg.undetected == "refuse":  # every split looked at before any photo is written
            for split, photos in by_split.items():
                chunks = self._chunks(len(photos))
                self.refuse_undetected(split, [photos[i] for c in self._mine(chunks) for i in chunks[c]])
        for split_number, (split, photos) in enumerate(by_split.items()):
            self.write_split(split, split_number, photos)

    def _chunks(self, count: int) -> list[list[int]]:
        size = self.cfg.photos_per_chunk
        return [list(range(i, min(i + size, count))) for i in range(0, count, size)]

    def _mine(self, chunks: list[list[int]]) -> list[int]:
        return [c for c in range(len(chunks)) if c % self.world_size == self.rank]

    def write_split(self, split: str, split_number: int, photos: list[Photo]) -> None:
        numbers = np.random.default_rng([self.secret, 1, split_number]).permutation(len(photos))
        chunks = self._chunks(len(photos))
        mine = self._mine(chunks)
        folder = self.release / "photos" / split
        folder.mkdir(parents=True, exist_ok=True)
        state = self.private / "state"
        for c in mine:
            record = state / f"photos-{split}-{c:05d}.json"
            if _chunk_done(record, self.release):
                continue
            todo = [photos[i] for i in chunks[c]]
            self._released_faces(todo)
            results = [self.process(split, photo, int(numbers[i]), folder) for photo, i in zip(todo, chunks[c])]
            atomic_write_json(record, [asdict(r) for r in results])
            for photo in todo:
                for face in photo.faces:
                    face.image = None

    def summary(self, splits: list[str]) -> dict[str, Any]:
        """Rank 0, after every rank finished: writes private/photos.jsonl; returns the manifest's record."""
        results: list[dict[str, Any]] = []
        for split in splits:
            for record in sorted((self.private / "state").glob(f"photos-{split}-*.json")):
                results.extend(json.loads(record.read_text()))
        atomic_write_text(self.private / "photos.jsonl", "".join(json.dumps(r) + "\n" for r in results))
        released = {split: sum(r["split"] == split and r["status"] != "withheld" for r in results) for split in splits}
        withheld = sum(r["status"] == "withheld" for r in results)
        log.info("photos: %d released, %d withheld (private/photos.jsonl says why)", sum(released.values()), withheld)
        return {"mask": self.cfg.mask, "undetected": self.cfg.undetected, "photos": released}


def _found_in(face: PhotoFace, found: list[Detection], shape: tuple[int, int], mask: str) -> bool:
    """Whether a detection's centre lies in this face's replaced region."""
    region, _ = face_region(shape, face.quad, face.image.shape[0], mask, 0.0)
    height, width = shape
    return any(region[int(np.clip(f.center[1], 0, height - 1)), int(np.clip(f.center[0], 0, width - 1))]
               for f in found)


def _chunk_done(record: Path, release: Path) -> bool:
    if not record.is_file():
        return False
    results = json.loads(record.read_text())
    return all(r["file"] is None or ((release / r["file"]).is_file() and sha256_file(release / r["file"]) == r["sha256"])
               for r in results)

