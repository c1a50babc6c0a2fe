"""What every ingester returns: one record per input file, in a deterministic order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kssgan_hpc.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SourceRecord:
    path: str
    """Path relative to the source root (it may carry a subject's name: stays in sources.jsonl)."""
    identity: str
    """The person, as the source names them."""
    expression: str | None = None
    pose: str | None = None
    gaze: str | None = None
    attributes: list[int] | None = None
    """0/1 per entry of SourceListing.vocab['attributes']."""
    landmarks: list[list[float]] | None = None
    """Five (x, y) points in source pixels: eye L, eye R, nose, mouth L, mouth R (image left first)."""
    partition: str | None = None
    """The dataset's own split for this image (train/val/test), when it has one."""
    skip: str | None = None
    """Why the ingester already rejected this file (bad name, unsupported type, missing)."""
    face: int | None = None
    """With align.faces=all: which face of the photo (left to right); None: its most confident one."""


@dataclass
class SourceListing:
    root: Path
    records: list[SourceRecord]
    vocab: dict[str, list[str]] = field(
        default_factory=lambda: {"expression": [], "pose": [], "gaze": [], "attributes": []}
    )

    def label_index(self, name: str, value: str | None) -> int:
        return -1 if value is None else self.vocab[name].index(value)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def walk_files(root: Path) -> list[Path]:
    """Every non-hidden file below root, sorted, so listings never depend on the file system."""
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class SourceError(InputError):
    """The source folder cannot be read as the requested layout; names the path and the problem."""
