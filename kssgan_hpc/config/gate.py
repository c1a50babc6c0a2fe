"""The release gate: what a generator must show on held-out people before anything it makes ships."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError

ATTACKERS = ("siamese", "dlib", "sface", "lowpass8", "lowpass16", "eigenfaces", "parrot")
"""Attackers that read the faces (kssgan_hpc/attack/attackers.py); each has a gallery of originals."""
CUE_ATTACKERS = ("posehabit", "labels")
"""Attackers that read what a face carries beyond its cluster, pose and labels (kssgan_hpc/attack/cues.py)."""
ALL_ATTACKERS = ATTACKERS + CUE_ATTACKERS


ALPHA = 0.05
"""Significance of the gate's binomial test."""


@dataclass(kw_only=True)
class GateConfig:
    tolerance: float = 0.05
    """A generator passes when every attacker's rank-1 is shown to be <= 1/k + tolerance ..."""
    rule: Literal["binomial", "point"] = "binomial"
    """... shown by the one-sided binomial test at ALPHA (binomial: too few probes fail for lack of
    evidence), or only measured so (point: weaker; a rank-1 just under the bound passes on any
    number of probes)."""
    min_faces_detected: float = 0.95
    """... and YuNet finds a face in at least this share of its outputs."""
    attackers: list[str] = field(default_factory=lambda: ["siamese", "sface", "lowpass8", "lowpass16",
                                                          "eigenfaces", "parrot", "posehabit", "labels"])
    """Who attacks at the gate (dlib is the slowest; add it where time allows)."""
    fallback: Literal["aligned", "refuse"] = "aligned"
    """A failing generator is not used: release k-Same-Aligned instead, or refuse to release."""
    gallery_per_identity: int = 5
    """Original images per person in the attacker's gallery; the person's other images are probes."""
    probes_per_identity: int = 5
    allow_weaker: bool = False
    """A release gated with settings weaker than these defaults (a larger tolerance, the point decision,
    fewer attackers, faces, gallery images or probes) is refused unless this is true; the public manifest lists them."""

    def weaker_than_default(self) -> list[str]:
        """The settings that make this gate weaker than the default one, as key=value."""
        default = GateConfig()
        weaker = [f"gate.{name}={getattr(self, name)}" for name in ("tolerance",) if getattr(self, name) >
                  getattr(default, name)]
        weaker += [f"gate.{name}={getattr(self, name)}" for name in ("min_faces_detected", "gallery_per_identity",
                                                                     "probes_per_identity")
                   if getattr(self, name) < getattr(default, name)]
        if self.rule != default.rule:
            weaker.append(f"gate.rule={self.rule}")
        missing = [name for name in default.attackers if name not in self.attackers]
        if missing:
            weaker.append(f"gate.attackers without {','.join(missing)}")
        return weaker

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1 or not 0 <= self.min_faces_detected <= 1:
            raise ConfigError("gate.tolerance must be in [0, 1) and gate.min_faces_detected in [0, 1]")
        unknown = sorted(set(self.attackers) - set(ALL_ATTACKERS))
        if unknown or not self.attackers:
            raise ConfigError(f"gate.attackers: unknown {unknown or 'none given'}; "
                              f"use some of {', '.join(ALL_ATTACKERS)}")
        if self.gallery_per_identity < 1 or self.probes_per_identity < 1:
            raise ConfigError("gate.gallery_per_identity and gate.probes_per_identity must be >= 1")
