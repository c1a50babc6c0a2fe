"""Configuration of the training stages: Siamese, k-Same clustering, GAN, and the engine under them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError
from kssgan_hpc.config.gate import GateConfig

AUGMENTATIONS = ("color", "translation", "cutout")
"""D's differentiable augmentations (kssgan_hpc/train/augment.py)."""


@dataclass(kw_only=True)
class ModelConfig:
    resolution: int | None = None
    """Image side in pixels: unset = the dataset's (set, it must equal the dataset's; power of two, 32..1024)."""
    channels: int | None = None
    """Image channels: unset = the dataset's."""
    embed_dim: int = 128
    """Siamese identity embedding size (also the generator's target code input)."""
    code_dim: int = 128
    """Width of the generator's code MLP (z and the label cues) that feeds every AdaIN layer."""
    z_dim: int = 32
    """Size of the generator's noise input."""
    residual_bound: float = 0.25
    """The generator's output is base + residual with |residual| <= this (images in [-1, 1]): how far
    it may move from the k-Same-Aligned base face. Small bounds keep faces faces."""
    cue_landmarks: bool = True
    """Give the generator the source's 5 landmarks (as heatmaps). Declared cue: pose and geometry."""
    cue_expression: bool = True
    """Give the generator the source's expression label (where the data has one)."""
    cue_pose: bool = True
    """Give the generator the source's pose label (where the data has one)."""
    siamese_width: int = 32
    """Channels of the Siamese encoder's first level; doubles per level up to max_width."""
    generator_width: int = 32
    """Channels of the generator's first level."""
    discriminator_width: int = 32
    """Channels of the discriminator's first level."""
    max_width: int = 256
    """Cap on the channels of any level."""

    def __post_init__(self) -> None:
        r = self.resolution
        if r is not None and (r < 32 or r > 1024 or r & (r - 1)):
            raise ConfigError(f"model.resolution={r} is invalid; use a power of two from 32 to 1024")
        if not 0.0 < self.residual_bound <= 2.0:
            raise ConfigError(f"model.residual_bound={self.residual_bound} is invalid; use 0 < bound <= 2")
        for name in ("embed_dim", "code_dim", "z_dim", "siamese_width", "generator_width", "discriminator_width",
                     "max_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} is invalid; use >= 1")


@dataclass(kw_only=True)
class EngineConfig:
    backend: Literal["accelerate", "deepspeed"] = "accelerate"
    """Distributed engine; the training loops are the same for both."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """bf16 and fp32 run everywhere; fp16 with DeepSpeed needs a GPU (the Accelerate engine runs
    fp16 on CPU with torch's own autocast and GradScaler)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0..2 (the GAN keeps a full EMA copy of G, so not 3)."""
    initial_loss_scale: float = 65536.0
    """fp16 starting loss scale."""
    min_loss_scale: float = 1.0
    """fp16: a loss scale below this stops the run (with a checkpoint): training has diverged."""
    grad_clip: float = 0.0
    """Clip gradient norm to this value; 0 disables."""
    accumulate: int = 1
    """Micro-batches per optimizer step (gradient accumulation, no gradient sync in between):
    the global batch is batch_size x ranks x accumulate."""
    seed: int = 0
    """Seed of model init, sampling and every rank's RNG (rank r uses seed + r for its own draws)."""
    deepspeed_config: str | None = None
    """DeepSpeed only: a JSON file merged over the generated config (bucket sizes, offload, comms);
    precision and ZeRO stage still come from engine.precision and engine.zero_stage."""

    def __post_init__(self) -> None:
        if not 0 <= self.zero_stage <= 2:
            raise ConfigError(f"engine.zero_stage={self.zero_stage} is invalid; use 0..2")
        if self.accumulate < 1:
            raise ConfigError(f"engine.accumulate={self.accumulate} is invalid; use >= 1")
        if self.min_loss_scale <= 0 or self.initial_loss_scale < self.min_loss_scale:
            raise ConfigError("engine.min_loss_scale must be > 0 and <= engine.initial_loss_scale")


@dataclass(kw_only=True)
class LoopConfig:
    """What every training stage shares: where, how long, how often to checkpoint and log."""

    data: str = "runs/demo/data"
    """Prepped dataset folder (holds manifest.json)."""
    verify: Literal["full", "quick"] = "full"
    """Check of the dataset before training: full = every shard's sha256 (on rank 0, while the models are
    built; a resumed or requeued run hashes only shards whose files changed since its last start);
    quick = sizes and HDF5 structure only."""
    out: str = "runs/demo/run"
    """Run folder: checkpoints/, tensorboard/, metrics.jsonl, resolved_config.yaml."""
    steps: int = 200
    """Optimizer steps to train."""
    batch_size: int = 16
    """Images per rank per step."""
    workers: int = 2
    """DataLoader worker processes per rank."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 2
    """Older checkpoints beyond this many are deleted."""
    log_every: int = 10
    """Steps between scalar logs."""
    image_every: int = 100
    """Steps between image grids in TensorBoard."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue from the newest complete checkpoint in out/checkpoints."""
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "image_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid; use >= 1")
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers} is invalid; use >= 0")


@dataclass(kw_only=True)
class SiameseConfig(LoopConfig):
    out: str = "runs/demo/siamese"
    identities_per_batch: int = 8
    """P of the P x K batch sampler; batch_size is derived as P*K (setting it has no effect)."""
    images_per_identity: int = 4
    """K of the P x K batch sampler: images of each identity in a batch (not the k of k-Same)."""
    lr: float = 3e-4
    """Adam learning rate."""
    margin: float = 0.5
    """Contrastive margin on the cosine distance of different-identity pairs."""
    eval_every: int = 100
    """Steps between validation (verification accuracy and EER on held-out identities)."""

    def __post_init__(self) -> None:
        p, k = self.identities_per_batch, self.images_per_identity
        if p < 2 or k < 2:
            raise ConfigError(f"identities_per_batch={p}, images_per_identity={k}: contrastive pairs need both >= 2")
        if self.lr <= 0 or self.margin < 0:
            raise ConfigError(f"lr={self.lr}, margin={self.margin} are invalid; use lr > 0 and margin >= 0")
        self.batch_size = p * k
        super().__post_init__()


@dataclass(kw_only=True)
class DuplicateConfig:
    """Identities that are one person (the same photos under two names; ksame/duplicates.py)."""

    merge: bool = True
    """Merge identities found to be one person (off: report only)."""
    siamese_min: float = 0.9
    """Cosine of the two identities' mean Siamese embeddings at least this."""
    pixel_min: float = 0.995
    """An image's near-copy: thumbnail correlation at least this."""
    share_min: float = 0.5
    """Fraction of the smaller identity's images that must have a near-copy in the other."""

    def __post_init__(self) -> None:
        for name in ("siamese_min", "pixel_min", "share_min"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"duplicates.{name}={getattr(self, name)} is invalid; use a value in [-1, 1]")


@dataclass(kw_only=True)
class ClusterConfig:
    data: str = "runs/demo/data"
    """Prepped dataset folder."""
    siamese: str = "runs/demo/siamese"
    """Siamese run folder (its newest checkpoint is used)."""
    verify: Literal["full", "quick"] = "full"
    """Check of the dataset before use: full = every shard's sha256; quick = sizes and HDF5 structure."""
    out: str = "runs/demo/clusters.json"
    """Where clusters.json is written (k-Same-Pixel faces go beside it)."""
    split: Literal["train", "val", "test"] = "train"
    """Whose identities are clustered."""
    k: int = 4
    """Anonymity: every cluster holds at least k identities. A privacy setting, never tuned."""
    method: Literal["mdav", "kmeans"] = "mdav"
    """mdav: greedy nearest groups (k-Same-Select style); kmeans: equal-size k-means."""
    seed: int = 0
    batch_size: int = 64
    duplicates: DuplicateConfig = field(default_factory=DuplicateConfig)

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError(f"k={self.k} is invalid; k-anonymity needs k >= 2")


@dataclass(kw_only=True)
class GanConfig(LoopConfig):
    out: str = "runs/demo/gan"
    siamese: str = "runs/demo/siamese"
    """Siamese run folder: its newest checkpoint is the frozen identity network."""
    clusters: str = "runs/demo/clusters.json"
    """k-Same clusters (kssgan cluster) of the training identities."""
    k: int = 4
    """The anonymity asked for: every cluster in `clusters` must hold at least k people (checked against
    this, not against the file's own claim, so an edited file cannot lower it)."""
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.99
    adversarial: Literal["nonsat", "hinge"] = "nonsat"
    """Adversarial loss: non-saturating logistic or hinge."""
    w_adv: float = 1.0
    """Weight of G's adversarial loss."""
    w_id_pull: float = 5.0
    """Weight of the pull of G's output embedding towards its cluster's surrogate (1 - cosine)."""
    w_id_push: float = 2.0
    """Weight of the push away from the source identity, beyond id_margin."""
    id_margin: float = 0.3
    """Cosine similarity to the source identity above which the push acts."""
    w_expression: float = 1.0
    """Weight of expression preservation through D's expression head (where labels exist)."""
    w_base: float = 10.0
    """Weight of the L1 between low-pass versions of output and its k-Same-Aligned base face (keeps
    faces faces; the base is k-anonymous, the source image is in no loss)."""
    base_size: int = 16
    """Side of the low-pass (area-downsampled) images the base L1 compares."""
    w_feature_match: float = 0.0
    """Weight of feature matching (Salimans et al. 2016): the squared distance between the batch means of
    D's last hidden features of G's outputs and of the real batch (statistics of the batch, not of
    any output's own source)."""
    w_diversity: float = 0.0
    """Weight of the diversity term (train/loss.diversity, Yang et al. 2019): two noises for the same
    inputs must give different faces, so a cluster's faces vary beyond their poses (0: off; costs a
    second G pass)."""
    augment: list[str] = field(default_factory=lambda: ["color", "translation", "cutout"])
    """DiffAugment ops on every image D sees, real and generated, in both phases (train/augment.py)."""
    augment_p: float = 0.0
    """Probability each op is applied to each image (0: off; 1: DiffAugment's own setting)."""
    r1_gamma: float = 1.0
    """R1 penalty weight on D's real-image gradients; 0 disables."""
    r1_every: int = 4
    """Lazy R1: every N-th D step, weighted by N."""
    ema_decay: float = 0.999
    """EMA of G's weights, used for sampling and evaluation."""
    log_originals: bool = False
    """Show source faces in TensorBoard. Off by default: logs are for de-identified faces."""
    select_split: Literal["train", "val", "test"] | None = "val"
    """Held-out people on whom each checkpoint's EMA generator is attacked (the release gate's
    measurement); the newest one that passes is kept in out/selected/ and is what ships. null
    disables (then the newest checkpoint ships, and anonymize's gate decides)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Thresholds of that measurement (the same as `kssgan anonymize`'s gate)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay} is invalid; use 0 <= decay < 1")
        for name in ("lr_g", "lr_d"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid; use a learning rate > 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid; use 0 <= beta < 1")
        negative = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                    if (f.name.startswith("w_") or f.name == "r1_gamma") and getattr(self, f.name) < 0]
        if negative:
            raise ConfigError(f"{', '.join(negative)}: loss weights must be >= 0")
        if self.r1_every < 1 or self.base_size < 1:
            raise ConfigError("r1_every and base_size must be >= 1")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise ConfigError(f"augment: unknown {unknown}; use some of {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.augment_p <= 1.0 or self.w_feature_match < 0 or self.w_diversity < 0:
            raise ConfigError("augment_p must be in [0, 1], w_feature_match and w_diversity >= 0")
