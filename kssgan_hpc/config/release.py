"""Configuration of what the data holder ships and measures: `kssgan anonymize`, `kssgan evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError
from kssgan_hpc.config.gate import ALL_ATTACKERS, GateConfig
from kssgan_hpc.config.train import DuplicateConfig

RECOGNIZERS = ("siamese", "dlib", "sface")
"""The face recognizers among the attackers (kssgan_hpc/attack/recognizers.py)."""


def check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if device not in ("auto", "cpu", "cuda") and not (kind == "cuda" and index.isdigit()):
        raise ConfigError(f"device={device!r} is invalid; use auto, cpu, cuda or cuda:<index>")


@dataclass(kw_only=True)
class PhotoConfig:
    """Whole photos (release/photos.py): each source photo written again with its faces replaced in place."""

    enabled: bool = False
    """Also write out/release/photos/<split>/<number>.<ext>: every photo of the released people, each of
    its faces replaced by its released face, the rest of the photo kept (sources must still be readable)."""
    input: str | None = None
    """The folder of the photos the dataset was prepped from (not needed with the demo or with
    anonymize's `input`, which it is then)."""
    mask: Literal["face", "head"] = "head"
    """The region replaced: the head (hair and ears too; the default) or the face only (brows to chin,
    cheek to cheek: it leaves the jaw line and hairline, which SFace read at 2x 1/k on the demo)."""
    undetected: Literal["withhold", "blur", "refuse"] = "withhold"
    """A photo holding a face the release did not replace (found by the second detector pass, or no face
    found at all): withhold it (listed in out/private/photos.jsonl), blur that face's region, or refuse
    the run before any photo is written."""
    check_score: float = 0.5
    """Threshold of the second detector pass (on each photo and on each output); prep detects at 0.6."""
    check_min_side: int = 320
    """That pass runs YuNet with the photo's short side at 1.5x and 3x this size (prep: 256, at 1x and 2x)."""
    feather: float = 0.06
    """Width of the mask's soft edge, as a share of the face crop's side (the edge lies outside the region)."""
    photos_per_chunk: int = 64
    """Photos per resume point (one record each in out/private/state)."""

    def __post_init__(self) -> None:
        if not 0 < self.check_score < 1:
            raise ConfigError(f"photos.check_score={self.check_score} is invalid; use a score in (0, 1)")
        if not 0 <= self.feather <= 0.5:
            raise ConfigError(f"photos.feather={self.feather} is invalid; use 0 to 0.5 of the crop's side")
        if self.check_min_side < 32 or self.photos_per_chunk < 1:
            raise ConfigError("photos.check_min_side must be >= 32 and photos.photos_per_chunk >= 1")


@dataclass(kw_only=True)
class AnonymizeConfig:
    gan: str = "runs/demo/gan"
    """GAN run folder: its newest checkpoint's EMA generator; its config names the Siamese."""
    data: str = "runs/demo/data"
    """Prepped dataset folder (manifest.json) whose `splits` are released."""
    verify: Literal["full", "quick"] = "full"
    """Check of the dataset before use: full = every shard's sha256; quick = sizes and HDF5 structure."""
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
    duplicates: DuplicateConfig = field(default_factory=DuplicateConfig)
    seed: int = 0
    """Seed of the clustering (the release's image order, cue draws and noise come from a secret seed
    drawn per release, kept in out/private/settings.json)."""
    cues: Literal["cluster", "own"] = "cluster"
    """Whose cues (pose, expression, labels) each face shows: an image of its cluster drawn by a secret
    permutation (cluster), or its source's own (own: they identify people within their cluster)."""
    ledger: str | None = None
    """The dataset's private ledger of releases (release/ledger.py), read and extended by every release;
    default <data>/ledger, with `input` <input>.ledger beside the input folder."""
    sticky_clusters: bool = True
    """People released before keep their cluster (and the cluster what it first released); false
    re-clusters everyone, which the ledger refuses wherever it would break k over time."""
    withdrawal_slack: int = 1
    """New clusters hold k + this many people, so that a withdrawal leaves k."""
    gate_split: str = "test"
    """Held-out people (never trained on) on whom the generator is attacked before anything is
    written; with `input`, the input's people."""
    gate: GateConfig = field(default_factory=GateConfig)
    batch_size: int = 32
    images_per_shard: int = 256
    png: bool = False
    """Also write out/release/png/<split>/<image id>.png (no metadata)."""
    photos: PhotoConfig = field(default_factory=PhotoConfig)
    device: str = "auto"
    """auto: this rank's GPU when there is one, else CPU."""

    def weaker_gate(self) -> list[str]:
        """What makes this release's gate weaker than the default one (empty: it is not)."""
        held_out = [] if self.gate_split == "test" or self.input else [f"gate_split={self.gate_split}"]
        return held_out + self.gate.weaker_than_default()

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.k < 2:
            raise ConfigError(f"k={self.k} is invalid; k-anonymity needs k >= 2")
        if self.weaker_gate() and not self.gate.allow_weaker:
            raise ConfigError(f"{', '.join(self.weaker_gate())}: weaker than the default gate; to release with "
                              "it anyway set gate.allow_weaker=true (the public manifest then says so)")
        if self.batch_size < 1 or self.images_per_shard < 1:
            raise ConfigError("batch_size and images_per_shard must be >= 1")
        if self.withdrawal_slack < 0:
            raise ConfigError(f"withdrawal_slack={self.withdrawal_slack} is invalid; use 0 or more people")
        for split in self.splits:
            if split not in ("train", "val", "test"):
                raise ConfigError(f"splits: {split!r} is not one of train, val, test")


@dataclass(kw_only=True)
class WithdrawConfig:
    people: list[str] = field(default_factory=list)
    """Source identity names (as in the dataset's sources.jsonl: the input's folder names) who leave."""
    data: str = "runs/demo/data"
    """The dataset whose releases they leave (its ledger is <data>/ledger unless `ledger` says)."""
    ledger: str | None = None

    def __post_init__(self) -> None:
        if not self.people:
            raise ConfigError("people=[...] is empty: name who withdraws (a source identity name)")


@dataclass(kw_only=True)
class EvaluateConfig:
    gan: str = "runs/demo/gan"
    """GAN run folder (its shipped EMA generator; its config names the Siamese, the attacker who knows the system)."""
    data: str = "runs/demo/data"
    """Prepped dataset: the faces de-identified and attacked."""
    verify: Literal["full", "quick"] = "full"
    """Check of the dataset before use: full = every shard's sha256; quick = sizes and HDF5 structure."""
    training_split: Literal["train", "val", "test"] = "train"
    """The people the Siamese and G trained on (does G memorise its sources?)."""
    heldout_split: Literal["train", "val", "test"] = "test"
    """People neither network saw (the real use); needs at least max(ks) people, 2k for a clear read."""
    release: str | None = "runs/demo/release"
    """A `kssgan anonymize` output folder: its cluster records are checked (>= k), its files scanned
    for traceable fields, and its gate verdict reported. None skips all three."""
    out: str = "runs/demo/report"
    ks: list[int] = field(default_factory=lambda: [2, 4, 8])
    attackers: list[str] = field(default_factory=lambda: list(ALL_ATTACKERS))
    """Re-identification attackers, each with a gallery of original faces (attack/attackers.py,
    attack/cues.py)."""
    tolerance: float = 0.05
    """A k-method is within bound when its worst attacker's rank-1 is <= 1/k + tolerance."""
    gallery_per_identity: int = 5
    """Original images per identity in the attacker's gallery (its mean embedding is the template)."""
    probes_per_identity: int = 5
    """Other images per identity that are de-identified and used as probes."""
    blur_sigma: float = -1.0
    """Gaussian blur baseline, in pixels; negative: resolution / 16."""
    pixelate_block: int = -1
    """Pixelation baseline block side; negative: resolution / 8."""
    method: Literal["mdav", "kmeans"] = "mdav"
    seed: int = 0
    """Seed of the clustering, the cue draws and the generator's noise in the evaluation."""
    cues: Literal["cluster", "own"] = "cluster"
    """Whose cues the k-Same-Aligned and kSS-GAN faces show (as anonymize's `cues`)."""
    include_originals: bool = False
    """Also write contact_sheet_SENSITIVE_originals.png, which shows the source faces."""
    photo_masks: list[str] = field(default_factory=list)
    """Whole photos (evaluate/photos.py): attack the probes' kSS-GAN faces pasted back into their photos
    with each of these masks (face, head), whole / face only / context only. Empty: not measured."""
    photos_input: str | None = None
    """The folder of the photos the dataset was prepped from (not needed for the demo)."""
    photo_feather: float = 0.06
    """The soft edge of the pasted face, as anonymize's photos.feather."""
    device: str = "auto"

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.ks or min(self.ks) < 2:
            raise ConfigError(f"ks={self.ks} is invalid; every k must be >= 2")
        if self.gallery_per_identity < 1 or self.probes_per_identity < 1:
            raise ConfigError("gallery_per_identity and probes_per_identity must be >= 1")
        unknown = sorted(set(self.attackers) - set(ALL_ATTACKERS))
        if unknown or not self.attackers:
            raise ConfigError(f"attackers: unknown {unknown or 'none given'}; use some of {', '.join(ALL_ATTACKERS)}")
        if set(self.photo_masks) - {"face", "head"}:
            raise ConfigError(f"photo_masks={self.photo_masks} is invalid; use some of face, head")
        if self.training_split == self.heldout_split:
            raise ConfigError(f"training_split and heldout_split are both {self.training_split!r}")
