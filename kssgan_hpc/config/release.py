"""Configuration of what the data holder ships and measures: `kssgan anonymize`, `kssgan evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError


@dataclass(kw_only=True)
class AnonymizeConfig:
    gan: str = "runs/demo/gan"
    """GAN run folder: its newest checkpoint's EMA generator; its config names the Siamese."""
    data: str = "runs/demo/data"
    """Prepped dataset folder (manifest.json) whose `splits` are released."""
    input: str | None = None
    """Instead of `data`: a folder of face images (<root>/<person>/<image>), prepped first by the
    same path as `kssgan prep` (alignment included) into out/private/input."""
    splits: list[str] = field(default_factory=lambda: ["test"])
    """Splits of `data` to release, each one k-Same-clustered on its own (with `input`: test)."""
    out: str = "runs/demo/release"
    """out/release/ is what ships (shards, manifest, optional PNGs); out/private/ stays with the
    data holder (cluster membership of source identities, the prepped input)."""
    k: int = 4
    """Anonymity of the release: every released identity stands for at least k source people."""
    method: Literal["mdav", "kmeans"] = "mdav"
    seed: int = 0
    """Seed of the clustering and of the release's image order."""
    batch_size: int = 32
    images_per_shard: int = 256
    png: bool = False
    """Also write out/release/png/<split>/<image id>.png (no metadata)."""
    device: str = "auto"
    """auto: this rank's GPU when there is one, else CPU."""

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError(f"k={self.k} is invalid; k-anonymity needs k >= 2")
        if self.batch_size < 1 or self.images_per_shard < 1:
            raise ConfigError("batch_size and images_per_shard must be >= 1")
        for split in self.splits:
            if split not in ("train", "val", "test"):
                raise ConfigError(f"splits: {split!r} is not one of train, val, test")
