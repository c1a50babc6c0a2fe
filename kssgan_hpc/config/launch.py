"""Configuration of what runs on the cluster: the resources of one submitit job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kssgan_hpc.config.core import ConfigError


@dataclass(kw_only=True)
class JobConfig:
    """One submitit job: a training run, or one sweep trial. The `slurm:` section of a scenario file."""

    executor: Literal["slurm", "local", "debug"] = "slurm"
    """slurm: sbatch through submitit; local: subprocesses on this host (same code path, no scheduler);
    debug: in this process (for a debugger)."""
    folder: str = "runs/submitit"
    """submitit's folder: job pickles and logs, one subfolder per job id (%j)."""
    name: str = "kssgan"
    """Slurm job name."""
    nodes: int = 1
    tasks_per_node: int = 1
    """Ranks per node: one per GPU on GPU nodes."""
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float = 0.0
    """Memory per node in GB; 0 leaves Slurm's default."""
    time_min: int = 60
    """Wall-clock limit of one job in minutes. A run that needs longer is requeued (see signal_delay_s)."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    """Slurm sends USR2 this long before the time limit: every rank checkpoints at its next step
    boundary and the job requeues itself. Must exceed the time of one step plus a checkpoint save."""
    max_requeues: int = 3
    """Time-limit requeues before the job gives up (preemptions do not count)."""
    max_restarts: int = 2
    """Restarts after a failure (a rank or a whole node lost, a crash): a surviving rank requeues the
    job, which resumes from the last complete checkpoint. 0: the job fails at the first failure."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the tasks start, e.g. `module load cuda/12.4`."""
    slurm_extra: dict[str, str] = field(default_factory=dict)
    """Further sbatch options, e.g. {exclusive: ""} or {reservation: ml}."""

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm.{name}={getattr(self, name)} is invalid; use >= 1")
        if self.gpus_per_node < 0 or self.mem_gb < 0 or self.signal_delay_s < 0 or self.max_requeues < 0 \
                or self.max_restarts < 0:
            raise ConfigError("slurm.gpus_per_node, mem_gb, signal_delay_s, max_requeues and max_restarts must be >= 0")
        if self.signal_delay_s >= 60 * self.time_min:
            raise ConfigError(f"slurm.signal_delay_s={self.signal_delay_s} must be shorter than "
                              f"slurm.time_min={self.time_min} minutes")
        if self.executor != "slurm" and self.nodes > 1:
            raise ConfigError(f"slurm.nodes={self.nodes} needs executor=slurm ({self.executor} runs on this host)")
