"""Configuration of a hyperparameter sweep: the search space, the optimizer, the trials' jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kssgan_hpc.config.core import ConfigError
from kssgan_hpc.config.launch import JobConfig

PRIVACY_KEYS = ("k", "clusters", "siamese", "data")
"""Never in a search space: k (and the clusters built with it) is the data holder's privacy setting;
the data and the identity network define the problem, not a hyperparameter."""


@dataclass(kw_only=True)
class ParamSpec:
    """One dimension of the search space."""

    type: Literal["log", "uniform", "int", "choice"]
    """log: log-uniform in [low, high]; uniform: in [low, high]; int: integer in [low, high];
    choice: one of `values`."""
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.type == "choice":
            if len(self.values) < 2:
                raise ConfigError("a choice parameter needs at least two values")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError(f"a {self.type} parameter needs low < high, got low={self.low} high={self.high}")
        if self.type == "log" and self.low <= 0:
            raise ConfigError(f"a log parameter needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ConfigError(f"an int parameter needs integer bounds, got {self.low}, {self.high}")


@dataclass(kw_only=True)
class ObjectiveConfig:
    """What a trial returns to the optimizer (lower is better)."""

    name: Literal["gan_validation", "report", "realism"] = "gan_validation"
    """gan_validation: w_identity * (1 - cos to surrogate) + w_leak * (source similarity beyond margin)
    + w_realism * KID in the Siamese's space, on a held-out split (kssgan_hpc/evaluate/validation.py).
    report: the evaluation report of the trial's generator on `split` (kssgan_hpc/evaluate):
    w_privacy * mean over ks of max(0, worst attacker's rank-1 - 1/k) + w_utility * (1 - SSIM)
    + w_realism * KID in SFace's space, on the held-out people of `split`.
    realism: KID in SFace's space on the held-out people of `split`, privacy a constraint: a trial
    whose worst attacker exceeds 1/k + tolerance, whose third-party leak exceeds the tolerance or
    whose faces are found in fewer than min_faces_detected is infeasible and told failure_penalty."""
    split: Literal["train", "val", "test"] = "val"
    w_identity: float = 1.0
    w_leak: float = 1.0
    w_realism: float = 1.0
    margin: float = 0.3
    """gan_validation: cosine similarity to the source identity tolerated before it counts as leak."""
    w_privacy: float = 1.0
    w_utility: float = 1.0
    ks: list[int] = field(default_factory=lambda: [4])
    """report: the k the release is made with (each >= 2; the split needs more identities)."""
    attackers: list[str] = field(default_factory=lambda: ["siamese", "sface", "lowpass8", "lowpass16", "eigenfaces",
                                                          "parrot", "posehabit", "labels"])
    """report: the attackers whose worst counts (dlib, the slowest, is left out by default)."""
    probes_per_identity: int = 2
    tolerance: float = 0.05
    """realism: the privacy constraints' tolerance (over 1/k; over the third-party baseline)."""
    min_faces_detected: float = 0.95
    """realism: YuNet must find a face in at least this share of the outputs."""


@dataclass(kw_only=True)
class SweepConfig:
    name: str = "sweep"
    out: str = "runs/sweeps/sweep"
    """Sweep folder: state/, trials/, results.csv|json, best_config.yaml, tensorboard/."""
    base_config: str = "configs/demo.yaml"
    """Scenario file whose `gan` section every trial starts from (and the best config is written as)."""
    stage: Literal["gan"] = "gan"
    trial_overrides: list[str] = field(default_factory=list)
    """key=value applied to every trial only (its budget: steps, checkpoint_every), not to the best config."""
    space: dict[str, ParamSpec] = field(default_factory=dict)
    """Dotted key of the stage config -> its range."""
    optimizer: str = "TwoPointsDE"
    """Any name in nevergrad.optimizers.registry. TwoPointsDE is what nevergrad's guide recommends
    for parallel evaluations ("excellent in many cases, including very high num_workers"); its
    NGOpt selector re-evaluated identical points in our benchmark (see README)."""
    budget: int = 16
    """Trials in all."""
    num_workers: int = 4
    """Trials in flight at once (the population the optimizer is asked for)."""
    seed: int = 0
    """Seed of the optimizer's draws (trials keep their own engine seed)."""
    failure_penalty: float = 10.0
    """Objective told to the optimizer for a failed, cancelled or timed-out trial."""
    max_failure_rate: float = 0.5
    """Abort (cancelling the trials in flight) once more than this share of finished trials failed,
    counted from num_workers finished trials on."""
    max_resubmits: int = 1
    """On --resume, a trial whose job is gone from the scheduler, or never got its pickled task (the driver
    died while submitting it), is resubmitted this many times."""
    poll_s: float = 2.0
    """Seconds between polls of the jobs in flight."""
    trial: JobConfig = field(default_factory=lambda: JobConfig(executor="local", name="kssgan-trial", time_min=30))
    """Resources of one trial's job (one or many nodes)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        if not self.space:
            raise ConfigError("space is empty: name at least one parameter to tune")
        for key in self.space:
            if key.split(".")[-1] in PRIVACY_KEYS:
                raise ConfigError(f"space.{key}: k, the clusters, the Siamese and the data are the data holder's "
                                  "privacy settings and the problem itself, never tuned")
        if self.budget < 1 or self.num_workers < 1 or self.max_resubmits < 0:
            raise ConfigError("budget and num_workers must be >= 1, max_resubmits >= 0")
        if not 0 < self.max_failure_rate <= 1:
            raise ConfigError(f"max_failure_rate={self.max_failure_rate} is invalid; use 0 < rate <= 1")
